//! The plan's element-wise, reduction and data-movement steps over slices, written so the
//! compiler vectorises them, and compiled three times on x86-64 (AVX-512, AVX2, baseline) with
//! the widest chosen at run time ([`multiversion!`]); on AArch64 NEON is the baseline. The
//! transcendental functions are branch-free polynomial approximations without division (erf's
//! absolute error 1.5e-7, exp's relative error 2e-7: far inside the plan's 1e-4 agreement with
//! tract), so they vectorise too. Their multiply-adds are fused (`mul_add`, one rounding on
//! every target), so every version gives the same bits; other arithmetic is not contracted.

use super::super::ir::{BinOp, RedOp, UnOp};

/// Define `pub fn $name` (or `pub unsafe fn $name`, whose contract is the caller's, stated in
/// its docs) that runs its body compiled for the widest vector ISA of this CPU.
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident($($a:ident : $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        pub fn $name($($a: $t),*) {
            #[inline(always)]
            fn inner<const FUSED: bool>($($a: $t),*) $body
            multiversion!(@wide $($a: $t),*);
            inner::<BASE_FUSED>($($a),*)
        }
    };
    ($(#[$m:meta])* pub unsafe fn $name:ident($($a:ident : $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        pub unsafe fn $name($($a: $t),*) {
            #[inline(always)]
            unsafe fn inner<const FUSED: bool>($($a: $t),*) $body
            multiversion!(@wide $($a: $t),*);
            // SAFETY: the caller's contract.
            unsafe { inner::<BASE_FUSED>($($a),*) }
        }
    };
    // Return `inner` compiled for AVX-512 or AVX2 + FMA when the CPU has them.
    (@wide $($a:ident : $t:ty),*) => {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn v512($($a: $t),*) { inner::<true>($($a),*) }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn v256($($a: $t),*) { inner::<true>($($a),*) }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (an unsafe fn's contract is its caller's).
                return unsafe { v512($($a),*) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA (an unsafe fn's contract is its caller's).
                return unsafe { v256($($a),*) };
            }
        }
    };
}

/// Whether the baseline version fuses multiply-adds: AArch64 has the instruction; the x86-64
/// baseline (SSE2) does not, and a software fused multiply-add costs ~100× a plain one there.
const BASE_FUSED: bool = cfg!(target_arch = "aarch64");

/// `a·b + c`, with one rounding when `FUSED` (the AVX2 and AVX-512 versions and AArch64),
/// two in the x86-64 baseline.
#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` (Cephes' polynomial after range reduction by ln 2), `x` clamped to [−87.3, 88.3]: the
/// result stays a normal float (≥ 1.2e-38, ≤ 2.1e38). Rounding and 2^n use the 1.5·2^23 trick
/// (float adds and integer bit operations only), so the loop vectorises: a float-to-int
/// conversion (`as i32` saturates) keeps LLVM from vectorising it.
#[inline(always)]
pub fn exp<const F: bool>(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer in the low bits
    let x = x.clamp(-87.3, 88.3);
    let t = madd::<F>(x, std::f32::consts::LOG2_E, SHIFT);
    let n = t - SHIFT;
    // x − n·ln 2, with ln 2 split in two so the product's error stays below r's rounding.
    let r = madd::<F>(n, -0.693_359_4, x);
    let r = madd::<F>(n, 2.121_944_4e-4, r);
    let mut p: f32 = 1.987_569_1e-4;
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = madd::<F>(p, r, c);
    }
    let y = madd::<F>(p * r, r, r) + 1.0;
    // t's bits are 0x4B40_0000 + n: the exponent field of 2^n is n + 127 (1..=254 here).
    let e = t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23;
    y * f32::from_bits(e)
}

