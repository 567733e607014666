//! f32 matrix products for the CPU executor: `C[m, n] = A[m, k] · B[k, n]` with `B` packed in
//! column panels (`[panel][k][nr]`, zero-padded) and `A` packed per step into row blocks
//! ([`pack_lhs`]) when several panels read it, or read in place through its strides.
//!
//! A panel is the unit of work (and of threading): constant weights are packed once when the
//! plan is built; a product of two activations (attention) packs each panel into per-thread
//! scratch just before using it. The micro-kernels keep a row block × panel of sums in
//! registers: AVX-512 12 × 32, AVX2+FMA 6 × 16, NEON 6 × 16, and a portable 4 × 16, over passes
//! of [`KC`] terms (a panel's slice stays in L1 across the row blocks; the next slice is
//! prefetched, since a model's weights come from memory). Every kernel sums in the same order
//! (k ascending; one fused multiply-add per term, the portable kernel a multiply and an add;
//! a pass continues from the sums the previous one stored), so the result does not depend on
//! how the work is split among threads.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

// Row blocks balanced as the int8 kernels balance theirs (50 rows of 12 at most: 5 × 10).
use edgefuse_models::quant::gemm::row_blocks;

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
    pub fn mr(self) -> usize {
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

/// Contraction depth of one pass over a panel: a `KC × nr` slice of the panel (32 KiB for
/// AVX-512) stays in the L1 cache while every row block of `A` runs over it; the next pass
/// continues the sums from `C`. Splitting the contraction keeps the order of the terms (k
/// ascending, one rounding per term), so the result is the same as one pass.
const KC: usize = 256;

/// Where the next slice of a panel is prefetched to: L2 (`T1`), since the slice being used
/// (32 KiB) and the next one would not both fit the L1 cache.
#[cfg(target_arch = "x86_64")]
const PF_HINT: i32 = _MM_HINT_T1;

/// Fewest column panels for which a product packs its left operand: the copy costs about as
/// much as one panel's product reading it in place (attention's products have one or two
/// panels, linear layers 16 or more).
const MIN_PANELS_TO_PACK: usize = 4;

/// Whether a product with `n` output columns packs its left operand ([`pack_lhs`]) rather than
/// reading it in place ([`Left::Strided`]).
pub fn packs_lhs(kernel: FloatKernel, n: usize) -> bool {
    n.div_ceil(kernel.nr()) >= MIN_PANELS_TO_PACK
}

/// Floats [`pack_lhs`] writes for an `m × k` left operand.
pub fn packed_lhs_len(kernel: FloatKernel, m: usize, k: usize) -> usize {
    lhs_blocks(kernel, m) * k * kernel.mr()
}

/// Pack the left operand for `kernel`: row block `b` ([`row_blocks`]) at `b·k·mr`, its element
/// `(r, kk)` at `kk·mr + r`, so the micro-kernel reads one contiguous stream (a strided `A`
/// needs a pointer per row, and rows a multiple of 4 KiB apart share one L1 set).
///
/// # Safety
/// `a` must address `m × k` readable elements; `dst` holds [`packed_lhs_len`] floats.
pub unsafe fn pack_lhs(kernel: FloatKernel, a: Lhs, m: usize, k: usize, dst: &mut [f32]) {
    let mr = kernel.mr();
    debug_assert!(dst.len() >= packed_lhs_len(kernel, m, k));
    for (b, block) in dst
        .chunks_exact_mut(k * mr)
        .take(lhs_blocks(kernel, m))
        .enumerate()
    {
        pack_lhs_block(kernel, a, m, k, b, block);
    }
}

/// Row blocks of a packed `m`-row left operand (at least 1): the units [`pack_lhs_block`]
/// packs, `k·mr` floats apart.
pub fn lhs_blocks(kernel: FloatKernel, m: usize) -> usize {
    m.div_ceil(kernel.mr()).max(1)
}

/// Row block `b` of [`pack_lhs`] into `block` (`k·mr` floats): threads may pack the blocks in
/// parallel.
///
/// # Safety
/// As [`pack_lhs`]; `b <` [`lhs_blocks`]`(kernel, m)` and `block` holds `k·mr` floats.
pub unsafe fn pack_lhs_block(
    kernel: FloatKernel,
    a: Lhs,
    m: usize,
    k: usize,
    b: usize,
    block: &mut [f32],
) {
    let mr = kernel.mr();
    debug_assert!(block.len() >= k * mr);
    if let Some((r0, rows)) = row_blocks(m, mr).nth(b) {
        for r in 0..rows {
            let src = a.ptr.add((r0 + r) * a.rs);
            if a.ks == 1 {
                let row = std::slice::from_raw_parts(src, k);
                for (d, v) in block[r..].iter_mut().step_by(mr).zip(row) {
                    *d = *v;
                }
            } else {
                for kk in 0..k {
                    block[kk * mr + r] = *src.add(kk * a.ks);
                }
            }
        }
    }
}

/// `C[0..m, 0..cols] = A[0..m, 0..k] · panel` for one packed panel, `A` packed by
/// [`pack_lhs`] or read in place.
///
/// Weights come from memory (a model's layers do not stay in the caches): while the row blocks
/// run over one pass's slice of the panel, the next slice is prefetched into L2, each block
/// fetching its share, and during the last pass the first slice at `then` (the panel this
/// thread takes next; null for none). A prefetch never faults, so `then` may be any address.
/// Spreading the prefetch matters: one block fetching a whole slice asks for more than the
/// memory delivers while it runs, and leaves the memory idle while the others run (measured on
/// ViT-B/32 + Q-Former float, 2 cores: 215 → 191 ms per frame on 1 thread, 141 → 115 ms on 2).
///
/// # Safety
/// The CPU must run `kernel`; a packed `a` holds [`packed_lhs_len`]`(kernel, m, k)` floats, a
/// strided one addresses `m × k` readable elements; `out` must
/// address `m × cols` writable elements not read by anyone else meanwhile; `panel` holds
/// `k·kernel.nr()` values and `cols ≤ nr`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn panel_product(
    kernel: FloatKernel,
    a: Left<'_>,
    m: usize,
    k: usize,
    panel: &[f32],
    out: Out,
    cols: usize,
    then: *const f32,
) {
    let (mr, nr) = (kernel.mr(), kernel.nr());
    debug_assert!(panel.len() >= k * nr && cols <= nr);
    if let Left::Packed(a) = a {
        debug_assert!(a.len() >= packed_lhs_len(kernel, m, k));
    }
    // At least one pass, so that k = 0 stores zeros.
    let passes = k.div_ceil(KC).max(1);
    for pass in 0..passes {
        let k0 = pass * KC;
        let kc = (k - k0).min(KC);
        let (next, next_len) = if pass + 1 < passes {
            let k1 = k0 + KC;
            (panel.as_ptr().wrapping_add(k1 * nr), (k - k1).min(KC) * nr)
        } else if then.is_null() {
            (then, 0)
        } else {
            (then, k.min(KC) * nr)
        };
        // The next slice's cache lines, shared evenly among this pass's row blocks so that
        // the memory stream runs during the whole pass, not in a burst under the first block.
        let lines = next_len.div_ceil(16);
        let blocks = row_blocks(m, mr)
            .filter(|&(_, rows)| rows > 0)
            .count()
            .max(1);
        for (b, (r0, rows)) in row_blocks(m, mr).enumerate() {
            if rows == 0 {
                continue;
            }
            let (a, packed) = match a {
                Left::Packed(d) => (
                    Lhs {
                        ptr: d.as_ptr().add(b * k * mr + k0 * mr),
                        rs: 1,
                        ks: mr,
                    },
                    true,
                ),
                Left::Strided(l) => (
                    Lhs {
                        ptr: l.ptr.add(r0 * l.rs + k0 * l.ks),
                        ..l
                    },
                    false,
                ),
            };
            let t = Tile {
                a,
                packed,
                k: kc,
                b: panel.as_ptr().add(k0 * nr),
                o: Out {
                    ptr: out.ptr.add(r0 * out.rs),
                    ..out
                },
                cols,
                add: pass > 0,
                pf: next.wrapping_add(b * lines / blocks * 16),
                pf_lines: if next.is_null() {
                    0
                } else {
                    (b + 1) * lines / blocks - b * lines / blocks
                },
            };
            tile(kernel, rows, t);
        }
    }
}

