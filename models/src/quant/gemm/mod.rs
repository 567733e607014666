//! int8 GEMM for the linear layers: `acc[m][n] = Σ_k qa[m][k] · qw[k][n]` exactly, in i32.
//!
//! Numerics, identical for every kernel on a given packing:
//! * weights symmetric per output channel, **8-bit** (`[-127, 127]`) where the kernel's
//!   instruction accumulates without intermediate saturation (AVX-512 VNNI / AVX-VNNI
//!   `vpdpbusd`, AArch64 NEON `smull`/`sadalp` and SDOT, the scalar reference), **7-bit**
//!   (`[-63, 63]`) for AVX2, whose `vpmaddubsw` pair sums (u8 × i8 → saturating i16) must stay
//!   below 2·255·63 = 32 130 (see [`Kernel::weight_max`]);
//! * activations symmetric per tensor, 8-bit (`[-127, 127]`, rounded half away from zero),
//!   stored offset by +128 as `u8` (what `vpmaddubsw`/`vpdpbusd` want); the offset is removed
//!   with a per-column correction `128 · Σ_k qw[k][n]` computed once at packing;
//! * every i32 sum is exact: |Σ| ≤ K·255·127 < 2³¹ for K < 66 000.
//!
//! Packing, shared by every kernel: `[n/32 panels][k/4 quads][32 columns][4 k]` int8, so a
//! k-quad of a panel is 128 contiguous bytes: two zmm loads, four ymm loads, eight NEON loads.
//!
//! Kernels (picked at run time, each checked bit for bit against [`gemm_scalar`] on odd shapes
//! where the CPU has it): scalar; x86-64 AVX2, AVX-VNNI (ymm, 6 rows × 16 columns) and AVX-512
//! VNNI (zmm, up to 12 rows × 32 columns) in [`x86`]; AArch64 NEON and SDOT (dot product, the
//! Orin's and Xavier's cores) in [`arm`].

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "aarch64")]
pub mod arm;
#[cfg(target_arch = "x86_64")]
pub mod x86;

/// Largest 7-bit weight magnitude (the AVX2 kernel's limit, see the module docs).
pub const WEIGHT_MAX_7BIT: i8 = 63;
/// Largest 8-bit weight magnitude.
pub const WEIGHT_MAX_8BIT: i8 = 127;
/// Largest activation magnitude.
pub const ACT_MAX: f32 = 127.0;
/// Columns per packed panel.
pub const PANEL: usize = 32;

use std::ops::Range;

