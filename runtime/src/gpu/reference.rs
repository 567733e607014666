//! CPU references for every CUDA kernel: plain loops, written from the definitions, each with the
//! tolerance its GPU parity test allows. The preprocessing and fusion kernels are checked
//! against the production CPU code instead ([`crate::preprocess::Preprocessor`],
//! [`crate::fusion::FusionHead`]), so those references are the code that runs on the CPU.

use edgefuse_models::quant::gemm::{PackedWeights, ACT_MAX};

/// Activations of the kernels' `EF_ACT_*` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Activation {
    /// Identity.
    None = 0,
    /// `x · Φ(x)` with the error function.
    Gelu = 1,
    /// The tanh approximation of GELU.
    GeluTanh = 2,
    /// CLIP's `x · σ(1.702 x)`.
    QuickGelu = 3,
}

/// Allowed |GPU − reference| per kernel family, as `abs + rel · scale` where `scale` is stated
/// per test (e.g. the largest |value| of the reference output).
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Absolute part.
    pub abs: f32,
    /// Relative part.
    pub rel: f32,
}

/// Preprocessing, f32 output, vs the 2-D reference (same taps; separable sums, fused multiply-adds).
pub const TOL_PREPROCESS_F32: Tolerance = Tolerance {
    abs: 2e-4,
    rel: 0.0,
};
/// Preprocessing, f16 output: one half-precision rounding (2^-11 relative) on top.
pub const TOL_PREPROCESS_F16: Tolerance = Tolerance {
    abs: 2e-4,
    rel: 1.0 / 1024.0,
};
/// f32 linear, relative to `max|y|` (different summation order over K ≤ 4096).
pub const TOL_LINEAR_F32: Tolerance = Tolerance {
    abs: 1e-5,
    rel: 1e-4,
};
/// int8 linear: the i32 accumulators are exact, only the f32 epilogue may round differently.
pub const TOL_LINEAR_I8: Tolerance = Tolerance {
    abs: 1e-6,
    rel: 1e-6,
};
/// Attention, layer norm, activations, fusion head (relative to `max|y|`).
pub const TOL_ELEMENTWISE: Tolerance = Tolerance {
    abs: 1e-5,
    rel: 1e-5,
};

impl Tolerance {
    /// Largest violation of `|a − b| ≤ abs + rel·scale` as `(index, |a − b|)`, or `None`.
    pub fn check(&self, got: &[f32], want: &[f32], scale: f32) -> Option<(usize, f32)> {
        let lim = self.abs + self.rel * scale;
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold(
                (0, 0f32),
                |m, (i, d)| if d > m.1 || d.is_nan() { (i, d) } else { m },
            );
        (got.len() != want.len() || worst.1 > lim || worst.1.is_nan()).then_some(worst)
    }
}

/// Scalar activation.
pub fn act(x: f32, a: Activation) -> f32 {
    match a {
        Activation::None => x,
        Activation::Gelu => {
            0.5 * x * (1.0 + crate::plan::erf(x as f64 * std::f64::consts::FRAC_1_SQRT_2) as f32)
        }
        Activation::GeluTanh => {
            let c = (2.0f32 / std::f32::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
    }
}

/// `y[m][n] = act(Σ_k x[m][k]·w[n][k] + bias[n])`, `w` row-major `[n, k]`.
pub fn linear_f32(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
    a: Activation,
) -> Vec<f32> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|kk| x[i * k + kk] as f64 * w[j * k + kk] as f64)
                .sum();
            y[i * n + j] = act(s as f32 + bias.map_or(0.0, |b| b[j]), a);
        }
    }
    y
}

/// Weights for the GPU int8 kernels: row-major `[n, kp]` int8 (zero padded, `kp` a multiple of
/// 32) and per-output-channel scales, from the same quantizer as the CPU int8 path, so both
/// paths multiply the same integers.
#[derive(Debug, Clone)]
pub struct RowWeights {
    /// `[n, kp]`.
    pub q: Vec<i8>,
    /// Per row.
    pub scales: Vec<f32>,
    /// Output channels.
    pub n: usize,
    /// Input channels.
    pub k: usize,
    /// `k` padded to 32.
    pub kp: usize,
}

