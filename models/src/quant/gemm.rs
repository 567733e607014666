//! int8 GEMM for the linear layers: `acc[m][n] = Σ_k qa[m][k] · qw[k][n]` exactly, in i32.
//!
//! Numerics, identical on every CPU:
//! * weights symmetric per output channel, **7-bit** (`[-63, 63]`): with 8-bit activations the
//!   pair sums of x86's `vpmaddubsw` (u8 × i8 → saturating i16) stay below 2·255·63 = 32 130, so
//!   the AVX2 kernel never saturates and equals the scalar reference bit for bit;
//! * activations symmetric per tensor, 8-bit (`[-127, 127]`), stored offset by +128 as `u8`
//!   (what `vpmaddubsw` wants); the offset is removed with a per-column correction
//!   `128 · Σ_k qw[k][n]` computed once at packing.
//!
//! Kernels: a scalar reference (the definition), AVX2 (`vpmaddubsw` + `vpmaddwd`, 4 rows × 16
//! columns), AArch64 NEON (`smull` + `sadalp`; the Jetson CPUs), picked at run time.

/// Largest weight magnitude (7-bit, see the module docs).
pub const WEIGHT_MAX: f32 = 63.0;
/// Largest activation magnitude.
pub const ACT_MAX: f32 = 127.0;

/// Which kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust; the reference every other kernel must match exactly.
    Scalar,
    /// x86-64 AVX2.
    Avx2,
    /// AArch64 NEON (Advanced SIMD).
    Neon,
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    pub fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                return Kernel::Neon;
            }
        }
        Kernel::Scalar
    }

    /// Every kernel this CPU can run (for parity tests and benchmarks).
    pub fn available() -> Vec<Kernel> {
        let mut v = vec![Kernel::Scalar];
        let best = Kernel::best();
        if best != Kernel::Scalar {
            v.push(best);
        }
        v
    }
}

/// Weights `[K, N]` quantized per output column and packed for the kernels.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    /// Contraction length.
    pub k: usize,
    /// Output columns.
    pub n: usize,
    /// `k` rounded up to 4.
    pub kp: usize,
    /// `n` rounded up to 8.
    pub np: usize,
    /// `[np / 8][kp / 4][8 columns][4 k]` int8.
    data: Vec<i8>,
    /// `128 · Σ_k qw[k][n]` per column (removes the activation offset in the x86 kernel, which
    /// multiplies the offset `u8` activations directly).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    offset_correction: Vec<i32>,
    /// Per-column weight scale: `w ≈ scale · qw`.
    pub scales: Vec<f32>,
}

impl PackedWeights {
    /// Quantize `w` (`[k, n]` row-major when `transposed` is false, `[n, k]` when true).
    pub fn quantize(w: &[f32], k: usize, n: usize, transposed: bool) -> PackedWeights {
        assert_eq!(w.len(), k * n, "weight length");
        let at = |kk: usize, nn: usize| {
            if transposed {
                w[nn * k + kk]
            } else {
                w[kk * n + nn]
            }
        };
        let mut scales = vec![0f32; n];
        for (nn, s) in scales.iter_mut().enumerate() {
            let amax = (0..k).map(|kk| at(kk, nn).abs()).fold(0f32, f32::max);
            *s = if amax > 0.0 { amax / WEIGHT_MAX } else { 1.0 };
        }
        let inv: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
        let q = |kk: usize, nn: usize| -> i8 {
            (at(kk, nn) * inv[nn])
                .round()
                .clamp(-WEIGHT_MAX, WEIGHT_MAX) as i8
        };
        Self::pack(k, n, q, scales)
    }

