//! Inverse DCTs straight to the reduced size: 8×8 (scale 1), 4×4 from the 4×4 lowest
//! frequencies (1/2), 2×2 (1/4) and the DC alone (1/8). Each reduced transform evaluates the
//! same band-limited cosine series as the full one at the centres of the coarser pixel grid,
//! so a reduced block is close to the box average of the full block (the DC term exactly).
//!
//! The 8×8 transform is the Loeffler–Ligtenberg–Moschytz factorisation in `f32`, written on
//! eight lanes at a time (one lane per column, then per row) so that LLVM vectorises it.

/// `8 × 8` coefficient block in natural order, dequantised, and a spare slot (64) where the
/// decoder stores the coefficients a reduced transform does not read.
pub(super) type Block = [i32; 65];

#[inline(always)]
fn to_u8(v: f32) -> u8 {
    // +128 level shift and rounding (`as i32` saturates; NaN cannot occur from finite input).
    ((v + 128.5) as i32).clamp(0, 255) as u8
}

type Lanes = [f32; 8];

/// One 8-point IDCT per lane: `s[k]` holds frequency `k` of each lane; returns samples 0..8.
#[inline(always)]
fn idct8_lanes(s: &[Lanes; 8]) -> [Lanes; 8] {
    let mut out = [[0f32; 8]; 8];
    for l in 0..8 {
        let p2 = s[2][l];
        let p3 = s[6][l];
        let p1 = (p2 + p3) * 0.541_196_1;
        let t2 = p1 + p3 * -1.847_759_1;
        let t3 = p1 + p2 * 0.765_366_85;
        let t0 = s[0][l] + s[4][l];
        let t1 = s[0][l] - s[4][l];
        let x0 = t0 + t3;
        let x3 = t0 - t3;
        let x1 = t1 + t2;
        let x2 = t1 - t2;
        let (mut a0, mut a1, mut a2, mut a3) = (s[7][l], s[5][l], s[3][l], s[1][l]);
        let q3 = a0 + a2;
        let q4 = a1 + a3;
        let q1 = a0 + a3;
        let q2 = a1 + a2;
        let p5 = (q3 + q4) * 1.175_875_6;
        a0 *= 0.298_631_34;
        a1 *= 2.053_12;
        a2 *= 3.072_711;
        a3 *= 1.501_321_1;
        let q1 = p5 + q1 * -0.899_976_2;
        let q2 = p5 + q2 * -2.562_915_3;
        let q3 = q3 * -1.961_570_6;
        let q4 = q4 * -0.390_180_64;
        a3 += q1 + q4;
        a2 += q2 + q3;
        a1 += q2 + q4;
        a0 += q1 + q3;
        out[0][l] = x0 + a3;
        out[7][l] = x0 - a3;
        out[1][l] = x1 + a2;
        out[6][l] = x1 - a2;
        out[2][l] = x2 + a1;
        out[5][l] = x2 - a1;
        out[3][l] = x3 + a0;
        out[4][l] = x3 - a0;
    }
    out
}

/// Full 8×8 IDCT of `c` into `out` (8 rows of 8 pixels, `stride` apart).
pub(super) fn idct8(c: &Block, out: &mut [u8], stride: usize) {
    // Columns: lane = column u, input row v.
    let mut rows = [[0f32; 8]; 8];
    for (v, r) in rows.iter_mut().enumerate() {
        for (u, x) in r.iter_mut().enumerate() {
            *x = c[v * 8 + u] as f32;
        }
    }
    let cols = idct8_lanes(&rows); // cols[y][u]
                                   // Rows: lane = row y, input frequency u (transpose).
    let mut t = [[0f32; 8]; 8];
    for (y, r) in cols.iter().enumerate() {
        for (u, &x) in r.iter().enumerate() {
            t[u][y] = x;
        }
    }
    let px = idct8_lanes(&t); // px[x][y]
    for y in 0..8 {
        let o = &mut out[y * stride..y * stride + 8];
        for (x, p) in o.iter_mut().enumerate() {
            *p = to_u8(px[x][y] * 0.125);
        }
    }
}

/// `cos((2n+1)kπ/8)·C(k)/2` for the 4-point reduced IDCT (`C(0) = 1/√2`).
const M4: [[f32; 4]; 4] = {
    // Precomputed: cos(π/8)=0.92387953, cos(3π/8)=0.38268343, cos(π/4)=0.70710678.
    let a = 0.353_553_4; // (1/√2)/2
    let c1 = 0.461_939_77; // cos(π/8)/2
    let c2 = 0.353_553_4; // cos(2π/8)/2
    let c3 = 0.191_341_72; // cos(3π/8)/2
    [
        [a, c1, c2, c3],
        [a, c3, -c2, -c1],
        [a, -c3, -c2, c1],
        [a, -c1, c2, -c3],
    ]
};

/// Reduced 4×4 IDCT from the 4×4 lowest frequencies of `c`.
pub(super) fn idct4(c: &Block, out: &mut [u8], stride: usize) {
    // Columns: tmp[y][u] = Σ_v M4[y][v] c[v][u].
    let mut tmp = [[0f32; 4]; 4];
    for (y, t) in tmp.iter_mut().enumerate() {
        for v in 0..4 {
            let m = M4[y][v];
            for u in 0..4 {
                t[u] += m * c[v * 8 + u] as f32;
            }
        }
    }
    for y in 0..4 {
        let o = &mut out[y * stride..y * stride + 4];
        for (x, p) in o.iter_mut().enumerate() {
            let mut s = 0.0;
            for u in 0..4 {
                s += M4[x][u] * tmp[y][u];
            }
            *p = to_u8(s);
        }
    }
}

/// Reduced 2×2 IDCT from the 2×2 lowest frequencies of `c`.
#[inline(always)]
pub(super) fn idct2(c: &Block, out: &mut [u8], stride: usize) {
    // f(n) = (F0/√2 ± F1·cos(π/4))/2 per axis: (F0 ± F1)/(2√2); both axes: (sum of ±F)/8.
    let (c00, c01, c10, c11) = (c[0], c[1], c[8], c[9]);
    let a = c00.wrapping_add(c10);
    let b = c00.wrapping_sub(c10);
    let (p, m) = (c01.wrapping_add(c11), c01.wrapping_sub(c11));
    let (r0, r1) = out.split_at_mut(stride);
    r0[..2].copy_from_slice(&[dc_pixel(a.wrapping_add(p)), dc_pixel(a.wrapping_sub(p))]);
    r1[..2].copy_from_slice(&[dc_pixel(b.wrapping_add(m)), dc_pixel(b.wrapping_sub(m))]);
}

/// The block's DC alone as a pixel (1/8 scale), or a flat block of it: `c0 / 8 + 128`,
/// rounded, clamped.
#[inline(always)]
pub(super) fn dc_pixel(c0: i32) -> u8 {
    (c0.wrapping_add(1028) >> 3).clamp(0, 255) as u8
}

/// Fill `n × n` pixels (`n` = 1, 2, 4, 8) with one value (a block without AC coefficients).
#[inline(always)]
pub(super) fn fill(v: u8, n: usize, out: &mut [u8], stride: usize) {
    #[inline(always)]
    fn rows<const N: usize>(v: u8, out: &mut [u8], stride: usize) {
        for y in 0..N {
            out[y * stride..y * stride + N].copy_from_slice(&[v; N]);
        }
    }
    match n {
        1 => out[0] = v,
        2 => rows::<2>(v, out, stride),
        4 => rows::<4>(v, out, stride),
        _ => rows::<8>(v, out, stride),
    }
}
