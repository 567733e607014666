//! The per-row work of the fast preprocessor, written as plain loops over planar `f32` rows
//! so that the compiler vectorises them, and compiled once per SIMD level ([`Simd`]): the
//! baseline of the target (SSE2 on x86_64, NEON on AArch64), AVX2 and AVX-512 on x86_64, chosen
//! at run time. Every level runs the same arithmetic in the same order (no fused multiply-adds,
//! no reassociation), so their outputs are bit-identical; the tests check that.
//!
//! One band of output rows is produced by [`band`], each output row in two passes over the
//! frame's own bytes, in its own colour space:
//! 1. *vertical*: the weighted sum of the source rows the row's taps name, over the byte span
//!    the crop covers (packed formats as they are; NV12's luma and chroma planes each with their
//!    own row weights), bytes widened to `f32` on the fly: contiguous, fully vectorised;
//! 2. *horizontal*: per output pixel the weighted sum along that row of each channel (YUYV's and
//!    NV12's shared chroma read at its pair), then YUV → RGB for that one pixel (the conversion
//!    is affine, so filtering before converting changes nothing but where the clamp to 0..=255
//!    applies: colours a camera cannot produce), normalisation, and the write to its channel
//!    plane (HWC → CHW).

use super::taps::Taps;
use super::Rect;
use crate::frame::{Frame, PixelFormat};

/// A SIMD level the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Simd {
    /// The target's baseline (SSE2 on x86_64, NEON on AArch64), auto-vectorised.
    Baseline,
    /// x86_64 AVX2.
    Avx2,
    /// x86_64 AVX-512 (F and BW).
    Avx512,
}

impl Simd {
    /// The best level this CPU runs.
    pub fn detect() -> Simd {
        [Simd::Avx512, Simd::Avx2]
            .into_iter()
            .find(|s| s.supported())
            .unwrap_or(Simd::Baseline)
    }

    /// Whether this CPU can run the level.
    pub fn supported(self) -> bool {
        match self {
            Simd::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Name as printed by benchmarks and tests.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Baseline if cfg!(target_arch = "aarch64") => "neon",
            Simd::Baseline => "baseline",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }
}

/// Everything about one source geometry that the kernels need; built once per geometry.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub format: Option<PixelFormat>,
    /// The region of the frame the resize reads (the ROI, or the whole frame).
    pub rect: Rect,
    /// Taps in pixels, relative to the region's origin.
    pub xt: Taps,
    pub yt: Taps,
    /// Source columns read: `x0..x1` (absolute).
    pub x0: usize,
    pub x1: usize,
    pub out_w: usize,
    pub out_h: usize,
    /// Per output channel: `(source channel, 1/(255·std), mean/std)`.
    pub chan: [(usize, f32, f32); 3],
}

impl Plan {
    /// Byte spans of a row that the crop covers: `(start, end)` of the packed row (NV12: its
    /// luma row) and of NV12's chroma row (empty otherwise).
    fn spans(&self) -> ((usize, usize), (usize, usize)) {
        let (x0, x1) = (self.x0, self.x1);
        match self.format.unwrap_or(PixelFormat::Grey) {
            PixelFormat::Yuyv => (((x0 & !1) * 2, x1.div_ceil(2) * 4), (0, 0)),
            PixelFormat::Nv12 => ((x0, x1), (x0 & !1, x1.div_ceil(2) * 2)),
            PixelFormat::Grey => ((x0, x1), (0, 0)),
            PixelFormat::Rgb | PixelFormat::Bgr => ((x0 * 3, x1 * 3), (0, 0)),
        }
    }
}

/// Output rows handled together: the horizontal pass reads one tap of all of them as one
/// vector (their vertical results are stored transposed, `[span][R]`).
const R: usize = 8;

/// Per-thread working memory of [`band`], sized by [`Scratch::fit`] before a frame.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// One vertical-pass row (packed span; NV12: luma span).
    v: Vec<f32>,
    /// NV12's chroma span.
    vc: Vec<f32>,
    /// `R` rows of `v`, transposed: `[span][R]`.
    t: Vec<f32>,
    /// `R` rows of `vc`, transposed.
    tc: Vec<f32>,
}

