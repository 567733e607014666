//! CPU preprocessing: any [`PixelFormat`] → RGB, antialiased bilinear resize (CLIP shortest side +
//! centre crop, or stretch), mean/std normalisation, HWC → CHW, written into a caller-owned
//! tensor buffer.
//!
//! Only the source pixels under the crop are converted. The resize is separable: a horizontal
//! pass filters each needed source row into a scratch buffer, a vertical pass produces output
//! rows and normalises them. Filter taps are computed once per source geometry. The filter is the
//! triangle (bilinear) kernel widened by the downscale factor, as PIL and
//! `torch.nn.functional.interpolate(..., antialias=True)` do, so thin strokes survive a
//! 640×480 → 32×32 reduction. Nothing allocates once the buffers have grown to the frame size.

use edgefuse_models::manifest::{ChannelOrder, Preprocess, ResizePolicy};

use crate::frame::{Frame, PixelFormat};

/// Errors for frames the preprocessor cannot read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreprocessError {
    /// The byte count does not match the geometry and format.
    #[error("frame {seq} from {source_name}: {len} bytes, but {width}x{height} {format} needs {expected}; the source delivered a broken frame")]
    BadLength {
        /// Frame sequence number.
        seq: u64,
        /// Frame source.
        source_name: String,
        /// Bytes present.
        len: usize,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Format name.
        format: &'static str,
        /// Bytes needed (0 when the geometry is invalid for the format).
        expected: usize,
    },
    /// The output buffer has the wrong size.
    #[error("output tensor has {got} values, expected {expected} (3 x height x width)")]
    BadOutput {
        /// Values present.
        got: usize,
        /// Values needed.
        expected: usize,
    },
}

/// Filter taps for one axis: for output `i`, weights `w[off[i]..off[i]+len[i]]` apply to source
/// indices `start[i]..start[i]+len[i]`.
#[derive(Debug, Clone, Default)]
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    off: Vec<usize>,
    w: Vec<f32>,
    min: usize,
    max: usize,
}

/// Triangle filter.
fn tri(x: f32) -> f32 {
    (1.0 - x.abs()).max(0.0)
}

impl Taps {
    /// Taps for `out` outputs taken at resized positions `crop_off..crop_off+out` of an axis of
    /// `src` pixels resized to `resized` pixels.
    fn compute(&mut self, src: usize, resized: usize, crop_off: usize, out: usize) {
        self.start.clear();
        self.len.clear();
        self.off.clear();
        self.w.clear();
        let scale = resized as f32 / src as f32; // output pixels per source pixel
        let support = if scale < 1.0 { 1.0 / scale } else { 1.0 };
        let filter_scale = scale.min(1.0);
        self.min = usize::MAX;
        self.max = 0;
        for i in 0..out {
            let center = (i + crop_off) as f32 + 0.5;
            let center = center / scale;
            let lo = ((center - support).floor().max(0.0)) as usize;
            let hi = ((center + support).ceil() as usize).min(src);
            let off = self.w.len();
            let mut sum = 0.0;
            for j in lo..hi {
                let wt = tri((j as f32 + 0.5 - center) * filter_scale);
                self.w.push(wt);
                sum += wt;
            }
            // Trim zero taps at both ends so loops stay tight.
            let mut s = lo;
            let mut ws = off;
            while ws < self.w.len() && self.w[ws] == 0.0 {
                ws += 1;
                s += 1;
            }
            let mut e = self.w.len();
            while e > ws && self.w[e - 1] == 0.0 {
                e -= 1;
            }
            let n = e - ws;
            let norm = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            self.w.copy_within(ws..e, off);
            self.w.truncate(off + n);
            self.w[off..].iter_mut().for_each(|v| *v *= norm);
            let (s, n) = if n == 0 {
                // Degenerate (cannot happen for valid geometry): nearest pixel.
                self.w.push(1.0);
                (((center.floor() as usize).min(src - 1)), 1)
            } else {
                (s, n)
            };
            self.start.push(s);
            self.len.push(n);
            self.off.push(off);
            self.min = self.min.min(s);
            self.max = self.max.max(s + n);
        }
    }
}

