//! x86-64 int8 kernels over the shared packing (see the parent module): AVX2, AVX-VNNI and
//! AVX-512 VNNI, plus the AVX2 activation quantizer.
//!
//! Every kernel walks the weights panel by panel (32 columns, `kp/4` quads of 128 bytes: one
//! panel of ViT-B/32's 768-deep layers is 24 KiB and stays in L1/L2 while every row block of the
//! activations passes over it) and keeps a row block × column block of i32 sums in registers for
//! the whole contraction. Row blocks are balanced ([`row_blocks`]) so no block is a short tail.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{row_blocks, Kernel, PackedWeights, PANEL};

/// Bytes of one k-quad of one panel.
const QUAD: usize = PANEL * 4;

/// # Safety
/// The CPU must have `kernel`'s features; `a` must hold `m * w.kp` bytes and `acc` `m * w.n`
/// values; `w`'s weights must fit `kernel` (AVX2: 7-bit). All checked by [`super::gemm`].
pub(super) unsafe fn gemm(
    kernel: Kernel,
    a: &[u8],
    m: usize,
    w: &PackedWeights,
    acc: &mut [i32],
    panels: Range<usize>,
    ahead: usize,
) {
    match kernel {
        Kernel::Avx512Vnni | Kernel::Amx => gemm_avx512vnni(a, m, w, acc, panels, ahead),
        Kernel::AvxVnni => gemm_avxvnni(a, m, w, acc, panels),
        _ => gemm_avx2(a, m, w, acc, panels),
    }
}

/// Where one row block × panel goes: the first output, its row stride, the valid columns.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut i32,
    ld: usize,
    cols: usize,
}

/// Cache lines to prefetch during one tile: `lines` from `at` (none when 0; a prefetch never
/// faults, so `at` may be any address).
#[derive(Clone, Copy)]
struct Prefetch {
    at: *const i8,
    lines: usize,
}

/// AVX-512 VNNI: up to 12 rows × 32 columns in 24 zmm accumulators; per k-quad two weight
/// loads, one broadcast per row and two `vpdpbusd` per row (64 MACs each, no saturation).
unsafe fn gemm_avx512vnni(
    a: &[u8],
    m: usize,
    w: &PackedWeights,
    acc: &mut [i32],
    panels: Range<usize>,
    ahead: usize,
) {
    gemm_rows(a, 0..m, w, acc, panels, ahead)
}

