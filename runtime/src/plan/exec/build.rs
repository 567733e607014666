//! Building a [`CpuPlan`]: every buffer placed (constants shared, the rest in one arena laid out
//! by liveness), every step compiled to an [`Op`] with its operands resolved, constant
//! right-hand sides packed into panels, scratch sized for the largest step, and the placement
//! checked (no step's output overlaps its inputs).

use std::sync::Arc;

use edgefuse_models::quant::gemm::Kernel;

use super::gemm::{pack_panel, packed_lhs_len, packs_lhs, FloatKernel, Rhs as Src};
use super::ops::{BinGeo, PermGeo};
use super::{op_locs, unsupported, CpuPlan, Epilogue, Loc, Op, Rhs, Scratch, ALIGN};
use crate::plan::ir::{MatMul, Plan, Step};
use crate::plan::pool::Pool;
use crate::plan::PlanError;
use crate::plan::{fuse_epilogues, fuse_layer_norms};

/// Where every buffer of `plan` lives: constants stay in their shared data (returned, indexed by
/// `Loc::Const`); the rest get arena offsets in step order, each freed after the last step that
/// touches it, so later buffers reuse the memory. The input and the outputs are never freed, and
/// a step's output is placed before its inputs are freed (no step writes over what it reads).
fn place(plan: &Plan) -> Placement {
    let nb = plan.buffers.len();
    let mut last = vec![0usize; nb];
    for (s, step) in plan.steps.iter().enumerate() {
        let (reads, write) = step.io();
        for b in reads.into_iter().chain(write) {
            last[b] = s;
        }
    }
    for b in std::iter::once(plan.input).chain(plan.outputs.iter().copied()) {
        last[b] = usize::MAX;
    }
    let mut consts = Vec::new();
    let mut locs: Vec<Option<Loc>> = vec![None; nb];
    for (b, buf) in plan.buffers.iter().enumerate() {
        if let Some(data) = &buf.init {
            locs[b] = Some(Loc::Const {
                idx: consts.len(),
                len: data.len(),
            });
            consts.push(Arc::clone(data));
            last[b] = usize::MAX;
        }
    }
    let mut arena = Arena {
        free: Vec::new(),
        top: 0,
    };
    let put = |b: usize, locs: &mut Vec<Option<Loc>>, arena: &mut Arena| {
        if locs[b].is_none() {
            let len = plan.buffers[b].len();
            locs[b] = Some(Loc::Arena {
                off: arena.alloc(len),
                len,
            });
        }
    };
    put(plan.input, &mut locs, &mut arena);
    let mut frees = Vec::new();
    for (s, step) in plan.steps.iter().enumerate() {
        let (reads, write) = step.io();
        if let Some(w) = write {
            put(w, &mut locs, &mut arena);
        }
        // A buffer may be read twice by one step (x·x): free it once.
        frees.clear();
        frees.extend(reads.into_iter().chain(write).filter(|b| last[*b] == s));
        frees.sort_unstable();
        frees.dedup();
        for &b in &frees {
            if let Some(Loc::Arena { off, len }) = locs[b] {
                arena.release(off, len);
            }
        }
    }
    // An output no step writes is the input or a constant (placed above); any other stays
    // unplaced, which `CpuPlan::new` reports.
    Placement {
        locs,
        consts,
        arena_len: arena.top,
    }
}

/// Where [`place`] put every buffer.
struct Placement {
    /// Per buffer (`None`: no step writes it and it is neither the input nor a constant).
    locs: Vec<Option<Loc>>,
    /// The constants `Loc::Const` indexes.
    consts: Vec<Arc<[f32]>>,
    /// Floats in the arena.
    arena_len: usize,
}

/// First-fit allocator over the arena, freed blocks coalesced.
struct Arena {
    free: Vec<(usize, usize)>,
    top: usize,
}

impl Arena {
    fn alloc(&mut self, len: usize) -> usize {
        let len = len.div_ceil(ALIGN).max(1) * ALIGN;
        if let Some(i) = self.free.iter().position(|&(_, l)| l >= len) {
            let (off, l) = self.free[i];
            if l == len {
                self.free.remove(i);
            } else {
                self.free[i] = (off + len, l - len);
            }
            return off;
        }
        let off = self.top;
        self.top += len;
        off
    }

    fn release(&mut self, off: usize, len: usize) {
        let len = len.div_ceil(ALIGN).max(1) * ALIGN;
        self.free.push((off, len));
        self.free.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.free.len());
        for &(o, l) in &self.free {
            match merged.last_mut() {
                Some(last) if last.0 + last.1 == o => last.1 += l,
                _ => merged.push((o, l)),
            }
        }
        self.free = merged;
    }
}

