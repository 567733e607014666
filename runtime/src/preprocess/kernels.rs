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

use super::lanes::{self, Lanes, R};
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
    /// Multiply-adds of the vertical pass over a frame (most of the work): a frame is split into
    /// bands on the pool only from [`crate::plan::MIN_PARALLEL_WORK`] on.
    pub fn work(&self) -> usize {
        let ((a0, a1), (c0, c1)) = self.spans();
        (a1 - a0 + c1 - c0) * self.out_h * self.yt.max_len
    }

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
    /// The vertical results of a group's `R` rows, row after row (`[R][span]`; NV12: luma).
    v: Vec<f32>,
    /// NV12's chroma rows, likewise.
    vc: Vec<f32>,
    /// `v` transposed: `[span][R]`, one lane per row.
    t: Vec<f32>,
    /// `vc` transposed.
    tc: Vec<f32>,
    /// NV12: an output row's weights merged per chroma row.
    cw: Vec<f32>,
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
        grow(&mut self.v, (a1 - a0) * R);
        grow(&mut self.vc, (c1 - c0) * R);
        grow(&mut self.cw, plan.yt.max_len / 2 + 2);
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
        #[cfg(target_arch = "aarch64")]
        _ => band_body::<lanes::Neon>(frame, plan, s, out, oy0, oy1),
        #[cfg(not(target_arch = "aarch64"))]
        _ => band_body::<lanes::Portable>(frame, plan, s, out, oy0, oy1),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn band_avx2(frame: &Frame, plan: &Plan, s: &mut Scratch, out: OutPlanes, oy0: usize, oy1: usize) {
    band_body::<lanes::Avx>(frame, plan, s, out, oy0, oy1)
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
    band_body::<lanes::Avx>(frame, plan, s, out, oy0, oy1)
}

/// `acc[i] = Σₖ w[k] · rows[k][i]` (`first`) or `acc[i] += …`, bytes widened to `f32`, the
/// terms added in order `k = 0, 1, …`: `K` source rows per pass over `acc`.
#[inline(always)]
fn accumulate<const K: usize>(acc: &mut [f32], rows: [&[u8]; K], w: [f32; K], first: bool) {
    let n = acc.len();
    let rows = rows.map(|r| &r[..n]);
    if first {
        for (i, a) in acc.iter_mut().enumerate() {
            let mut x = w[0] * rows[0][i] as f32;
            for k in 1..K {
                x += w[k] * rows[k][i] as f32;
            }
            *a = x;
        }
    } else {
        for (i, a) in acc.iter_mut().enumerate() {
            let mut x = *a;
            for k in 0..K {
                x += w[k] * rows[k][i] as f32;
            }
            *a = x;
        }
    }
}

/// One vertical row: `acc[i] = Σⱼ wts[j] · d[base + j·stride + i]`, the taps in order, four
/// source rows per pass over `acc` (its loads and stores were the loop's cost one row at a time).
#[inline(always)]
fn vertical(acc: &mut [f32], d: &[u8], base: usize, stride: usize, wts: &[f32]) {
    let n = acc.len();
    let row = |j: usize| &d[base + j * stride..base + j * stride + n];
    let mut j = 0;
    while j < wts.len() {
        let first = j == 0;
        match wts.len() - j {
            1 => {
                accumulate(acc, [row(j)], [wts[j]], first);
                j += 1;
            }
            2 | 3 => {
                accumulate(acc, [row(j), row(j + 1)], [wts[j], wts[j + 1]], first);
                j += 2;
            }
            _ => {
                let w = [wts[j], wts[j + 1], wts[j + 2], wts[j + 3]];
                accumulate(acc, [row(j), row(j + 1), row(j + 2), row(j + 3)], w, first);
                j += 4;
            }
        }
    }
}