/// The AVX-512 VNNI kernel on rows `rows` of `a` and `acc` only (also AMX's last rows).
///
/// # Safety
/// As [`gemm`] with the AVX-512 VNNI kernel; `rows.end ≤ m`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn gemm_rows(
    a: &[u8],
    rows: Range<usize>,
    w: &PackedWeights,
    acc: &mut [i32],
    panels: Range<usize>,
    ahead: usize,
) {
    let kq = w.kp / 4;
    let (first, m) = (rows.start, rows.len());
    let total = w.panels();
    for p in panels.clone() {
        let b = w.data.as_ptr().add(p * kq * QUAD);
        // The weights come from memory (a model's layers do not stay in the caches): the panel
        // this thread takes next is prefetched while it runs over this one: the next in the
        // range, after the range's last the one `ahead` further (see [`super::gemm_panels_ahead`]).
        let to = if p + 1 < panels.end { p + 1 } else { p + ahead };
        let next = if to < total && to > p {
            w.data.as_ptr().add(to * kq * QUAD)
        } else {
            std::ptr::null()
        };
        let corr = w.offset_correction.as_ptr().add(p * PANEL);
        let c0 = p * PANEL;
        let cols = (w.n - c0).min(PANEL);
        // The next panel's cache lines, shared evenly among the row blocks so that the memory
        // stream runs during the whole panel rather than in a burst under the first block;
        // into L2, since a panel (up to 96 KiB for K = 3072) does not fit L1 beside this one.
        let lines = if next.is_null() { 0 } else { kq * QUAD / 64 };
        let blocks = row_blocks(m, 12).count().max(1);
        for (blk, (r0, rows)) in row_blocks(m, 12).enumerate() {
            let pf = Prefetch {
                at: next.wrapping_add(blk * lines / blocks * 64),
                lines: (blk + 1) * lines / blocks - blk * lines / blocks,
            };
            let r0 = first + r0;
            let ap = a.as_ptr().add(r0 * w.kp);
            let out = Out {
                ptr: acc.as_mut_ptr().add(r0 * w.n + c0),
                ld: w.n,
                cols,
            };
            macro_rules! tile {
                ($($r:literal)*) => {
                    match rows {
                        $($r => tile_zmm::<$r>(ap, w.kp, b, kq, corr, out, pf),)*
                        _ => unreachable!("row blocks hold 1..=12 rows"),
                    }
                };
            }
            tile!(1 2 3 4 5 6 7 8 9 10 11 12);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile_zmm<const MR: usize>(
    a: *const u8,
    lda: usize,
    b: *const i8,
    kq: usize,
    corr: *const i32,
    out: Out,
    pf: Prefetch,
) {
    let mut c = [[_mm512_setzero_si512(); 2]; MR];
    let (mut at, mut due) = (pf.at, 0usize);
    for q in 0..kq {
        // `pf.lines` cache lines spread evenly over the `kq` steps.
        due += pf.lines;
        while due >= kq {
            due -= kq;
            _mm_prefetch::<_MM_HINT_T1>(at);
            at = at.wrapping_add(64);
        }
        let w0 = _mm512_loadu_si512(b.add(q * QUAD) as *const _);
        let w1 = _mm512_loadu_si512(b.add(q * QUAD + 64) as *const _);
        for (r, cr) in c.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((a.add(r * lda + q * 4) as *const i32).read_unaligned());
            cr[0] = _mm512_dpbusd_epi32(cr[0], av, w0);
            cr[1] = _mm512_dpbusd_epi32(cr[1], av, w1);
        }
    }
    let k0 = _mm512_loadu_si512(corr as *const _);
    let k1 = _mm512_loadu_si512(corr.add(16) as *const _);
    for (r, cr) in c.iter().enumerate() {
        let row = out.ptr.add(r * out.ld);
        for (h, (v, k)) in [(cr[0], k0), (cr[1], k1)].into_iter().enumerate() {
            let start = h * 16;
            if start >= out.cols {
                break;
            }
            let lanes = (out.cols - start).min(16);
            let mask: __mmask16 = if lanes == 16 {
                0xffff
            } else {
                (1u16 << lanes) - 1
            };
            _mm512_mask_storeu_epi32(row.add(start), mask, _mm512_sub_epi32(v, k));
        }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn gemm_avx2(a: &[u8], m: usize, w: &PackedWeights, acc: &mut [i32], panels: Range<usize>) {
    gemm_ymm::<false>(a, m, w, acc, panels)
}

#[target_feature(enable = "avx2,avxvnni")]
unsafe fn gemm_avxvnni(
    a: &[u8],
    m: usize,
    w: &PackedWeights,
    acc: &mut [i32],
    panels: Range<usize>,
) {
    gemm_ymm::<true>(a, m, w, acc, panels)
}

/// AVX2 and AVX-VNNI on ymm: column blocks of 16 (half a panel), rows in balanced blocks of up
/// to 4 (AVX2: `vpmaddubsw` + `vpmaddwd` + `vpaddd` need spare registers) or 6 (AVX-VNNI: one
/// `vpdpbusd` per 32 MACs). Inlined into the two entry points above so each tile inlines with
/// its features.
#[inline(always)]
unsafe fn gemm_ymm<const VNNI: bool>(
    a: &[u8],
    m: usize,
    w: &PackedWeights,
    acc: &mut [i32],
    panels: Range<usize>,
) {
    let kq = w.kp / 4;
    let max_rows = if VNNI { 6 } else { 4 };
    for p in panels.clone() {
        for h in 0..2 {
            let c0 = p * PANEL + h * 16;
            if c0 >= w.n {
                break;
            }
            let b = w.data.as_ptr().add(p * kq * QUAD + h * 64);
            let corr = w.offset_correction.as_ptr().add(c0);
            let cols = (w.n - c0).min(16);
            for (r0, rows) in row_blocks(m, max_rows) {
                let ap = a.as_ptr().add(r0 * w.kp);
                let out = Out {
                    ptr: acc.as_mut_ptr().add(r0 * w.n + c0),
                    ld: w.n,
                    cols,
                };
                macro_rules! tile {
                    ($f:ident, $($r:literal)*) => {
                        match rows {
                            $($r => $f::<$r>(ap, w.kp, b, kq, corr, out),)*
                            _ => unreachable!("row blocks hold 1..=6 rows"),
                        }
                    };
                }
                if VNNI {
                    tile!(tile_avxvnni, 1 2 3 4 5 6);
                } else {
                    tile!(tile_avx2, 1 2 3 4);
                }
            }
        }
    }
}

/// Store `MR × 16` sums minus the offset correction; columns past `out.cols` are not written.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_ymm<const MR: usize>(c: &[[__m256i; 2]; MR], corr: *const i32, out: Out) {
    let k = [
        _mm256_loadu_si256(corr as *const __m256i),
        _mm256_loadu_si256(corr.add(8) as *const __m256i),
    ];
    for (r, cr) in c.iter().enumerate() {
        let row = out.ptr.add(r * out.ld);
        for h in 0..2 {
            let start = h * 8;
            if start >= out.cols {
                break;
            }
            let v = _mm256_sub_epi32(cr[h], k[h]);
            let lanes = (out.cols - start).min(8);
            if lanes == 8 {
                _mm256_storeu_si256(row.add(start) as *mut __m256i, v);
            } else {
                let mut tmp = [0i32; 8];
                _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, v);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), row.add(start), lanes);
            }
        }
    }
}

