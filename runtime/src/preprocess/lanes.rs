//! Eight `f32` lanes, the unit of the horizontal pass (one lane per output row of a group), in
//! three implementations with the same arithmetic: AVX registers on x86_64 (for the AVX2 and
//! AVX-512 levels), NEON register pairs on AArch64, and plain arrays elsewhere (x86_64's SSE2
//! baseline, which LLVM vectorises). Every operation is a separate IEEE multiply, add, subtract,
//! min or max (no fused multiply-add), so the three give the same bits.
//!
//! Explicit registers matter here: written over `[f32; 8]` arrays, LLVM kept the three channel
//! accumulators on the stack and stored them after every tap, and turned the transposed store of
//! a vertical row into a scatter; both were a third of the preprocessing time at 1080p.

/// Lanes per vector: output rows handled together by the horizontal pass.
pub(super) const R: usize = 8;

/// Eight `f32` lanes.
pub(super) trait Lanes: Copy {
    fn splat(x: f32) -> Self;
    /// The first eight values of `p` (which must hold eight).
    fn load(p: &[f32]) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// `min(max(self, 0), 255)`.
    fn clamp255(self) -> Self;
    fn to_array(self) -> [f32; R];
    /// `t[i * R + r] = v[r * stride + i]` for `r < R`, `i < n`: `R` rows of `v`, transposed.
    fn transpose(v: &[f32], stride: usize, n: usize, t: &mut [f32]);
}

/// The scalar transpose, for the portable lanes and the tails of the vector ones.
#[inline(always)]
fn transpose_scalar(v: &[f32], stride: usize, from: usize, n: usize, t: &mut [f32]) {
    for i in from..n {
        for r in 0..R {
            t[i * R + r] = v[r * stride + i];
        }
    }
}

/// Plain arrays: the portable implementation (on AArch64 only the tests use it: frames run on
/// NEON there).
#[derive(Clone, Copy)]
#[cfg_attr(all(target_arch = "aarch64", not(test)), allow(dead_code))]
pub(super) struct Portable([f32; R]);