    /// Pack already-quantized weights `qw(k, n)` (values in `[-63, 63]`).
    pub fn pack(k: usize, n: usize, qw: impl Fn(usize, usize) -> i8, scales: Vec<f32>) -> Self {
        let kp = k.div_ceil(4) * 4;
        let np = n.div_ceil(8) * 8;
        let mut data = vec![0i8; np * kp];
        let mut offset_correction = vec![0i32; n];
        for (nn, corr) in offset_correction.iter_mut().enumerate() {
            let (jb, lane) = (nn / 8, nn % 8);
            for kk in 0..k {
                let v = qw(kk, nn);
                debug_assert!((-63..=63).contains(&v));
                let idx = ((jb * (kp / 4) + kk / 4) * 8 + lane) * 4 + kk % 4;
                data[idx] = v;
                *corr += 128 * i32::from(v);
            }
        }
        PackedWeights {
            k,
            n,
            kp,
            np,
            data,
            offset_correction,
            scales,
        }
    }

    /// The quantized weight at `(k, n)`.
    pub fn get(&self, kk: usize, nn: usize) -> i8 {
        let (jb, lane) = (nn / 8, nn % 8);
        self.data[((jb * (self.kp / 4) + kk / 4) * 8 + lane) * 4 + kk % 4]
    }

    /// Bytes of packed weights.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// Quantize activations `x` (`[m, k]`) with scale `s` into `out` (`[m, kp]`, offset +128,
/// padding = 128 i.e. zero). Returns how many values were clipped.
pub fn quantize_activations(
    x: &[f32],
    m: usize,
    k: usize,
    kp: usize,
    s: f32,
    out: &mut [u8],
) -> usize {
    debug_assert!(out.len() >= m * kp);
    let inv = 1.0 / s;
    let mut clipped = 0;
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        let o = &mut out[i * kp..(i + 1) * kp];
        for (d, &v) in o.iter_mut().zip(row) {
            let q = (v * inv).round();
            if q.abs() > ACT_MAX {
                clipped += 1;
            }
            *d = (q.clamp(-ACT_MAX, ACT_MAX) as i32 + 128) as u8;
        }
        o[k..].fill(128);
    }
    clipped
}

/// `acc[m][n] = Σ_k (a[m][k] − 128) · qw[k][n]` with `kernel`; `a` is `[m, kp]`, `acc` `[m, n]`.
pub fn gemm(kernel: Kernel, a: &[u8], m: usize, w: &PackedWeights, acc: &mut [i32]) {
    assert!(
        a.len() >= m * w.kp && acc.len() >= m * w.n,
        "gemm buffer sizes"
    );
    match kernel {
        Kernel::Scalar => gemm_scalar(a, m, w, acc),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            assert!(std::arch::is_x86_feature_detected!("avx2"));
            // SAFETY: AVX2 is present (checked above); slice bounds were asserted.
            unsafe { gemm_avx2(a, m, w, acc) }
        }
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => {
            // SAFETY: NEON is mandatory on AArch64; slice bounds were asserted.
            unsafe { gemm_neon(a, m, w, acc) }
        }
        #[allow(unreachable_patterns)]
        _ => gemm_scalar(a, m, w, acc),
    }
}

/// The reference.
pub fn gemm_scalar(a: &[u8], m: usize, w: &PackedWeights, acc: &mut [i32]) {
    for i in 0..m {
        for nn in 0..w.n {
            let mut s = 0i32;
            for kk in 0..w.k {
                s += (i32::from(a[i * w.kp + kk]) - 128) * i32::from(w.get(kk, nn));
            }
            acc[i * w.n + nn] = s;
        }
    }
}