/// One `MR × 16` ymm tile over the whole contraction; `$acc(sum, activations, weights)` adds
/// one k-quad of products (the only difference between the AVX2 and AVX-VNNI kernels).
macro_rules! ymm_tile {
    ($name:ident, $features:literal, |$c:ident, $av:ident, $w:ident| $acc:expr) => {
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $name<const MR: usize>(
            a: *const u8,
            lda: usize,
            b: *const i8,
            kq: usize,
            corr: *const i32,
            out: Out,
        ) {
            let mut c = [[_mm256_setzero_si256(); 2]; MR];
            for q in 0..kq {
                let w = [
                    _mm256_loadu_si256(b.add(q * QUAD) as *const __m256i),
                    _mm256_loadu_si256(b.add(q * QUAD + 32) as *const __m256i),
                ];
                for (r, cr) in c.iter_mut().enumerate() {
                    let $av =
                        _mm256_set1_epi32((a.add(r * lda + q * 4) as *const i32).read_unaligned());
                    for ($c, $w) in cr.iter_mut().zip(w) {
                        *$c = $acc;
                    }
                }
            }
            store_ymm(&c, corr, out);
        }
    };
}

// vpmaddubsw (u8 × i8 pairs → saturating i16; 7-bit weights keep it exact) + vpmaddwd + vpaddd.
ymm_tile!(tile_avx2, "avx2", |c, av, w| _mm256_add_epi32(
    *c,
    _mm256_madd_epi16(_mm256_maddubs_epi16(av, w), _mm256_set1_epi16(1))
));
// vpdpbusd: four u8 × i8 products added to each i32 lane, no intermediate saturation.
ymm_tile!(tile_avxvnni, "avx2,avxvnni", |c, av, w| {
    _mm256_dpbusd_avx_epi32(*c, av, w)
});

