//! [`CpuPlan`]: a lowered [`Plan`] executed on the CPU with fast kernels, on every core, with no
//! allocation per run.
//!
//! Built once: every intermediate buffer gets a place in one arena, reused as soon as its last
//! reader has run (liveness order, so a ViT-B/32 frame touches a few MiB, not the sum of every
//! tensor); constant right-hand sides of matrix products are packed into the micro-kernels'
//! panel layout; scratch for packing and int8 accumulators is sized per worker thread. A run
//! copies the input into the arena and executes the steps in order: matrix products, int8
//! layers and convolutions split by column panels across the [`Pool`], the rest as vector loops
//! ([`ops`]). Splitting never changes a sum's order, so results are identical for any thread
//! count.
//!
//! Files: `gemm` (f32 packing and micro-kernels), `ops` (element-wise, reductions, moves).

pub mod gemm;
mod ops;

use std::sync::Arc;

use edgefuse_models::quant::gemm::{self as int8, Kernel, PackedWeights, PANEL};

pub use gemm::FloatKernel;
use gemm::{pack_panel, panel_product, Lhs, Out, Rhs as Src};
use ops::{BinGeo, PermGeo};

use super::ir::{BinOp, Conv2d, MatMul, Plan, RedOp, Step, UnOp};
use super::pool::Pool;
use super::PlanError;

/// Arena alignment (floats): a cache line.
const ALIGN: usize = 16;

/// Where a plan buffer lives.
#[derive(Debug, Clone, Copy)]
enum Loc {
    /// In the arena.
    Arena { off: usize, len: usize },
    /// A constant (index into `CpuPlan::consts`).
    Const { idx: usize, len: usize },
}

/// The right-hand side of a matrix product.
#[derive(Debug)]
enum Rhs {
    /// Constant, packed at build: `[batch][panel][k][nr]`.
    Packed(Vec<f32>),
    /// Computed per run: packed per task into worker scratch.
    Live(Loc),
}

#[derive(Debug)]
enum Op {
    Binary {
        op: BinOp,
        a: Loc,
        b: Loc,
        out: Loc,
        geo: BinGeo,
    },
    Unary {
        op: UnOp,
        x: Loc,
        out: Loc,
    },
    Reduce {
        op: RedOp,
        x: Loc,
        out: Loc,
        dims: [usize; 3],
    },
    RmsNorm {
        x: Loc,
        out: Loc,
        dims: [usize; 3],
        eps: f32,
    },
    Softmax {
        x: Loc,
        out: Loc,
        dims: [usize; 3],
    },
    Permute {
        x: Loc,
        out: Loc,
        geo: PermGeo,
    },
    Gather {
        x: Loc,
        out: Loc,
        dims: [usize; 3],
        indices: Arc<[i32]>,
    },
    Concat {
        x: Loc,
        out: Loc,
        dims: [usize; 3],
        total: usize,
        offset: usize,
    },
    MatMul {
        a: Loc,
        b: Rhs,
        out: Loc,
        shape: MatMul,
    },
    /// Group-1 convolution as a product: input patches (`[pixels, C·kh·kw]`, gathered into
    /// scratch) × the weights, packed once as `[C·kh·kw, O]` panels; the result is written
    /// transposed, straight into NCHW.
    Conv {
        x: Loc,
        w: Vec<f32>,
        bias: Option<Loc>,
        out: Loc,
        shape: Conv2d,
    },
    /// Grouped convolution: the reference loop (no model of ours has one).
    ConvGrouped {
        x: Loc,
        w: Loc,
        bias: Option<Loc>,
        out: Loc,
        shape: Conv2d,
    },
    Int8 {
        x: Loc,
        out: Loc,
        m: usize,
        w: Arc<PackedWeights>,
        kernel: Kernel,
        act_scale: f32,
    },
}

