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
    // Horizontal triangle filter: output 2i leans left, 2i+1 right.
    for (x, d) in dst.iter_mut().enumerate() {
        let i = x / 2;
        let c = tmp[i.min(cols - 1)] as u32;
        let v = if x.is_multiple_of(2) {
            (3 * c + tmp[i.saturating_sub(1)] as u32 + 8) >> 4
        } else {
            (3 * c + tmp[(i + 1).min(cols - 1)] as u32 + 7) >> 4
        };
        *d = v as u8;
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