/// [`super::quantize_row_scalar`] 8 values at a time, bit for bit: half-away-from-zero rounding
/// as `trunc(v) + (|v − trunc(v)| ≥ ½ ? sign(v) : 0)` (exact in f32), NaN → 0.
///
/// # Safety
/// The CPU must have AVX2; `out` must be as long as `row`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_row_avx2(row: &[f32], inv: f32, out: &mut [u8]) -> usize {
    debug_assert_eq!(row.len(), out.len());
    let n8 = row.len() / 8 * 8;
    let vinv = _mm256_set1_ps(inv);
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let sign = _mm256_set1_ps(-0.0);
    let hi = _mm256_set1_ps(super::ACT_MAX);
    let lo = _mm256_set1_ps(-super::ACT_MAX);
    let offset = _mm256_set1_epi32(128);
    let mut clipped = 0usize;
    let mut i = 0;
    while i < n8 {
        let v = _mm256_mul_ps(_mm256_loadu_ps(row.as_ptr().add(i)), vinv);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
        let bump = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), one);
        let r = _mm256_add_ps(t, _mm256_or_ps(bump, _mm256_and_ps(v, sign)));
        let over = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_andnot_ps(sign, r), hi);
        clipped += _mm256_movemask_ps(over).count_ones() as usize;
        // NaN → 0 (the scalar `NaN as i32`), then clamp; max/min return the second operand
        // when one is NaN, and r is NaN-free here.
        let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
        let r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
        let q = _mm256_add_epi32(_mm256_cvttps_epi32(r), offset);
        // 8 × i32 in 1..=255 → 8 bytes.
        let w16 = _mm256_packus_epi32(q, q);
        let w8 = _mm256_packus_epi16(w16, w16);
        let lo4 = _mm256_cvtsi256_si32(w8) as u32;
        let hi4 = _mm256_extract_epi32::<4>(w8) as u32;
        let bytes = (u64::from(hi4) << 32) | u64::from(lo4);
        (out.as_mut_ptr().add(i) as *mut u64).write_unaligned(bytes.to_le());
        i += 8;
    }
    clipped + super::quantize_row_scalar(&row[n8..], inv, &mut out[n8..])
}

/// [`super::quantize_row_scalar`] 16 values at a time, bit for bit, as [`quantize_row_avx2`]
/// with mask registers: the rounding bump, the clip count and NaN → 0 are masks, and the bytes
/// are narrowed by one `vpmovdb`.
///
/// # Safety
/// The CPU must have AVX-512F; `out` must be as long as `row`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn quantize_row_avx512(row: &[f32], inv: f32, out: &mut [u8]) -> usize {
    debug_assert_eq!(row.len(), out.len());
    let n16 = row.len() / 16 * 16;
    let vinv = _mm512_set1_ps(inv);
    let half = _mm512_set1_ps(0.5);
    let one = _mm512_set1_epi32(1f32.to_bits() as i32);
    let sign = _mm512_set1_epi32(i32::MIN);
    let hi = _mm512_set1_ps(super::ACT_MAX);
    let lo = _mm512_set1_ps(-super::ACT_MAX);
    let offset = _mm512_set1_epi32(128);
    let mut clipped = 0usize;
    let mut i = 0;
    while i < n16 {
        let v = _mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(i)), vinv);
        let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let bump = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(v, t)), half);
        // ±1 with v's sign, added where the fraction reached one half.
        let step = _mm512_castsi512_ps(_mm512_or_si512(
            one,
            _mm512_and_si512(_mm512_castps_si512(v), sign),
        ));
        let r = _mm512_mask_add_ps(t, bump, t, step);
        let over = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(r), hi);
        clipped += over.count_ones() as usize;
        let r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(r, r), r);
        let r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
        let q = _mm512_add_epi32(_mm512_cvttps_epi32(r), offset);
        // 16 × i32 in 1..=255 → 16 bytes.
        _mm_storeu_si128(
            out.as_mut_ptr().add(i) as *mut __m128i,
            _mm512_cvtepi32_epi8(q),
        );
        i += 16;
    }
    clipped + super::quantize_row_scalar(&row[n16..], inv, &mut out[n16..])
}