impl Lanes for Portable {
    #[inline(always)]
    fn splat(x: f32) -> Self {
        Portable([x; R])
    }
    #[inline(always)]
    fn load(p: &[f32]) -> Self {
        Portable(p[..R].try_into().expect("eight lanes"))
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Portable(std::array::from_fn(|r| self.0[r] + o.0[r]))
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Portable(std::array::from_fn(|r| self.0[r] - o.0[r]))
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Portable(std::array::from_fn(|r| self.0[r] * o.0[r]))
    }
    #[inline(always)]
    fn clamp255(self) -> Self {
        Portable(self.0.map(|x| x.clamp(0.0, 255.0)))
    }
    #[inline(always)]
    fn to_array(self) -> [f32; R] {
        self.0
    }
    #[inline(always)]
    fn transpose(v: &[f32], stride: usize, n: usize, t: &mut [f32]) {
        transpose_scalar(v, stride, 0, n, t)
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use avx::Avx;

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{transpose_scalar, Lanes, R};
    use std::arch::x86_64::*;

    /// One AVX register. Only used inside the kernels' `#[target_feature(enable = "avx2")]`
    /// (and AVX-512) entry points, which run only on CPUs that have AVX2.
    #[derive(Clone, Copy)]
    pub(in crate::preprocess) struct Avx(__m256);

    // SAFETY (every `unsafe` block in this impl): AVX is present, because `Avx` values exist
    // only inside the kernels' AVX2/AVX-512 entry points, which callers reach through
    // `Simd::supported`; loads and stores stay inside slices whose lengths are checked first.
    impl Lanes for Avx {
        #[inline(always)]
        fn splat(x: f32) -> Self {
            // SAFETY: see the impl.
            Avx(unsafe { _mm256_set1_ps(x) })
        }
        #[inline(always)]
        fn load(p: &[f32]) -> Self {
            let p = &p[..R];
            // SAFETY: see the impl; `p` holds eight floats.
            Avx(unsafe { _mm256_loadu_ps(p.as_ptr()) })
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            // SAFETY: see the impl.
            Avx(unsafe { _mm256_add_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            // SAFETY: see the impl.
            Avx(unsafe { _mm256_sub_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            // SAFETY: see the impl.
            Avx(unsafe { _mm256_mul_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn clamp255(self) -> Self {
            // SAFETY: see the impl.
            Avx(unsafe {
                _mm256_min_ps(
                    _mm256_max_ps(self.0, _mm256_setzero_ps()),
                    _mm256_set1_ps(255.0),
                )
            })
        }
        #[inline(always)]
        fn to_array(self) -> [f32; R] {
            let mut a = [0.0f32; R];
            // SAFETY: see the impl; `a` holds eight floats.
            unsafe { _mm256_storeu_ps(a.as_mut_ptr(), self.0) };
            a
        }
        #[inline(always)]
        fn transpose(v: &[f32], stride: usize, n: usize, t: &mut [f32]) {
            assert!(n <= stride && v.len() >= (R - 1) * stride + n && t.len() >= n * R);
            let blocks = n / R * R;
            let (vp, tp) = (v.as_ptr(), t.as_mut_ptr());
            let mut i = 0;
            while i < blocks {
                // SAFETY: see the impl; rows r < 8 at columns i..i + 8 ≤ n lie inside `v`
                // and outputs (i..i + 8) × 8 inside `t` (the assertion above).
                unsafe {
                    let row = |r: usize| _mm256_loadu_ps(vp.add(r * stride + i));
                    let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                    let (r4, r5, r6, r7) = (row(4), row(5), row(6), row(7));
                    let (a0, a1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
                    let (a2, a3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
                    let (a4, a5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
                    let (a6, a7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
                    let s0 = _mm256_shuffle_ps::<0x44>(a0, a2);
                    let s1 = _mm256_shuffle_ps::<0xEE>(a0, a2);
                    let s2 = _mm256_shuffle_ps::<0x44>(a1, a3);
                    let s3 = _mm256_shuffle_ps::<0xEE>(a1, a3);
                    let s4 = _mm256_shuffle_ps::<0x44>(a4, a6);
                    let s5 = _mm256_shuffle_ps::<0xEE>(a4, a6);
                    let s6 = _mm256_shuffle_ps::<0x44>(a5, a7);
                    let s7 = _mm256_shuffle_ps::<0xEE>(a5, a7);
                    let out = tp.add(i * R);
                    _mm256_storeu_ps(out, _mm256_permute2f128_ps::<0x20>(s0, s4));
                    _mm256_storeu_ps(out.add(R), _mm256_permute2f128_ps::<0x20>(s1, s5));
                    _mm256_storeu_ps(out.add(2 * R), _mm256_permute2f128_ps::<0x20>(s2, s6));
                    _mm256_storeu_ps(out.add(3 * R), _mm256_permute2f128_ps::<0x20>(s3, s7));
                    _mm256_storeu_ps(out.add(4 * R), _mm256_permute2f128_ps::<0x31>(s0, s4));
                    _mm256_storeu_ps(out.add(5 * R), _mm256_permute2f128_ps::<0x31>(s1, s5));
                    _mm256_storeu_ps(out.add(6 * R), _mm256_permute2f128_ps::<0x31>(s2, s6));
                    _mm256_storeu_ps(out.add(7 * R), _mm256_permute2f128_ps::<0x31>(s3, s7));
                }
                i += R;
            }
            transpose_scalar(v, stride, blocks, n, t);
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(super) use neon::Neon;

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{transpose_scalar, Lanes, R};
    use std::arch::aarch64::*;

    /// Two NEON registers (NEON is part of every AArch64 CPU).
    #[derive(Clone, Copy)]
    pub(in crate::preprocess) struct Neon(float32x4_t, float32x4_t);

    // SAFETY (every `unsafe` block in this impl): NEON is mandatory on AArch64; loads and stores
    // stay inside slices whose lengths are checked first.
    impl Lanes for Neon {
        #[inline(always)]
        fn splat(x: f32) -> Self {
            // SAFETY: see the impl.
            unsafe { Neon(vdupq_n_f32(x), vdupq_n_f32(x)) }
        }
        #[inline(always)]
        fn load(p: &[f32]) -> Self {
            let p = &p[..R];
            // SAFETY: see the impl; `p` holds eight floats.
            unsafe { Neon(vld1q_f32(p.as_ptr()), vld1q_f32(p.as_ptr().add(4))) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            // SAFETY: see the impl.
            unsafe { Neon(vaddq_f32(self.0, o.0), vaddq_f32(self.1, o.1)) }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            // SAFETY: see the impl.
            unsafe { Neon(vsubq_f32(self.0, o.0), vsubq_f32(self.1, o.1)) }
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            // SAFETY: see the impl.
            unsafe { Neon(vmulq_f32(self.0, o.0), vmulq_f32(self.1, o.1)) }
        }
        #[inline(always)]
        fn clamp255(self) -> Self {
            // SAFETY: see the impl.
            unsafe {
                let (lo, hi) = (vdupq_n_f32(0.0), vdupq_n_f32(255.0));
                Neon(
                    vminq_f32(vmaxq_f32(self.0, lo), hi),
                    vminq_f32(vmaxq_f32(self.1, lo), hi),
                )
            }
        }
        #[inline(always)]
        fn to_array(self) -> [f32; R] {
            let mut a = [0.0f32; R];
            // SAFETY: see the impl; `a` holds eight floats.
            unsafe {
                vst1q_f32(a.as_mut_ptr(), self.0);
                vst1q_f32(a.as_mut_ptr().add(4), self.1);
            }
            a
        }
        #[inline(always)]
        fn transpose(v: &[f32], stride: usize, n: usize, t: &mut [f32]) {
            assert!(n <= stride && v.len() >= (R - 1) * stride + n && t.len() >= n * R);
            let blocks = n / 4 * 4;
            let (vp, tp) = (v.as_ptr(), t.as_mut_ptr());
            let mut i = 0;
            while i < blocks {
                // Two 4×4 transposes per 4 columns: rows 0..4 into lanes 0..4, rows 4..8 into
                // lanes 4..8.
                for half in 0..2 {
                    // SAFETY: see the impl; rows < 8 at columns i..i + 4 ≤ n lie inside `v`,
                    // outputs (i..i + 4) × 8 inside `t` (the assertion above).
                    unsafe {
                        let row = |r: usize| vld1q_f32(vp.add((half * 4 + r) * stride + i));
                        let (a, b, c, d) = (row(0), row(1), row(2), row(3));
                        let (t0, t1) = (vtrn1q_f32(a, b), vtrn2q_f32(a, b));
                        let (t2, t3) = (vtrn1q_f32(c, d), vtrn2q_f32(c, d));
                        let q = |x: float32x4_t| vreinterpretq_f64_f32(x);
                        let f = |x: float64x2_t| vreinterpretq_f32_f64(x);
                        let out = tp.add(i * R + half * 4);
                        vst1q_f32(out, f(vtrn1q_f64(q(t0), q(t2))));
                        vst1q_f32(out.add(R), f(vtrn1q_f64(q(t1), q(t3))));
                        vst1q_f32(out.add(2 * R), f(vtrn2q_f64(q(t0), q(t2))));
                        vst1q_f32(out.add(3 * R), f(vtrn2q_f64(q(t1), q(t3))));
                    }
                }
                i += 4;
            }
            transpose_scalar(v, stride, blocks, n, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<V: Lanes>() {
        for n in [0, 1, 7, 8, 9, 17, 33] {
            let stride = n + 3;
            let v: Vec<f32> = (0..R * stride).map(|i| i as f32 * 0.5 - 7.0).collect();
            let mut want = vec![0.0; n * R];
            transpose_scalar(&v, stride, 0, n, &mut want);
            let mut got = vec![f32::NAN; n * R];
            V::transpose(&v, stride, n, &mut got);
            assert_eq!(got, want, "transpose of {n} columns");
        }
        let a = V::load(&[-3.0, 0.0, 1.5, 254.0, 256.0, 7.0, -0.0, 100.0]);
        let b = V::splat(2.0);
        let r = a.mul(b).add(b).sub(V::splat(1.0)).clamp255().to_array();
        assert_eq!(r, [0.0, 1.0, 4.0, 255.0, 255.0, 15.0, 1.0, 201.0]);
    }

    #[test]
    fn portable_lanes() {
        check::<Portable>();
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx_lanes() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            println!("skipped: this CPU has no AVX2");
            return;
        }
        #[target_feature(enable = "avx2")]
        fn run() {
            check::<Avx>();
        }
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe { run() };
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_lanes() {
        check::<Neon>();
    }
}