impl RowWeights {
    /// Quantize `w` (`[n, k]` row-major) like the CPU path.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
        Self::from_packed(&PackedWeights::quantize(w, k, n, true))
    }

    /// Re-lay the CPU path's packed weights as rows.
    pub fn from_packed(p: &PackedWeights) -> Self {
        let kp = p.k.div_ceil(32) * 32;
        let mut q = vec![0i8; p.n * kp];
        for nn in 0..p.n {
            for kk in 0..p.k {
                q[nn * kp + kk] = p.get(kk, nn);
            }
        }
        Self {
            q,
            scales: p.scales.clone(),
            n: p.n,
            k: p.k,
            kp,
        }
    }
}

/// `ef_quantize_i8`: `round(x / s)` (half away from zero) clamped to ±127, rows padded to `kp`.
pub fn quantize_i8(x: &[f32], m: usize, k: usize, kp: usize, scale: f32) -> Vec<i8> {
    let inv = 1.0 / scale;
    let mut q = vec![0i8; m * kp];
    for i in 0..m {
        for kk in 0..k {
            q[i * kp + kk] = (x[i * k + kk] * inv).round().clamp(-ACT_MAX, ACT_MAX) as i8;
        }
    }
    q
}

/// `ef_linear_i8_*`: exact i32 sums, then `acc · x_scale · w_scale[n] + bias[n]`, activation.
pub fn linear_i8(
    q: &[i8],
    w: &RowWeights,
    x_scale: f32,
    bias: Option<&[f32]>,
    m: usize,
    a: Activation,
) -> Vec<f32> {
    let mut y = vec![0.0; m * w.n];
    for i in 0..m {
        for j in 0..w.n {
            let acc: i32 = (0..w.kp)
                .map(|kk| i32::from(q[i * w.kp + kk]) * i32::from(w.q[j * w.kp + kk]))
                .sum();
            let v = acc as f32 * (x_scale * w.scales[j]) + bias.map_or(0.0, |b| b[j]);
            y[i * w.n + j] = act(v, a);
        }
    }
    y
}

/// Strided view of one attention operand: row `i`, head `h` starts at `i·stride + h·d`.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a> {
    /// Data.
    pub data: &'a [f32],
    /// Elements between rows.
    pub stride: usize,
}

/// `ef_attention_f32`: `o[i, h·d + c] = Σ_j softmax_j(scale · q_i·k_j) v_j[c]`, written densely
/// as `[lq, heads·d]`.
#[allow(clippy::too_many_arguments)] // mirrors the kernel's parameter list
pub fn attention(
    q: Strided<'_>,
    k: Strided<'_>,
    v: Strided<'_>,
    lq: usize,
    lk: usize,
    heads: usize,
    d: usize,
    scale: f32,
) -> Vec<f32> {
    let mut o = vec![0.0; lq * heads * d];
    let mut s = vec![0f64; lk];
    for h in 0..heads {
        for i in 0..lq {
            let qi = &q.data[i * q.stride + h * d..][..d];
            for (j, sj) in s.iter_mut().enumerate() {
                let kj = &k.data[j * k.stride + h * d..][..d];
                *sj = qi
                    .iter()
                    .zip(kj)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    * scale as f64;
            }
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for x in s.iter_mut() {
                *x = (*x - mx).exp();
                sum += *x;
            }
            for c in 0..d {
                let acc: f64 = s
                    .iter()
                    .enumerate()
                    .map(|(j, p)| p * v.data[j * v.stride + h * d + c] as f64)
                    .sum();
                o[i * heads * d + h * d + c] = (acc / sum) as f32;
            }
        }
    }
    o
}

/// `ef_layer_norm`: per row, biased variance.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], cols: usize, eps: f32) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
        let mean = xr.iter().map(|v| *v as f64).sum::<f64>() / cols as f64;
        let var = xr.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for c in 0..cols {
            yr[c] = ((xr[c] as f64 - mean) * inv) as f32 * gamma[c] + beta[c];
        }
    }
    y
}

/// IEEE half bits of `x`, round to nearest even (`ef_f32_to_f16`).
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut r = m >> shift;
        if rest > half || (rest == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && r & 1 == 1) {
        r += 1; // may carry into the exponent, which is the correct rounding
    }
    sign | r as u16
}

