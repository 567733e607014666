//! f32 matrix products for the CPU executor: `C[m, n] = A[m, k] · B[k, n]` with `B` packed in
//! column panels (`[panel][k][nr]`, zero-padded) and `A` read in place through its strides.
//!
//! A panel is the unit of work (and of threading): constant weights are packed once when the
//! plan is built; a product of two activations (attention) packs each panel into per-thread
//! scratch just before using it. The micro-kernels keep a row block × panel of sums in
//! registers for the whole contraction: AVX-512 12 × 32, AVX2+FMA 6 × 16, NEON 6 × 16, and a
//! portable 4 × 16. Every kernel sums in the same order (k ascending; one fused multiply-add
//! per term, the portable kernel a multiply and an add), so the result does not depend on how the
//! work is split among threads.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// A float micro-kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatKernel {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512F.
    Avx512,
    /// AArch64 Advanced SIMD.
    Neon,
}

impl FloatKernel {
    /// The widest kernel this CPU runs.
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            return Self::Neon;
        }
        #[allow(unreachable_code)]
        Self::Scalar
    }

    /// Every kernel this CPU runs (for tests).
    pub fn available() -> Vec<Self> {
        let mut v = vec![Self::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Self::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Self::Avx512);
            }
        }
        #[cfg(target_arch = "aarch64")]
        v.push(Self::Neon);
        v
    }

    /// Panel width (columns).
    pub fn nr(self) -> usize {
        match self {
            Self::Avx512 => 32,
            _ => 16,
        }
    }

    /// Most rows per register tile.
    fn mr(self) -> usize {
        match self {
            Self::Avx512 => 12,
            Self::Avx2 | Self::Neon => 6,
            Self::Scalar => 4,
        }
    }
}

/// Where the left operand is: element `(i, kk)` at `ptr + i·rs + kk·ks`.
#[derive(Debug, Clone, Copy)]
pub struct Lhs {
    /// First element.
    pub ptr: *const f32,
    /// Row stride.
    pub rs: usize,
    /// Column (contraction) stride.
    pub ks: usize,
}

/// Where the output goes: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// First element.
    pub ptr: *mut f32,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

/// Where a right-hand side is: element `(kk, j)` at `ptr + kk·sk + j·sn`.
#[derive(Debug, Clone, Copy)]
pub struct Rhs {
    /// First element.
    pub ptr: *const f32,
    /// Contraction stride.
    pub sk: usize,
    /// Column stride.
    pub sn: usize,
}

/// Pack columns `j0 .. j0+cols` of `src` into one panel `dst` (`[k][nr]`, zero beyond `cols`).
///
/// # Safety
/// Every element read must lie in the allocation `src` points into; `dst` holds `k·nr`.
pub unsafe fn pack_panel(src: Rhs, k: usize, j0: usize, cols: usize, nr: usize, dst: &mut [f32]) {
    for kk in 0..k {
        let row = &mut dst[kk * nr..(kk + 1) * nr];
        let (sk, sn) = (src.sk, src.sn);
        let base = src.ptr.add(kk * sk + j0 * sn);
        if sn == 1 {
            std::ptr::copy_nonoverlapping(base, row.as_mut_ptr(), cols);
        } else {
            for (j, v) in row[..cols].iter_mut().enumerate() {
                *v = *base.add(j * sn);
            }
        }
        row[cols..].fill(0.0);
    }
}

/// `C[0..m, 0..cols] = A[0..m, 0..k] · panel` for one packed panel.
///
/// # Safety
/// The CPU must run `kernel`; `a` must address `m × k` readable elements, `out` `m × cols`
/// writable ones not read by anyone else meanwhile; `panel` holds `k·kernel.nr()` values and
/// `cols ≤ nr`.
pub unsafe fn panel_product(
    kernel: FloatKernel,
    a: Lhs,
    m: usize,
    k: usize,
    panel: &[f32],
    out: Out,
    cols: usize,
) {
    debug_assert!(panel.len() >= k * kernel.nr() && cols <= kernel.nr());
    let mr = kernel.mr();
    let blocks = m.div_ceil(mr).max(1);
    let (base, extra) = (m / blocks, m % blocks);
    let mut r0 = 0;
    for b in 0..blocks {
        let rows = base + usize::from(b < extra);
        if rows == 0 {
            continue;
        }
        let a = Lhs {
            ptr: a.ptr.add(r0 * a.rs),
            ..a
        };
        let o = Out {
            ptr: out.ptr.add(r0 * out.rs),
            ..out
        };
        tile(kernel, a, rows, k, panel.as_ptr(), o, cols);
        r0 += rows;
    }
}

