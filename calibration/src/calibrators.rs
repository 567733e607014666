//! Streaming per-tensor activation statistics in bounded memory and the scale calibrators
//! (min/max, percentile, TensorRT entropy/KL, MSE), plus the TensorRT calibration-cache text
//! format. No model or frame here: plain numbers in, ranges out.

/// Bins of the |x| histogram (TensorRT uses 2048).
pub const BINS: usize = 2048;
/// Quantisation levels of int8 magnitudes used by the entropy calibrator.
pub const LEVELS: usize = 128;

/// Errors of calibration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CalibrationError {
    /// No finite sample was observed for a tensor.
    #[error("tensor `{0}`: no finite activation was observed; feed more calibration frames")]
    Empty(String),
    /// A method name could not be parsed.
    #[error("unknown calibration method `{0}`: use minmax, percentile[:P], entropy or mse")]
    UnknownMethod(String),
}

/// How the clipping threshold (amax) is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Largest |x| seen.
    MinMax,
    /// The given percentile (0..100] of |x|.
    Percentile(f64),
    /// TensorRT entropy calibration 2: minimal KL(P‖Q).
    Entropy,
    /// Minimal mean squared quantisation error over the histogram.
    Mse,
}

impl std::str::FromStr for Method {
    type Err = CalibrationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CalibrationError::UnknownMethod(s.to_string());
        match s.split_once(':') {
            None => match s {
                "minmax" => Ok(Method::MinMax),
                "percentile" => Ok(Method::Percentile(99.99)),
                "entropy" => Ok(Method::Entropy),
                "mse" => Ok(Method::Mse),
                _ => Err(bad()),
            },
            Some(("percentile", p)) => {
                let p: f64 = p.parse().map_err(|_| bad())?;
                if p > 0.0 && p <= 100.0 {
                    Ok(Method::Percentile(p))
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }
}

/// Streaming histogram of |x| for one tensor. The range grows by doubling (merging bins pairwise)
/// so memory stays at [`BINS`] counters whatever the data.
#[derive(Debug, Clone)]
pub struct AbsHistogram {
    counts: Vec<f64>,
    width: f64,
    max: f64,
    total: u64,
}

impl Default for AbsHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0.0; BINS],
            width: 0.0,
            max: 0.0,
            total: 0,
        }
    }
}

impl AbsHistogram {
    /// Add a batch of activations (non-finite values are ignored).
    pub fn add(&mut self, xs: &[f32]) {
        let batch_max = xs
            .iter()
            .filter(|x| x.is_finite())
            .fold(0.0f64, |m, x| m.max(x.abs() as f64));
        if self.width == 0.0 {
            if batch_max == 0.0 {
                self.total += xs.iter().filter(|x| x.is_finite()).count() as u64;
                self.counts[0] += xs.iter().filter(|x| x.is_finite()).count() as f64;
                return;
            }
            self.width = batch_max / BINS as f64;
        }
        while batch_max > self.width * BINS as f64 {
            for i in 0..BINS / 2 {
                self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
            }
            self.counts[BINS / 2..].fill(0.0);
            self.width *= 2.0;
        }
        for x in xs.iter().filter(|x| x.is_finite()) {
            let a = x.abs() as f64;
            let b = ((a / self.width) as usize).min(BINS - 1);
            self.counts[b] += 1.0;
        }
        self.max = self.max.max(batch_max);
        self.total += xs.iter().filter(|x| x.is_finite()).count() as u64;
    }

    /// Samples seen.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Largest |x| seen.
    pub fn max(&self) -> f64 {
        self.max
    }