/// A raw pointer that may cross into the pool's tasks: each task writes a region no other task
/// touches (the disjointness argument sits at each use).
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: see the type's documentation; the pointee outlives every task (`Pool::run` returns
// only when all tasks are done).
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The pointer (a method, so closures capture the whole `Shared`, not its field).
    fn get(self) -> *mut T {
        self.0
    }
}

/// A plan ready to run on the CPU.
pub struct CpuPlan {
    ops: Vec<Op>,
    arena: Vec<f32>,
    consts: Vec<Arc<[f32]>>,
    input: Loc,
    outputs: Vec<Loc>,
    pool: Arc<Pool>,
    fk: FloatKernel,
    scratch: Scratch,
}

/// Working memory of the kernels, sized at build.
#[derive(Debug)]
struct Scratch {
    /// Per worker: `pack_len` floats of panel scratch.
    pack: Vec<f32>,
    pack_len: usize,
    /// Quantized activations of the current int8 layer.
    qa: Vec<u8>,
    /// Input patches of the current convolution (`[pixels, C·kh·kw]`).
    patches: Vec<f32>,
    /// Per worker: `acc_len` int8 accumulators.
    acc: Vec<i32>,
    acc_len: usize,
}

/// What the steps read besides their buffers.
struct Ctx<'a> {
    consts: &'a [Arc<[f32]>],
    pool: &'a Pool,
    fk: FloatKernel,
}

impl std::fmt::Debug for CpuPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPlan")
            .field("steps", &self.ops.len())
            .field("arena_floats", &self.arena.len())
            .field("threads", &self.pool.threads())
            .field("kernel", &self.fk)
            .finish()
    }
}