/// Resize geometry: resized size and crop offsets for a source of `w × h`.
pub fn geometry(
    w: u32,
    h: u32,
    out_w: u32,
    out_h: u32,
    policy: ResizePolicy,
) -> (u32, u32, u32, u32) {
    match policy {
        ResizePolicy::Stretch => (out_w, out_h, 0, 0),
        ResizePolicy::ShortestSideCenterCrop => {
            let scale = (out_w as f64 / w as f64).max(out_h as f64 / h as f64);
            let rw = ((w as f64 * scale).round() as u32).max(out_w);
            let rh = ((h as f64 * scale).round() as u32).max(out_h);
            // torchvision CenterCrop: offset = round((resized - out) / 2)
            let ox = ((rw - out_w) as f64 / 2.0).round() as u32;
            let oy = ((rh - out_h) as f64 / 2.0).round() as u32;
            (rw, rh, ox, oy)
        }
    }
}

/// Preprocessor for one bundle's input spec. Keep one per pipeline; it caches filter taps for
/// the last source geometry.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    out_w: usize,
    out_h: usize,
    policy: ResizePolicy,
    /// Per output channel: `(src channel index in RGB, 1/(255·std), mean/std)`.
    chan: [(usize, f32, f32); 3],
    key: Option<(u32, u32)>,
    xt: Taps,
    yt: Taps,
    row: Vec<f32>,
    tmp: Vec<f32>,
}

impl Preprocessor {
    /// Build for a manifest's `[preprocess]` section.
    pub fn new(spec: &Preprocess) -> Self {
        let order: [usize; 3] = match spec.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let chan: [(usize, f32, f32); 3] = std::array::from_fn(|o| {
            (
                order[o],
                1.0 / (255.0 * spec.std[o]),
                spec.mean[o] / spec.std[o],
            )
        });
        Self {
            out_w: spec.image_size[0] as usize,
            out_h: spec.image_size[1] as usize,
            policy: spec.resize,
            chan,
            key: None,
            xt: Taps::default(),
            yt: Taps::default(),
            row: Vec::new(),
            tmp: Vec::new(),
        }
    }

    /// Values in the output tensor: `3 × height × width`.
    pub fn output_len(&self) -> usize {
        3 * self.out_w * self.out_h
    }

    fn plan(&mut self, w: u32, h: u32) {
        if self.key == Some((w, h)) {
            return;
        }
        let (rw, rh, ox, oy) = geometry(w, h, self.out_w as u32, self.out_h as u32, self.policy);
        self.xt
            .compute(w as usize, rw as usize, ox as usize, self.out_w);
        self.yt
            .compute(h as usize, rh as usize, oy as usize, self.out_h);
        let cols = self.xt.max - self.xt.min;
        let rows = self.yt.max - self.yt.min;
        self.row.resize(cols * 3, 0.0);
        self.tmp.resize(rows * self.out_w * 3, 0.0);
        self.key = Some((w, h));
    }

    /// Check that `frame` holds exactly the bytes its geometry and format need.
    pub fn check(frame: &Frame) -> Result<(), PreprocessError> {
        let expected = frame
            .format
            .frame_len(frame.width, frame.height)
            .unwrap_or(0);
        if expected == 0 || frame.data.len() != expected {
            return Err(PreprocessError::BadLength {
                seq: frame.seq,
                source_name: frame.source.clone(),
                len: frame.data.len(),
                width: frame.width,
                height: frame.height,
                format: frame.format.name(),
                expected,
            });
        }
        Ok(())
    }

    /// Per output channel: `(source RGB channel, 1/(255·std), mean/std)`.
    pub fn channel_map(&self) -> [(usize, f32, f32); 3] {
        self.chan
    }