impl Scratch {
    /// Grow the buffers for `plan` (no allocation when they already fit).
    pub fn fit(&mut self, plan: &Plan) {
        let ((a0, a1), (c0, c1)) = plan.spans();
        let grow = |v: &mut Vec<f32>, n: usize| {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        };
        grow(&mut self.t, (a1 - a0) * R);
        grow(&mut self.tc, (c1 - c0) * R);
        grow(&mut self.v, a1 - a0);
        grow(&mut self.vc, c1 - c0);
    }
}

/// The three output planes, through a raw pointer so that bands of one tensor can be written
/// from several threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutPlanes {
    pub ptr: *mut f32,
    pub plane: usize,
}

// SAFETY: OutPlanes is a pointer into a tensor the caller borrows mutably for the whole
// parallel call; each band writes a disjoint set of rows.
unsafe impl Send for OutPlanes {}
// SAFETY: as above: concurrent bands never write the same element.
unsafe impl Sync for OutPlanes {}

/// Produce output rows `oy0..oy1` at SIMD level `simd` (which the CPU must support).
pub(crate) fn band(
    simd: Simd,
    frame: &Frame,
    plan: &Plan,
    s: &mut Scratch,
    out: OutPlanes,
    oy0: usize,
    oy1: usize,
) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers choose the level through Simd::supported / Simd::detect.
        Simd::Avx512 => unsafe { band_avx512(frame, plan, s, out, oy0, oy1) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Simd::Avx2 => unsafe { band_avx2(frame, plan, s, out, oy0, oy1) },
        _ => band_body(frame, plan, s, out, oy0, oy1),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn band_avx2(frame: &Frame, plan: &Plan, s: &mut Scratch, out: OutPlanes, oy0: usize, oy1: usize) {
    band_body(frame, plan, s, out, oy0, oy1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
fn band_avx512(
    frame: &Frame,
    plan: &Plan,
    s: &mut Scratch,
    out: OutPlanes,
    oy0: usize,
    oy1: usize,
) {
    band_body(frame, plan, s, out, oy0, oy1)
}

/// `acc = w · row` (first tap) or `acc += w · row`, bytes widened to `f32`.
#[inline(always)]
fn accumulate(acc: &mut [f32], row: &[u8], w: f32, first: bool) {
    if first {
        acc.iter_mut()
            .zip(row)
            .for_each(|(a, &b)| *a = w * b as f32);
    } else {
        acc.iter_mut()
            .zip(row)
            .for_each(|(a, &b)| *a += w * b as f32);
    }
}

/// `t[i * R + r] = v[i]`: row `r` of a group, stored transposed.
#[inline(always)]
fn scatter_row(t: &mut [f32], v: &[f32], r: usize) {
    for (dst, &x) in t.chunks_exact_mut(R).zip(v) {
        dst[r] = x;
    }
}

#[inline(always)]
fn band_body(frame: &Frame, plan: &Plan, s: &mut Scratch, out: OutPlanes, oy0: usize, oy1: usize) {
    let format = plan.format.unwrap_or(PixelFormat::Grey);
    let ((a0, a1), (c0, c1)) = plan.spans();
    let w = frame.width as usize;
    let bpr = match format {
        PixelFormat::Yuyv => 2 * w,
        PixelFormat::Rgb | PixelFormat::Bgr => 3 * w,
        _ => w,
    };
    let d = &frame.data[..];
    let uv_base = w * frame.height as usize;
    let ry = plan.rect.y as usize;
    let v = &mut s.v[..a1 - a0];
    let vc = &mut s.vc[..c1 - c0];
    let t = &mut s.t[..(a1 - a0) * R];
    let tc = &mut s.tc[..(c1 - c0) * R];
    let mut g = oy0;
    while g < oy1 {
        let rows = R.min(oy1 - g);
        for r in 0..rows {
            let oy = g + r;
            let start = ry + plan.yt.start[oy];
            let wts = plan.yt.weights(oy);
            for (j, &wt) in wts.iter().enumerate() {
                let y = start + j;
                accumulate(v, &d[y * bpr + a0..y * bpr + a1], wt, j == 0);
            }
            scatter_row(t, v, r);
            if format == PixelFormat::Nv12 {
                // Chroma rows are shared by two luma rows: merge the weights per chroma row.
                let mut q = start / 2;
                let mut wq = 0.0f32;
                let mut first = true;
                for (j, &wt) in wts.iter().enumerate() {
                    let qj = (start + j) / 2;
                    if qj != q {
                        let row = &d[uv_base + q * w + c0..uv_base + q * w + c1];
                        accumulate(vc, row, wq, first);
                        first = false;
                        (q, wq) = (qj, 0.0);
                    }
                    wq += wt;
                }
                let row = &d[uv_base + q * w + c0..uv_base + q * w + c1];
                accumulate(vc, row, wq, first);
                scatter_row(tc, vc, r);
            }
        }
        horizontal(format, plan, t, tc, out, g, rows);
        g += rows;
    }
}

/// `acc[r] += w · p[r]` for the `R` rows of a group.
#[inline(always)]
fn mac(acc: &mut [f32; R], w: f32, p: &[f32]) {
    let p: &[f32; R] = p[..R].try_into().expect("R values");
    for r in 0..R {
        acc[r] += w * p[r];
    }
}

/// Horizontal pass of output rows `g..g + rows` (their vertical results transposed in `t`,
/// `tc`): filter each channel of all rows at once, convert, normalise, write.
#[inline(always)]
fn horizontal(
    format: PixelFormat,
    plan: &Plan,
    t: &[f32],
    tc: &[f32],
    out: OutPlanes,
    g: usize,
    rows: usize,
) {
    let ow = plan.out_w;
    let xt = &plan.xt;
    let rx = plan.rect.x as usize;
    let x0 = plan.x0;
    let lead = x0 & 1;
    for ox in 0..ow {
        let first = rx + xt.start[ox] - x0; // column index within the span
        let wts = xt.weights(ox);
        let (mut a, mut b, mut c) = ([0.0f32; R], [0.0f32; R], [0.0f32; R]);
        match format {
            PixelFormat::Grey => {
                for (k, &wt) in wts.iter().enumerate() {
                    mac(&mut a, wt, &t[(first + k) * R..]);
                }
                (b, c) = (a, a);
            }
            PixelFormat::Rgb | PixelFormat::Bgr => {
                for (k, &wt) in wts.iter().enumerate() {
                    let i = (first + k) * 3;
                    mac(&mut a, wt, &t[i * R..]);
                    mac(&mut b, wt, &t[(i + 1) * R..]);
                    mac(&mut c, wt, &t[(i + 2) * R..]);
                }
                if format == PixelFormat::Bgr {
                    std::mem::swap(&mut a, &mut c);
                }
            }
            PixelFormat::Yuyv => {
                // The span starts at the pair holding x0; its pixel i: luma at byte 2i, the
                // pair's U and V at 4(i/2)+1 and +3.
                for (k, &wt) in wts.iter().enumerate() {
                    let i = first + k + lead;
                    let q = (i / 2) * 4;
                    mac(&mut a, wt, &t[2 * i * R..]);
                    mac(&mut b, wt, &t[(q + 1) * R..]);
                    mac(&mut c, wt, &t[(q + 3) * R..]);
                }
                yuv_to_rgb(&mut a, &mut b, &mut c);
            }
            PixelFormat::Nv12 => {
                for (k, &wt) in wts.iter().enumerate() {
                    let q = ((first + k + lead) / 2) * 2;
                    mac(&mut a, wt, &t[(first + k) * R..]);
                    mac(&mut b, wt, &tc[q * R..]);
                    mac(&mut c, wt, &tc[(q + 1) * R..]);
                }
                yuv_to_rgb(&mut a, &mut b, &mut c);
            }
        }
        let rgb = [&a, &b, &c];
        for (o, &(ch, sc, bias)) in plan.chan.iter().enumerate() {
            let src = rgb[ch];
            for (r, &x) in src.iter().enumerate().take(rows) {
                // SAFETY: element (o, g + r, ox) lies inside the tensor (o < 3, g + r < out_h,
                // ox < out_w) and no other band writes row g + r.
                unsafe { *out.ptr.add(o * out.plane + (g + r) * ow + ox) = x * sc - bias };
            }
        }
    }
}

/// BT.601 limited-range YUV → RGB in 0..=255, in place over `R` pixels (the expression of
/// [`super::yuv_to_rgb`]).
#[inline(always)]
fn yuv_to_rgb(y: &mut [f32; R], u: &mut [f32; R], v: &mut [f32; R]) {
    for r in 0..R {
        let c = 1.164 * (y[r] - 16.0);
        let d = u[r] - 128.0;
        let e = v[r] - 128.0;
        y[r] = (c + 1.596 * e).clamp(0.0, 255.0);
        u[r] = (c - 0.392 * d - 0.813 * e).clamp(0.0, 255.0);
        v[r] = (c + 2.017 * d).clamp(0.0, 255.0);
    }
}