/// Buffers read and the buffer written by a step (none for a host step).
fn step_io(step: &Step) -> (Vec<usize>, Option<usize>) {
    match step {
        Step::Binary { a, b, out, .. } | Step::MatMul { a, b, out, .. } => {
            (vec![*a, *b], Some(*out))
        }
        Step::Unary { x, out, .. }
        | Step::Reduce { x, out, .. }
        | Step::RmsNorm { x, out, .. }
        | Step::Softmax { x, out, .. }
        | Step::Permute { x, out, .. }
        | Step::Gather { x, out, .. }
        | Step::ConcatPart { x, out, .. }
        | Step::Int8Linear { x, out, .. } => (vec![*x], Some(*out)),
        Step::Conv {
            x, w, bias, out, ..
        } => {
            let mut r = vec![*x, *w];
            r.extend(bias);
            (r, Some(*out))
        }
        Step::Host { inputs, .. } => (inputs.clone(), None),
    }
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

fn unsupported(why: impl Into<String>) -> PlanError {
    PlanError::Unsupported(why.into())
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
        let fk = FloatKernel::best();
        let nb = plan.buffers.len();
        let (mut first, mut last) = (vec![usize::MAX; nb], vec![0usize; nb]);
        for (s, step) in plan.steps.iter().enumerate() {
            let (reads, write) = step_io(step);
            for b in reads.into_iter().chain(write) {
                first[b] = first[b].min(s);
                last[b] = s;
            }
        }
        let forever = usize::MAX;
        first[plan.input] = 0;
        for &o in &plan.outputs {
            last[o] = forever;
            first[o] = first[o].min(plan.steps.len());
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
            }
        }
        let mut arena = Arena {
            free: Vec::new(),
            top: 0,
        };
        let place = |b: usize, locs: &mut Vec<Option<Loc>>, arena: &mut Arena| {
            if locs[b].is_none() {
                let len = plan.buffers[b].len();
                locs[b] = Some(Loc::Arena {
                    off: arena.alloc(len),
                    len,
                });
            }
        };
        place(plan.input, &mut locs, &mut arena);
        for &o in &plan.outputs {
            if first[o] >= plan.steps.len() {
                place(o, &mut locs, &mut arena);
            }
        }
        for (s, step) in plan.steps.iter().enumerate() {
            let (reads, write) = step_io(step);
            if let Some(w) = write {
                place(w, &mut locs, &mut arena);
            }
            for b in reads.into_iter().chain(write) {
                if last[b] == s && plan.buffers[b].init.is_none() && b != plan.input {
                    if let Some(Loc::Arena { off, len }) = locs[b] {
                        arena.release(off, len);
                    }
                    // Freed once.
                    last[b] = usize::MAX - 1;
                }
            }
        }
        let loc = |b: usize| -> Result<Loc, PlanError> {
            locs[b].ok_or_else(|| unsupported(format!("buffer {b} is read but never written")))
        };
        let mut ops = Vec::with_capacity(plan.steps.len());
        let (mut pack_len, mut acc_len, mut qa_len) = (0usize, 0usize, 0usize);
        let mut patches_len = 0usize;
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
            arena.top as f64 * 4.0 / (1 << 20) as f64,
            nb
        );
        let me = Self {
            ops,
            arena: vec![0.0; arena.top],
            consts,
            input: loc(plan.input)?,
            outputs,
            pool,
            fk,
            scratch: Scratch {
                pack: vec![0.0; pack_len * threads],
                pack_len,
                qa: vec![128; qa_len],
                patches: vec![0.0; patches_len],
                acc: vec![0; acc_len * threads],
                acc_len,
            },
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

    /// Threads a run uses.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Values in output `i`.
    pub fn output_len(&self, i: usize) -> usize {
        loc_len(&self.outputs[i])
    }

    /// Values the input takes.
    pub fn input_len(&self) -> usize {
        loc_len(&self.input)
    }

    /// Output `i` after the last [`CpuPlan::run`].
    pub fn output(&self, i: usize) -> &[f32] {
        match self.outputs[i] {
            Loc::Arena { off, len } => &self.arena[off..off + len],
            Loc::Const { idx, len } => &self.consts[idx][..len],
        }
    }

    /// Run the plan on `input`; read the results with [`CpuPlan::output`]. Allocates nothing.
    pub fn run(&mut self, input: &[f32]) -> Result<(), PlanError> {
        let Loc::Arena { off, len } = self.input else {
            return Err(unsupported("the plan's input is a constant"));
        };
        if input.len() != len {
            return Err(unsupported(format!(
                "input has {} values, the plan expects {len}",
                input.len()
            )));
        }
        self.arena[off..off + len].copy_from_slice(input);
        let base = self.arena.as_mut_ptr();
        let ctx = Ctx {
            consts: &self.consts,
            pool: &self.pool,
            fk: self.fk,
        };
        for op in &self.ops {
            ctx.exec(op, base, &mut self.scratch);
        }
        Ok(())
    }
}

impl CpuPlan {
    /// Run once and time each step; returns the total per kind of step (`matmul 50x768x2304`,
    /// `int8 50x768x2304`, `binary`, …), slowest first. A diagnostic (it allocates): `edgefuse
    /// bench --profile` prints it.
    pub fn profile(
        &mut self,
        input: &[f32],
    ) -> Result<Vec<(String, std::time::Duration, usize)>, PlanError> {
        self.run(input)?;
        let base = self.arena.as_mut_ptr();
        let ctx = Ctx {
            consts: &self.consts,
            pool: &self.pool,
            fk: self.fk,
        };
        let mut by: std::collections::BTreeMap<String, (std::time::Duration, usize)> =
            std::collections::BTreeMap::new();
        for op in &self.ops {
            let t0 = std::time::Instant::now();
            ctx.exec(op, base, &mut self.scratch);
            let e = by.entry(op_name(op)).or_default();
            e.0 += t0.elapsed();
            e.1 += 1;
        }
        let mut v: Vec<_> = by.into_iter().map(|(k, (d, n))| (k, d, n)).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        Ok(v)
    }
}

