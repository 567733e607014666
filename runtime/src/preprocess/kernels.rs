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
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Simd::Avx2;
            }
        }
        Simd::Baseline
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

/// Per-thread working memory of [`band`], sized by [`Scratch::fit`] before a frame.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// The vertical pass's row (packed span; NV12: luma span).
    v: Vec<f32>,
    /// NV12's chroma span.
    vc: Vec<f32>,
}

impl Scratch {
    /// Grow the buffers for `plan` (no allocation when they already fit).
    pub fn fit(&mut self, plan: &Plan) {
        let ((a0, a1), (c0, c1)) = plan.spans();
        if self.v.len() < a1 - a0 {
            self.v.resize(a1 - a0, 0.0);
        }
        if self.vc.len() < c1 - c0 {
            self.vc.resize(c1 - c0, 0.0);
        }
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
    for oy in oy0..oy1 {
        let start = ry + plan.yt.start[oy];
        let wts = plan.yt.weights(oy);
        for (j, &wt) in wts.iter().enumerate() {
            let y = start + j;
            accumulate(v, &d[y * bpr + a0..y * bpr + a1], wt, j == 0);
        }
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
        }
        horizontal(format, plan, v, vc, out, oy);
    }
}

/// Horizontal pass of one output row: filter each channel, convert, normalise, write.
#[inline(always)]
fn horizontal(format: PixelFormat, plan: &Plan, v: &[f32], vc: &[f32], out: OutPlanes, oy: usize) {
    let ow = plan.out_w;
    let xt = &plan.xt;
    let rx = plan.rect.x as usize;
    let x0 = plan.x0;
    // SAFETY: row `oy` of each plane lies inside the tensor (oy < out_h, three planes of
    // `plane` values) and no other band writes it.
    let rows: [&mut [f32]; 3] = std::array::from_fn(|o| unsafe {
        std::slice::from_raw_parts_mut(out.ptr.add(o * out.plane + oy * ow), ow)
    });
    let [r0, r1, r2] = rows;
    let [(c0, s0, b0), (c1, s1, b1), (c2, s2, b2)] = plan.chan;
    for ox in 0..ow {
        let first = rx + xt.start[ox] - x0; // column index within the span's first pixel
        let wts = xt.weights(ox);
        let mut a = [0.0f32; 3];
        match format {
            PixelFormat::Grey => {
                let mut g = 0.0f32;
                for (t, &wt) in wts.iter().enumerate() {
                    g += wt * v[first + t];
                }
                a = [g, g, g];
            }
            PixelFormat::Rgb | PixelFormat::Bgr => {
                for (t, &wt) in wts.iter().enumerate() {
                    let p = &v[(first + t) * 3..][..3];
                    a[0] += wt * p[0];
                    a[1] += wt * p[1];
                    a[2] += wt * p[2];
                }
                if format == PixelFormat::Bgr {
                    a.swap(0, 2);
                }
            }
            PixelFormat::Yuyv => {
                // Span starts at the pair holding x0; pixel i of the span: luma at 2i, its
                // pair's U and V at 4(i/2)+1 and +3.
                let lead = x0 & 1;
                let (mut y, mut u, mut vv) = (0.0f32, 0.0f32, 0.0f32);
                for (t, &wt) in wts.iter().enumerate() {
                    let i = first + t + lead;
                    y += wt * v[2 * i];
                    let q = (i / 2) * 4;
                    u += wt * v[q + 1];
                    vv += wt * v[q + 3];
                }
                a = yuv_to_rgb(y, u, vv);
            }
            PixelFormat::Nv12 => {
                let lead = x0 & 1;
                let (mut y, mut u, mut vv) = (0.0f32, 0.0f32, 0.0f32);
                for (t, &wt) in wts.iter().enumerate() {
                    y += wt * v[first + t];
                    let q = ((first + t + lead) / 2) * 2;
                    u += wt * vc[q];
                    vv += wt * vc[q + 1];
                }
                a = yuv_to_rgb(y, u, vv);
            }
        }
        r0[ox] = a[c0] * s0 - b0;
        r1[ox] = a[c1] * s1 - b1;
        r2[ox] = a[c2] * s2 - b2;
    }
}

/// BT.601 limited-range YUV → RGB in 0..=255 (the expression of [`super::yuv_to_rgb`]).
#[inline(always)]
fn yuv_to_rgb(y: f32, u: f32, v: f32) -> [f32; 3] {
    let c = 1.164 * (y - 16.0);
    let d = u - 128.0;
    let e = v - 128.0;
    [
        (c + 1.596 * e).clamp(0.0, 255.0),
        (c - 0.392 * d - 0.813 * e).clamp(0.0, 255.0),
        (c + 2.017 * d).clamp(0.0, 255.0),
    ]
}
