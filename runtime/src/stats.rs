//! Latency statistics in fixed memory: an HDR histogram (the `hdrhistogram` crate) from 1 µs to
//! one hour at 3 significant digits, so a quantile is within 0.1 % of the true value at any
//! latency in that range (a ViT on a slow CPU is not capped at some ceiling). The counts array
//! is allocated once, at construction; `record` never allocates (values past one hour are
//! recorded as one hour, and the exact maximum is kept beside).

use std::time::Duration;

/// Smallest distinguishable latency, microseconds.
pub const LOWEST_US: u64 = 1;
/// Largest latency recorded as itself (one hour), microseconds; longer ones count as this.
pub const HIGHEST_US: u64 = 3_600_000_000;
/// Significant decimal digits kept at every magnitude.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Latency histogram; `record` never allocates.
#[derive(Debug, Clone)]
pub struct Histogram {
    hdr: hdrhistogram::Histogram<u32>,
    max: Duration,
    sum: Duration,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            hdr: hdrhistogram::Histogram::new_with_bounds(
                LOWEST_US,
                HIGHEST_US,
                SIGNIFICANT_DIGITS,
            )
            .expect("constant, valid histogram bounds"),
            max: Duration::ZERO,
            sum: Duration::ZERO,
        }
    }
}

impl Histogram {
    /// Record one sample (over one hour counts as one hour; `max` stays exact).
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.hdr.saturating_record(us.clamp(LOWEST_US, HIGHEST_US));
        self.max = self.max.max(d);
        self.sum += d;
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hdr.len()
    }

    /// The `q` quantile (0..=1) in milliseconds, within 0.1 % (capped at the exact maximum).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.count() == 0 {
            return 0.0;
        }
        let max_ms = self.max.as_secs_f64() * 1000.0;
        let v = self.hdr.value_at_quantile(q.clamp(0.0, 1.0)) as f64 / 1000.0;
        v.min(max_ms)
    }

    /// Mean in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        if self.count() == 0 {
            0.0
        } else {
            self.sum.as_secs_f64() * 1000.0 / self.count() as f64
        }
    }

    /// The exact maximum in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.max.as_secs_f64() * 1000.0
    }

    /// Bytes of the counts array (the histogram's memory, allocated at construction).
    pub fn memory_bytes(&self) -> usize {
        self.hdr.distinct_values() * std::mem::size_of::<u32>()
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
            (h.quantile_ms(0.5) - 50.0).abs() <= 0.05,
            "{}",
            h.quantile_ms(0.5)
        );
        assert!((h.quantile_ms(0.99) - 99.0).abs() <= 0.1);
        assert_eq!(h.count(), 100);
        assert!((h.mean_ms() - 50.5).abs() < 1e-9);
        h.record(Duration::from_millis(2500));
        assert!(
            (h.quantile_ms(1.0) - 2500.0).abs() < 2.5,
            "{}",
            h.quantile_ms(1.0)
        );
    }

    #[test]
    fn no_ceiling_below_an_hour_and_fixed_memory() {
        // Seconds-long frames (a ViT on a slow CPU) keep their quantiles: the old 1 s histogram
        // reported the maximum for every quantile past the first second.
        let mut h = Histogram::default();
        let bytes = h.memory_bytes();
        for s in 1..=100u64 {
            h.record(Duration::from_millis(1000 + s * 10));
        }
        let p50 = h.quantile_ms(0.5);
        assert!((p50 - 1500.0).abs() <= 1.5, "{p50}");
        assert!((h.quantile_ms(0.99) - 1990.0).abs() <= 2.0);
        h.record(Duration::from_secs(7200));
        assert_eq!(h.max_ms(), 7_200_000.0, "the exact maximum is kept");
        assert!((h.quantile_ms(1.0) - 3_600_000.0).abs() <= 3600.0);
        h.record(Duration::ZERO);
        assert_eq!(h.count(), 102);
        assert_eq!(h.memory_bytes(), bytes, "recording never grows it");
        assert!(bytes < 128 << 10, "{bytes} bytes per stage");
    }
}
