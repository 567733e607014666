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

/// Output row `y` of a component, `width` pixels, into `dst` (upsampled when the component is
/// subsampled). `tmp` holds at least `g.cols` values.
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
        let r = y.min(g.rows - 1) * g.stride;
        dst.copy_from_slice(&plane[r..r + width]);
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
    // The interior, without clamping (vectorisable).
    let inner = pairs.min(cols.saturating_sub(1));
    if inner > 1 {
        let (prev, cur, next) = (&tmp[..inner - 1], &tmp[1..inner], &tmp[2..inner + 1]);
        for (((d, &p), &c), &n) in dst[2..2 * inner]
            .chunks_exact_mut(2)
            .zip(prev)
            .zip(cur)
            .zip(next)
        {
            let c3 = 3 * c as u32;
            d[0] = ((c3 + p as u32 + 8) >> 4) as u8;
            d[1] = ((c3 + n as u32 + 7) >> 4) as u8;
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
pub(super) fn ycbcr_row(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    // 16-bit fixed-point BT.601 full-range coefficients.
    const CR_R: i32 = 91_881; // 1.402
    const CB_G: i32 = 22_554; // 0.344136
    const CR_G: i32 = 46_802; // 0.714136
    const CB_B: i32 = 116_130; // 1.772
    for (((o, &y), &cb), &cr) in out.chunks_exact_mut(3).zip(y).zip(cb).zip(cr) {
        let (yy, cb, cr) = (y as i32, cb as i32 - 128, cr as i32 - 128);
        let r = yy + ((CR_R * cr + 32_768) >> 16);
        let g = yy - ((CB_G * cb + CR_G * cr - 32_768) >> 16);
        let b = yy + ((CB_B * cb + 32_768) >> 16);
        o[0] = r.clamp(0, 255) as u8;
        o[1] = g.clamp(0, 255) as u8;
        o[2] = b.clamp(0, 255) as u8;
    }
}

/// Grey → packed RGB for one row.
pub(super) fn grey_row(y: &[u8], out: &mut [u8]) {
    for (o, &v) in out.chunks_exact_mut(3).zip(y) {
        o.fill(v);
    }
}