impl CpuPlan {
    /// Prepare `plan` for the CPU, running on `pool`. Refuses a plan with host steps (tract
    /// runs such a model instead).
    pub fn new(plan: &Plan, pool: Arc<Pool>) -> Result<Self, PlanError> {
        if !plan.host_nodes.is_empty() {
            return Err(unsupported(format!(
                "nodes without a CPU kernel: {}",
                plan.host_nodes.join(", ")
            )));
        }
        let fused = fuse_epilogues(plan);
        let plan = &fuse_layer_norms(&fused);
        let fk = FloatKernel::best();
        let Placement {
            locs,
            consts,
            arena_len,
        } = place(plan);
        let loc = |b: usize| -> Result<Loc, PlanError> {
            locs[b].ok_or_else(|| unsupported(format!("buffer {b} is read but never written")))
        };
        let mut ops = Vec::with_capacity(plan.steps.len());
        let (mut pack_len, mut acc_len, mut qa_len) = (0usize, 0usize, 0usize);
        let (mut patches_len, mut lhs_len) = (0usize, 0usize);
        for step in &plan.steps {
            ops.push(match step {
                Step::Binary {
                    op,
                    a,
                    b,
                    out,
                    shape,
                } => Op::Binary {
                    op: *op,
                    a: loc(*a)?,
                    b: loc(*b)?,
                    out: loc(*out)?,
                    geo: BinGeo::new(&shape.dims, &shape.sa, &shape.sb),
                },
                Step::Unary { op, x, out } => Op::Unary {
                    op: *op,
                    x: loc(*x)?,
                    out: loc(*out)?,
                },
                Step::Reduce { op, x, out, dims } => Op::Reduce {
                    op: *op,
                    x: loc(*x)?,
                    out: loc(*out)?,
                    dims: *dims,
                },
                Step::RmsNorm { x, out, dims, eps } => Op::RmsNorm {
                    x: loc(*x)?,
                    out: loc(*out)?,
                    dims: *dims,
                    eps: *eps,
                },
                Step::LayerNorm {
                    x,
                    out,
                    dims,
                    scale,
                    eps,
                } => Op::LayerNorm {
                    x: loc(*x)?,
                    out: loc(*out)?,
                    dims: *dims,
                    scale: match plan.buffers[*scale].init.as_deref() {
                        Some([v]) => *v,
                        _ => return Err(unsupported("a layer norm's scale is not one constant")),
                    },
                    eps: *eps,
                },
                Step::Softmax { x, out, dims } => Op::Softmax {
                    x: loc(*x)?,
                    out: loc(*out)?,
                    dims: *dims,
                },
                Step::Permute { x, out, shape } => Op::Permute {
                    x: loc(*x)?,
                    out: loc(*out)?,
                    geo: PermGeo::new(&shape.dims, &shape.src_strides),
                },
                Step::Gather {
                    x,
                    out,
                    dims,
                    indices,
                } => Op::Gather {
                    x: loc(*x)?,
                    out: loc(*out)?,
                    dims: *dims,
                    indices: Arc::clone(indices),
                },
                Step::ConcatPart {
                    x,
                    out,
                    dims,
                    total,
                    offset,
                } => Op::Concat {
                    x: loc(*x)?,
                    out: loc(*out)?,
                    dims: *dims,
                    total: *total,
                    offset: *offset,
                },
                Step::MatMul { a, b, out, shape } => {
                    let k = shape.k as usize;
                    if packs_lhs(fk, shape.n as usize) {
                        let batches = (shape.batch[0] * shape.batch[1]) as usize;
                        lhs_len = lhs_len.max(batches * packed_lhs_len(fk, shape.m as usize, k));
                    }
                    let rhs = match &plan.buffers[*b].init {
                        Some(data) => Rhs::Packed(pack_rhs(data, shape, fk.nr())?),
                        None => {
                            pack_len = pack_len.max(k * fk.nr());
                            Rhs::Live(loc(*b)?)
                        }
                    };
                    Op::MatMul {
                        a: loc(*a)?,
                        b: rhs,
                        out: loc(*out)?,
                        shape: *shape,
                    }
                }
                Step::Conv {
                    x,
                    w,
                    bias,
                    out,
                    shape,
                } => {
                    let (x, w, out) = (loc(*x)?, loc(*w)?, loc(*out)?);
                    let bias = bias.map(loc).transpose()?;
                    if shape.group == 1 {
                        let [_, c, _, _] = shape.input;
                        let k = (c * shape.kernel[0] * shape.kernel[1]) as usize;
                        let [o, oh, ow] = shape.output.map(|d| d as usize);
                        patches_len = patches_len.max(oh * ow * k);
                        lhs_len = lhs_len.max(packed_lhs_len(fk, oh * ow, k));
                        let Loc::Const { idx, .. } = w else {
                            return Err(unsupported("convolution weights computed per frame"));
                        };
                        // Weights OIHW = [O, k] row-major: as a right-hand side [k, O].
                        let geo = MatMul {
                            batch: [1, 1],
                            m: 0,
                            n: o as i32,
                            k: k as i32,
                            sa: [0; 4],
                            sb: [0, 0, 1, k as i32],
                            sc: [0; 4],
                        };
                        Op::Conv {
                            x,
                            w: pack_rhs(&consts[idx], &geo, fk.nr())?,
                            bias,
                            out,
                            shape: *shape,
                        }
                    } else {
                        Op::ConvGrouped {
                            x,
                            w,
                            bias,
                            out,
                            shape: *shape,
                        }
                    }
                }
                Step::Int8Linear {
                    x,
                    out,
                    m,
                    weights,
                    kernel,
                    act_scale,
                    epilogue,
                } => {
                    // The bundle's int8 kernel may not exist here (an AVX2 bundle on a VNNI
                    // machine is fine; an AVX-512 bundle on an AVX2 machine is not).
                    let kernel = if kernel.is_available() && weights.fits(*kernel) {
                        *kernel
                    } else {
                        Kernel::available()
                            .into_iter()
                            .rev()
                            .find(|k| weights.fits(*k))
                            .unwrap_or(Kernel::Scalar)
                    };
                    qa_len = qa_len.max(m * weights.kp);
                    acc_len = acc_len.max(m * weights.n);
                    Op::Int8 {
                        x: loc(*x)?,
                        out: loc(*out)?,
                        m: *m,
                        w: Arc::clone(weights),
                        kernel,
                        act_scale: *act_scale,
                        epilogue: Epilogue {
                            bias: epilogue.bias.map(loc).transpose()?,
                            residual: epilogue.residual.map(loc).transpose()?,
                        },
                    }
                }
                Step::Host { node, .. } => {
                    return Err(unsupported(format!(
                        "node `{}` has no CPU kernel",
                        node.name
                    )))
                }
            });
        }
        let outputs = plan
            .outputs
            .iter()
            .map(|o| loc(*o))
            .collect::<Result<_, _>>()?;
        let threads = pool.threads();
        log::debug!(
            "CPU plan: {} steps, arena {:.1} MiB ({} buffers), {threads} threads, {fk:?}",
            ops.len(),
            arena_len as f64 * 4.0 / (1 << 20) as f64,
            plan.buffers.len()
        );
        let me = Self {
            ops,
            arena: vec![0.0; arena_len],
            consts,
            input: loc(plan.input)?,
            outputs,
            pool,
            fk,
            scratch: Box::new(Scratch {
                pack: vec![0.0; pack_len * threads],
                pack_len,
                qa: vec![128; qa_len],
                patches: vec![0.0; patches_len],
                lhs: vec![0.0; lhs_len],
                acc: vec![0; acc_len * threads],
                acc_len,
            }),
        };
        me.check_disjoint()?;
        Ok(me)
    }

