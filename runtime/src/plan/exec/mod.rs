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
//! Files: this one (the compiled form and the public API), `build` (placement and compilation),
//! `steps` (executing one step), `gemm` (f32 packing and micro-kernels), `ops` (element-wise,
//! reductions, moves).

mod build;
pub mod gemm;
mod ops;
mod steps;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefuse_models::quant::gemm::{Kernel, PackedWeights};

pub use gemm::FloatKernel;
use ops::{BinGeo, PermGeo};

use super::ir::{BinOp, Conv2d, MatMul, RedOp, UnOp};
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
    LayerNorm {
        x: Loc,
        out: Loc,
        /// Rows and row length.
        dims: [usize; 2],
        scale: f32,
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
        epilogue: Epilogue,
    },
}

/// An int8 layer's fused epilogue ([`crate::plan::Epilogue`]) with its buffers placed.
#[derive(Debug, Clone, Copy, Default)]
struct Epilogue {
    bias: Option<Loc>,
    residual: Option<Loc>,
}

fn unsupported(why: impl Into<String>) -> PlanError {
    PlanError::Unsupported(why.into())
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
    // Boxed: the engine enum holding a plan stays small (clippy::large_enum_variant).
    scratch: Box<Scratch>,
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
    /// The current matrix product's left operand, packed for the micro-kernel (every batch).
    lhs: Vec<f32>,
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

impl CpuPlan {
    /// Threads a run uses.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The worker pool the plan runs on (shared with preprocessing).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
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
        self.load(input)?;
        self.execute(|_, exec| exec());
        Ok(())
    }

    /// Run once and time each step; returns the total per kind of step (`matmul 1x50x768x2304`,
    /// `int8 Amx 50x768x3072`, `binary Add`, …) with its count, slowest first. A diagnostic (it
    /// allocates): `cargo run --release -p edgefuse-runtime --example plan_profile` prints it.
    pub fn profile(&mut self, input: &[f32]) -> Result<Vec<(String, Duration, usize)>, PlanError> {
        self.load(input)?;
        let mut by: BTreeMap<String, (Duration, usize)> = BTreeMap::new();
        self.execute(|op, exec| {
            let t0 = Instant::now();
            exec();
            let e = by.entry(op_name(op)).or_default();
            e.0 += t0.elapsed();
            e.1 += 1;
        });
        let mut v: Vec<_> = by.into_iter().map(|(k, (d, n))| (k, d, n)).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        Ok(v)
    }

    /// Copy `input` into the plan's input buffer.
    fn load(&mut self, input: &[f32]) -> Result<(), PlanError> {
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
        Ok(())
    }

    /// Every step in order, each handed to `around` as a call that executes it (the one loop
    /// `run` and `profile` share).
    fn execute(&mut self, mut around: impl FnMut(&Op, &mut dyn FnMut())) {
        let base = self.arena.as_mut_ptr();
        let ctx = Ctx {
            consts: &self.consts,
            pool: &self.pool,
            fk: self.fk,
        };
        let scratch = &mut *self.scratch;
        for op in &self.ops {
            around(op, &mut || ctx.exec(op, base, scratch));
        }
    }
}

fn op_name(op: &Op) -> String {
    match op {
        Op::Binary { op, .. } => format!("binary {op:?}"),
        Op::Unary { op, .. } => format!("unary {op:?}"),
        Op::Reduce { op, .. } => format!("reduce {op:?}"),
        Op::RmsNorm { .. } => "rms norm".into(),
        Op::LayerNorm { .. } => "layer norm".into(),
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
        Op::Int8 {
            m,
            w,
            kernel,
            epilogue: e,
            ..
        } => format!(
            "int8 {kernel:?} {m}x{}x{}{}{}",
            w.k,
            w.n,
            if e.bias.is_some() { " +bias" } else { "" },
            if e.residual.is_some() {
                " +residual"
            } else {
                ""
            }
        ),
    }
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
        | Op::LayerNorm { x, out, .. }
        | Op::Softmax { x, out, .. }
        | Op::Permute { x, out, .. }
        | Op::Gather { x, out, .. }
        | Op::Concat { x, out, .. } => ([Some(*x), None, None], *out),
        Op::Int8 {
            x, out, epilogue, ..
        } => ([Some(*x), epilogue.bias, epilogue.residual], *out),
        Op::Conv { x, bias, out, .. } => ([Some(*x), *bias, None], *out),
        Op::ConvGrouped {
            x, w, bias, out, ..
        } => ([Some(*x), Some(*w), *bias], *out),
    }
}