/// # Safety
/// The CPU must have AVX2, `a` must hold `m * w.kp` bytes and `acc` `m * w.n` values (checked by
/// [`gemm`]); every pointer read stays inside `a` and `w.data` by the packing layout.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemm_avx2(a: &[u8], m: usize, w: &PackedWeights, acc: &mut [i32]) {
    use std::arch::x86_64::*;
    let kq = w.kp / 4;
    let nb = w.np / 8;
    let ones = _mm256_set1_epi16(1);
    let corr = &w.offset_correction;
    let mut tmp = [0i32; 8];
    // One block of 8 columns at a time, rows in groups of 4 (the weights stream once per group).
    let store = |acc: &mut [i32], tmp: &[i32; 8], i: usize, jb: usize| {
        for (lane, v) in tmp.iter().enumerate() {
            let nn = jb * 8 + lane;
            if nn < w.n {
                acc[i * w.n + nn] = v - corr[nn];
            }
        }
    };
    let mut jb = 0;
    while jb < nb {
        let pair = jb + 1 < nb;
        let b0 = w.data.as_ptr().add(jb * kq * 32);
        let b1 = if pair {
            w.data.as_ptr().add((jb + 1) * kq * 32)
        } else {
            b0
        };
        let mut i = 0;
        while i + 4 <= m {
            let mut c = [_mm256_setzero_si256(); 8];
            let ap = a.as_ptr().add(i * w.kp);
            for q in 0..kq {
                let w0 = _mm256_loadu_si256(b0.add(q * 32) as *const __m256i);
                let w1 = _mm256_loadu_si256(b1.add(q * 32) as *const __m256i);
                for r in 0..4 {
                    let quad = (ap.add(r * w.kp + q * 4) as *const i32).read_unaligned();
                    let av = _mm256_set1_epi32(quad);
                    c[2 * r] = _mm256_add_epi32(
                        c[2 * r],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(av, w0), ones),
                    );
                    c[2 * r + 1] = _mm256_add_epi32(
                        c[2 * r + 1],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(av, w1), ones),
                    );
                }
            }
            for r in 0..4 {
                _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, c[2 * r]);
                store(acc, &tmp, i + r, jb);
                if pair {
                    _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, c[2 * r + 1]);
                    store(acc, &tmp, i + r, jb + 1);
                }
            }
            i += 4;
        }
        while i < m {
            let (mut c0, mut c1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            let ap = a.as_ptr().add(i * w.kp);
            for q in 0..kq {
                let quad = (ap.add(q * 4) as *const i32).read_unaligned();
                let av = _mm256_set1_epi32(quad);
                let w0 = _mm256_loadu_si256(b0.add(q * 32) as *const __m256i);
                let w1 = _mm256_loadu_si256(b1.add(q * 32) as *const __m256i);
                c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(_mm256_maddubs_epi16(av, w0), ones));
                c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(_mm256_maddubs_epi16(av, w1), ones));
            }
            _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, c0);
            store(acc, &tmp, i, jb);
            if pair {
                _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, c1);
                store(acc, &tmp, i, jb + 1);
            }
            i += 1;
        }
        jb += 2;
    }
}