// `erf`'s polynomials, from `scripts/fit-erf.py` (fits to 1.2e-9 and 8.2e-9).
const ERF_SPLIT: f32 = 1.0;
const ERF_TOP: f32 = 3.92;
const ERF_MID: f32 = 2.46;
// The first is fitted, one ulp below 2/√π (the Taylor coefficient it approximates).
#[allow(clippy::approx_constant)]
const ERF_P: [f32; 7] = [
    1.128_379_1e+00,
    -3.761_262_6e-01,
    1.128_36e-01,
    -2.685_444_8e-02,
    5.189_540_3e-03,
    -8.020_880_6e-04,
    7.889_242e-05,
];
const ERF_Q: [f32; 9] = [
    -7.594_218e+00,
    -5.277_221_7e+00,
    -9.425_696e-01,
    -1.121_168_3e-02,
    2.251_160_3e-03,
    -4.392_585_8e-04,
    8.112_359_5e-05,
    -1.380_053_3e-05,
    1.631_965_3e-06,
];

/// `c[0] + c[1]·v + …` by Horner's rule with fused multiply-adds.
#[inline(always)]
fn horner<const F: bool, const N: usize>(c: &[f32; N], v: f32) -> f32 {
    let mut p = c[N - 1];
    for &ci in c[..N - 1].iter().rev() {
        p = madd::<F>(p, v, ci);
    }
    p
}

/// `erf x` without division: `x·P(x²)` below 1, `1 − e^{Q(|x|)}` (Q fits ln erfc) up to 3.92,
/// 1 beyond (erfc 3.92 = 1.2e-8, under half an ulp of 1). Both branches are computed and one
/// selected, so the loop stays a vector loop. Absolute error 1.5e-7 (`scripts/fit-erf.py`).
#[inline(always)]
pub fn erf<const F: bool>(x: f32) -> f32 {
    let a = x.abs();
    let small = a * horner::<F, 7>(&ERF_P, a * a);
    let big = 1.0 - exp::<F>(horner::<F, 9>(&ERF_Q, a.min(ERF_TOP) - ERF_MID));
    let y = if a < ERF_SPLIT { small } else { big };
    let y = if a < ERF_TOP { y } else { 1.0 };
    y.copysign(x)
}

/// `y[i] = f(y[i])`, 16 values at a time, the tail padded as in [`map16`].
#[inline(always)]
fn map16_in_place(y: &mut [f32], f: impl Fn(f32) -> f32) {
    let mut ys = y.chunks_exact_mut(16);
    for b in &mut ys {
        for d in b.iter_mut() {
            *d = f(*d);
        }
    }
    let yr = ys.into_remainder();
    let mut t = [0f32; 16];
    t[..yr.len()].copy_from_slice(yr);
    tail16(&t, yr, f);
}

/// `y[i] = f(x[i])`, 16 values at a time; the tail is padded to 16 lanes, so short or odd runs
/// (attention's 50-wide softmax rows) run as vectors too instead of one value at a time.
#[inline(always)]
fn map16(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32) {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &mut y[..n]);
    let mut xs = x.chunks_exact(16);
    let mut ys = y.chunks_exact_mut(16);
    for (a, b) in (&mut xs).zip(&mut ys) {
        for (d, s) in b.iter_mut().zip(a) {
            *d = f(*s);
        }
    }
    let (xr, yr) = (xs.remainder(), ys.into_remainder());
    let mut t = [0f32; 16];
    t[..xr.len()].copy_from_slice(xr);
    tail16(&t, yr, f);
}

/// A tail of fewer than 16 values, padded to 16 lanes in `t`: `f` of all 16 (one vector), the
/// first `out.len()` written.
#[inline(always)]
fn tail16(t: &[f32; 16], out: &mut [f32], f: impl Fn(f32) -> f32) {
    if out.is_empty() {
        return;
    }
    let mut r = [0f32; 16];
    for (d, s) in r.iter_mut().zip(t) {
        *d = f(*s);
    }
    out.copy_from_slice(&r[..out.len()]);
}