    /// The filter taps for a `w × h` source, as the CUDA kernel takes them: per output column
    /// (then row) `(start, len, offset)` triples and the weights they index.
    pub fn filter_taps(&mut self, w: u32, h: u32) -> (Vec<i32>, Vec<i32>, Vec<f32>, Vec<f32>) {
        self.plan(w, h);
        let pack = |t: &Taps| -> Vec<i32> {
            (0..t.start.len())
                .flat_map(|i| [t.start[i] as i32, t.len[i] as i32, t.off[i] as i32])
                .collect()
        };
        (
            pack(&self.xt),
            pack(&self.yt),
            self.xt.w.clone(),
            self.yt.w.clone(),
        )
    }

    /// Preprocess `frame` into `out` (`[3, height, width]`, channel order of the spec).
    pub fn run(&mut self, frame: &Frame, out: &mut [f32]) -> Result<(), PreprocessError> {
        Self::check(frame)?;
        if out.len() != self.output_len() {
            return Err(PreprocessError::BadOutput {
                got: out.len(),
                expected: self.output_len(),
            });
        }
        self.plan(frame.width, frame.height);
        let (x0, x1) = (self.xt.min, self.xt.max);
        let ow = self.out_w;
        // Horizontal pass over the needed source rows.
        for (r, y) in (self.yt.min..self.yt.max).enumerate() {
            convert_row(frame, y, x0, x1, &mut self.row);
            let dst = &mut self.tmp[r * ow * 3..(r + 1) * ow * 3];
            for (i, d) in dst.chunks_exact_mut(3).enumerate() {
                let s = self.xt.start[i] - x0;
                let wts = &self.xt.w[self.xt.off[i]..self.xt.off[i] + self.xt.len[i]];
                let src = &self.row[s * 3..(s + wts.len()) * 3];
                let (mut a, mut b, mut c) = (0.0f32, 0.0f32, 0.0f32);
                for (wt, p) in wts.iter().zip(src.chunks_exact(3)) {
                    a += wt * p[0];
                    b += wt * p[1];
                    c += wt * p[2];
                }
                d[0] = a;
                d[1] = b;
                d[2] = c;
            }
        }
        // Vertical pass, normalisation and HWC → CHW.
        let plane = self.out_w * self.out_h;
        let y0 = self.yt.min;
        for oy in 0..self.out_h {
            let s = self.yt.start[oy] - y0;
            let wts = &self.yt.w[self.yt.off[oy]..self.yt.off[oy] + self.yt.len[oy]];
            let (p0, rest) = out.split_at_mut(plane);
            let (p1, p2) = rest.split_at_mut(plane);
            let rows = [
                &mut p0[oy * ow..(oy + 1) * ow],
                &mut p1[oy * ow..(oy + 1) * ow],
                &mut p2[oy * ow..(oy + 1) * ow],
            ];
            let [r0, r1, r2] = rows;
            let (c0, c1, c2) = (self.chan[0], self.chan[1], self.chan[2]);
            for ox in 0..ow {
                let mut acc = [0.0f32; 3];
                for (k, wt) in wts.iter().enumerate() {
                    let p = &self.tmp[((s + k) * ow + ox) * 3..][..3];
                    acc[0] += wt * p[0];
                    acc[1] += wt * p[1];
                    acc[2] += wt * p[2];
                }
                r0[ox] = acc[c0.0] * c0.1 - c0.2;
                r1[ox] = acc[c1.0] * c1.1 - c1.2;
                r2[ox] = acc[c2.0] * c2.1 - c2.2;
            }
        }
        Ok(())
    }
}

#[inline]
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [f32; 3] {
    let c = 1.164 * (y as f32 - 16.0);
    let d = u as f32 - 128.0;
    let e = v as f32 - 128.0;
    [
        (c + 1.596 * e).clamp(0.0, 255.0),
        (c - 0.392 * d - 0.813 * e).clamp(0.0, 255.0),
        (c + 2.017 * d).clamp(0.0, 255.0),
    ]
}

