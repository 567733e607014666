//! [`GraphExec`]: a lowered plan ([`Plan`]) resident on the GPU, one kernel launch per step.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig};

use super::device::{driver_err, Gpu};
use super::launch::{blocks, check_len, launched, Launch};
use super::ops::{Int8Kernel, Kernels};
use crate::gpu::reference::{Activation, RowWeights};
use crate::gpu::GpuError;
use crate::plan::{Broadcast, Conv2d, MatMul, Permute, Plan, Step};

// SAFETY: plain #[repr(C)] structs of i32 arrays, laid out exactly like graph.cu's EfBroadcast,
// EfPermute, EfMatMul and EfConv (4-byte fields, no padding); passed to kernels by value.
unsafe impl DeviceRepr for Broadcast {}
// SAFETY: as above.
unsafe impl DeviceRepr for Permute {}
// SAFETY: as above.
unsafe impl DeviceRepr for MatMul {}
// SAFETY: as above.
unsafe impl DeviceRepr for Conv2d {}

struct GraphFns {
    binary: CudaFunction,
    unary: CudaFunction,
    reduce: CudaFunction,
    rms_norm: CudaFunction,
    softmax: CudaFunction,
    permute: CudaFunction,
    gather: CudaFunction,
    concat: CudaFunction,
    matmul: CudaFunction,
    conv: CudaFunction,
}

/// Per-step device data prepared once.
enum StepData {
    None,
    Indices(CudaSlice<i32>),
    Int8 {
        w: CudaSlice<i8>,
        scales: CudaSlice<f32>,
        q: CudaSlice<i8>,
        /// `k` padded to 32 (the rows' stride).
        kp: usize,
    },
}

/// A lowered graph ([`Plan`]) resident on the GPU: every buffer allocated and every constant
/// uploaded when it is built; [`GraphExec::run`] only launches kernels. A plan with host steps is
/// refused (see [`GraphExec::new`]).
pub struct GraphExec {
    plan: Plan,
    bufs: Vec<CudaSlice<f32>>,
    data: Vec<StepData>,
    fns: GraphFns,
    kernels: Kernels,
    int8: Int8Kernel,
    stream: Arc<CudaStream>,
}