#[inline(always)]
fn unary1<const F: bool>(op: UnOp, v: f32) -> f32 {
    match op {
        UnOp::Gelu => 0.5 * v * (1.0 + erf::<F>(v * std::f32::consts::FRAC_1_SQRT_2)),
        UnOp::Exp => exp::<F>(v),
        UnOp::Sqrt => v.sqrt(),
        UnOp::Rsqrt => 1.0 / v.sqrt(),
        UnOp::Recip => 1.0 / v,
        UnOp::Tanh => {
            let e = exp::<F>(2.0 * v.clamp(-9.0, 9.0));
            (e - 1.0) / (e + 1.0)
        }
        UnOp::Sigmoid => 1.0 / (1.0 + exp::<F>(-v)),
        UnOp::Erf => erf::<F>(v),
        UnOp::NanToZero => {
            if v.is_nan() {
                0.0
            } else {
                v
            }
        }
    }
}

multiversion! {
    /// `y = op(x)` element by element.
    pub fn unary(op: UnOp, x: &[f32], y: &mut [f32]) {
        // One loop per operator, so each is a straight vector loop.
        macro_rules! each {
            ($($o:ident)*) => {
                match op {
                    $(UnOp::$o => map16(x, y, |v| unary1::<FUSED>(UnOp::$o, v)),)*
                }
            };
        }
        each!(Gelu Exp Sqrt Rsqrt Recip Tanh Sigmoid Erf NanToZero);
    }
}

/// One panel of an int8 layer's output: where its rows go and what the epilogue adds.
pub struct Dequant<'a> {
    /// Rows.
    pub rows: usize,
    /// Columns of the panel (≤ 32).
    pub cols: usize,
    /// Distance between rows in `acc`, `y` and `residual`.
    pub ld: usize,
    /// The activation scale.
    pub scale: f32,
    /// The panel's weight scales (`cols`).
    pub scales: &'a [f32],
    /// The panel's bias (`cols`).
    pub bias: Option<&'a [f32]>,
    /// The residual, from the panel's first column (row `i` at `i · ld`).
    pub residual: Option<&'a [f32]>,
}

multiversion! {
    /// `y[i][j] = acc[i][j] · (scale · scales[j])`, `+ bias[j]`, `+ residual[i][j]` for
    /// one panel (`d.rows` × `d.cols`), each operation as its own plan step would compute it.
    ///
    /// # Safety
    /// For every row `i < d.rows`, `y.add(i * d.ld)` must be valid for `d.cols` writes that
    /// nothing else reads or writes meanwhile; `acc` (and `d.residual`) must hold row `i` at
    /// `i * d.ld .. i * d.ld + d.cols`.
    pub unsafe fn dequantize(acc: &[i32], y: *mut f32, d: &Dequant) {
        for i in 0..d.rows {
            // SAFETY: the caller's contract for row i.
            let out = unsafe { std::slice::from_raw_parts_mut(y.add(i * d.ld), d.cols) };
            let row = &acc[i * d.ld..i * d.ld + d.cols];
            for ((o, a), sc) in out.iter_mut().zip(row).zip(d.scales) {
                *o = *a as f32 * (d.scale * sc);
            }
            if let Some(b) = d.bias {
                for (o, b) in out.iter_mut().zip(b) {
                    *o += *b;
                }
            }
            if let Some(r) = d.residual {
                for (o, r) in out.iter_mut().zip(&r[i * d.ld..i * d.ld + d.cols]) {
                    *o += *r;
                }
            }
        }
    }
}

#[inline(always)]
fn bin1(op: BinOp, a: f32, b: f32) -> f32 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
    }
}

/// A broadcast binary step with its axes merged: up to `MAX_RANK - 1` outer axes walked with
/// counters, and one inner run of `len` outputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct BinGeo {
    /// Outer axis sizes (outermost first), 1 where unused.
    pub outer: [usize; 5],
    /// `a`'s stride per outer axis.
    pub sa: [usize; 5],
    /// `b`'s stride per outer axis.
    pub sb: [usize; 5],
    /// Inner run length.
    pub len: usize,
    /// `a`'s inner stride (0 or 1 in practice).
    pub ia: usize,
    /// `b`'s inner stride.
    pub ib: usize,
}