unsafe fn tile(
    kernel: FloatKernel,
    a: Lhs,
    rows: usize,
    k: usize,
    b: *const f32,
    o: Out,
    cols: usize,
) {
    macro_rules! by_rows {
        ($f:ident: $($r:literal)*) => {
            match rows {
                $($r => $f::<$r>(a, k, b, o, cols),)*
                _ => unreachable!("row blocks are at most the kernel's height"),
            }
        };
    }
    match kernel {
        #[cfg(target_arch = "x86_64")]
        FloatKernel::Avx512 => by_rows!(tile_avx512: 1 2 3 4 5 6 7 8 9 10 11 12),
        #[cfg(target_arch = "x86_64")]
        FloatKernel::Avx2 => by_rows!(tile_avx2: 1 2 3 4 5 6),
        #[cfg(target_arch = "aarch64")]
        FloatKernel::Neon => by_rows!(tile_neon: 1 2 3 4 5 6),
        _ => by_rows!(tile_scalar: 1 2 3 4),
    }
}

/// Store `vals` (one row of a tile, `nr` values) to the first `cols` columns of row `r`.
#[inline(always)]
unsafe fn store_row(o: Out, r: usize, vals: &[f32], cols: usize) {
    let dst = o.ptr.add(r * o.rs);
    if o.cs == 1 {
        std::ptr::copy_nonoverlapping(vals.as_ptr(), dst, cols);
    } else {
        for (j, v) in vals[..cols].iter().enumerate() {
            *dst.add(j * o.cs) = *v;
        }
    }
}