#[inline(always)]
fn band_body<V: Lanes>(
    frame: &Frame,
    plan: &Plan,
    s: &mut Scratch,
    out: OutPlanes,
    oy0: usize,
    oy1: usize,
) {
    let format = plan.format.unwrap_or(PixelFormat::Grey);
    let ((a0, a1), (c0, c1)) = plan.spans();
    let (na, nc) = (a1 - a0, c1 - c0);
    let w = frame.width as usize;
    let bpr = match format {
        PixelFormat::Yuyv => 2 * w,
        PixelFormat::Rgb | PixelFormat::Bgr => 3 * w,
        _ => w,
    };
    let d = &frame.data[..];
    let uv_base = w * frame.height as usize;
    let ry = plan.rect.y as usize;
    let v = &mut s.v[..na * R];
    let vc = &mut s.vc[..nc * R];
    let t = &mut s.t[..na * R];
    let tc = &mut s.tc[..nc * R];
    let mut g = oy0;
    while g < oy1 {
        let rows = R.min(oy1 - g);
        for r in 0..rows {
            let oy = g + r;
            let start = ry + plan.yt.start[oy];
            let wts = plan.yt.weights(oy);
            vertical(&mut v[r * na..(r + 1) * na], d, start * bpr + a0, bpr, wts);
            if format == PixelFormat::Nv12 {
                // Chroma rows are shared by two luma rows: merge the weights per chroma row.
                let q0 = start / 2;
                let cw = &mut s.cw[..(start + wts.len() - 1) / 2 - q0 + 1];
                cw.fill(0.0);
                for (j, &wt) in wts.iter().enumerate() {
                    cw[(start + j) / 2 - q0] += wt;
                }
                let base = uv_base + q0 * w + c0;
                vertical(&mut vc[r * nc..(r + 1) * nc], d, base, w, cw);
            }
        }
        V::transpose(v, na, na, t);
        if format == PixelFormat::Nv12 {
            V::transpose(vc, nc, nc, tc);
        }
        horizontal::<V>(format, plan, t, tc, out, g, rows);
        g += rows;
    }
}

/// One output pixel's horizontal taps for the `R` rows of a group, three channels at once (three
/// independent add chains, so the adds' latency overlaps): channel `c` sums
/// `w[k] · ts[c][at(k)[c] · R ..][..R]` over the taps in order.
#[inline(always)]
fn taps3<V: Lanes>(ts: [&[f32]; 3], wts: &[f32], at: impl Fn(usize) -> [usize; 3]) -> [V; 3] {
    let mut acc = [V::splat(0.0); 3];
    for (k, &wt) in wts.iter().enumerate() {
        let w = V::splat(wt);
        let i = at(k);
        for c in 0..3 {
            acc[c] = acc[c].add(w.mul(V::load(&ts[c][i[c] * R..])));
        }
    }
    acc
}

/// Horizontal pass of output rows `g..g + rows` (their vertical results transposed in `t`,
/// `tc`): filter each channel of all rows at once, convert, normalise, write.
#[inline(always)]
fn horizontal<V: Lanes>(
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
        let [a, b, c] = match format {
            PixelFormat::Grey => {
                // One channel: three copies of the same sum (one chain's latency either way).
                let [a, _, _] = taps3::<V>([t, t, t], wts, |k| [first + k; 3]);
                [a, a, a]
            }
            PixelFormat::Rgb | PixelFormat::Bgr => {
                let [r, g, b] = taps3::<V>([t, t, t], wts, |k| {
                    let i = (first + k) * 3;
                    [i, i + 1, i + 2]
                });
                if format == PixelFormat::Bgr {
                    [b, g, r]
                } else {
                    [r, g, b]
                }
            }
            PixelFormat::Yuyv => {
                // The span starts at the pair holding x0; its pixel i: luma at byte 2i, the
                // pair's U and V at 4(i/2)+1 and +3.
                let [y, u, v] = taps3::<V>([t, t, t], wts, |k| {
                    let i = first + k + lead;
                    [2 * i, i / 2 * 4 + 1, i / 2 * 4 + 3]
                });
                yuv_to_rgb(y, u, v)
            }
            PixelFormat::Nv12 => {
                let [y, u, v] = taps3::<V>([t, tc, tc], wts, |k| {
                    let q = (first + k + lead) / 2 * 2;
                    [first + k, q, q + 1]
                });
                yuv_to_rgb(y, u, v)
            }
        };
        let rgb = [a.to_array(), b.to_array(), c.to_array()];
        for (o, &(ch, sc, bias)) in plan.chan.iter().enumerate() {
            let src = &rgb[ch];
            for (r, &x) in src.iter().enumerate().take(rows) {
                // SAFETY: element (o, g + r, ox) lies inside the tensor (o < 3, g + r < out_h,
                // ox < out_w) and no other band writes row g + r.
                unsafe { *out.ptr.add(o * out.plane + (g + r) * ow + ox) = x * sc - bias };
            }
        }
    }
}

/// BT.601 limited-range YUV → RGB in 0..=255 over `R` pixels (the expression of
/// [`super::yuv_to_rgb`]).
#[inline(always)]
fn yuv_to_rgb<V: Lanes>(y: V, u: V, v: V) -> [V; 3] {
    let k = V::splat;
    let c = k(1.164).mul(y.sub(k(16.0)));
    let d = u.sub(k(128.0));
    let e = v.sub(k(128.0));
    [
        c.add(k(1.596).mul(e)).clamp255(),
        c.sub(k(0.392).mul(d)).sub(k(0.813).mul(e)).clamp255(),
        c.add(k(2.017).mul(d)).clamp255(),
    ]
}