impl BinGeo {
    /// Merge the axes of a `[MAX_RANK]` broadcast (dims, element strides of `a` and `b`).
    pub fn new(dims: &[i32; 6], sa: &[i32; 6], sb: &[i32; 6]) -> Self {
        // (dim, sa, sb) from the innermost outwards, size-1 axes dropped, mergeable axes merged.
        let mut axes: Vec<(usize, usize, usize)> = Vec::new();
        for i in (0..6).rev() {
            let d = dims[i] as usize;
            if d == 1 {
                continue;
            }
            let (a, b) = (sa[i] as usize, sb[i] as usize);
            if let Some(last) = axes.last_mut() {
                if a == last.1 * last.0 && b == last.2 * last.0 {
                    last.0 *= d;
                    continue;
                }
            }
            axes.push((d, a, b));
        }
        let mut g = BinGeo {
            outer: [1; 5],
            len: 1,
            ..Default::default()
        };
        if let Some(&(d, a, b)) = axes.first() {
            g.len = d;
            g.ia = a;
            g.ib = b;
        }
        for (slot, &(d, a, b)) in (0..5).rev().zip(axes.iter().skip(1)) {
            g.outer[slot] = d;
            g.sa[slot] = a;
            g.sb[slot] = b;
        }
        g
    }
}

multiversion! {
    /// `y = a op b` with broadcasting per `g`.
    pub fn binary(op: BinOp, a: &[f32], b: &[f32], y: &mut [f32], g: &BinGeo) {
        let total: usize = g.outer.iter().product();
        let mut idx = [0usize; 5];
        let (mut oa, mut ob) = (0usize, 0usize);
        for run in 0..total {
            let dst = &mut y[run * g.len..(run + 1) * g.len];
            macro_rules! runs {
                ($($o:ident)*) => {
                    match (op, g.ia, g.ib) {
                        $((BinOp::$o, 1, 1) => {
                            let (sa, sb) = (&a[oa..oa + g.len], &b[ob..ob + g.len]);
                            for ((d, x), z) in dst.iter_mut().zip(sa).zip(sb) {
                                *d = bin1(BinOp::$o, *x, *z);
                            }
                        }
                        (BinOp::$o, 1, 0) => {
                            let (sa, z) = (&a[oa..oa + g.len], b[ob]);
                            for (d, x) in dst.iter_mut().zip(sa) {
                                *d = bin1(BinOp::$o, *x, z);
                            }
                        }
                        (BinOp::$o, 0, 1) => {
                            let (x, sb) = (a[oa], &b[ob..ob + g.len]);
                            for (d, z) in dst.iter_mut().zip(sb) {
                                *d = bin1(BinOp::$o, x, *z);
                            }
                        })*
                        _ => {
                            for (j, d) in dst.iter_mut().enumerate() {
                                *d = bin1(op, a[oa + j * g.ia], b[ob + j * g.ib]);
                            }
                        }
                    }
                };
            }
            runs!(Add Sub Mul Div);
            // Next outer index (innermost outer axis fastest).
            for ax in (0..5).rev() {
                idx[ax] += 1;
                oa += g.sa[ax];
                ob += g.sb[ax];
                if idx[ax] < g.outer[ax] {
                    break;
                }
                oa -= g.sa[ax] * g.outer[ax];
                ob -= g.sb[ax] * g.outer[ax];
                idx[ax] = 0;
            }
        }
    }
}

/// Combine 16 lanes pairwise (8 + 8, 4 + 4, 2 + 2, 1 + 1): four vector steps, where a left
/// fold is 15 dependent scalar ones (a 50-wide softmax row spent most of its time there).
#[inline(always)]
fn tree16(mut l: [f32; 16], f: impl Fn(f32, f32) -> f32) -> f32 {
    for w in [8, 4, 2, 1] {
        for i in 0..w {
            l[i] = f(l[i], l[i + w]);
        }
    }
    l[0]
}

/// Sum of a contiguous run in 16 independent lanes (vectorisable), then the lanes.
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    fold(x, 0.0, |a, b| a + b)
}

/// `f` over a contiguous run in 16 independent lanes, then the lanes (a tree), then the tail.
#[inline(always)]
fn fold(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32 + Copy) -> f32 {
    let mut lanes = [init; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = f(*l, *v);
        }
    }
    let mut s = tree16(lanes, f);
    for v in chunks.remainder() {
        s = f(s, *v);
    }
    s
}