impl GraphExec {
    /// Allocate and upload `plan` on `gpu`.
    /// Refuses a plan with host steps: those would copy through the host and allocate every
    /// frame, which the GPU path does not do.
    pub fn new(gpu: &mut Gpu, plan: Plan) -> Result<Self, GpuError> {
        if !plan.host_nodes.is_empty() {
            return Err(GpuError::Unsupported(format!(
                "{} graph nodes have no GPU kernel: {:?}",
                plan.host_nodes.len(),
                plan.host_nodes
            )));
        }
        let f = |gpu: &mut Gpu, name: &str| gpu.function("graph.cu", name);
        let fns = GraphFns {
            binary: f(gpu, "ef_binary")?,
            unary: f(gpu, "ef_unary")?,
            reduce: f(gpu, "ef_reduce")?,
            rms_norm: f(gpu, "ef_rms_norm")?,
            softmax: f(gpu, "ef_softmax")?,
            permute: f(gpu, "ef_permute")?,
            gather: f(gpu, "ef_gather")?,
            concat: f(gpu, "ef_concat_part")?,
            matmul: f(gpu, "ef_matmul")?,
            conv: f(gpu, "ef_conv2d")?,
        };
        let kernels = Kernels::load(gpu)?;
        let int8 = if kernels.has_mma() {
            Int8Kernel::Mma
        } else {
            Int8Kernel::Dp4a
        };
        let mut bufs = Vec::with_capacity(plan.buffers.len());
        for b in &plan.buffers {
            bufs.push(match &b.init {
                Some(d) => gpu.upload(d)?,
                None => gpu.zeros::<f32>(b.len())?,
            });
        }
        let mut data = Vec::with_capacity(plan.steps.len());
        for s in &plan.steps {
            data.push(match s {
                Step::Gather { indices, .. } => StepData::Indices(gpu.upload(indices)?),
                Step::Int8Linear { m, weights, .. } => {
                    // The GPU kernels read the same integers as rows padded to 32.
                    let rows = RowWeights::from_packed(weights);
                    StepData::Int8 {
                        w: gpu.upload(&rows.q)?,
                        scales: gpu.upload(&rows.scales)?,
                        q: gpu.zeros::<i8>(m * rows.kp)?,
                        kp: rows.kp,
                    }
                }
                _ => StepData::None,
            });
        }
        Ok(Self {
            plan,
            bufs,
            data,
            fns,
            kernels,
            int8,
            stream: gpu.stream.clone(),
        })
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Output `i` of the model.
    pub fn output(&self, i: usize) -> &CudaSlice<f32> {
        &self.bufs[self.plan.outputs[i]]
    }

    /// Copy `src` (device) into the input buffer.
    pub fn set_input_from(&mut self, src: &CudaSlice<f32>) -> Result<(), GpuError> {
        let i = self.plan.input;
        check_len("graph input", src.len(), self.bufs[i].len())?;
        let n = self.bufs[i].len();
        self.stream
            .memcpy_dtod(&src.slice(..n), &mut self.bufs[i])
            .map_err(driver_err("copying the model input"))
    }

    /// Launch every step on the stream (asynchronous). No host or device allocation.
    pub fn run(&mut self) -> Result<(), GpuError> {
        /// Puts the steps back even if a step panics.
        struct Taken<'a> {
            exec: &'a mut GraphExec,
            steps: Vec<Step>,
            data: Vec<StepData>,
        }
        impl Drop for Taken<'_> {
            fn drop(&mut self) {
                self.exec.plan.steps = std::mem::take(&mut self.steps);
                self.exec.data = std::mem::take(&mut self.data);
            }
        }
        let steps = std::mem::take(&mut self.plan.steps);
        let data = std::mem::take(&mut self.data);
        let mut t = Taken {
            exec: self,
            steps,
            data,
        };
        for i in 0..t.steps.len() {
            let (steps, data) = (&t.steps, &mut t.data);
            t.exec.step(&steps[i], &mut data[i])?;
        }
        Ok(())
    }

    fn step(&mut self, step: &Step, data: &mut StepData) -> Result<(), GpuError> {
        // A step producing no element launches nothing (a zero grid is a launch error).
        let out_len = |o: usize| self.plan.buffers[o].len();
        let empty = match step {
            Step::Binary { out, .. }
            | Step::Unary { out, .. }
            | Step::Reduce { out, .. }
            | Step::RmsNorm { out, .. }
            | Step::Softmax { out, .. }
            | Step::Permute { out, .. }
            | Step::Gather { out, .. }
            | Step::MatMul { out, .. }
            | Step::Conv { out, .. }
            | Step::Int8Linear { out, .. } => out_len(*out) == 0,
            Step::ConcatPart { dims, .. } => dims.iter().product::<usize>() == 0,
            Step::Host { .. } | Step::LayerNorm { .. } => false,
        };
        if empty {
            return Ok(());
        }
        let Self {
            plan,
            bufs,
            fns,
            kernels,
            int8,
            stream,
            ..
        } = self;
        let (plan, fns, kernels, stream): (&Plan, &GraphFns, &Kernels, &CudaStream) =
            (plan, fns, kernels, stream);
        let launch1d = |n: usize| LaunchConfig::for_num_elems(n as u32);
        let rows = |n: usize| LaunchConfig {
            grid_dim: (n.max(1) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        match step {
            &Step::Binary {
                op,
                a,
                b,
                out,
                shape,
            } => {
                let n = plan.buffers[out].len() as i32;
                let opc = op as i32;
                let (ins, y) = io(bufs, [a, b, 0], 2, out);
                let mut l = Launch::new(stream, &fns.binary);
                l.val(&opc)
                    .dev(ins[0])
                    .dev(ins[1])
                    .dev(y)
                    .val(&n)
                    .val(&shape);
                // SAFETY: matches ef_binary; broadcast strides were computed from the buffers'
                // shapes, so every index is inside its buffer; n = output length.
                launched(unsafe { l.launch(launch1d(n as usize)) }, "ef_binary")
            }
            &Step::Unary { op, x, out } => {
                let n = plan.buffers[out].len() as i32;
                let opc = op as i32;
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.unary);
                l.val(&opc).dev(ins[0]).dev(y).val(&n);
                // SAFETY: matches ef_unary; input and output hold n values.
                launched(unsafe { l.launch(launch1d(n as usize)) }, "ef_unary")
            }
            &Step::Reduce { op, x, out, dims } => {
                let [o, len, inner] = dims.map(|v| v as i32);
                let opc = op as i32;
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.reduce);
                l.val(&opc).dev(ins[0]).dev(y).val(&o).val(&len).val(&inner);
                // SAFETY: matches ef_reduce; one block of 128 threads per output row.
                launched(unsafe { l.launch(rows(dims[0] * dims[2])) }, "ef_reduce")
            }
            &Step::RmsNorm { x, out, dims, eps } => {
                let [o, len, inner] = dims.map(|v| v as i32);
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.rms_norm);
                l.dev(ins[0]).dev(y).val(&o).val(&len).val(&inner).val(&eps);
                // SAFETY: matches ef_rms_norm; one block per row.
                launched(unsafe { l.launch(rows(dims[0] * dims[2])) }, "ef_rms_norm")
            }
            // `fuse_layer_norms` is a CPU plan pass; lowered plans never carry one.
            Step::LayerNorm { .. } => Err(GpuError::Unsupported(
                "a fused layer-norm step (a CPU plan pass)".into(),
            )),
            &Step::Softmax { x, out, dims } => {
                let [o, len, inner] = dims.map(|v| v as i32);
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.softmax);
                l.dev(ins[0]).dev(y).val(&o).val(&len).val(&inner);
                // SAFETY: matches ef_softmax; one block per row.
                launched(unsafe { l.launch(rows(dims[0] * dims[2])) }, "ef_softmax")
            }
            &Step::Permute { x, out, shape } => {
                let n = plan.buffers[out].len() as i32;
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.permute);
                l.dev(ins[0]).dev(y).val(&n).val(&shape);
                // SAFETY: matches ef_permute; source strides come from the input's shape.
                launched(unsafe { l.launch(launch1d(n as usize)) }, "ef_permute")
            }
            Step::Gather {
                x,
                out,
                dims,
                indices,
            } => {
                let (x, out, dims) = (*x, *out, *dims);
                let [o, len, inner] = dims.map(|v| v as i32);
                let count = indices.len() as i32;
                let n = (dims[0] * indices.len() * dims[2]) as u32;
                let StepData::Indices(idx) = data else {
                    return Err(GpuError::Unsupported("gather indices missing".into()));
                };
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.gather);
                l.dev(ins[0])
                    .dev(y)
                    .dev(&*idx)
                    .val(&o)
                    .val(&len)
                    .val(&inner)
                    .val(&count);
                // SAFETY: matches ef_gather; indices were checked to be < len when lowered.
                launched(
                    unsafe { l.launch(LaunchConfig::for_num_elems(n)) },
                    "ef_gather",
                )
            }
            &Step::ConcatPart {
                x,
                out,
                dims,
                total,
                offset,
            } => {
                let [o, len, inner] = dims.map(|v| v as i32);
                let (t, off) = (total as i32, offset as i32);
                let n = dims.iter().product::<usize>();
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.concat);
                l.dev(ins[0])
                    .dev(y)
                    .val(&o)
                    .val(&len)
                    .val(&inner)
                    .val(&t)
                    .val(&off);
                // SAFETY: matches ef_concat_part; offset + len <= total by construction.
                launched(unsafe { l.launch(launch1d(n)) }, "ef_concat_part")
            }
            &Step::MatMul { a, b, out, shape } => {
                let s = shape;
                // A linear layer (x [m,k] · W[n,k]ᵀ) goes to the tiled linear kernel.
                let linear = s.is_linear();
                let (ins, y) = io(bufs, [a, b, 0], 2, out);
                if linear {
                    return kernels.linear_f32(
                        ins[0],
                        ins[1],
                        None,
                        y,
                        (s.m as usize, s.n as usize, s.k as usize),
                        Activation::None,
                    );
                }
                let cfg = LaunchConfig {
                    grid_dim: (
                        blocks(s.n as usize, 16),
                        blocks(s.m as usize, 16),
                        (s.batch[0] * s.batch[1]) as u32,
                    ),
                    block_dim: (16, 16, 1),
                    shared_mem_bytes: 0,
                };
                let mut l = Launch::new(stream, &fns.matmul);
                l.dev(ins[0]).dev(ins[1]).dev(y).val(&s);
                // SAFETY: matches ef_matmul; strides come from the operands' shapes.
                launched(unsafe { l.launch(cfg) }, "ef_matmul")
            }
            &Step::Conv {
                x,
                w,
                bias,
                out,
                shape,
            } => {
                let n = plan.buffers[out].len();
                let null = 0u64;
                let (ins, y) = io(
                    bufs,
                    [x, w, bias.unwrap_or(x)],
                    2 + bias.is_some() as usize,
                    out,
                );
                let mut l = Launch::new(stream, &fns.conv);
                l.dev(ins[0]).dev(ins[1]);
                match bias {
                    Some(_) => l.dev(ins[2]),
                    None => l.val(&null),
                };
                l.dev(y).val(&shape);
                // SAFETY: matches ef_conv2d; geometry from the node's facts; padding checked.
                launched(unsafe { l.launch(launch1d(n)) }, "ef_conv2d")
            }
            Step::Int8Linear {
                x,
                out,
                m,
                weights,
                act_scale,
                epilogue,
                ..
            } => {
                if !epilogue.is_empty() {
                    // `fuse_epilogues` is a CPU plan pass; lowered plans never carry one.
                    return Err(GpuError::Unsupported(
                        "an int8 layer with a fused epilogue (a CPU plan pass)".into(),
                    ));
                }
                let (x, out, m, act_scale) = (*x, *out, *m, *act_scale);
                let which = *int8;
                let StepData::Int8 { w, scales, q, kp } = data else {
                    return Err(GpuError::Unsupported("int8 weights missing".into()));
                };
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                kernels.quantize_i8(ins[0], q, (m, weights.k, *kp), act_scale)?;
                kernels.linear_i8(
                    which,
                    q,
                    w,
                    scales,
                    act_scale,
                    None,
                    y,
                    (m, weights.n, *kp),
                    Activation::None,
                )
            }
            // GraphExec::new refuses plans with host steps.
            Step::Host { node, .. } => Err(GpuError::Unsupported(format!(
                "graph node `{}` has no GPU kernel",
                node.name
            ))),
        }
    }
}

/// Split-borrow up to three input buffers and one output buffer (outputs are fresh buffers,
/// never an input of their own step).
fn io(
    bufs: &mut [CudaSlice<f32>],
    ins: [usize; 3],
    n: usize,
    out: usize,
) -> ([&CudaSlice<f32>; 3], &mut CudaSlice<f32>) {
    let (left, right) = bufs.split_at_mut(out);
    let (o, rest) = right.split_first_mut().expect("output buffer");
    let pick = |i: usize| -> &CudaSlice<f32> {
        if i < out {
            &left[i]
        } else {
            &rest[i - out - 1]
        }
    };
    let first = pick(ins[0]);
    let get = |j: usize| if j < n { pick(ins[j]) } else { first };
    ([first, get(1), get(2)], o)
}
