//! Latency statistics in fixed memory: a histogram of 10 µs buckets up to 1 s.

use std::time::Duration;

const BUCKET_US: u64 = 10;
const BUCKETS: usize = 100_000;

/// Latency histogram; `record` never allocates.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Box<[u32]>,
    count: u64,
    max: Duration,
    sum: Duration,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            max: Duration::ZERO,
            sum: Duration::ZERO,
        }
    }
}

impl Histogram {
    /// Record one sample (values over 1 s land in the last bucket; `max` stays exact).
    pub fn record(&mut self, d: Duration) {
        let i = ((d.as_micros() as u64) / BUCKET_US).min(BUCKETS as u64 - 1) as usize;
        self.buckets[i] += 1;
        self.count += 1;
        self.max = self.max.max(d);
        self.sum += d;
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0..=1) in milliseconds, at bucket resolution (upper edge, capped at max).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n as u64;
            if seen >= rank {
                if i == BUCKETS - 1 {
                    // Overflow bucket: the exact maximum is the best bound we have.
                    return self.max.as_secs_f64() * 1000.0;
                }
                let edge = ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
                return edge.min(self.max.as_secs_f64() * 1000.0);
            }
        }
        self.max.as_secs_f64() * 1000.0
    }

    /// Mean in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum.as_secs_f64() * 1000.0 / self.count as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        assert!(
            (h.quantile_ms(0.5) - 50.0).abs() <= 0.011,
            "{}",
            h.quantile_ms(0.5)
        );
        assert!((h.quantile_ms(0.99) - 99.0).abs() <= 0.011);
        assert_eq!(h.count(), 100);
        assert!((h.mean_ms() - 50.5).abs() < 1e-9);
        h.record(Duration::from_millis(2500));
        assert!(
            (h.quantile_ms(1.0) - 2500.0).abs() < 1e-9,
            "overflow reports the exact max"
        );
    }
}