/// Convert columns `x0..x1` of row `y` to RGB in 0..=255 (scaled to the output range later).
fn convert_row(frame: &Frame, y: usize, x0: usize, x1: usize, out: &mut [f32]) {
    let w = frame.width as usize;
    let d = &frame.data;
    let out = &mut out[..(x1 - x0) * 3];
    match frame.format {
        PixelFormat::Rgb => {
            let row = &d[(y * w + x0) * 3..(y * w + x1) * 3];
            out.iter_mut().zip(row).for_each(|(o, &v)| *o = v as f32);
        }
        PixelFormat::Bgr => {
            let row = &d[(y * w + x0) * 3..(y * w + x1) * 3];
            for (o, p) in out.chunks_exact_mut(3).zip(row.chunks_exact(3)) {
                o[0] = p[2] as f32;
                o[1] = p[1] as f32;
                o[2] = p[0] as f32;
            }
        }
        PixelFormat::Grey => {
            let row = &d[y * w + x0..y * w + x1];
            for (o, &v) in out.chunks_exact_mut(3).zip(row) {
                let v = v as f32;
                o[0] = v;
                o[1] = v;
                o[2] = v;
            }
        }
        PixelFormat::Yuyv => {
            let row = &d[y * w * 2..(y + 1) * w * 2];
            for (o, x) in out.chunks_exact_mut(3).zip(x0..x1) {
                let pair = &row[(x / 2) * 4..(x / 2) * 4 + 4];
                let yy = pair[(x & 1) * 2];
                o.copy_from_slice(&yuv_to_rgb(yy, pair[1], pair[3]));
            }
        }
        PixelFormat::Nv12 => {
            let yrow = &d[y * w..(y + 1) * w];
            let uv = &d[w * frame.height as usize + (y / 2) * w..][..w];
            for (o, x) in out.chunks_exact_mut(3).zip(x0..x1) {
                let c = (x / 2) * 2;
                o.copy_from_slice(&yuv_to_rgb(yrow[x], uv[c], uv[c + 1]));
            }
        }
    }
}