    /// Relative RMS error of quantizing the observed values symmetrically to `levels` steps
    /// per sign with clipping range `amax` (rounding plus clipping), estimated from the
    /// histogram with values at bin centres: `sqrt(Σ err² / Σ x²)`.
    pub fn quantization_error(&self, amax: f64, levels: f64) -> f64 {
        if self.width == 0.0 || amax <= 0.0 {
            return 0.0;
        }
        let step = amax / levels;
        let (mut err, mut sig) = (0.0, 0.0);
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0.0 {
                continue;
            }
            let x = (i as f64 + 0.5) * self.width;
            let q = (x / step).round().min(levels) * step;
            err += c * (x - q) * (x - q);
            sig += c * x * x;
        }
        if sig == 0.0 {
            0.0
        } else {
            (err / sig).sqrt()
        }
    }

    /// Clipping threshold by `method`.
    pub fn amax(&self, method: Method, tensor: &str) -> Result<f64, CalibrationError> {
        if self.total == 0 {
            return Err(CalibrationError::Empty(tensor.to_string()));
        }
        if self.max == 0.0 {
            return Ok(0.0);
        }
        Ok(match method {
            Method::MinMax => self.max,
            Method::Percentile(p) => self.percentile(p),
            Method::Entropy => self.entropy(),
            Method::Mse => self.mse(),
        })
    }

    fn percentile(&self, p: f64) -> f64 {
        let target = p / 100.0 * self.counts.iter().sum::<f64>();
        let mut acc = 0.0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            if acc >= target {
                return ((i + 1) as f64 * self.width).min(self.max);
            }
        }
        self.max
    }

    /// TensorRT entropy calibration 2 (see the crate docs of `FACTS.md`).
    fn entropy(&self) -> f64 {
        // Only the bins up to the largest value hold data (the range grows by doubling).
        let used = ((self.max / self.width).ceil() as usize).clamp(LEVELS, BINS);
        let hist = &self.counts[..used];
        let mut best = (f64::INFINITY, used);
        for i in LEVELS..=used {
            let mut p: Vec<f64> = hist[..i].to_vec();
            p[i - 1] += hist[i..].iter().sum::<f64>();
            // Quantise the first i bins into LEVELS levels and expand back over non-empty bins.
            let mut q = vec![0.0; i];
            let per = i as f64 / LEVELS as f64;
            for l in 0..LEVELS {
                let start = (l as f64 * per).floor() as usize;
                let end = (((l + 1) as f64 * per).floor() as usize)
                    .min(i)
                    .max(start + 1);
                let sum: f64 = hist[start..end].iter().sum();
                let nonzero = hist[start..end].iter().filter(|c| **c > 0.0).count();
                if nonzero > 0 {
                    let v = sum / nonzero as f64;
                    for j in start..end {
                        if hist[j] > 0.0 {
                            q[j] = v;
                        }
                    }
                }
            }
            let kl = kl_divergence(&p, &q);
            if kl < best.0 {
                best = (kl, i);
            }
        }
        ((best.1 as f64 + 0.5) * self.width).min(self.max)
    }

    fn mse(&self) -> f64 {
        let mut best = (f64::INFINITY, self.max);
        for step in 1..=200 {
            let amax = self.max * step as f64 / 200.0;
            let scale = amax / 127.0;
            let mut err = 0.0;
            for (i, c) in self.counts.iter().enumerate() {
                if *c == 0.0 {
                    continue;
                }
                let x = (i as f64 + 0.5) * self.width;
                let q = (x / scale).round().min(127.0) * scale;
                err += c * (x - q) * (x - q);
            }
            if err < best.0 {
                best = (err, amax);
            }
        }
        best.1
    }
}

fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let ps: f64 = p.iter().sum();
    let qs: f64 = q.iter().sum();
    if ps == 0.0 || qs == 0.0 {
        return f64::INFINITY;
    }
    let mut kl = 0.0;
    for (a, b) in p.iter().zip(q) {
        if *a > 0.0 {
            let pa = a / ps;
            let qb = (b / qs).max(1e-12);
            kl += pa * (pa / qb).ln();
        }
    }
    kl
}

/// One line of a TensorRT calibration cache: `name: <8 hex digits>` (float32 bits of amax/127).
pub fn trt_cache_line(name: &str, amax: f64) -> String {
    format!("{name}: {:08x}", ((amax / 127.0) as f32).to_bits())
}

/// The first line of a TensorRT calibration cache for `method`.
pub fn trt_cache_header(version: &str, method: Method) -> String {
    let kind = match method {
        Method::Entropy => "EntropyCalibration2",
        _ => "MinMaxCalibration",
    };
    format!("TRT-{version}-{kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        // Box–Muller on a small LCG: deterministic, no dependency.
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                ((-2.0 * next().ln()).sqrt() * (2.0 * std::f64::consts::PI * next()).cos()) as f32
            })
            .collect()
    }

    #[test]
    fn methods_order_on_gaussian_data() {
        let mut h = AbsHistogram::default();
        let x = gaussian(200_000, 1);
        for c in x.chunks(10_000) {
            h.add(c);
        }
        let mm = h.amax(Method::MinMax, "t").unwrap();
        let p = h.amax(Method::Percentile(99.9), "t").unwrap();
        let e = h.amax(Method::Entropy, "t").unwrap();
        let m = h.amax(Method::Mse, "t").unwrap();
        assert!((mm - h.max()).abs() < 1e-12);
        assert!(
            (3.0..3.6).contains(&p),
            "99.9th percentile of |N(0,1)| ≈ 3.29, got {p}"
        );
        assert!(e < mm && e > 1.5, "entropy threshold {e} (max {mm})");
        assert!(m < mm && m > 1.5, "mse threshold {m} (max {mm})");
    }

    #[test]
    fn range_grows_by_doubling_without_losing_counts() {
        let mut h = AbsHistogram::default();
        h.add(&[0.5, -0.25]);
        h.add(&[10.0, f32::NAN, f32::INFINITY]);
        assert_eq!(h.total(), 3);
        assert_eq!(h.counts.iter().sum::<f64>(), 3.0);
        assert_eq!(h.max(), 10.0);
    }

    #[test]
    fn empty_tensor_is_an_error_naming_it() {
        let h = AbsHistogram::default();
        let e = h.amax(Method::MinMax, "encoder.ln").unwrap_err();
        assert!(e.to_string().contains("encoder.ln"));
    }

    #[test]
    fn trt_cache_format() {
        // FACTS.md example: 0x4000890a is the float32 2.0083642.
        assert_eq!(trt_cache_line("x", 2.008_364_2 * 127.0), "x: 4000890a");
        assert_eq!(
            trt_cache_header("8601", Method::Entropy),
            "TRT-8601-EntropyCalibration2"
        );
        assert_eq!(
            "percentile:99.9".parse::<Method>().unwrap(),
            Method::Percentile(99.9)
        );
        assert!("kl".parse::<Method>().is_err());
    }
}