/// The left operand of [`panel_product`].
#[derive(Debug, Clone, Copy)]
pub enum Left<'a> {
    /// Packed by [`pack_lhs`]: worth it when many panels read it ([`packs_lhs`]).
    Packed(&'a [f32]),
    /// Read in place (a product with few panels, where packing would cost as much as it
    /// saves).
    Strided(Lhs),
}

/// One register tile's work: `rows × cols` of `o` (continuing its sums when `add`) over `k`
/// terms of `a` (a packed block when `packed`: rows 1 apart, terms `mr` apart) and panel `b`,
/// prefetching `pf_lines` cache lines from `pf` on the way.
#[derive(Clone, Copy)]
struct Tile {
    a: Lhs,
    packed: bool,
    k: usize,
    b: *const f32,
    o: Out,
    cols: usize,
    add: bool,
    // Read by the x86-64 kernels; the NEON and portable ones do not prefetch (yet).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pf: *const f32,
    /// Cache lines to prefetch from `pf`, spread evenly over the `k` steps.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pf_lines: usize,
}

unsafe fn tile(kernel: FloatKernel, rows: usize, t: Tile) {
    macro_rules! by_rows {
        ($f:ident: $($r:literal)*) => {
            match (rows, t.packed) {
                $(($r, true) => $f::<$r, true>(t),
                ($r, false) => $f::<$r, false>(t),)*
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

/// Read the first `cols` columns of row `r` into `vals` (zeros beyond): the partial sums a
/// later contraction pass continues.
#[inline(always)]
unsafe fn load_row(o: Out, r: usize, vals: &mut [f32], cols: usize) {
    let src = o.ptr.add(r * o.rs);
    for (j, v) in vals.iter_mut().enumerate() {
        *v = if j < cols { *src.add(j * o.cs) } else { 0.0 };
    }
}

unsafe fn tile_scalar<const R: usize, const P: bool>(t: Tile) {
    let Tile {
        a,
        k,
        b,
        o,
        cols,
        add,
        ..
    } = t;
    // Packed: strides known at compile time.
    let (rs, ks) = if P {
        (1, FloatKernel::Scalar.mr())
    } else {
        (a.rs, a.ks)
    };
    let mut acc = [[0f32; 16]; R];
    if add {
        for (r, row) in acc.iter_mut().enumerate() {
            load_row(o, r, row, cols);
        }
    }
    for kk in 0..k {
        let bk = std::slice::from_raw_parts(b.add(kk * 16), 16);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = *a.ptr.add(kk * ks + r * rs);
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
unsafe fn tile_avx512<const R: usize, const P: bool>(t: Tile) {
    let Tile {
        a,
        k,
        b,
        o,
        cols,
        add,
        ..
    } = t;
    // Packed: strides known at compile time.
    let (rs, ks) = if P {
        (1, FloatKernel::Avx512.mr())
    } else {
        (a.rs, a.ks)
    };
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
    let mut c0 = [_mm512_setzero_ps(); R];
    let mut c1 = [_mm512_setzero_ps(); R];
    if add {
        let mut vals = [0f32; 32];
        for r in 0..R {
            if o.cs == 1 {
                let src = o.ptr.add(r * o.rs);
                c0[r] = _mm512_maskz_loadu_ps(m0, src);
                c1[r] = _mm512_maskz_loadu_ps(m1, src.add(16));
            } else {
                load_row(o, r, &mut vals, cols);
                c0[r] = _mm512_loadu_ps(vals.as_ptr());
                c1[r] = _mm512_loadu_ps(vals.as_ptr().add(16));
            }
        }
    }
    let (mut pf, mut pf_due) = (t.pf as *const i8, 0usize);
    for kk in 0..k {
        pf_due += t.pf_lines;
        while pf_due >= k {
            pf_due -= k;
            _mm_prefetch::<PF_HINT>(pf);
            pf = pf.wrapping_add(64);
        }
        let b0 = _mm512_loadu_ps(b.add(kk * 32));
        let b1 = _mm512_loadu_ps(b.add(kk * 32 + 16));
        let ak = a.ptr.add(kk * ks);
        for r in 0..R {
            let av = _mm512_set1_ps(*ak.add(r * rs));
            c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
        }
    }
    if o.cs == 1 {
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
unsafe fn tile_avx2<const R: usize, const P: bool>(t: Tile) {
    let Tile {
        a,
        k,
        b,
        o,
        cols,
        add,
        ..
    } = t;
    // Packed: strides known at compile time.
    let (rs, ks) = if P {
        (1, FloatKernel::Avx2.mr())
    } else {
        (a.rs, a.ks)
    };
    let mut c0 = [_mm256_setzero_ps(); R];
    let mut c1 = [_mm256_setzero_ps(); R];
    if add {
        let mut vals = [0f32; 16];
        for r in 0..R {
            load_row(o, r, &mut vals, cols);
            c0[r] = _mm256_loadu_ps(vals.as_ptr());
            c1[r] = _mm256_loadu_ps(vals.as_ptr().add(8));
        }
    }
    let (mut pf, mut pf_due) = (t.pf as *const i8, 0usize);
    for kk in 0..k {
        pf_due += t.pf_lines;
        while pf_due >= k {
            pf_due -= k;
            _mm_prefetch::<PF_HINT>(pf);
            pf = pf.wrapping_add(64);
        }
        let b0 = _mm256_loadu_ps(b.add(kk * 16));
        let b1 = _mm256_loadu_ps(b.add(kk * 16 + 8));
        let ak = a.ptr.add(kk * ks);
        for r in 0..R {
            let av = _mm256_set1_ps(*ak.add(r * rs));
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
unsafe fn tile_neon<const R: usize, const P: bool>(t: Tile) {
    let Tile {
        a,
        k,
        b,
        o,
        cols,
        add,
        ..
    } = t;
    use std::arch::aarch64::*;
    // Packed: strides known at compile time.
    let (rs, ks) = if P {
        (1, FloatKernel::Neon.mr())
    } else {
        (a.rs, a.ks)
    };
    let mut c = [[vdupq_n_f32(0.0); 4]; R];
    let mut vals = [0f32; 16];
    if add {
        for r in 0..R {
            load_row(o, r, &mut vals, cols);
            for q in 0..4 {
                c[r][q] = vld1q_f32(vals.as_ptr().add(q * 4));
            }
        }
    }
    for kk in 0..k {
        let bp = b.add(kk * 16);
        let bv = [
            vld1q_f32(bp),
            vld1q_f32(bp.add(4)),
            vld1q_f32(bp.add(8)),
            vld1q_f32(bp.add(12)),
        ];
        let ak = a.ptr.add(kk * ks);
        for r in 0..R {
            let av = *ak.add(r * rs);
            for q in 0..4 {
                c[r][q] = vfmaq_n_f32(c[r][q], bv[q], av);
            }
        }
    }
    for r in 0..R {
        for q in 0..4 {
            vst1q_f32(vals.as_mut_ptr().add(q * 4), c[r][q]);
        }
        store_row(o, r, &vals, cols);
    }
}

#[cfg(test)]
mod tests;