/// Which kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust; the reference every other kernel must match exactly.
    Scalar,
    /// x86-64 AVX2 (`vpmaddubsw` + `vpmaddwd`; needs 7-bit weights).
    Avx2,
    /// x86-64 AVX-VNNI (`vpdpbusd` on ymm; Alder Lake and later client cores).
    AvxVnni,
    /// x86-64 AVX-512 VNNI (`vpdpbusd` on zmm; Cascade Lake and later servers, Zen 4+).
    Avx512Vnni,
    /// x86-64 AMX-INT8 tiles (Sapphire Rapids and later Xeons), AVX-512 VNNI for the rows and
    /// layers that do not fill a tile.
    Amx,
    /// AArch64 NEON (Advanced SIMD; the original Jetson Nano's Cortex-A57).
    Neon,
    /// AArch64 SDOT (dot-product extension; Orin's Cortex-A78AE, Xavier's Carmel).
    Sdot,
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    pub fn best() -> Kernel {
        Self::ALL
            .into_iter()
            .rev()
            .find(|k| k.is_available())
            .unwrap_or(Kernel::Scalar)
    }

    /// Every kernel, slowest first.
    pub const ALL: [Kernel; 7] = [
        Kernel::Scalar,
        Kernel::Neon,
        Kernel::Sdot,
        Kernel::Avx2,
        Kernel::AvxVnni,
        Kernel::Avx512Vnni,
        Kernel::Amx,
    ];

    /// Every kernel this CPU can run, slowest first (for parity tests and benchmarks).
    pub fn available() -> Vec<Kernel> {
        Self::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// Whether this CPU can run the kernel (feature detection is cached by std: cheap, and no
    /// allocation, so it may run per call).
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => Kernel::Avx512Vnni.is_available() && amx::available(),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Kernel::Sdot => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The largest weight magnitude the kernel computes exactly with: 63 for AVX2, 127 for the
    /// others.
    pub fn weight_max(self) -> i8 {
        match self {
            Kernel::Avx2 => WEIGHT_MAX_7BIT,
            _ => WEIGHT_MAX_8BIT,
        }
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
    /// `n` rounded up to [`PANEL`].
    pub np: usize,
    /// Largest quantized magnitude (63 or 127, see [`Kernel::weight_max`]).
    pub qmax: i8,
    /// `[np / 32][kp / 4][32 columns][4 k]` int8.
    data: Vec<i8>,
    /// `128 · Σ_k qw[k][n]` per column, zero-padded to `np` (removes the activation offset in
    /// the x86 kernels, which multiply the offset `u8` activations directly).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    offset_correction: Vec<i32>,
    /// Per-column weight scale: `w ≈ scale · qw`.
    pub scales: Vec<f32>,
}

impl PackedWeights {
    /// Quantize `w` (`[k, n]` row-major when `transposed` is false, `[n, k]` when true) for
    /// the fastest kernel of this CPU.
    pub fn quantize(w: &[f32], k: usize, n: usize, transposed: bool) -> PackedWeights {
        Self::quantize_for(Kernel::best(), w, k, n, transposed)
    }

    /// Quantize `w` with the widest weights `kernel` computes exactly with.
    pub fn quantize_for(
        kernel: Kernel,
        w: &[f32],
        k: usize,
        n: usize,
        transposed: bool,
    ) -> PackedWeights {
        assert_eq!(w.len(), k * n, "weight length");
        let qmax = kernel.weight_max();
        let fmax = f32::from(qmax);
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
            *s = if amax > 0.0 { amax / fmax } else { 1.0 };
        }
        let inv: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
        let q = |kk: usize, nn: usize| -> i8 {
            (at(kk, nn) * inv[nn]).round().clamp(-fmax, fmax) as i8
        };
        Self::pack(k, n, qmax, q, scales)
    }

    /// Pack already-quantized weights `qw(k, n)` with values in `[-qmax, qmax]`.
    pub fn pack(
        k: usize,
        n: usize,
        qmax: i8,
        qw: impl Fn(usize, usize) -> i8,
        scales: Vec<f32>,
    ) -> Self {
        assert!(qmax > 0, "qmax must be positive");
        let kp = k.div_ceil(4) * 4;
        let np = n.div_ceil(PANEL) * PANEL;
        let mut data = vec![0i8; np * kp];
        let mut offset_correction = vec![0i32; np];
        for (nn, corr) in offset_correction.iter_mut().enumerate().take(n) {
            for kk in 0..k {
                let v = qw(kk, nn);
                assert!(
                    (-qmax..=qmax).contains(&v),
                    "weight {v} outside ±{qmax} at ({kk}, {nn})"
                );
                data[Self::index(kp, kk, nn)] = v;
                *corr += 128 * i32::from(v);
            }
        }
        PackedWeights {
            k,
            n,
            kp,
            np,
            qmax,
            data,
            offset_correction,
            scales,
        }
    }

    fn index(kp: usize, kk: usize, nn: usize) -> usize {
        let (panel, lane) = (nn / PANEL, nn % PANEL);
        ((panel * (kp / 4) + kk / 4) * PANEL + lane) * 4 + kk % 4
    }

    /// The quantized weight at `(k, n)`.
    pub fn get(&self, kk: usize, nn: usize) -> i8 {
        self.data[Self::index(self.kp, kk, nn)]
    }

    /// Column panels ([`PANEL`] columns each): the unit of [`gemm_panels`].
    pub fn panels(&self) -> usize {
        self.np / PANEL
    }

    /// Bytes of packed weights.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Whether `kernel` computes exactly with these weights (AVX2 needs 7-bit ones).
    pub fn fits(&self, kernel: Kernel) -> bool {
        self.qmax <= kernel.weight_max()
    }
}

/// `round(x / s)` half away from zero, clamped to ±127, offset by +128. The one definition of
/// activation quantization; the SIMD versions match it bit for bit (NaN becomes 0).
#[inline]
pub fn quantize_one(v: f32, inv: f32) -> (u8, bool) {
    let q = (v * inv).round();
    let clipped = q.abs() > ACT_MAX;
    ((q.clamp(-ACT_MAX, ACT_MAX) as i32 + 128) as u8, clipped)
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
    assert!(
        x.len() >= m * k && out.len() >= m * kp && kp >= k,
        "quantize buffer sizes"
    );
    let inv = 1.0 / s;
    let mut clipped = 0;
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        let o = &mut out[i * kp..(i + 1) * kp];
        clipped += quantize_row(row, inv, &mut o[..k]);
        o[k..].fill(128);
    }
    clipped
}

