//! Chroma upsampling (libjpeg's "fancy" triangle filter: ¾ nearer sample + ¼ farther, in both
//! directions) and JFIF YCbCr → RGB (full-range BT.601), one output row at a time.

/// Where one component's decoded samples are, and how they map onto output pixels.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PlaneGeom {
    /// Bytes per plane row.
    pub stride: usize,
    /// Rows and columns holding real samples (the rest is block padding).
    pub rows: usize,
    pub cols: usize,
    /// Output pixels per sample horizontally and vertically (1 or 2).
    pub fx: usize,
    pub fy: usize,
}

/// Output row `y` of a component that is not subsampled (`width` pixels of its plane), or
/// `None` for a subsampled one (see [`component_row`]).
pub(super) fn plane_row<'a>(
    plane: &'a [u8],
    g: &PlaneGeom,
    y: usize,
    width: usize,
) -> Option<&'a [u8]> {
    if g.fx == 1 && g.fy == 1 {
        let r = y.min(g.rows - 1) * g.stride;
        Some(&plane[r..r + width])
    } else {
        None
    }
}

/// Output row `y` of a subsampled component, `width` pixels, into `dst`, upsampled (nothing
/// for one at full resolution: [`plane_row`] reads its rows in place). `tmp` holds at least
/// `g.cols` values.
pub(super) fn component_row(
    plane: &[u8],
    g: &PlaneGeom,
    y: usize,
    width: usize,
    tmp: &mut [u16],
    dst: &mut [u8],
) {
    let dst = &mut dst[..width];
    let cols = g.cols;
    if g.fx == 1 && g.fy == 1 {
        // Read in place: see [`plane_row`].
        return;
    }
    // Vertical: 4 × the value (3 × nearer + farther when subsampled vertically).
    let tmp = &mut tmp[..cols];
    if g.fy == 2 {
        let near = (y / 2).min(g.rows - 1);
        let far = if y.is_multiple_of(2) {
            near.saturating_sub(1)
        } else {
            (near + 1).min(g.rows - 1)
        };
        let (n, f) = (
            &plane[near * g.stride..][..cols],
            &plane[far * g.stride..][..cols],
        );
        for ((t, &a), &b) in tmp.iter_mut().zip(n).zip(f) {
            *t = 3 * a as u16 + b as u16;
        }
    } else {
        let r = &plane[y.min(g.rows - 1) * g.stride..][..cols];
        for (t, &a) in tmp.iter_mut().zip(r) {
            *t = 4 * a as u16;
        }
    }
    if g.fx == 1 {
        for (d, &t) in dst.iter_mut().zip(tmp.iter()) {
            *d = ((t + 2) >> 2) as u8;
        }
        return;
    }
    // Horizontal triangle filter: output 2i leans left, 2i+1 right; the edges repeat the
    // outermost sample.
    let pairs = width / 2;
    let t = |i: usize| tmp[i.min(cols - 1)] as u32;
    if pairs > 0 {
        dst[0] = ((4 * t(0) + 8) >> 4) as u8;
        dst[1] = ((3 * t(0) + t(1) + 7) >> 4) as u8;
    }
    // The interior, without clamping (vectorisable): 16-bit arithmetic (at most
    // 4 × 1020 + 8), each output pair stored as one little-endian word.
    let inner = pairs.min(cols.saturating_sub(1));
    if inner > 1 {
        let (prev, cur, next) = (&tmp[..inner - 1], &tmp[1..inner], &tmp[2..inner + 1]);
        let (out, _) = dst[2..2 * inner].as_chunks_mut::<2>();
        for (((d, &p), &c), &n) in out.iter_mut().zip(prev).zip(cur).zip(next) {
            let c3 = 3 * c;
            let (lo, hi) = ((c3 + p + 8) >> 4, (c3 + n + 7) >> 4);
            *d = (lo | hi << 8).to_le_bytes();
        }
    }
    for i in inner.max(1)..pairs {
        dst[2 * i] = ((3 * t(i) + t(i - 1) + 8) >> 4) as u8;
        dst[2 * i + 1] = ((3 * t(i) + t(i + 1) + 7) >> 4) as u8;
    }
    if width % 2 == 1 {
        let i = pairs;
        dst[2 * i] = ((3 * t(i) + t(i.saturating_sub(1)) + 8) >> 4) as u8;
    }
}

/// JFIF YCbCr → packed RGB for one row.
///
/// 16-bit fixed-point BT.601 full-range coefficients: R = Y + ⌊(91881·Cr + 2¹⁵) / 2¹⁶⌋,
/// G = Y − ⌊(22554·Cb + 46802·Cr − 2¹⁵) / 2¹⁶⌋, B = Y + ⌊(116130·Cb + 2¹⁵) / 2¹⁶⌋ (Cb, Cr
/// centred on 0). Each coefficient above 2¹⁵ is split into a multiple of 2¹⁶ (a whole `Cr` or
/// `2·Cb`, added outside the shift: the same floor) and a remainder below 2¹⁵, so that every
/// product fits 16-bit multiplies and the loop vectorises on the SSE2 baseline; 16 pixels are
/// computed at once, then stored.
pub(super) fn ycbcr_row(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    const N: usize = 16;
    let n = (out.len() / 3).min(y.len()).min(cb.len()).min(cr.len());
    let (y, cb, cr, out) = (&y[..n], &cb[..n], &cr[..n], &mut out[..3 * n]);
    let (o, o_rest) = out.as_chunks_mut::<{ 3 * N }>();
    let ((ys, y_rest), (cbs, cb_rest), (crs, cr_rest)) =
        (y.as_chunks::<N>(), cb.as_chunks::<N>(), cr.as_chunks::<N>());
    for (((o, y), cb), cr) in o.iter_mut().zip(ys).zip(cbs).zip(crs) {
        let (mut r, mut g, mut b) = ([0u8; N], [0u8; N], [0u8; N]);
        for i in 0..N {
            [r[i], g[i], b[i]] = pixel(y[i], cb[i], cr[i]);
        }
        for i in 0..N {
            o[3 * i..3 * i + 3].copy_from_slice(&[r[i], g[i], b[i]]);
        }
    }
    let rest = y_rest.iter().zip(cb_rest).zip(cr_rest);
    for (p, ((&y, &cb), &cr)) in o_rest.chunks_exact_mut(3).zip(rest) {
        p.copy_from_slice(&pixel(y, cb, cr));
    }
}

/// One pixel of [`ycbcr_row`].
#[inline(always)]
fn pixel(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (yy, cb, cr) = (y as i32, cb as i32 - 128, cr as i32 - 128);
    // 91881 = 2¹⁶ + 26345; 46802 = 2¹⁶ − 18734; 116130 = 2·2¹⁶ − 14942.
    let r = yy + cr + ((26_345 * cr + 32_768) >> 16);
    let g = yy - cr - ((22_554 * cb - 18_734 * cr - 32_768) >> 16);
    let b = yy + 2 * cb + ((32_768 - 14_942 * cb) >> 16);
    [
        r.clamp(0, 255) as u8,
        g.clamp(0, 255) as u8,
        b.clamp(0, 255) as u8,
    ]
}

/// Grey → packed RGB for one row.
pub(super) fn grey_row(y: &[u8], out: &mut [u8]) {
    for (o, &v) in out.chunks_exact_mut(3).zip(y) {
        o.fill(v);
    }
}
