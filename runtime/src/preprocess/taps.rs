//! Filter taps for one axis of the separable resize, and the resize geometry.

use edgefuse_models::manifest::ResizePolicy;

/// Filter taps for one axis: for output `i`, weights `w[off[i]..off[i]+len[i]]` apply to
/// source pixels `start[i]..start[i]+len[i]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Taps {
    pub start: Vec<usize>,
    pub len: Vec<usize>,
    pub off: Vec<usize>,
    pub w: Vec<f32>,
    /// First cell any output reads.
    pub min: usize,
    /// One past the last cell any output reads.
    pub max: usize,
    /// Longest tap run.
    pub max_len: usize,
}

/// Triangle filter.
fn tri(x: f32) -> f32 {
    (1.0 - x.abs()).max(0.0)
}

impl Taps {
    /// Taps for `out` outputs taken at resized positions `crop_off..crop_off+out` of an axis of
    /// `cells` source cells, `scale` output pixels per cell. The triangle kernel is widened by
    /// the downscale factor (antialiasing), as PIL and torch's `antialias=True` do.
    pub fn compute(&mut self, cells: usize, scale: f32, crop_off: usize, out: usize) {
        self.start.clear();
        self.len.clear();
        self.off.clear();
        self.w.clear();
        let support = if scale < 1.0 { 1.0 / scale } else { 1.0 };
        let filter_scale = scale.min(1.0);
        self.min = usize::MAX;
        self.max = 0;
        self.max_len = 0;
        for i in 0..out {
            let center = ((i + crop_off) as f32 + 0.5) / scale;
            let lo = ((center - support).floor().max(0.0)) as usize;
            let hi = ((center + support).ceil() as usize).min(cells);
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
                // Degenerate (cannot happen for valid geometry): nearest cell.
                self.w.push(1.0);
                ((center.floor() as usize).min(cells - 1), 1)
            } else {
                (s, n)
            };
            self.start.push(s);
            self.len.push(n);
            self.off.push(off);
            self.min = self.min.min(s);
            self.max = self.max.max(s + n);
            self.max_len = self.max_len.max(n);
        }
    }

    /// Weights of output `i`.
    #[inline(always)]
    pub fn weights(&self, i: usize) -> &[f32] {
        &self.w[self.off[i]..self.off[i] + self.len[i]]
    }
}

/// Resize geometry: resized size and crop offsets for a source (or region) of `w × h`.
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