#[inline(always)]
fn reduce_run(op: RedOp, x: &[f32]) -> f32 {
    match op {
        RedOp::Sum => sum(x),
        RedOp::Max => fold(x, f32::NEG_INFINITY, f32::max),
        RedOp::Min => fold(x, f32::INFINITY, f32::min),
    }
}

multiversion! {
    /// Reduce the middle axis of `[outer, len, inner]`.
    pub fn reduce(op: RedOp, x: &[f32], y: &mut [f32], dims: [usize; 3]) {
        let [o, l, n] = dims;
        if n == 1 {
            for (oi, d) in y[..o].iter_mut().enumerate() {
                *d = reduce_run(op, &x[oi * l..(oi + 1) * l]);
            }
            return;
        }
        for oi in 0..o {
            let dst = &mut y[oi * n..(oi + 1) * n];
            dst.copy_from_slice(&x[oi * l * n..oi * l * n + n]);
            for li in 1..l {
                let src = &x[(oi * l + li) * n..(oi * l + li + 1) * n];
                for (d, v) in dst.iter_mut().zip(src) {
                    *d = match op {
                        RedOp::Sum => *d + *v,
                        RedOp::Max => d.max(*v),
                        RedOp::Min => d.min(*v),
                    };
                }
            }
        }
    }
}

multiversion! {
    /// Softmax along the middle axis of `[outer, len, inner]`.
    pub fn softmax(x: &[f32], y: &mut [f32], dims: [usize; 3]) {
        let [o, l, n] = dims;
        if n == 1 {
            // Rows are contiguous. Three passes, so the exponentials run as one long vector
            // loop over the whole block rather than row by row (attention's rows are 50 wide:
            // short runs with a tail).
            let (x, y) = (&x[..o * l], &mut y[..o * l]);
            for (src, dst) in x.chunks_exact(l).zip(y.chunks_exact_mut(l)) {
                // A plain compare (one `maxps`): a NaN in the row makes the row NaN either way.
                let mx = fold(src, f32::NEG_INFINITY, |a, b| if a > b { a } else { b });
                for (d, v) in dst.iter_mut().zip(src) {
                    *d = *v - mx;
                }
            }
            map16_in_place(y, exp::<FUSED>);
            for dst in y.chunks_exact_mut(l) {
                let inv = 1.0 / sum(dst);
                for d in dst.iter_mut() {
                    *d *= inv;
                }
            }
            return;
        }
        for oi in 0..o {
            for ni in 0..n {
                let at = |li: usize| (oi * l + li) * n + ni;
                let mx = (0..l).map(|li| x[at(li)]).fold(f32::NEG_INFINITY, f32::max);
                let mut s = 0.0;
                for li in 0..l {
                    let e = exp::<FUSED>(x[at(li)] - mx);
                    y[at(li)] = e;
                    s += e;
                }
                let inv = 1.0 / s;
                for li in 0..l {
                    y[at(li)] *= inv;
                }
            }
        }
    }
}

/// `1 / √(mean(row²) + eps)`: squares summed in 16 lanes, then the lanes, then the tail.
#[inline(always)]
fn rms_inv(row: &[f32], eps: f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for (a, v) in lanes.iter_mut().zip(c) {
            *a += *v * *v;
        }
    }
    let ss = tree16(lanes, |a, b| a + b) + chunks.remainder().iter().map(|v| v * v).sum::<f32>();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

multiversion! {
    /// Layer normalization of each `len`-long row (no affine part), computed as the four steps
    /// it replaces compute it (same bits): `mean = Σrow · scale` ([`reduce`], then a product),
    /// `d = row − mean`, then [`rms_norm`] of `d`. One pass over each row instead of four over
    /// the tensor.
    pub fn layer_norm(x: &[f32], y: &mut [f32], len: usize, scale: f32, eps: f32) {
        for (src, dst) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)) {
            let mean = sum(src) * scale;
            for (d, v) in dst.iter_mut().zip(src) {
                *d = *v - mean;
            }
            let inv = rms_inv(dst, eps);
            for d in dst.iter_mut() {
                *d *= inv;
            }
        }
    }
}