fn op_name(op: &Op) -> String {
    match op {
        Op::Binary { op, .. } => format!("binary {op:?}"),
        Op::Unary { op, .. } => format!("unary {op:?}"),
        Op::Reduce { op, .. } => format!("reduce {op:?}"),
        Op::RmsNorm { .. } => "rms norm".into(),
        Op::Softmax { .. } => "softmax".into(),
        Op::Permute { .. } => "permute".into(),
        Op::Gather { .. } => "gather".into(),
        Op::Concat { .. } => "concat".into(),
        Op::MatMul { b, shape: s, .. } => format!(
            "matmul {}{}x{}x{}x{}",
            if matches!(b, Rhs::Packed(_)) {
                ""
            } else {
                "live "
            },
            s.batch[0] * s.batch[1],
            s.m,
            s.k,
            s.n
        ),
        Op::Conv { .. } | Op::ConvGrouped { .. } => "conv".into(),
        Op::Int8 { m, w, kernel, .. } => format!("int8 {kernel:?} {m}x{}x{}", w.k, w.n),
    }
}

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

    fn exec(&self, op: &Op, base: *mut f32, scratch: &mut Scratch) {
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
            Op::Softmax { x, out, dims } => ops::softmax(v(*x), out_mut(*out), *dims),
            Op::Permute { x, out, geo } => ops::permute(v(*x), out_mut(*out), geo),
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
            } => super::conv_cpu(v(*x), v(*w), bias.map(v), out_mut(*out), shape),
            Op::Int8 {
                x,
                out,
                m,
                w,
                kernel,
                act_scale,
            } => self.int8(v(*x), out_mut(*out), *m, w, *kernel, *act_scale, scratch),
        }
    }

    /// An element-wise step; split across the pool when it is large (GELU over an MLP's hidden
    /// layer: 150k values per ViT-B/32 block).
    fn unary(&self, op: UnOp, x: &[f32], y: &mut [f32]) {
        const CHUNK: usize = 1 << 14;
        let threads = self.pool.threads();
        if threads == 1 || y.len() < 2 * CHUNK {
            return ops::unary(op, x, y);
        }
        let len = y.len();
        let tasks = len.div_ceil(CHUNK);
        let yp = Shared(y.as_mut_ptr());
        self.pool.run(tasks, &|t, _| {
            let (a, b) = (t * CHUNK, ((t + 1) * CHUNK).min(len));
            // SAFETY: each task writes its own chunk `a..b` of `y` (in bounds: b ≤ len).
            let dst = unsafe { std::slice::from_raw_parts_mut(yp.get().add(a), b - a) };
            ops::unary(op, &x[a..b], dst);
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
        let (ap, yp) = (Shared(a.as_ptr() as *mut f32), Shared(y.as_mut_ptr()));
        let live = live.map(|l| Shared(l.as_ptr() as *mut f32));
        let pack = Shared(scratch.pack.as_mut_ptr());
        let (fk, pack_len) = (self.fk, scratch.pack_len);
        self.pool.run(b0 * b1 * panels, &|task, worker| {
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
                let lhs = Lhs {
                    ptr: ap.get().add(i0 * sa[0] + i1 * sa[1]),
                    rs: sa[2],
                    ks: sa[3],
                };
                let out = Out {
                    ptr: yp.get().add(i0 * sc[0] + i1 * sc[1] + p * nr * sc[3]),
                    rs: sc[2],
                    cs: sc[3],
                };
                panel_product(fk, lhs, m, k, panel, out, cols);
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
        for ni in 0..n {
            let img = &x[ni * c * h * wd..(ni + 1) * c * h * wd];
            let rows = &mut scratch.patches[..pixels * k];
            patches(img, s, rows);
            let (ap, yp) = (Shared(rows.as_mut_ptr()), Shared(y.as_mut_ptr()));
            let fk = self.fk;
            self.pool.run(panels, &|p, _| {
                let cols = (o - p * nr).min(nr);
                // SAFETY: `rows` is [pixels, k]; the panel holds k·nr values; each task writes
                // output channels p·nr.. of this image (row i = pixel, column j = channel, so
                // element (i, j) lands at channel·pixels + pixel: NCHW), no two tasks the same.
                unsafe {
                    let lhs = Lhs {
                        ptr: ap.get(),
                        rs: k,
                        ks: 1,
                    };
                    let out = Out {
                        ptr: yp.get().add(ni * o * pixels + p * nr * pixels),
                        rs: 1,
                        cs: pixels,
                    };
                    panel_product(
                        fk,
                        lhs,
                        pixels,
                        k,
                        &w[p * k * nr..(p + 1) * k * nr],
                        out,
                        cols,
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
        scratch: &mut Scratch,
    ) {
        let qa = &mut scratch.qa[..m * w.kp];
        int8::quantize_activations(x, m, w.k, w.kp, s, qa);
        let qa: &[u8] = qa;
        let (yp, acc) = (Shared(y.as_mut_ptr()), Shared(scratch.acc.as_mut_ptr()));
        let acc_len = scratch.acc_len;
        let n = w.n;
        self.pool.run(w.panels(), &|p, worker| {
            // SAFETY: each worker has its own accumulator region (`acc_len ≥ m·n`, sized at
            // build); each task writes the output columns of its own panel only.
            unsafe {
                let acc = std::slice::from_raw_parts_mut(acc.get().add(worker * acc_len), m * n);
                int8::gemm_panels(kernel, qa, m, w, acc, p..p + 1);
                let (c0, c1) = (p * PANEL, ((p + 1) * PANEL).min(n));
                let scales = &w.scales[c0..c1];
                for i in 0..m {
                    // This task's columns of row i: disjoint from every other task's.
                    let y = std::slice::from_raw_parts_mut(yp.get().add(i * n + c0), c1 - c0);
                    for ((o, a), sc) in y.iter_mut().zip(&acc[i * n + c0..i * n + c1]).zip(scales) {
                        *o = *a as f32 * (s * sc);
                    }
                }
            }
        });
    }
}

/// Gather the input patch of every output pixel as a row of `rows` (`[pixels, C·kh·kw]`, k =
/// (channel, ky, kx)); taps in the padding are 0. Runs of a patch row that lie inside the image
/// are copied whole (a ViT patch embedding copies 32-float runs).
fn patches(img: &[f32], s: &Conv2d, rows: &mut [f32]) {
    let [_, c, h, wd] = s.input.map(|d| d as usize);
    let [_, oh, ow] = s.output.map(|d| d as usize);
    let [kh, kw] = s.kernel.map(|d| d as usize);
    let [sy, sx] = s.stride.map(|d| d as isize);
    let [dy, dx] = s.dilation.map(|d| d as isize);
    let [py, px] = s.pad.map(|d| d as isize);
    let k = c * kh * kw;
    for (p, row) in rows.chunks_exact_mut(k).enumerate().take(oh * ow) {
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

fn loc_len(l: &Loc) -> usize {
    match *l {
        Loc::Arena { len, .. } | Loc::Const { len, .. } => len,
    }
}

/// Inputs and output of a compiled step.
fn op_locs(op: &Op) -> ([Option<Loc>; 3], Loc) {
    match op {
        Op::Binary { a, b, out, .. } => ([Some(*a), Some(*b), None], *out),
        Op::MatMul { a, b, out, .. } => {
            let b = match b {
                Rhs::Live(l) => Some(*l),
                Rhs::Packed(_) => None,
            };
            ([Some(*a), b, None], *out)
        }
        Op::Unary { x, out, .. }
        | Op::Reduce { x, out, .. }
        | Op::RmsNorm { x, out, .. }
        | Op::Softmax { x, out, .. }
        | Op::Permute { x, out, .. }
        | Op::Gather { x, out, .. }
        | Op::Concat { x, out, .. }
        | Op::Int8 { x, out, .. } => ([Some(*x), None, None], *out),
        Op::Conv { x, bias, out, .. } => ([Some(*x), *bias, None], *out),
        Op::ConvGrouped {
            x, w, bias, out, ..
        } => ([Some(*x), Some(*w), *bias], *out),
    }
}