/// Value of IEEE half bits.
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let e = ((h >> 10) & 0x1f) as i32;
    let m = (h & 0x3ff) as f32;
    sign * match e {
        0 => m * 2f32.powi(-24),
        0x1f if m == 0.0 => f32::INFINITY,
        0x1f => f32::NAN,
        _ => (1.0 + m / 1024.0) * 2f32.powi(e - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (-2.0, -0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
        ] {
            assert!(
                (crate::plan::erf(x) - want).abs() < 1e-13,
                "erf({x}) = {}",
                crate::plan::erf(x)
            );
        }
    }

    #[test]
    fn activations_have_their_textbook_values() {
        assert_eq!(act(3.0, Activation::None), 3.0);
        assert!((act(1.0, Activation::Gelu) - 0.841_344_7).abs() < 1e-6);
        assert!((act(1.0, Activation::GeluTanh) - 0.841_191_9).abs() < 1e-6);
        assert!((act(1.0, Activation::QuickGelu) - 0.845_795_8).abs() < 1e-6);
        assert!(act(-10.0, Activation::Gelu).abs() < 1e-6);
    }

    #[test]
    fn half_conversion_rounds_to_nearest_even() {
        for (x, bits) in [
            (1.0f32, 0x3c00u16),
            (-2.0, 0xc000),
            (65504.0, 0x7bff),
            (70000.0, 0x7c00),
            (5.960_464_5e-8, 0x0001),
            (1.0 + 1.0 / 2048.0, 0x3c00), // tie -> even
            (1.0 + 3.0 / 2048.0, 0x3c02), // tie -> even (up)
            (0.1, 0x2e66),
        ] {
            assert_eq!(f32_to_f16_bits(x), bits, "{x}");
        }
        for bits in [0x3c00u16, 0x0001, 0x7bff, 0xb555, 0x0400] {
            assert_eq!(f32_to_f16_bits(f16_bits_to_f32(bits)), bits);
        }
    }

    #[test]
    fn linear_references_agree_with_each_other() {
        // The int8 reference on exactly representable values equals the f32 one.
        let (m, n, k) = (3, 5, 40);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7 % 127) as f32 - 63.0) / 63.0)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 5 % 255) as f32 - 127.0) / 127.0)
            .collect();
        let rw = RowWeights::quantize(&w, n, k);
        assert_eq!(rw.kp, 64);
        let q = quantize_i8(&x, m, k, rw.kp, 1.0 / 127.0);
        let yi = linear_i8(&q, &rw, 1.0 / 127.0, None, m, Activation::None);
        let wd: Vec<f32> = (0..n * k)
            .map(|i| rw.q[(i / k) * rw.kp + i % k] as f32 * rw.scales[i / k])
            .collect();
        let xd: Vec<f32> = (0..m * k)
            .map(|i| q[(i / k) * rw.kp + i % k] as f32 / 127.0)
            .collect();
        let yf = linear_f32(&xd, &wd, None, m, n, k, Activation::None);
        assert!(TOL_LINEAR_F32.check(&yi, &yf, 10.0).is_none());
        // And the dequantized weights are close to the originals (within half a 7-bit step).
        for (a, b) in w.iter().zip(&wd) {
            assert!((a - b).abs() <= 0.5 / 63.0 + 1e-6);
        }
    }

    #[test]
    fn attention_of_one_key_is_that_value_and_softmax_is_stable() {
        let d = 4;
        let q = vec![1e4f32; 2 * d];
        let k = vec![1e4f32; 3 * d];
        let v: Vec<f32> = (0..3 * d).map(|i| i as f32).collect();
        fn s(data: &[f32]) -> Strided<'_> {
            Strided { data, stride: 4 }
        }
        // Huge equal logits: uniform weights, no overflow.
        let o = attention(s(&q), s(&k), s(&v), 2, 3, 1, d, 1.0);
        assert!(o.iter().all(|x| x.is_finite()));
        assert!((o[0] - 4.0).abs() < 1e-4, "{o:?}");
        let o = attention(s(&q), s(&k[..d]), s(&v[..d]), 2, 1, 1, d, 1.0);
        assert_eq!(&o[..d], &v[..d]);
    }

    #[test]
    fn layer_norm_normalises() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let y = layer_norm(&x, &[1.0; 4], &[0.0; 4], 4, 0.0);
        let mean: f32 = y.iter().sum::<f32>() / 4.0;
        let var: f32 = y.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    }

    #[test]
    fn tolerance_reports_the_worst_element() {
        let t = Tolerance { abs: 0.1, rel: 0.0 };
        assert_eq!(t.check(&[1.0, 2.0], &[1.05, 2.0], 0.0), None);
        assert_eq!(t.check(&[1.0, 2.5], &[1.05, 2.0], 0.0), Some((1, 0.5)));
        assert!(t.check(&[f32::NAN], &[0.0], 0.0).is_some());
    }
}