multiversion! {
    /// `x / √(mean(x²) + eps)` along the middle axis of `[outer, len, inner]`.
    pub fn rms_norm(x: &[f32], y: &mut [f32], dims: [usize; 3], eps: f32) {
        let [o, l, n] = dims;
        for oi in 0..o {
            for ni in 0..n {
                let at = |li: usize| (oi * l + li) * n + ni;
                let inv = if n == 1 {
                    rms_inv(&x[oi * l..(oi + 1) * l], eps)
                } else {
                    let ss: f32 = (0..l).map(|li| x[at(li)] * x[at(li)]).sum();
                    1.0 / (ss / l as f32 + eps).sqrt()
                };
                for li in 0..l {
                    y[at(li)] = x[at(li)] * inv;
                }
            }
        }
    }
}

/// A transposition with its axes merged: outer axes walked with counters, one inner run.
#[derive(Debug, Clone, Copy, Default)]
pub struct PermGeo {
    /// Outer output axis sizes, 1 where unused.
    pub outer: [usize; 5],
    /// Input stride per outer axis.
    pub src: [usize; 5],
    /// Inner run length.
    pub len: usize,
    /// Input stride of the inner run.
    pub inner: usize,
}

impl PermGeo {
    /// From output dims and the input stride of each output dim.
    pub fn new(dims: &[i32; 6], src_strides: &[i32; 6]) -> Self {
        let zero = [0i32; 6];
        let b = BinGeo::new(dims, src_strides, &zero);
        PermGeo {
            outer: b.outer,
            src: b.sa,
            len: b.len,
            inner: b.ia,
        }
    }
}

impl PermGeo {
    /// Inner runs in the output.
    pub fn runs(&self) -> usize {
        self.outer.iter().product()
    }
}

/// `y[i] = x[src(i)]` per `g`, for output runs `runs` only (all: `0..g.runs()`), written to `y`
/// from its start (`y` holds `runs.len() · g.len` values): threads may take disjoint ranges.
pub fn permute_runs(x: &[f32], y: &mut [f32], g: &PermGeo, runs: std::ops::Range<usize>) {
    // The first run's outer index and input offset.
    let mut idx = [0usize; 5];
    let (mut off, mut r) = (0usize, runs.start);
    for ax in (0..5).rev() {
        idx[ax] = r % g.outer[ax];
        r /= g.outer[ax];
        off += idx[ax] * g.src[ax];
    }
    for run in 0..runs.len() {
        let dst = &mut y[run * g.len..(run + 1) * g.len];
        if g.inner == 1 {
            dst.copy_from_slice(&x[off..off + g.len]);
        } else {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = x[off + j * g.inner];
            }
        }
        for ax in (0..5).rev() {
            idx[ax] += 1;
            off += g.src[ax];
            if idx[ax] < g.outer[ax] {
                break;
            }
            off -= g.src[ax] * g.outer[ax];
            idx[ax] = 0;
        }
    }
}

/// Select `indices` along the middle axis of `[outer, len, inner]`.
pub fn gather(x: &[f32], y: &mut [f32], dims: [usize; 3], indices: &[i32]) {
    let [o, l, n] = dims;
    let k = indices.len();
    for oi in 0..o {
        for (j, &ix) in indices.iter().enumerate() {
            let s = (oi * l + ix as usize) * n;
            y[(oi * k + j) * n..(oi * k + j + 1) * n].copy_from_slice(&x[s..s + n]);
        }
    }
}

/// Write `x` (`[outer, len, inner]`) at `offset` along the middle axis of `y`
/// (`[outer, total, inner]`).
pub fn concat_part(x: &[f32], y: &mut [f32], dims: [usize; 3], total: usize, offset: usize) {
    let [o, l, n] = dims;
    for oi in 0..o {
        let d = (oi * total + offset) * n;
        y[d..d + l * n].copy_from_slice(&x[oi * l * n..(oi + 1) * l * n]);
    }
}

#[cfg(test)]
mod tests;
