//! x86-64 AMX-INT8 (Sapphire Rapids and later Xeons): `tdpbusd` multiplies a 16-row × 64-byte
//! tile of activations by a 16-quad × 16-column tile of weights into 16 × 16 i32 sums, 16,384
//! multiply-adds per instruction.
//!
//! The shared packing is already the layout AMX reads: one k-quad row of a panel is 32 columns ×
//! 4 bytes, so a weight tile (16 quads × 16 columns) is a strided load (stride 128 bytes) of half
//! a panel. Rows come in blocks of 16 (two at a time, four accumulator tiles); the last `m % 16`
//! rows, and layers whose `kp` is not a multiple of 64, run on the AVX-512 VNNI kernel, so every
//! result is exact either way. The instructions are written with `asm!` (the AMX intrinsics and
//! target features are not stable in Rust); Linux must grant the process the tile state first
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), done once in [`available`].

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;
use std::sync::OnceLock;

use super::{PackedWeights, PANEL};

/// Bytes of one k-quad row of a panel.
const QUAD: usize = PANEL * 4;

/// `ldtilecfg`'s 64-byte operand (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Whether this CPU and OS run AMX-INT8, with the tile state granted to this process (asked
/// once; the answer is cached).
pub(super) fn available() -> bool {
    static STATE: OnceLock<bool> = OnceLock::new();
    *STATE.get_or_init(|| {
        let ok = cpu_has_amx() && request_tile_state();
        if ok {
            log::debug!("AMX-INT8 available: tile state granted");
        }
        ok
    })
}

fn cpu_has_amx() -> bool {
    // `cpuid` exists on every x86-64 CPU (the intrinsics are safe).
    let (l1, l7) = (__cpuid(1), __cpuid_count(7, 0));
    let osxsave = l1.ecx & (1 << 27) != 0;
    let (tile, int8) = (l7.edx & (1 << 24) != 0, l7.edx & (1 << 25) != 0);
    if !(osxsave && tile && int8) {
        return false;
    }
    let (lo, _hi): (u32, u32);
    // SAFETY: OSXSAVE is set, so `xgetbv` with ECX = 0 (XCR0) is allowed.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi, options(nomem, nostack));
    }
    // XTILECFG (bit 17) and XTILEDATA (bit 18) enabled by the OS.
    lo & (3 << 17) == 3 << 17
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only changes this process's permitted
    // xsave features; the syscall clobbers rcx and r11 (declared) and nothing else.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Whether the AMX path computes `w` (full 64-byte K chunks); otherwise AVX-512 VNNI does.
pub(super) fn fits(w: &PackedWeights) -> bool {
    w.kp.is_multiple_of(64) && w.kp > 0
}

/// # Safety
/// [`available`] must have returned true and the CPU must have AVX-512 VNNI; `a` holds
/// `m * w.kp` bytes, `acc` `m * w.n` values, `w.kp % 64 == 0`, `panels` within the weights.
pub(super) unsafe fn gemm(
    a: &[u8],
    m: usize,
    w: &PackedWeights,
    acc: &mut [i32],
    panels: Range<usize>,
) {
    let full = m / 16 * 16;
    if full > 0 {
        tiles(a, full, w, acc, panels.clone());
    }
    if full < m {
        // The last rows on the VNNI kernel, offset to start at row `full`.
        super::x86::gemm_rows(a, full..m, w, acc, panels, 0);
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn tiles(a: &[u8], rows: usize, w: &PackedWeights, acc: &mut [i32], panels: Range<usize>) {
    let mut cfg = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    // tmm0-3 sums (16 × 16 i32), tmm4-5 activations (16 rows × 64 bytes), tmm6-7 weights
    // (16 quads × 16 columns × 4 bytes): all 16 rows of 64 bytes.
    for t in 0..8 {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    let chunks = w.kp / 64;
    let kq = w.kp / 4;
    let lda = w.kp;
    let mut sums = [[0i32; 256]; 4];
    asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
    for p in panels {
        let panel = w.data.as_ptr().add(p * kq * QUAD);
        let c0 = p * PANEL;
        let cols = (w.n - c0).min(PANEL);
        let corr = w.offset_correction.as_ptr().add(c0);
        let mut r0 = 0;
        while r0 < rows {
            let pair = r0 + 32 <= rows;
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nomem, nostack)
            );
            for c in 0..chunks {
                let a0 = a.as_ptr().add(r0 * lda + c * 64);
                let b0 = panel.add(c * 16 * QUAD);
                asm!(
                    "tileloadd tmm4, [{a} + {lda}*1]",
                    "tileloadd tmm6, [{b} + {ldb}*1]",
                    "tileloadd tmm7, [{b1} + {ldb}*1]",
                    "tdpbusd tmm0, tmm4, tmm6",
                    "tdpbusd tmm1, tmm4, tmm7",
                    a = in(reg) a0,
                    b = in(reg) b0,
                    b1 = in(reg) b0.add(64),
                    lda = in(reg) lda,
                    ldb = in(reg) QUAD,
                    options(nostack, readonly),
                );
                if pair {
                    asm!(
                        "tileloadd tmm5, [{a} + {lda}*1]",
                        "tdpbusd tmm2, tmm5, tmm6",
                        "tdpbusd tmm3, tmm5, tmm7",
                        a = in(reg) a0.add(16 * lda),
                        lda = in(reg) lda,
                        options(nostack, readonly),
                    );
                }
            }
            asm!(
                "tilestored [{s0} + {ld}*1], tmm0",
                "tilestored [{s1} + {ld}*1], tmm1",
                "tilestored [{s2} + {ld}*1], tmm2",
                "tilestored [{s3} + {ld}*1], tmm3",
                s0 = in(reg) sums[0].as_mut_ptr(),
                s1 = in(reg) sums[1].as_mut_ptr(),
                s2 = in(reg) sums[2].as_mut_ptr(),
                s3 = in(reg) sums[3].as_mut_ptr(),
                ld = in(reg) 64usize,
                options(nostack),
            );
            let blocks = if pair { 2 } else { 1 };
            for rb in 0..blocks {
                for h in 0..2 {
                    let start = h * 16;
                    if start >= cols {
                        break;
                    }
                    let lanes = (cols - start).min(16);
                    let mask: __mmask16 = if lanes == 16 {
                        0xffff
                    } else {
                        (1u16 << lanes) - 1
                    };
                    let k = _mm512_loadu_si512(corr.add(start) as *const _);
                    let tile = &sums[rb * 2 + h];
                    for r in 0..16 {
                        let v = _mm512_loadu_si512(tile.as_ptr().add(r * 16) as *const _);
                        let dst = acc.as_mut_ptr().add((r0 + rb * 16 + r) * w.n + c0 + start);
                        _mm512_mask_storeu_epi32(dst, mask, _mm512_sub_epi32(v, k));
                    }
                }
            }
            r0 += 16 * blocks;
        }
    }
    asm!("tilerelease", options(nomem, nostack));
}
