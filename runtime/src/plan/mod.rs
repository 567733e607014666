//! Our own execution of the bundle's encoder and Q-Former graphs: tract's decluttered typed
//! model (with our `QLinear` int8 operators in place for an int8 bundle) lowered to a flat list
//! of [`Step`]s over buffers sized once, each step one kernel.
//!
//! The plan is backend-neutral. [`run_reference`] executes it with plain loops: that is how the lowering
//! is checked without a GPU (against tract's own output, `tests/tests/plan.rs`), and the
//! CUDA executor (`cuda::GraphExec`) runs the same steps with the kernels of `kernels/graph.cu`
//! and `kernels/linear.cu`. A node whose op has no lowering becomes a `Step::Host` (tract's own
//! evaluation), named in [`Plan::host_nodes`]: [`run_reference`] and [`CpuPlan`] execute it (the latter only on request), the CUDA executor refuses
//! such a plan (it would copy through the host every frame) and the CUDA backend then runs the
//! models on tract-cuda instead (`--device cuda`).
//!
//! Files: `ir` (the plan's types), `lower` (tract's typed model → plan; the graph comes
//! from `Bundle::load_encoder_graph` / `load_qformer_graph`), `einsum` (einsums as strided
//! matrix products), `fuse` (int8 layers absorb the bias and residual adds after them; layer norms
//! become one step),
//! `reference` (each step's definition as a plain loop), `exec` ([`CpuPlan`]: the fast CPU
//! executor), `pool` (the fixed worker pool).

mod einsum;
mod exec;
mod fuse;
mod ir;
mod lower;

mod reference;

pub use exec::{gemm as float_gemm, CpuPlan, FloatKernel};
pub use fuse::{fuse_epilogues, fuse_layer_norms};
pub use ir::{
    BinOp, Broadcast, Buffer, Conv2d, Epilogue, MatMul, Permute, Plan, RedOp, Step, UnOp, MAX_RANK,
};
pub use lower::{lower, lower_bundle};
pub use pool::{available_threads, Pool, MIN_PARALLEL_VALUES, MIN_PARALLEL_WORK};
pub use reference::{conv_cpu, erf, eval_host, run_reference, unary};

mod pool;

/// Why a model cannot be lowered to a plan, or a plan cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A node or shape the lowering does not handle.
    #[error("{0}")]
    Unsupported(String),
}
