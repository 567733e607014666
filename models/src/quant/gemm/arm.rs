//! AArch64 int8 kernels over the shared packing (see the parent module): NEON (`smull` +
//! `sadalp`, every AArch64 core) and SDOT (the dot-product extension of ARMv8.2+: Orin's
//! Cortex-A78AE, Xavier's Carmel; not the original Nano's Cortex-A57).
//!
//! Activations arrive offset by +128 as `u8`; flipping the top bit gives the signed value, so
//! these kernels need no offset correction.

use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;

use super::{row_blocks, Kernel, PackedWeights, PANEL};

/// Bytes of one k-quad of one panel.
const QUAD: usize = PANEL * 4;

/// # Safety
/// The CPU must have `kernel`'s features; `a` must hold `m * w.kp` bytes and `acc` `m * w.n`
/// values. Checked by [`super::gemm`].
pub(super) unsafe fn gemm(
    kernel: Kernel,
    a: &[u8],
    m: usize,
    w: &PackedWeights,
    acc: &mut [i32],
    panels: Range<usize>,
) {
    match kernel {
        Kernel::Sdot => gemm_sdot(a, m, w, acc, panels),
        _ => gemm_neon(a, m, w, acc, panels),
    }
}

/// Write `vals` (8 columns starting at `c0`) to row `i`, only the columns below `n`.
#[inline]
fn store8(acc: &mut [i32], n: usize, i: usize, c0: usize, vals: &[i32; 8]) {
    let lanes = n.saturating_sub(c0).min(8);
    acc[i * n + c0..i * n + c0 + lanes].copy_from_slice(&vals[..lanes]);
}

/// One row × 8 columns at a time, the same 4 activations for every column.
#[target_feature(enable = "neon")]
unsafe fn gemm_neon(a: &[u8], m: usize, w: &PackedWeights, acc: &mut [i32], panels: Range<usize>) {
    let kq = w.kp / 4;
    let flip = vdupq_n_u8(0x80);
    for i in 0..m {
        let ap = a.as_ptr().add(i * w.kp);
        for c0 in (panels.start * PANEL..(panels.end * PANEL).min(w.n)).step_by(8) {
            let (p, j) = (c0 / PANEL, (c0 % PANEL) / 8);
            let bp = w.data.as_ptr().add(p * kq * QUAD + j * 32);
            // Four accumulators of [col c, col c (other half), col c+1, col c+1 (other half)].
            let mut c = [vdupq_n_s32(0); 4];
            for q in 0..kq {
                let quad = (ap.add(q * 4) as *const u32).read_unaligned();
                let av =
                    vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(vdupq_n_u32(quad)), flip));
                let w_lo = vld1q_s8(bp.add(q * QUAD)); // columns 0..4
                let w_hi = vld1q_s8(bp.add(q * QUAD + 16)); // columns 4..8
                c[0] = vpadalq_s16(c[0], vmull_s8(vget_low_s8(av), vget_low_s8(w_lo)));
                c[1] = vpadalq_s16(c[1], vmull_high_s8(av, w_lo));
                c[2] = vpadalq_s16(c[2], vmull_s8(vget_low_s8(av), vget_low_s8(w_hi)));
                c[3] = vpadalq_s16(c[3], vmull_high_s8(av, w_hi));
            }
            // c[0] = [c0 k01, c0 k23, c1 k01, c1 k23] → pairwise add gives columns.
            let mut tmp = [0i32; 8];
            vst1q_s32(tmp.as_mut_ptr(), vpaddq_s32(c[0], c[1]));
            vst1q_s32(tmp.as_mut_ptr().add(4), vpaddq_s32(c[2], c[3]));
            store8(acc, w.n, i, c0, &tmp);
        }
    }
}

/// `acc.4s += a.16b · b.16b` by groups of four bytes.
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` only reads and writes these vector registers; the caller runs on a CPU
    // with the dot-product extension (checked by `Kernel::is_available`).
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// Up to 2 rows × 32 columns in 16 accumulators; per k-quad eight weight loads and eight SDOT
/// per row (4 columns × 4 k each).
#[target_feature(enable = "neon,dotprod")]
unsafe fn gemm_sdot(a: &[u8], m: usize, w: &PackedWeights, acc: &mut [i32], panels: Range<usize>) {
    let kq = w.kp / 4;
    let flip = vdupq_n_u8(0x80);
    for p in panels {
        let b = w.data.as_ptr().add(p * kq * QUAD);
        let c0 = p * PANEL;
        for (r0, rows) in row_blocks(m, 2) {
            let mut c = [[vdupq_n_s32(0); 8]; 2];
            for q in 0..kq {
                let mut wv = [vdupq_n_s8(0); 8];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = vld1q_s8(b.add(q * QUAD + j * 16));
                }
                for (r, cr) in c.iter_mut().enumerate().take(rows) {
                    let quad =
                        (a.as_ptr().add((r0 + r) * w.kp + q * 4) as *const u32).read_unaligned();
                    let av = vreinterpretq_s8_u8(veorq_u8(
                        vreinterpretq_u8_u32(vdupq_n_u32(quad)),
                        flip,
                    ));
                    for (acc4, wj) in cr.iter_mut().zip(&wv) {
                        *acc4 = sdot(*acc4, av, *wj);
                    }
                }
            }
            for (r, cr) in c.iter().enumerate().take(rows) {
                for h in 0..4 {
                    let mut tmp = [0i32; 8];
                    vst1q_s32(tmp.as_mut_ptr(), cr[2 * h]);
                    vst1q_s32(tmp.as_mut_ptr().add(4), cr[2 * h + 1]);
                    if c0 + h * 8 < w.n {
                        store8(acc, w.n, r0 + r, c0 + h * 8, &tmp);
                    }
                }
            }
        }
    }
}