/// # Safety
/// `a` must hold `m * w.kp` bytes and `acc` `m * w.n` values (checked by [`gemm`]); every pointer
/// read stays inside `a` and `w.data` by the packing layout.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn gemm_neon(a: &[u8], m: usize, w: &PackedWeights, acc: &mut [i32]) {
    use std::arch::aarch64::*;
    let kq = w.kp / 4;
    let nb = w.np / 8;
    let flip = vdupq_n_u8(0x80);
    for i in 0..m {
        let ap = a.as_ptr().add(i * w.kp);
        for jb in 0..nb {
            let bp = w.data.as_ptr().add(jb * kq * 32);
            // Four accumulators of [col c, col c (other half), col c+1, col c+1 (other half)].
            let mut c = [vdupq_n_s32(0); 4];
            for q in 0..kq {
                let quad = (ap.add(q * 4) as *const u32).read_unaligned();
                // The same 4 activations for every column; u8 − 128 = i8 by flipping the top bit.
                let av =
                    vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(vdupq_n_u32(quad)), flip));
                let w_lo = vld1q_s8(bp.add(q * 32)); // columns 0..4
                let w_hi = vld1q_s8(bp.add(q * 32 + 16)); // columns 4..8
                c[0] = vpadalq_s16(c[0], vmull_s8(vget_low_s8(av), vget_low_s8(w_lo)));
                c[1] = vpadalq_s16(c[1], vmull_high_s8(av, w_lo));
                c[2] = vpadalq_s16(c[2], vmull_s8(vget_low_s8(av), vget_low_s8(w_hi)));
                c[3] = vpadalq_s16(c[3], vmull_high_s8(av, w_hi));
            }
            // c[0] = [c0 k01, c0 k23, c1 k01, c1 k23] → pairwise add gives columns.
            let lo = vpaddq_s32(c[0], c[1]);
            let hi = vpaddq_s32(c[2], c[3]);
            let mut tmp = [0i32; 8];
            vst1q_s32(tmp.as_mut_ptr(), lo);
            vst1q_s32(tmp.as_mut_ptr().add(4), hi);
            for (lane, v) in tmp.iter().enumerate() {
                let nn = jb * 8 + lane;
                if nn < w.n {
                    acc[i * w.n + nn] = *v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (no dependency).
    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    #[test]
    fn every_kernel_matches_the_reference_exactly_on_odd_shapes() {
        let mut seed = 7u64;
        let shapes = [
            (1, 1, 1),
            (1, 4, 8),
            (3, 5, 7),
            (4, 64, 16),
            (5, 33, 17),
            (17, 96, 288),
            (50, 768, 40),
            (7, 130, 9),
        ];
        for (m, k, n) in shapes {
            // Extreme values included: activations ±127, weights ±63.
            let qw: Vec<i8> = (0..k * n)
                .map(|i| {
                    if i % 11 == 0 {
                        63
                    } else if i % 13 == 0 {
                        -63
                    } else {
                        (lcg(&mut seed) % 127) as i8 - 63
                    }
                })
                .collect();
            let w = PackedWeights::pack(k, n, |kk, nn| qw[kk * n + nn], vec![1.0; n]);
            let kp = w.kp;
            let mut a = vec![128u8; m * kp];
            for i in 0..m {
                for kk in 0..k {
                    a[i * kp + kk] = match (i + kk) % 9 {
                        0 => 255,
                        1 => 1,
                        _ => (lcg(&mut seed) % 255 + 1) as u8,
                    };
                }
            }
            // Definition, independent of the packing.
            let mut want = vec![0i32; m * n];
            for i in 0..m {
                for nn in 0..n {
                    want[i * n + nn] = (0..k)
                        .map(|kk| (i32::from(a[i * kp + kk]) - 128) * i32::from(qw[kk * n + nn]))
                        .sum();
                }
            }
            for kernel in Kernel::available() {
                let mut got = vec![0i32; m * n];
                gemm(kernel, &a, m, &w, &mut got);
                assert_eq!(got, want, "{kernel:?} on m={m} k={k} n={n}");
            }
        }
        println!(
            "int8 gemm kernels {:?} match the scalar reference exactly",
            Kernel::available()
        );
    }

    #[test]
    fn quantization_round_trips_within_half_a_step() {
        let (k, n) = (6, 3);
        let w: Vec<f32> = (0..k * n).map(|i| (i as f32 - 8.0) * 0.25).collect();
        let p = PackedWeights::quantize(&w, k, n, false);
        for kk in 0..k {
            for nn in 0..n {
                let back = f32::from(p.get(kk, nn)) * p.scales[nn];
                assert!((back - w[kk * n + nn]).abs() <= p.scales[nn] * 0.5 + 1e-6);
            }
        }
        // Transposed input gives the same packing.
        let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        let pt = PackedWeights::quantize(&wt, k, n, true);
        assert_eq!(pt.data, p.data);
        let mut out = vec![0u8; 2 * 8];
        let clipped = quantize_activations(
            &[0.0, 1.0, -1.0, 300.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],
            2,
            5,
            8,
            1.0,
            &mut out,
        );
        assert_eq!(clipped, 1);
        assert_eq!(&out[..8], &[128, 129, 127, 255, 129, 128, 128, 128]);
    }
}