    /// Every step's output region is disjoint from its inputs (what makes the raw views in
    /// `run` sound); checked once at build.
    fn check_disjoint(&self) -> Result<(), PlanError> {
        let range = |l: &Loc| match *l {
            Loc::Arena { off, len } => Some(off..off + len),
            Loc::Const { .. } => None,
        };
        for (i, op) in self.ops.iter().enumerate() {
            let (ins, out) = op_locs(op);
            let Some(o) = range(&out) else {
                return Err(unsupported(format!("step {i} writes a constant")));
            };
            for l in ins.iter().flatten() {
                if let Some(r) = range(l) {
                    if r.start < o.end && o.start < r.end {
                        return Err(unsupported(format!("step {i}: output overlaps an input")));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Pack a constant right-hand side for every batch and panel.
fn pack_rhs(data: &[f32], s: &MatMul, nr: usize) -> Result<Vec<f32>, PlanError> {
    let (n, k) = (s.n as usize, s.k as usize);
    let [b0, b1] = s.batch.map(|d| d as usize);
    let sb = s.sb.map(|d| d as usize);
    let panels = n.div_ceil(nr);
    // The farthest element any batch reads must exist.
    let reach = (b0.saturating_sub(1)) * sb[0]
        + (b1.saturating_sub(1)) * sb[1]
        + k.saturating_sub(1) * sb[2]
        + n.saturating_sub(1) * sb[3];
    if k > 0 && n > 0 && reach >= data.len() {
        return Err(unsupported(
            "matrix product reads past its constant operand",
        ));
    }
    let mut out = vec![0f32; b0 * b1 * panels * k * nr];
    for batch in 0..b0 * b1 {
        let (i0, i1) = (batch / b1, batch % b1);
        for p in 0..panels {
            let t = batch * panels + p;
            let cols = (n - p * nr).min(nr);
            // SAFETY: every element read is at most `reach` from the start (checked above).
            unsafe {
                pack_panel(
                    Src {
                        ptr: data.as_ptr().add(i0 * sb[0] + i1 * sb[1]),
                        sk: sb[2],
                        sn: sb[3],
                    },
                    k,
                    p * nr,
                    cols,
                    nr,
                    &mut out[t * k * nr..(t + 1) * k * nr],
                );
            }
        }
    }
    Ok(out)
}