unsafe fn tile_scalar<const R: usize>(a: Lhs, k: usize, b: *const f32, o: Out, cols: usize) {
    let mut acc = [[0f32; 16]; R];
    for kk in 0..k {
        let bk = std::slice::from_raw_parts(b.add(kk * 16), 16);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = *a.ptr.add(r * a.rs + kk * a.ks);
            for (c, bv) in row.iter_mut().zip(bk) {
                *c += av * *bv;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        store_row(o, r, row, cols);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize>(a: Lhs, k: usize, b: *const f32, o: Out, cols: usize) {
    let mut c0 = [_mm512_setzero_ps(); R];
    let mut c1 = [_mm512_setzero_ps(); R];
    for kk in 0..k {
        let b0 = _mm512_loadu_ps(b.add(kk * 32));
        let b1 = _mm512_loadu_ps(b.add(kk * 32 + 16));
        for r in 0..R {
            let av = _mm512_set1_ps(*a.ptr.add(r * a.rs + kk * a.ks));
            c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
        }
    }
    if o.cs == 1 {
        let m0 = if cols >= 16 {
            0xffff
        } else {
            (1u16 << cols) - 1
        };
        let m1 = if cols >= 32 {
            0xffff
        } else if cols > 16 {
            (1u16 << (cols - 16)) - 1
        } else {
            0
        };
        for r in 0..R {
            let dst = o.ptr.add(r * o.rs);
            _mm512_mask_storeu_ps(dst, m0, c0[r]);
            _mm512_mask_storeu_ps(dst.add(16), m1, c1[r]);
        }
    } else {
        let mut vals = [0f32; 32];
        for r in 0..R {
            _mm512_storeu_ps(vals.as_mut_ptr(), c0[r]);
            _mm512_storeu_ps(vals.as_mut_ptr().add(16), c1[r]);
            store_row(o, r, &vals, cols);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize>(a: Lhs, k: usize, b: *const f32, o: Out, cols: usize) {
    let mut c0 = [_mm256_setzero_ps(); R];
    let mut c1 = [_mm256_setzero_ps(); R];
    for kk in 0..k {
        let b0 = _mm256_loadu_ps(b.add(kk * 16));
        let b1 = _mm256_loadu_ps(b.add(kk * 16 + 8));
        for r in 0..R {
            let av = _mm256_set1_ps(*a.ptr.add(r * a.rs + kk * a.ks));
            c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
        }
    }
    for r in 0..R {
        if cols == 16 && o.cs == 1 {
            let dst = o.ptr.add(r * o.rs);
            _mm256_storeu_ps(dst, c0[r]);
            _mm256_storeu_ps(dst.add(8), c1[r]);
        } else {
            let mut vals = [0f32; 16];
            _mm256_storeu_ps(vals.as_mut_ptr(), c0[r]);
            _mm256_storeu_ps(vals.as_mut_ptr().add(8), c1[r]);
            store_row(o, r, &vals, cols);
        }
    }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn tile_neon<const R: usize>(a: Lhs, k: usize, b: *const f32, o: Out, cols: usize) {
    use std::arch::aarch64::*;
    let mut c = [[vdupq_n_f32(0.0); 4]; R];
    for kk in 0..k {
        let bp = b.add(kk * 16);
        let bv = [
            vld1q_f32(bp),
            vld1q_f32(bp.add(4)),
            vld1q_f32(bp.add(8)),
            vld1q_f32(bp.add(12)),
        ];
        for r in 0..R {
            let av = *a.ptr.add(r * a.rs + kk * a.ks);
            for q in 0..4 {
                c[r][q] = vfmaq_n_f32(c[r][q], bv[q], av);
            }
        }
    }
    let mut vals = [0f32; 16];
    for r in 0..R {
        for q in 0..4 {
            vst1q_f32(vals.as_mut_ptr().add(q * 4), c[r][q]);
        }
        store_row(o, r, &vals, cols);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_matches_the_definition_on_odd_shapes() {
        let mut checked = Vec::new();
        for kernel in FloatKernel::available() {
            let nr = kernel.nr();
            for (m, k, n) in [
                (1, 1, 1),
                (3, 5, 7),
                (13, 17, 33),
                (50, 64, 50),
                (7, 130, 40),
            ] {
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 7 % 23) as f32 - 11.0) / 8.0)
                    .collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 5 % 19) as f32 - 9.0) / 4.0)
                    .collect();
                // Output with a column stride of 2 for odd n (the strided store path); sentinels
                // everywhere else.
                let cs = if n % 2 == 1 { 2 } else { 1 };
                let mut c = vec![f32::NAN; m * n * cs + 3];
                let mut panel = vec![0f32; k * nr];
                for p in 0..n.div_ceil(nr) {
                    let cols = (n - p * nr).min(nr);
                    // SAFETY: b is [k, n]; panel holds k·nr; c holds m·n·cs.
                    unsafe {
                        let src = Rhs {
                            ptr: b.as_ptr(),
                            sk: n,
                            sn: 1,
                        };
                        pack_panel(src, k, p * nr, cols, nr, &mut panel);
                        panel_product(
                            kernel,
                            Lhs {
                                ptr: a.as_ptr(),
                                rs: k,
                                ks: 1,
                            },
                            m,
                            k,
                            &panel,
                            Out {
                                ptr: c.as_mut_ptr().add(p * nr * cs),
                                rs: n * cs,
                                cs,
                            },
                            cols,
                        );
                    }
                }
                for i in 0..m {
                    for j in 0..n {
                        let want = (0..k).fold(0f32, |s, kk| {
                            let (x, y) = (a[i * k + kk], b[kk * n + j]);
                            if kernel == FloatKernel::Scalar {
                                s + x * y
                            } else {
                                x.mul_add(y, s)
                            }
                        });
                        let got = c[i * n * cs + j * cs];
                        assert_eq!(got, want, "{kernel:?} ({m},{k},{n}) at ({i},{j})");
                    }
                }
                let written = m * n;
                assert_eq!(
                    c.iter().filter(|v| !v.is_nan()).count(),
                    written,
                    "{kernel:?}: writes outside C"
                );
            }
            checked.push(kernel);
        }
        println!("float kernels {checked:?} match the fused multiply-add definition exactly");
    }
}