fn quantize_row(row: &[f32], inv: f32, out: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present; `row` and `out` have the same length (the caller
            // slices both to `k`), which is all the function reads and writes.
            return unsafe { x86::quantize_row_avx512(row, inv, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present; `row` and `out` have the same length (the caller slices
            // both to `k`), which is all the function reads and writes.
            return unsafe { x86::quantize_row_avx2(row, inv, out) };
        }
    }
    quantize_row_scalar(row, inv, out)
}

/// The scalar definition of one row's quantization.
pub fn quantize_row_scalar(row: &[f32], inv: f32, out: &mut [u8]) -> usize {
    let mut clipped = 0;
    for (d, &v) in out.iter_mut().zip(row) {
        let (q, c) = quantize_one(v, inv);
        *d = q;
        clipped += usize::from(c);
    }
    clipped
}

/// `acc[m][n] = Σ_k (a[m][k] − 128) · qw[k][n]` with `kernel`; `a` is `[m, kp]`, `acc` `[m, n]`.
///
/// Panics when `kernel` does not run on this CPU or cannot compute exactly with `w`'s weight
/// width (see [`PackedWeights::fits`]).
pub fn gemm(kernel: Kernel, a: &[u8], m: usize, w: &PackedWeights, acc: &mut [i32]) {
    gemm_panels(kernel, a, m, w, acc, 0..w.panels());
}

/// [`gemm`] for the columns of weight panels `panels` only ([`PANEL`] columns each, the last
/// one possibly short): the unit a multithreaded caller splits the columns by. Columns outside
/// the panels are not touched.
pub fn gemm_panels(
    kernel: Kernel,
    a: &[u8],
    m: usize,
    w: &PackedWeights,
    acc: &mut [i32],
    panels: Range<usize>,
) {
    gemm_panels_ahead(kernel, a, m, w, acc, panels, 1)
}

/// [`gemm_panels`] for a caller that takes panel `panels.end - 1 + ahead` next (a thread of `T`
/// taking every `T`-th panel: `ahead = T`; 0 when it takes none): the kernels that prefetch
/// weights fetch that panel while running the range's last. Only the speed depends on it.
pub fn gemm_panels_ahead(
    kernel: Kernel,
    a: &[u8],
    m: usize,
    w: &PackedWeights,
    acc: &mut [i32],
    panels: Range<usize>,
    ahead: usize,
) {
    // Only the x86-64 kernels prefetch.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ahead;
    assert!(
        a.len() >= m * w.kp && acc.len() >= m * w.n,
        "gemm buffer sizes"
    );
    assert!(
        w.fits(kernel),
        "{kernel:?} needs weights within ±{}, these are ±{}",
        kernel.weight_max(),
        w.qmax
    );
    assert!(
        panels.end <= w.panels(),
        "panels {panels:?} of {}",
        w.panels()
    );
    if m == 0 || w.n == 0 || panels.is_empty() {
        return;
    }
    match kernel {
        Kernel::Scalar => gemm_scalar_cols(
            a,
            m,
            w,
            acc,
            panels.start * PANEL..(panels.end * PANEL).min(w.n),
        ),
        #[cfg(target_arch = "x86_64")]
        Kernel::Amx if amx::fits(w) => {
            assert!(kernel.is_available(), "AMX is not usable on this CPU");
            // SAFETY: AMX and AVX-512 VNNI are available (checked above), the K depth is whole
            // tiles (`fits`), buffer sizes and the panel range were asserted above.
            unsafe { amx::gemm(a, m, w, acc, panels) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::AvxVnni | Kernel::Avx512Vnni | Kernel::Amx => {
            assert!(
                kernel.is_available(),
                "{kernel:?} is not supported by this CPU"
            );
            // SAFETY: the CPU has the kernel's features (checked above); buffer sizes and the
            // panel range were asserted above and the weights' width fits the kernel.
            unsafe { x86::gemm(kernel, a, m, w, acc, panels, ahead) }
        }
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon | Kernel::Sdot => {
            assert!(
                kernel.is_available(),
                "{kernel:?} is not supported by this CPU"
            );
            // SAFETY: as above.
            unsafe { arm::gemm(kernel, a, m, w, acc, panels) }
        }
        #[allow(unreachable_patterns)]
        _ => panic!("{kernel:?} does not exist on this architecture"),
    }
}

/// The reference.
pub fn gemm_scalar(a: &[u8], m: usize, w: &PackedWeights, acc: &mut [i32]) {
    gemm_scalar_cols(a, m, w, acc, 0..w.n)
}

fn gemm_scalar_cols(a: &[u8], m: usize, w: &PackedWeights, acc: &mut [i32], cols: Range<usize>) {
    for i in 0..m {
        for nn in cols.clone() {
            let mut s = 0i32;
            for kk in 0..w.k {
                s += (i32::from(a[i * w.kp + kk]) - 128) * i32::from(w.get(kk, nn));
            }
            acc[i * w.n + nn] = s;
        }
    }
}

/// Split `m` rows into blocks of at most `max` rows, as even as possible (50 → 5 × 10, not
/// 4 × 12 + 2): `(first row, rows)`.
pub fn row_blocks(m: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let blocks = m.div_ceil(max).max(1);
    let (base, extra) = (m / blocks, m % blocks);
    (0..blocks).scan(0, move |start, b| {
        let rows = base + usize::from(b < extra);
        let s = *start;
        *start += rows;
        Some((s, rows))
    })
}

#[cfg(test)]
mod tests;