/// Straightforward reference: whole frame to RGB, then every output pixel as a direct 2-D
/// weighted sum. Slow; for tests and for checking other backends (CUDA) against.
pub fn reference(frame: &Frame, spec: &Preprocess) -> Vec<f32> {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut rgb = vec![0.0f32; w * h * 3];
    for y in 0..h {
        convert_row(frame, y, 0, w, &mut rgb[y * w * 3..(y + 1) * w * 3]);
    }
    let (ow, oh) = (spec.image_size[0] as usize, spec.image_size[1] as usize);
    let (rw, rh, cx, cy) = geometry(frame.width, frame.height, ow as u32, oh as u32, spec.resize);
    let axis = |i: usize, off: u32, resized: u32, src: usize| -> Vec<(usize, f32)> {
        let scale = resized as f64 / src as f64;
        let fs = scale.min(1.0);
        let center = (i as f64 + off as f64 + 0.5) / scale;
        let taps: Vec<(usize, f32)> = (0..src)
            .map(|j| {
                (
                    j,
                    (1.0 - ((j as f64 + 0.5 - center) * fs).abs()).max(0.0) as f32,
                )
            })
            .filter(|(_, wt)| *wt > 0.0)
            .collect();
        let sum: f32 = taps.iter().map(|t| t.1).sum();
        taps.into_iter().map(|(j, wt)| (j, wt / sum)).collect()
    };
    let order: [usize; 3] = match spec.channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let mut out = vec![0.0; 3 * ow * oh];
    for oy in 0..oh {
        let ty = axis(oy, cy, rh, h);
        for ox in 0..ow {
            let tx = axis(ox, cx, rw, w);
            let mut acc = [0.0f64; 3];
            for &(y, wy) in &ty {
                for &(x, wx) in &tx {
                    for c in 0..3 {
                        acc[c] += (wy * wx) as f64 * rgb[(y * w + x) * 3 + c] as f64;
                    }
                }
            }
            for (o, &c) in order.iter().enumerate() {
                out[o * ow * oh + oy * ow + ox] =
                    ((acc[c] / 255.0 - spec.mean[o] as f64) / spec.std[o] as f64) as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::synthetic::render;

    fn spec(w: u32, h: u32, resize: ResizePolicy, order: ChannelOrder) -> Preprocess {
        Preprocess {
            image_size: [w, h],
            resize,
            mean: [0.48145466, 0.4578275, 0.40821073],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            channel_order: order,
        }
    }

    /// Pixels scaled to 0..=1 only (mean 0, std 1), shortest side + centre crop.
    fn unit_spec(size: u32) -> Preprocess {
        Preprocess {
            image_size: [size, size],
            resize: ResizePolicy::ShortestSideCenterCrop,
            mean: [0.0; 3],
            std: [1.0; 3],
            channel_order: ChannelOrder::Rgb,
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn matches_reference_for_every_format_and_policy() {
        for format in PixelFormat::ALL {
            for (sw, sh) in [(64, 48), (40, 60), (32, 32), (20, 14)] {
                for (resize, order) in [
                    (ResizePolicy::ShortestSideCenterCrop, ChannelOrder::Rgb),
                    (ResizePolicy::Stretch, ChannelOrder::Bgr),
                ] {
                    let frame = render(sw, sh, format, 3, "synthetic://");
                    let s = spec(32, 24, resize, order);
                    let mut p = Preprocessor::new(&s);
                    let mut out = vec![0.0; p.output_len()];
                    p.run(&frame, &mut out).unwrap();
                    let r = reference(&frame, &s);
                    let d = max_diff(&out, &r);
                    assert!(d < 1e-4, "{format:?} {sw}x{sh} {resize:?}: max diff {d}");
                }
            }
        }
    }

    #[test]
    fn identity_when_sizes_match() {
        let frame = render(16, 16, PixelFormat::Rgb, 1, "x");
        let s = unit_spec(16);
        let mut p = Preprocessor::new(&s);
        let mut out = vec![0.0; p.output_len()];
        p.run(&frame, &mut out).unwrap();
        for y in 0..16 {
            for x in 0..16 {
                for c in 0..3 {
                    let want = frame.data[(y * 16 + x) * 3 + c] as f32 / 255.0;
                    assert!((out[c * 256 + y * 16 + x] - want).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn centre_crop_geometry_matches_clip() {
        // 640x480 -> shortest side 224 -> 299x224 -> crop offset 38 (torchvision rounding).
        assert_eq!(
            geometry(640, 480, 224, 224, ResizePolicy::ShortestSideCenterCrop),
            (299, 224, 38, 0)
        );
        assert_eq!(
            geometry(28, 28, 32, 32, ResizePolicy::ShortestSideCenterCrop),
            (32, 32, 0, 0)
        );
    }

    #[test]
    fn broken_frame_is_an_error_not_a_panic() {
        let mut frame = render(16, 16, PixelFormat::Yuyv, 0, "cam");
        frame.data.truncate(100);
        let s = spec(
            8,
            8,
            ResizePolicy::ShortestSideCenterCrop,
            ChannelOrder::Rgb,
        );
        let mut p = Preprocessor::new(&s);
        let mut out = vec![0.0; p.output_len()];
        let e = p.run(&frame, &mut out).unwrap_err();
        assert!(e.to_string().contains("100 bytes"), "{e}");
        frame.width = 15; // odd width is invalid for YUYV
        assert!(p.run(&frame, &mut out).is_err());
    }

    #[test]
    fn thin_stroke_survives_large_downscale() {
        // A 2-pixel dark line on white at 640x480 must still darken the 32x32 output.
        let mut frame = Frame::with_capacity(0);
        frame.reshape(640, 480, PixelFormat::Grey);
        frame.data.fill(255);
        for y in 0..480 {
            frame.data[y * 640 + 320] = 0;
            frame.data[y * 640 + 321] = 0;
        }
        let s = unit_spec(32);
        let mut p = Preprocessor::new(&s);
        let mut out = vec![0.0; p.output_len()];
        p.run(&frame, &mut out).unwrap();
        let min = out[..1024].iter().cloned().fold(1.0, f32::min);
        assert!(min < 0.95, "line vanished: min {min}");
    }
}
