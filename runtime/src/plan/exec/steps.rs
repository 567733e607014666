//! Executing one compiled step: the views of its buffers, and the steps that split across the
//! pool (matrix products, convolutions, int8 layers, large element-wise steps).

use edgefuse_models::quant::gemm::{self as int8, row_blocks, Kernel, PackedWeights, PANEL};

use super::gemm::{
    lhs_blocks, pack_lhs_block, pack_panel, packed_lhs_len, packs_lhs, panel_product, Left, Lhs,
    Out, Rhs as Src,
};
use super::{ops, Ctx, Loc, Op, Rhs, Scratch, Shared};
use crate::plan::ir::{Conv2d, MatMul, UnOp};

impl Ctx<'_> {
    /// A step's input. The arena views below are sound because the arena outlives the run and
    /// is not resized, `CpuPlan::run` holds it exclusively, and a step's output region is
    /// disjoint from its inputs (`check_disjoint`), so no view aliases the one mutable view.
    fn view(&self, base: *mut f32, l: Loc) -> &[f32] {
        match l {
            // SAFETY: see above; `off + len` lies in the arena (placed at build).
            Loc::Arena { off, len } => unsafe { std::slice::from_raw_parts(base.add(off), len) },
            Loc::Const { idx, len } => &self.consts[idx][..len],
        }
    }

    pub(super) fn exec(&self, op: &Op, base: *mut f32, scratch: &mut Scratch) {
        let v = |l: Loc| self.view(base, l);
        let out_mut = |l: Loc| -> &mut [f32] {
            let Loc::Arena { off, len } = l else {
                unreachable!("check_disjoint refuses steps that write constants")
            };
            // SAFETY: in the arena; disjoint from every input of this step (check_disjoint)
            // and the only mutable view while the step runs.
            unsafe { std::slice::from_raw_parts_mut(base.add(off), len) }
        };
        match op {
            Op::Binary { op, a, b, out, geo } => ops::binary(*op, v(*a), v(*b), out_mut(*out), geo),
            Op::Unary { op, x, out } => self.unary(*op, v(*x), out_mut(*out)),
            Op::Reduce { op, x, out, dims } => ops::reduce(*op, v(*x), out_mut(*out), *dims),
            Op::RmsNorm { x, out, dims, eps } => ops::rms_norm(v(*x), out_mut(*out), *dims, *eps),
            Op::LayerNorm {
                x,
                out,
                dims,
                scale,
                eps,
            } => self.layer_norm(v(*x), out_mut(*out), *dims, *scale, *eps),
            Op::Softmax { x, out, dims } => self.softmax(v(*x), out_mut(*out), *dims),
            Op::Permute { x, out, geo } => self.permute(v(*x), out_mut(*out), geo),
            Op::Gather {
                x,
                out,
                dims,
                indices,
            } => ops::gather(v(*x), out_mut(*out), *dims, indices),
            Op::Concat {
                x,
                out,
                dims,
                total,
                offset,
            } => ops::concat_part(v(*x), out_mut(*out), *dims, *total, *offset),
            Op::MatMul { a, b, out, shape } => {
                let live = match b {
                    Rhs::Live(l) => Some(v(*l)),
                    Rhs::Packed(_) => None,
                };
                self.matmul(v(*a), b, live, out_mut(*out), shape, scratch)
            }
            Op::Conv {
                x,
                w,
                bias,
                out,
                shape,
            } => {
                let y = out_mut(*out);
                self.conv(v(*x), w, y, shape, scratch);
                if let Some(bias) = bias {
                    let [o, oh, ow] = shape.output.map(|d| d as usize);
                    let b = v(*bias);
                    for (i, plane) in y.chunks_exact_mut(oh * ow).enumerate() {
                        let bv = b[i % o];
                        plane.iter_mut().for_each(|p| *p += bv);
                    }
                }
            }
            Op::ConvGrouped {
                x,
                w,
                bias,
                out,
                shape,
            } => crate::plan::conv_cpu(v(*x), v(*w), bias.map(v), out_mut(*out), shape),
            Op::Int8 {
                x,
                out,
                m,
                w,
                kernel,
                act_scale,
                epilogue: e,
            } => {
                let adds = (e.bias.map(v), e.residual.map(v));
                let (y, w) = (out_mut(*out), &**w);
                self.int8(v(*x), y, *m, w, *kernel, *act_scale, adds, scratch)
            }
        }
    }

    /// Run `f(r, rows r of y)` over `rows` rows of `row_len` values of `y`: split across the
    /// pool in ranges of about `values` values when there are at least two such ranges, on the
    /// calling thread in one piece otherwise. The row-wise steps below share it.
    fn split_rows(
        &self,
        y: &mut [f32],
        rows: usize,
        row_len: usize,
        values: usize,
        f: &(dyn Fn(std::ops::Range<usize>, &mut [f32]) + Sync),
    ) {
        debug_assert!(y.len() >= rows * row_len);
        let per = (values / row_len.max(1)).max(1);
        if self.pool.threads() == 1 || rows < 2 * per {
            return f(0..rows, y);
        }
        let yp = Shared(y.as_mut_ptr());
        self.pool.run(rows.div_ceil(per), &|t, _| {
            let (a, b) = (t * per, ((t + 1) * per).min(rows));
            // SAFETY: each task writes its own rows a..b of `y` (in bounds: b ≤ rows).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(yp.get().add(a * row_len), (b - a) * row_len)
            };
            f(a..b, dst);
        });
    }

    /// An element-wise step, split when large (GELU over an MLP's hidden layer: 150k values
    /// per ViT-B/32 block).
    fn unary(&self, op: UnOp, x: &[f32], y: &mut [f32]) {
        let len = y.len();
        self.split_rows(y, len, 1, 1 << 14, &|r, dst| ops::unary(op, &x[r], dst));
    }

    /// A layer norm, split by rows when large (a ViT-B/32 block's: 50 rows of 768).
    fn layer_norm(&self, x: &[f32], y: &mut [f32], [rows, len]: [usize; 2], scale: f32, eps: f32) {
        self.split_rows(y, rows, len, 1 << 13, &|r, dst| {
            ops::layer_norm(&x[r.start * len..r.end * len], dst, len, scale, eps)
        });
    }

    /// A softmax, split by outer index when large (attention's: 12 heads × 50 rows of 50 per
    /// ViT-B/32 block).
    fn softmax(&self, x: &[f32], y: &mut [f32], [o, l, n]: [usize; 3]) {
        self.split_rows(y, o, l * n, 1 << 12, &|r, dst| {
            ops::softmax(&x[r.start * l * n..r.end * l * n], dst, [r.len(), l, n])
        });
    }

    /// A transposition, split by output runs when large (the attention heads' query/key/value
    /// split: 115k values per ViT-B/32 block).
    fn permute(&self, x: &[f32], y: &mut [f32], g: &ops::PermGeo) {
        self.split_rows(y, g.runs(), g.len, 1 << 14, &|r, dst| {
            ops::permute_runs(x, dst, g, r)
        });
    }

    fn matmul(
        &self,
        a: &[f32],
        b: &Rhs,
        live: Option<&[f32]>,
        y: &mut [f32],
        s: &MatMul,
        scratch: &mut Scratch,
    ) {
        let (m, n, k) = (s.m as usize, s.n as usize, s.k as usize);
        let nr = self.fk.nr();
        let panels = n.div_ceil(nr);
        let [b0, b1] = s.batch.map(|d| d as usize);
        let st = |v: [i32; 4]| v.map(|d| d as usize);
        let (sa, sb, sc) = (st(s.sa), st(s.sb), st(s.sc));
        // Every batch's left operand packed once, before the tasks share it, when enough panels
        // read it to repay the copy; otherwise the tasks read it in place.
        let packed = packs_lhs(self.fk, n);
        let plen = packed_lhs_len(self.fk, m, k);
        // Work in multiply-adds: small products stay on this thread.
        let work = b0 * b1 * m * n * k;
        if packed {
            // One task per batch × row block.
            let (fk, mr) = (self.fk, self.fk.mr());
            let blocks = lhs_blocks(fk, m);
            let lhs = Shared(scratch.lhs.as_mut_ptr());
            let ap = Shared(a.as_ptr() as *mut f32);
            let pack = |task: usize, _: usize| {
                let (batch, blk) = (task / blocks, task % blocks);
                let (i0, i1) = (batch / b1, batch % b1);
                // SAFETY: the batch's rows and columns lie in `a` (offsets from the step's own
                // geometry, derived from the buffers' shapes by the lowering); each task
                // writes its own block of the batch's packed copy, inside the scratch sized
                // for the plan's largest (`packed_lhs_len` = blocks · k · mr per batch).
                unsafe {
                    let src = Lhs {
                        ptr: ap.get().add(i0 * sa[0] + i1 * sa[1]),
                        rs: sa[2],
                        ks: sa[3],
                    };
                    let dst = std::slice::from_raw_parts_mut(
                        lhs.get().add(batch * plen + blk * k * mr),
                        k * mr,
                    );
                    pack_lhs_block(fk, src, m, k, blk, dst);
                }
            };
            self.pool
                .run_prep(work, b0 * b1 * m * k, b0 * b1 * blocks, &pack);
        }
        let lhs: &[f32] = &scratch.lhs;
        let (ap, yp) = (Shared(a.as_ptr() as *mut f32), Shared(y.as_mut_ptr()));
        let live = live.map(|l| Shared(l.as_ptr() as *mut f32));
        let pack = Shared(scratch.pack.as_mut_ptr());
        let (fk, pack_len) = (self.fk, scratch.pack_len);
        let tasks = b0 * b1 * panels;
        let ahead = self.pool.claim_stride(work);
        self.pool.run_sized(work, tasks, &|task, worker| {
            let (batch, p) = (task / panels, task % panels);
            let (i0, i1) = (batch / b1, batch % b1);
            let cols = (n - p * nr).min(nr);
            // SAFETY: every pointer below stays inside its operand (offsets from the step's
            // own geometry, which the lowering derived from the buffers' shapes); each task
            // writes its own batch × panel of `y` and its own worker's scratch, so no two tasks
            // write the same element, and the operands are only read.
            unsafe {
                let panel: &[f32] = match (b, live) {
                    (Rhs::Packed(data), _) => &data[task * k * nr..(task + 1) * k * nr],
                    (Rhs::Live(_), Some(src)) => {
                        let dst = std::slice::from_raw_parts_mut(
                            pack.get().add(worker * pack_len),
                            k * nr,
                        );
                        let src = src.get().add(i0 * sb[0] + i1 * sb[1]);
                        pack_panel(
                            Src {
                                ptr: src,
                                sk: sb[2],
                                sn: sb[3],
                            },
                            k,
                            p * nr,
                            cols,
                            nr,
                            dst,
                        );
                        dst
                    }
                    (Rhs::Live(_), None) => unreachable!("a live right-hand side has a view"),
                };
                let out = Out {
                    ptr: yp.get().add(i0 * sc[0] + i1 * sc[1] + p * nr * sc[3]),
                    rs: sc[2],
                    cs: sc[3],
                };
                let a = if packed {
                    Left::Packed(&lhs[batch * plen..(batch + 1) * plen])
                } else {
                    Left::Strided(Lhs {
                        ptr: ap.get().add(i0 * sa[0] + i1 * sa[1]),
                        rs: sa[2],
                        ks: sa[3],
                    })
                };
                // The panel this thread most likely takes next: the next one when it runs
                // alone, else the one a round of claims ahead (a guess: a prefetch never
                // faults, a wrong one costs only bandwidth).
                let then = match b {
                    Rhs::Packed(_) if task + ahead < tasks => {
                        panel.as_ptr().wrapping_add(ahead * k * nr)
                    }
                    _ => std::ptr::null(),
                };
                panel_product(fk, a, m, k, panel, out, cols, then);
            }
        });
    }

    fn conv(&self, x: &[f32], w: &[f32], y: &mut [f32], s: &Conv2d, scratch: &mut Scratch) {
        let [n, c, h, wd] = s.input.map(|d| d as usize);
        let [o, oh, ow] = s.output.map(|d| d as usize);
        let [kh, kw] = s.kernel.map(|d| d as usize);
        let k = c * kh * kw;
        let pixels = oh * ow;
        let nr = self.fk.nr();
        let panels = o.div_ceil(nr);
        let (fk, mr) = (self.fk, self.fk.mr());
        let blocks = lhs_blocks(fk, pixels);
        for ni in 0..n {
            let img = &x[ni * c * h * wd..(ni + 1) * c * h * wd];
            // Each task gathers the patches of one row block of pixels and packs them.
            let rows = Shared(scratch.patches.as_mut_ptr());
            let lhs = Shared(scratch.lhs.as_mut_ptr());
            let gather = |blk: usize, _: usize| {
                let Some((p0, np)) = row_blocks(pixels, mr).nth(blk) else {
                    return;
                };
                // SAFETY: each task writes rows p0..p0+np of the patch matrix (`[pixels, k]`)
                // and its own block of the packed copy, both in scratch sized at build; the
                // packing reads only the rows this task wrote.
                unsafe {
                    let mine = std::slice::from_raw_parts_mut(rows.get().add(p0 * k), np * k);
                    patches(img, s, p0, mine);
                    let src = Lhs {
                        ptr: rows.get().cast_const(),
                        rs: k,
                        ks: 1,
                    };
                    let dst = std::slice::from_raw_parts_mut(lhs.get().add(blk * k * mr), k * mr);
                    pack_lhs_block(fk, src, pixels, k, blk, dst);
                }
            };
            self.pool
                .run_prep(pixels * k * o, pixels * k, blocks, &gather);
            let lhs: &[f32] = &scratch.lhs[..packed_lhs_len(fk, pixels, k)];
            let yp = Shared(y.as_mut_ptr());
            self.pool.run_sized(pixels * k * o, panels, &|p, _| {
                let cols = (o - p * nr).min(nr);
                // SAFETY: `lhs` is `rows` packed; the panel holds k·nr values; each task writes
                // output channels p·nr.. of this image (row i = pixel, column j = channel, so
                // element (i, j) lands at channel·pixels + pixel: NCHW), no two tasks the same.
                unsafe {
                    let out = Out {
                        ptr: yp.get().add(ni * o * pixels + p * nr * pixels),
                        rs: 1,
                        cs: pixels,
                    };
                    panel_product(
                        fk,
                        Left::Packed(lhs),
                        pixels,
                        k,
                        &w[p * k * nr..(p + 1) * k * nr],
                        out,
                        cols,
                        std::ptr::null(),
                    );
                }
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn int8(
        &self,
        x: &[f32],
        y: &mut [f32],
        m: usize,
        w: &PackedWeights,
        kernel: Kernel,
        s: f32,
        (bias, residual): (Option<&[f32]>, Option<&[f32]>),
        scratch: &mut Scratch,
    ) {
        let qa = &mut scratch.qa[..m * w.kp];
        let work = m * w.n * w.k;
        let (k, kp) = (w.k, w.kp);
        // The rows in one block per thread.
        let blocks = self.pool.threads().min(m).max(1);
        let qp = Shared(qa.as_mut_ptr());
        self.pool.run_prep(work, m * k, blocks, &|b, _| {
            let (r0, r1) = (b * m / blocks, (b + 1) * m / blocks);
            // SAFETY: each task writes rows r0..r1 of `qa` (m·kp bytes), no two the same.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(qp.get().add(r0 * kp), (r1 - r0) * kp) };
            int8::quantize_activations(&x[r0 * k..r1 * k], r1 - r0, k, kp, s, dst);
        });
        let qa: &[u8] = qa;
        let (yp, acc) = (Shared(y.as_mut_ptr()), Shared(scratch.acc.as_mut_ptr()));
        let acc_len = scratch.acc_len;
        let n = w.n;
        let ahead = self.pool.claim_stride(work);
        self.pool.run_sized(work, w.panels(), &|p, worker| {
            // SAFETY: each worker has its own accumulator region (`acc_len ≥ m·n`, sized at
            // build); each task writes the output columns of its own panel only.
            unsafe {
                let acc = std::slice::from_raw_parts_mut(acc.get().add(worker * acc_len), m * n);
                int8::gemm_panels_ahead(kernel, qa, m, w, acc, p..p + 1, ahead);
                let (c0, c1) = (p * PANEL, ((p + 1) * PANEL).min(n));
                let d = ops::Dequant {
                    rows: m,
                    cols: c1 - c0,
                    ld: n,
                    scale: s,
                    scales: &w.scales[c0..c1],
                    bias: bias.map(|b| &b[c0..c1]),
                    residual: residual.map(|r| &r[c0..]),
                };
                // This task's columns c0..c1 of every row: disjoint from every other task's.
                ops::dequantize(&acc[c0..], yp.get().add(c0), &d);
            }
        });
    }
}

/// Gather the input patch of output pixels `first..` as the rows of `rows` (`[pixels, C·kh·kw]`,
/// k = (channel, ky, kx)); taps in the padding are 0. Runs of a patch row that lie inside the
/// image are copied whole (a ViT patch embedding copies 32-float runs).
fn patches(img: &[f32], s: &Conv2d, first: usize, rows: &mut [f32]) {
    let [_, c, h, wd] = s.input.map(|d| d as usize);
    let [_, oh, ow] = s.output.map(|d| d as usize);
    let [kh, kw] = s.kernel.map(|d| d as usize);
    let [sy, sx] = s.stride.map(|d| d as isize);
    let [dy, dx] = s.dilation.map(|d| d as isize);
    let [py, px] = s.pad.map(|d| d as isize);
    let k = c * kh * kw;
    let count = (oh * ow).saturating_sub(first);
    for (p, row) in rows.chunks_exact_mut(k).take(count).enumerate() {
        let p = first + p;
        let (oy, ox) = ((p / ow) as isize, (p % ow) as isize);
        for ci in 0..c {
            for ky in 0..kh {
                let dst = &mut row[(ci * kh + ky) * kw..(ci * kh + ky + 1) * kw];
                let iy = oy * sy + ky as isize * dy - py;
                if iy < 0 || iy >= h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let line = &img[(ci * h + iy as usize) * wd..(ci * h + iy as usize + 1) * wd];
                let x0 = ox * sx - px;
                if dx == 1 && x0 >= 0 && x0 + kw as isize <= wd as isize {
                    dst.copy_from_slice(&line[x0 as usize..x0 as usize + kw]);
                } else {
                    for (kx, d) in dst.iter_mut().enumerate() {
                        let ix = x0 + kx as isize * dx;
                        *d = if ix < 0 || ix >= wd as isize {
                            0.0
                        } else {
                            line[ix as usize]
                        };
                    }
                }
            }
        }
    }
}
