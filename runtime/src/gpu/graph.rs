//! Our own execution of the bundle's encoder and Q-Former graphs: tract's decluttered typed
//! model (with our `QLinear` int8 operators in place for an int8 bundle) lowered to a flat list
//! of [`Step`]s over buffers sized once, each step one kernel.
//!
//! The plan is backend-neutral. [`run_cpu`] executes it with plain loops: that is how the lowering
//! is checked without a GPU (against tract's own output, `tests/tests/gpu_graph.rs`), and the
//! CUDA executor (`cuda::GraphExec`) runs the same steps with the kernels of `kernels/graph.cu`
//! and `kernels/linear.cu`. A node whose op has no lowering becomes a `Step::Host` (tract's own
//! evaluation), named in [`Plan::host_nodes`]: [`run_cpu`] executes it, the CUDA executor refuses
//! such a plan (it would copy through the host every frame) and the accelerator then runs the
//! models through tract instead.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{Gather, TypedConcat};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, RmsNorm, Softmax, SoftmaxKind};
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::runtime::{Runnable, Runtime, State};

use edgefuse_models::quant::QLinear;

use super::reference::{self, RowWeights};
use super::GpuError;

/// Most axes a generic step handles.
pub const MAX_RANK: usize = 6;

/// Element-wise binary operators (`ef_binary`'s codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum BinOp {
    /// `a + b`
    Add = 0,
    /// `a - b`
    Sub = 1,
    /// `a * b`
    Mul = 2,
    /// `a / b`
    Div = 3,
}

/// Element-wise unary operators (`ef_unary`'s codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum UnOp {
    /// Exact (erf) GELU.
    Gelu = 0,
    /// `e^x`
    Exp = 1,
    /// `√x`
    Sqrt = 2,
    /// `1/√x`
    Rsqrt = 3,
    /// `1/x`
    Recip = 4,
    /// `tanh x`
    Tanh = 5,
    /// `1/(1+e^-x)`
    Sigmoid = 6,
    /// `erf x`
    Erf = 7,
}

/// Reductions over one axis (`ef_reduce`'s codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum RedOp {
    /// Σ
    Sum = 0,
    /// max
    Max = 1,
    /// min
    Min = 2,
}

/// Shape and broadcast strides of a binary step, padded to [`MAX_RANK`] (leading 1s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Broadcast {
    /// Output dims.
    pub dims: [i32; MAX_RANK],
    /// Element strides of `a` per output dim (0 where broadcast).
    pub sa: [i32; MAX_RANK],
    /// Element strides of `b`.
    pub sb: [i32; MAX_RANK],
}

/// Output dims and the input stride each output dim reads (a transposition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Permute {
    /// Output dims.
    pub dims: [i32; MAX_RANK],
    /// Input element stride of each output dim.
    pub src_strides: [i32; MAX_RANK],
}

/// A strided batched matrix product `C[b0,b1,i,j] = Σ_k A[b0,b1,i,k]·B[b0,b1,k,j]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct MatMul {
    /// Batch sizes.
    pub batch: [i32; 2],
    /// Rows, columns, contraction.
    pub m: i32,
    /// Columns.
    pub n: i32,
    /// Contraction length.
    pub k: i32,
    /// A strides: b0, b1, m, k.
    pub sa: [i32; 4],
    /// B strides: b0, b1, k, n.
    pub sb: [i32; 4],
    /// C strides: b0, b1, m, n.
    pub sc: [i32; 4],
}

impl MatMul {
    /// Whether this is a plain linear layer `y[m,n] = x[m,k]·w[n,k]ᵀ`, all row-major and
    /// contiguous: the layout of the tiled `ef_linear_f32` kernel.
    pub fn is_linear(&self) -> bool {
        self.batch == [1, 1]
            && self.sa[2] == self.k
            && self.sa[3] == 1
            && self.sb[2] == 1
            && self.sb[3] == self.k
            && self.sc[2] == self.n
            && self.sc[3] == 1
    }
}

/// A direct 2-D convolution, NCHW input, OIHW weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Conv2d {
    /// N, C, H, W of the input.
    pub input: [i32; 4],
    /// O, H, W of the output (N as the input).
    pub output: [i32; 3],
    /// Kernel height, width.
    pub kernel: [i32; 2],
    /// Strides.
    pub stride: [i32; 2],
    /// Dilations.
    pub dilation: [i32; 2],
    /// Padding before (top, left).
    pub pad: [i32; 2],
    /// Groups.
    pub group: i32,
}

/// One kernel launch of a plan. Buffers are indices into [`Plan::buffers`].
#[derive(Debug, Clone)]
pub enum Step {
    /// `out = a op b` with broadcasting.
    Binary {
        /// Operator.
        op: BinOp,
        /// Inputs and output.
        a: usize,
        /// Second input.
        b: usize,
        /// Output.
        out: usize,
        /// Geometry.
        shape: Broadcast,
    },
    /// `out = op(x)`.
    Unary {
        /// Operator.
        op: UnOp,
        /// Input.
        x: usize,
        /// Output.
        out: usize,
    },
    /// Reduce the middle axis of `[outer, len, inner]` (output `[outer, inner]`).
    Reduce {
        /// Operator.
        op: RedOp,
        /// Input.
        x: usize,
        /// Output.
        out: usize,
        /// Geometry.
        dims: [usize; 3],
    },
    /// `x / √(mean(x²) + eps)` along the middle axis of `[outer, len, inner]`.
    RmsNorm {
        /// Input.
        x: usize,
        /// Output.
        out: usize,
        /// Geometry.
        dims: [usize; 3],
        /// ε.
        eps: f32,
    },
    /// Softmax along the middle axis of `[outer, len, inner]`.
    Softmax {
        /// Input.
        x: usize,
        /// Output.
        out: usize,
        /// Geometry.
        dims: [usize; 3],
    },
    /// Transposition.
    Permute {
        /// Input.
        x: usize,
        /// Output.
        out: usize,
        /// Geometry.
        shape: Permute,
    },
    /// Select `indices` along the middle axis of `[outer, len, inner]`.
    Gather {
        /// Input.
        x: usize,
        /// Output.
        out: usize,
        /// Geometry.
        dims: [usize; 3],
        /// Indices (non-negative, < len).
        indices: Arc<[i32]>,
    },
    /// Write `x` (`[outer, len, inner]`) at `offset` along the middle axis of `out`
    /// (`[outer, total, inner]`): one step per concatenated input.
    ConcatPart {
        /// Input.
        x: usize,
        /// Output.
        out: usize,
        /// `[outer, len, inner]` of the input.
        dims: [usize; 3],
        /// Middle-axis length of the output.
        total: usize,
        /// Where this input starts.
        offset: usize,
    },
    /// Strided batched matrix product.
    MatMul {
        /// Left.
        a: usize,
        /// Right.
        b: usize,
        /// Output.
        out: usize,
        /// Geometry.
        shape: MatMul,
    },
    /// 2-D convolution with optional bias.
    Conv {
        /// Input.
        x: usize,
        /// Weights (OIHW).
        w: usize,
        /// Bias (O), if any.
        bias: Option<usize>,
        /// Output.
        out: usize,
        /// Geometry.
        shape: Conv2d,
    },
    /// A calibrated int8 linear layer (`QLinear`): quantize `x` (`[m, k]`), int8 GEMM with the
    /// weights, dequantize.
    Int8Linear {
        /// Input.
        x: usize,
        /// Output (`[m, n]`).
        out: usize,
        /// Rows.
        m: usize,
        /// Weights as rows, from the CPU path's quantizer.
        weights: Arc<RowWeights>,
        /// Activation scale.
        act_scale: f32,
    },
    /// A node evaluated by tract on the host.
    Host {
        /// The node (its op and name).
        node: Box<TypedNode>,
        /// Input buffers, in order.
        inputs: Vec<usize>,
        /// The node's input shapes (a buffer reached through a reshape has another shape).
        input_shapes: Vec<Vec<usize>>,
        /// Output buffers.
        outputs: Vec<usize>,
    },
}

/// A buffer of the plan (f32 elements).
#[derive(Debug, Clone)]
pub struct Buffer {
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// Contents of a constant (uploaded once).
    pub init: Option<Arc<[f32]>>,
}

impl Buffer {
    /// Elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A lowered model.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every buffer; constants carry their data.
    pub buffers: Vec<Buffer>,
    /// Steps in execution order.
    pub steps: Vec<Step>,
    /// The model's input buffer.
    pub input: usize,
    /// Output buffers, in the model's output order.
    pub outputs: Vec<usize>,
    /// Names of nodes evaluated by tract on the host (`Step::Host`).
    pub host_nodes: Vec<String>,
}

fn unsupported(node: &TypedNode, why: impl std::fmt::Display) -> GpuError {
    GpuError::Unsupported(format!("node `{}` ({}): {why}", node.name, node.op.name()))
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// `[outer, len, inner]` around `axis`.
fn split3(shape: &[usize], axis: usize) -> [usize; 3] {
    [
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    ]
}

struct Lowering<'a> {
    model: &'a TypedModel,
    plan: Plan,
    map: HashMap<OutletId, usize>,
    consts: HashMap<OutletId, Arc<Tensor>>,
}

impl Lowering<'_> {
    fn shape(&self, o: OutletId) -> Result<Vec<usize>, GpuError> {
        let fact = self
            .model
            .outlet_fact(o)
            .map_err(|e| GpuError::Unsupported(format!("{e:#}")))?;
        fact.shape
            .as_concrete()
            .map(|s| s.to_vec())
            .ok_or_else(|| GpuError::Unsupported(format!("outlet {o:?} has no concrete shape")))
    }

    fn new_buffer(&mut self, shape: Vec<usize>, init: Option<Arc<[f32]>>) -> usize {
        self.plan.buffers.push(Buffer { shape, init });
        self.plan.buffers.len() - 1
    }

    /// The buffer of an outlet, materialising a constant on first use.
    fn buf(&mut self, o: OutletId) -> Result<usize, GpuError> {
        if let Some(b) = self.map.get(&o) {
            return Ok(*b);
        }
        let t = self
            .consts
            .get(&o)
            .ok_or_else(|| GpuError::Unsupported(format!("outlet {o:?} was not lowered")))?
            .clone();
        let f = t
            .cast_to::<f32>()
            .map_err(|e| GpuError::Unsupported(format!("constant {o:?}: {e:#}")))?;
        let data: Arc<[f32]> = f
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>().map(|s| s.into()))
            .map_err(|e| GpuError::Unsupported(format!("constant {o:?}: {e:#}")))?;
        let b = self.new_buffer(t.shape().to_vec(), Some(data));
        self.map.insert(o, b);
        Ok(b)
    }

    fn out(&mut self, node: &TypedNode) -> Result<usize, GpuError> {
        let o = OutletId::new(node.id, 0);
        let b = self.new_buffer(self.shape(o)?, None);
        self.map.insert(o, b);
        Ok(b)
    }

    fn lower_node(&mut self, node: &TypedNode) -> Result<(), GpuError> {
        let op = &node.op;
        if op.downcast_ref::<TypedSource>().is_some() {
            if self.plan.input != usize::MAX {
                return Err(unsupported(node, "a second model input (one is supported)"));
            }
            let b = self.out(node)?;
            self.plan.input = b;
            return Ok(());
        }
        if let Some(c) = op.downcast_ref::<Const>() {
            self.consts
                .insert(OutletId::new(node.id, 0), c.val().clone());
            return Ok(());
        }
        // A node whose inputs are all constants is folded by tract's declutter; anything left is
        // computed per frame.
        let lowered = self.try_lower(node)?;
        if !lowered {
            self.host(node)?;
        }
        Ok(())
    }

    fn host(&mut self, node: &TypedNode) -> Result<(), GpuError> {
        let inputs = node
            .inputs
            .iter()
            .map(|i| self.buf(*i))
            .collect::<Result<Vec<_>, _>>()?;
        let input_shapes = node
            .inputs
            .iter()
            .map(|i| self.shape(*i))
            .collect::<Result<Vec<_>, _>>()?;
        let mut outputs = Vec::new();
        for slot in 0..node.outputs.len() {
            let o = OutletId::new(node.id, slot);
            let b = self.new_buffer(self.shape(o)?, None);
            self.map.insert(o, b);
            outputs.push(b);
        }
        self.plan
            .host_nodes
            .push(format!("{} ({})", node.name, node.op.name()));
        self.plan.steps.push(Step::Host {
            node: Box::new(node.clone()),
            inputs,
            input_shapes,
            outputs,
        });
        Ok(())
    }

    /// `Ok(false)`: no GPU lowering for this node (it runs on the host).
    fn try_lower(&mut self, node: &TypedNode) -> Result<bool, GpuError> {
        let op = &node.op;
        let f32_out = self
            .model
            .outlet_fact(OutletId::new(node.id, 0))
            .map(|f| f.datum_type == f32::datum_type())
            .unwrap_or(false);
        if !f32_out || node.outputs.len() != 1 {
            return Ok(false);
        }
        if let Some(bin) = op.downcast_ref::<TypedBinOp>() {
            let kind = match bin.0.name() {
                "Add" => BinOp::Add,
                "Sub" => BinOp::Sub,
                "Mul" => BinOp::Mul,
                "Div" => BinOp::Div,
                _ => return Ok(false),
            };
            let (sa, sb) = (self.shape(node.inputs[0])?, self.shape(node.inputs[1])?);
            let so = self.shape(OutletId::new(node.id, 0))?;
            if so.len() > MAX_RANK || sa.len() != so.len() || sb.len() != so.len() {
                return Ok(false);
            }
            let mut shape = Broadcast::default();
            let pad = MAX_RANK - so.len();
            let (ta, tb) = (strides(&sa), strides(&sb));
            for i in 0..MAX_RANK {
                if i < pad {
                    shape.dims[i] = 1;
                    continue;
                }
                let d = i - pad;
                shape.dims[i] = so[d] as i32;
                shape.sa[i] = if sa[d] == 1 { 0 } else { ta[d] as i32 };
                shape.sb[i] = if sb[d] == 1 { 0 } else { tb[d] as i32 };
            }
            let (a, b) = (self.buf(node.inputs[0])?, self.buf(node.inputs[1])?);
            let out = self.out(node)?;
            self.plan.steps.push(Step::Binary {
                op: kind,
                a,
                b,
                out,
                shape,
            });
            return Ok(true);
        }
        if let Some(ew) = op.downcast_ref::<ElementWiseOp>() {
            let kind = match ew.0.name().as_ref() {
                "GeluExact" => UnOp::Gelu,
                "Exp" => UnOp::Exp,
                "Sqrt" => UnOp::Sqrt,
                "Rsqrt" => UnOp::Rsqrt,
                "Recip" => UnOp::Recip,
                "Tanh" => UnOp::Tanh,
                "Sigmoid" => UnOp::Sigmoid,
                "Erf" => UnOp::Erf,
                _ => return Ok(false),
            };
            let x = self.buf(node.inputs[0])?;
            let out = self.out(node)?;
            self.plan.steps.push(Step::Unary { op: kind, x, out });
            return Ok(true);
        }
        if let Some(r) = op.downcast_ref::<Reduce>() {
            let kind = match r.reducer {
                Reducer::Sum => RedOp::Sum,
                Reducer::Max => RedOp::Max,
                Reducer::Min => RedOp::Min,
                _ => return Ok(false),
            };
            if r.axes.len() != 1 {
                return Ok(false);
            }
            let dims = split3(&self.shape(node.inputs[0])?, r.axes[0]);
            let x = self.buf(node.inputs[0])?;
            let out = self.out(node)?;
            self.plan.steps.push(Step::Reduce {
                op: kind,
                x,
                out,
                dims,
            });
            return Ok(true);
        }
        if let Some(r) = op.downcast_ref::<RmsNorm>() {
            let Ok(eps) = r.eps.cast_to_scalar::<f32>() else {
                return Ok(false);
            };
            let dims = split3(&self.shape(node.inputs[0])?, r.axis);
            let x = self.buf(node.inputs[0])?;
            let out = self.out(node)?;
            self.plan.steps.push(Step::RmsNorm { x, out, dims, eps });
            return Ok(true);
        }
        if let Some(s) = op.downcast_ref::<Softmax>() {
            if s.axes.len() != 1 || s.quant_output_dt.is_some() || s.kind != SoftmaxKind::Softmax {
                return Ok(false);
            }
            let dims = split3(&self.shape(node.inputs[0])?, s.axes[0]);
            let x = self.buf(node.inputs[0])?;
            let out = self.out(node)?;
            self.plan.steps.push(Step::Softmax { x, out, dims });
            return Ok(true);
        }
        if let Some(a) = op.downcast_ref::<AxisOp>() {
            match a {
                AxisOp::Move(from, to) => {
                    let si = self.shape(node.inputs[0])?;
                    if si.len() > MAX_RANK {
                        return Ok(false);
                    }
                    let mut perm: Vec<usize> = (0..si.len()).collect();
                    let ax = perm.remove(*from);
                    perm.insert(*to, ax);
                    let st = strides(&si);
                    let pad = MAX_RANK - si.len();
                    let mut shape = Permute::default();
                    for i in 0..MAX_RANK {
                        if i < pad {
                            shape.dims[i] = 1;
                        } else {
                            shape.dims[i] = si[perm[i - pad]] as i32;
                            shape.src_strides[i] = st[perm[i - pad]] as i32;
                        }
                    }
                    let x = self.buf(node.inputs[0])?;
                    let out = self.out(node)?;
                    self.plan.steps.push(Step::Permute { x, out, shape });
                }
                // Same elements in the same order: the output is the input's buffer.
                _ => {
                    let x = self.buf(node.inputs[0])?;
                    let o = OutletId::new(node.id, 0);
                    let shape = self.shape(o)?;
                    // Aliasing a constant is safe: no step writes a buffer it did not create.
                    self.map.insert(o, x);
                    if self.plan.buffers[x].len() != shape.iter().product::<usize>() {
                        return Err(unsupported(node, "reshape changes the element count"));
                    }
                }
            }
            return Ok(true);
        }
        if let Some(g) = op.downcast_ref::<Gather>() {
            let Some(idx) = self.consts.get(&node.inputs[1]).cloned() else {
                return Ok(false);
            };
            let si = self.shape(node.inputs[0])?;
            let dims = split3(&si, g.axis);
            let Ok(idx) = idx.cast_to::<i64>() else {
                return Ok(false);
            };
            let Ok(view) = idx.try_as_plain_ram() else {
                return Ok(false);
            };
            let Ok(vals) = view.as_slice::<i64>() else {
                return Ok(false);
            };
            let mut indices = Vec::with_capacity(vals.len());
            for v in vals {
                let i = if *v < 0 { *v + dims[1] as i64 } else { *v };
                if i < 0 || i >= dims[1] as i64 {
                    return Err(unsupported(
                        node,
                        format!("index {v} outside 0..{}", dims[1]),
                    ));
                }
                indices.push(i as i32);
            }
            let x = self.buf(node.inputs[0])?;
            let out = self.out(node)?;
            self.plan.steps.push(Step::Gather {
                x,
                out,
                dims,
                indices: indices.into(),
            });
            return Ok(true);
        }
        if let Some(c) = op.downcast_ref::<TypedConcat>() {
            let so = self.shape(OutletId::new(node.id, 0))?;
            let total = so[c.axis];
            let ins = node.inputs.clone();
            let mut parts = Vec::new();
            let mut offset = 0;
            for i in &ins {
                let si = self.shape(*i)?;
                let dims = split3(&si, c.axis);
                parts.push((self.buf(*i)?, dims, offset));
                offset += dims[1];
            }
            let out = self.out(node)?;
            for (x, dims, offset) in parts {
                self.plan.steps.push(Step::ConcatPart {
                    x,
                    out,
                    dims,
                    total,
                    offset,
                });
            }
            return Ok(true);
        }
        if let Some(e) = op.downcast_ref::<EinSum>() {
            if e.q_params.is_some() || e.operating_dt != f32::datum_type() || node.inputs.len() != 2
            {
                return Ok(false);
            }
            let Some(mut shape) = self.einsum_shape(node, e)? else {
                return Ok(false);
            };
            let a = self.buf(node.inputs[0])?;
            let mut b = self.buf(node.inputs[1])?;
            // A linear layer whose constant weights are stored [k, n] (ONNX MatMul x·Wᵀ):
            // keep a transposed [n, k] copy so the step runs on the tiled linear kernel.
            let (k, n) = (shape.k as usize, shape.n as usize);
            if shape.batch == [1, 1]
                && shape.sb[2] == shape.n
                && shape.sb[3] == 1
                && shape.sa[2] == shape.k
                && shape.sa[3] == 1
                && shape.sc[2] == shape.n
                && shape.sc[3] == 1
            {
                if let Some(w) = self.plan.buffers[b].init.clone() {
                    if w.len() == k * n {
                        let mut t = vec![0f32; k * n];
                        for kk in 0..k {
                            for nn in 0..n {
                                t[nn * k + kk] = w[kk * n + nn];
                            }
                        }
                        b = self.new_buffer(vec![n, k], Some(t.into()));
                        shape.sb = [0, 0, 1, shape.k];
                    }
                }
            }
            let out = self.out(node)?;
            self.plan.steps.push(Step::MatMul { a, b, out, shape });
            return Ok(true);
        }
        if let Some(q) = op.downcast_ref::<QLinear>() {
            let si = self.shape(node.inputs[0])?;
            let w = q.weights();
            let m = si.iter().product::<usize>() / w.k;
            let x = self.buf(node.inputs[0])?;
            let out = self.out(node)?;
            self.plan.steps.push(Step::Int8Linear {
                x,
                out,
                m,
                weights: Arc::new(RowWeights::from_packed(w)),
                act_scale: q.act_scale(),
            });
            return Ok(true);
        }
        if let Some(c) = op.downcast_ref::<tract_onnx::tract_core::ops::cnn::Conv>() {
            return self.lower_conv(node, c);
        }
        Ok(false)
    }

    fn lower_conv(
        &mut self,
        node: &TypedNode,
        c: &tract_onnx::tract_core::ops::cnn::Conv,
    ) -> Result<bool, GpuError> {
        use tract_onnx::tract_core::ops::cnn::KernelFormat;
        use tract_onnx::tract_core::ops::nn::DataFormat;
        let ps = &c.pool_spec;
        if c.q_params.is_some()
            || c.kernel_fmt != KernelFormat::OIHW
            || ps.data_format != DataFormat::NCHW
            || ps.kernel_shape.len() != 2
            || node.inputs.len() < 2
        {
            return Ok(false);
        }
        let si = self.shape(node.inputs[0])?;
        let so = self.shape(OutletId::new(node.id, 0))?;
        if si.len() != 4 || so.len() != 4 {
            return Ok(false);
        }
        let computed = ps.padding.compute(
            &si[2..4],
            &ps.kernel_shape,
            ps.dilations().as_ref(),
            ps.strides().as_ref(),
        );
        let st = ps.strides();
        let dl = ps.dilations();
        let shape = Conv2d {
            input: [si[0] as i32, si[1] as i32, si[2] as i32, si[3] as i32],
            output: [so[1] as i32, so[2] as i32, so[3] as i32],
            kernel: [ps.kernel_shape[0] as i32, ps.kernel_shape[1] as i32],
            stride: [st[0] as i32, st[1] as i32],
            dilation: [dl[0] as i32, dl[1] as i32],
            pad: [computed[0].pad_before as i32, computed[1].pad_before as i32],
            group: c.group as i32,
        };
        if computed[0].convoluted != so[2] || computed[1].convoluted != so[3] {
            return Ok(false);
        }
        let x = self.buf(node.inputs[0])?;
        let w = self.buf(node.inputs[1])?;
        let bias = match node.inputs.get(2) {
            Some(b) => {
                let s = self.shape(*b)?;
                if s.iter().product::<usize>() == so[1] {
                    Some(self.buf(*b)?)
                } else if s.iter().product::<usize>() == 1 {
                    // A scalar bias (0 when the ONNX Conv had none): broadcast it.
                    let v = self
                        .consts
                        .get(b)
                        .and_then(|t| t.cast_to_scalar::<f32>().ok());
                    match v {
                        Some(0.0) => None,
                        Some(v) => Some(self.new_buffer(vec![so[1]], Some(vec![v; so[1]].into()))),
                        None => return Ok(false),
                    }
                } else {
                    return Ok(false);
                }
            }
            None => None,
        };
        let out = self.out(node)?;
        self.plan.steps.push(Step::Conv {
            x,
            w,
            bias,
            out,
            shape,
        });
        Ok(true)
    }

    /// Map a two-input einsum onto a strided batched matrix product, `None` when its axes do not
    /// fit (an axis summed within one input, more than two batch axes, unmergeable groups).
    fn einsum_shape(&self, node: &TypedNode, e: &EinSum) -> Result<Option<MatMul>, GpuError> {
        let sa = self.shape(node.inputs[0])?;
        let sb = self.shape(node.inputs[1])?;
        let sc = self.shape(OutletId::new(node.id, 0))?;
        let (ta, tb, tc) = (strides(&sa), strides(&sb), strides(&sc));
        // Per role: (size, stride in A, in B, in C), 0 stride where absent.
        let mut batch = Vec::new();
        let (mut m, mut n, mut k) = (Vec::new(), Vec::new(), Vec::new());
        for ax in e.axes.iter_all_axes() {
            let pa = ax.inputs.first().and_then(|p| p.first()).copied();
            let pb = ax.inputs.get(1).and_then(|p| p.first()).copied();
            let pc = ax.outputs.first().and_then(|p| p.first()).copied();
            if ax.inputs.iter().any(|p| p.len() > 1) || ax.outputs.iter().any(|p| p.len() > 1) {
                return Ok(None);
            }
            let sizes = [pa.map(|p| sa[p]), pb.map(|p| sb[p]), pc.map(|p| sc[p])];
            let size = sizes.iter().flatten().copied().max().unwrap_or(1);
            // einsum broadcasts a size-1 axis against a longer one: not a plain product.
            if sizes.iter().flatten().any(|s| *s != size) {
                return Ok(None);
            }
            if size == 1 {
                continue;
            }
            let entry = (
                size,
                pa.map_or(0, |p| ta[p]),
                pb.map_or(0, |p| tb[p]),
                pc.map_or(0, |p| tc[p]),
            );
            match (pa.is_some(), pb.is_some(), pc.is_some()) {
                (true, true, true) => batch.push(entry),
                (true, false, true) => m.push(entry),
                (false, true, true) => n.push(entry),
                (true, true, false) => k.push(entry),
                _ => return Ok(None),
            }
        }
        let (Some(m), Some(n), Some(k)) = (merge(m), merge(n), merge(k)) else {
            return Ok(None);
        };
        let batch = match batch.len() {
            0 => vec![(1, 0, 0, 0), (1, 0, 0, 0)],
            1 => vec![(1, 0, 0, 0), batch[0]],
            2 => batch,
            _ => match merge(batch.clone()) {
                Some(b) => vec![(1, 0, 0, 0), b],
                None => return Ok(None),
            },
        };
        let i = |v: usize| v as i32;
        Ok(Some(MatMul {
            batch: [i(batch[0].0), i(batch[1].0)],
            m: i(m.0),
            n: i(n.0),
            k: i(k.0),
            sa: [i(batch[0].1), i(batch[1].1), i(m.1), i(k.1)],
            sb: [i(batch[0].2), i(batch[1].2), i(k.2), i(n.2)],
            sc: [i(batch[0].3), i(batch[1].3), i(m.3), i(n.3)],
        }))
    }
}

/// Merge the axes of one role into a single (size, strides) when they are contiguous in every
/// operand that has them; an empty role is a size-1 axis.
fn merge(mut axes: Vec<(usize, usize, usize, usize)>) -> Option<(usize, usize, usize, usize)> {
    if axes.is_empty() {
        return Some((1, 0, 0, 0));
    }
    // Innermost first, by the largest stride among operands ascending.
    axes.sort_by_key(|a| a.1.max(a.2).max(a.3));
    let mut acc = axes[0];
    for a in &axes[1..] {
        let ok = |outer: usize, inner: usize| outer == 0 || outer == inner * acc.0;
        if !(ok(a.1, acc.1) && ok(a.2, acc.2) && ok(a.3, acc.3)) {
            return None;
        }
        // Both present or both absent in each operand.
        if (a.1 == 0) != (acc.1 == 0) || (a.2 == 0) != (acc.2 == 0) || (a.3 == 0) != (acc.3 == 0) {
            return None;
        }
        acc.0 *= a.0;
    }
    Some(acc)
}

/// Lower a decluttered typed model (single input, f32 outputs).
pub fn lower(model: &TypedModel) -> Result<Plan, GpuError> {
    let mut l = Lowering {
        model,
        plan: Plan {
            buffers: Vec::new(),
            steps: Vec::new(),
            input: usize::MAX,
            outputs: Vec::new(),
            host_nodes: Vec::new(),
        },
        map: HashMap::new(),
        consts: HashMap::new(),
    };
    let order = model
        .eval_order()
        .map_err(|e| GpuError::Unsupported(format!("{e:#}")))?;
    for id in order {
        l.lower_node(model.node(id))?;
    }
    if l.plan.input == usize::MAX {
        return Err(GpuError::Unsupported("the model has no input".into()));
    }
    let outs = model
        .output_outlets()
        .map_err(|e| GpuError::Unsupported(format!("{e:#}")))?
        .to_vec();
    for o in outs {
        let b = l.buf(o)?;
        l.plan.outputs.push(b);
    }
    Ok(l.plan)
}

/// Captures the decluttered graph a bundle hands to a tract runtime, so the graph (with int8
/// operators in place) can be lowered by [`lower`]. Also runnable on the CPU.
#[derive(Debug)]
pub struct CaptureRuntime;

/// The instance to pass to `Bundle::set_runtime`.
pub static CAPTURE: CaptureRuntime = CaptureRuntime;

#[derive(Debug)]
struct Captured {
    model: Arc<TypedModel>,
    plan: Arc<TypedSimplePlan>,
}

impl Runtime for CaptureRuntime {
    fn name(&self) -> tract_onnx::tract_core::internal::StaticName {
        "edgefuse-capture".into()
    }

    fn prepare_with_options(
        &self,
        model: TypedModel,
        _options: &tract_onnx::tract_core::runtime::RunOptions,
    ) -> TractResult<Box<dyn Runnable>> {
        let plan = model.clone().into_optimized()?.into_runnable()?;
        Ok(Box::new(Captured {
            model: Arc::new(model),
            plan,
        }))
    }

    fn check(&self) -> TractResult<()> {
        Ok(())
    }
}

impl Runnable for Captured {
    fn spawn(&self) -> TractResult<Box<dyn State>> {
        Runnable::spawn(&self.plan)
    }

    fn typed_plan(&self) -> Option<&Arc<TypedSimplePlan>> {
        Some(&self.plan)
    }

    fn typed_model(&self) -> Option<&Arc<TypedModel>> {
        Some(&self.model)
    }
}

/// The decluttered graphs of a bundle's encoder and Q-Former, lowered.
pub fn lower_bundle(bundle: &edgefuse_models::Bundle) -> Result<(Plan, Option<Plan>), GpuError> {
    let mut b = bundle.clone();
    b.set_runtime(Some(&CAPTURE));
    let err = |e: edgefuse_models::BundleError| GpuError::Unsupported(e.to_string());
    let enc = b.load_encoder().map_err(err)?;
    let graph = |m: &edgefuse_models::LoadedModel| {
        m.plan
            .typed_model()
            .cloned()
            .ok_or_else(|| GpuError::Unsupported("no graph captured".into()))
    };
    let enc_plan = lower(graph(&enc)?.as_ref())?;
    let qf_plan = match enc.output_shapes.get(1) {
        Some(shape) => match b.load_qformer(shape).map_err(err)? {
            Some(q) => Some(lower(graph(&q)?.as_ref())?),
            None => None,
        },
        None => None,
    };
    Ok((enc_plan, qf_plan))
}

/// Execute `plan` on the CPU with the reference loops; returns the output buffers. Checks the
/// lowering without a GPU; every step's loop is the definition the GPU kernel must match.
pub fn run_cpu(plan: &Plan, input: &[f32]) -> Result<Vec<Vec<f32>>, GpuError> {
    let mut mem: Vec<Vec<f32>> = plan
        .buffers
        .iter()
        .map(|b| match &b.init {
            Some(d) => d.to_vec(),
            None => vec![0.0; b.len()],
        })
        .collect();
    if input.len() != mem[plan.input].len() {
        return Err(GpuError::Unsupported(format!(
            "input has {} values, the plan expects {}",
            input.len(),
            mem[plan.input].len()
        )));
    }
    mem[plan.input].copy_from_slice(input);
    for step in &plan.steps {
        exec_cpu(step, &mut mem)?;
    }
    Ok(plan.outputs.iter().map(|o| mem[*o].clone()).collect())
}

fn take(mem: &mut [Vec<f32>], out: usize) -> Vec<f32> {
    std::mem::take(&mut mem[out])
}

fn exec_cpu(step: &Step, mem: &mut [Vec<f32>]) -> Result<(), GpuError> {
    match step {
        Step::Binary {
            op,
            a,
            b,
            out,
            shape,
        } => {
            let mut y = take(mem, *out);
            let d = shape.dims.map(|v| v as usize);
            for (i, yv) in y.iter_mut().enumerate() {
                let (mut r, mut ia, mut ib) = (i, 0usize, 0usize);
                for ax in (0..MAX_RANK).rev() {
                    let c = r % d[ax];
                    r /= d[ax];
                    ia += c * shape.sa[ax] as usize;
                    ib += c * shape.sb[ax] as usize;
                }
                let (x1, x2) = (mem[*a][ia], mem[*b][ib]);
                *yv = match op {
                    BinOp::Add => x1 + x2,
                    BinOp::Sub => x1 - x2,
                    BinOp::Mul => x1 * x2,
                    BinOp::Div => x1 / x2,
                };
            }
            mem[*out] = y;
        }
        Step::Unary { op, x, out } => {
            let mut y = take(mem, *out);
            for (yv, v) in y.iter_mut().zip(&mem[*x]) {
                *yv = unary(*op, *v);
            }
            mem[*out] = y;
        }
        Step::Reduce { op, x, out, dims } => {
            let [o, l, n] = *dims;
            let mut y = take(mem, *out);
            for oi in 0..o {
                for ni in 0..n {
                    let it = (0..l).map(|li| mem[*x][(oi * l + li) * n + ni]);
                    y[oi * n + ni] = match op {
                        RedOp::Sum => it.sum(),
                        RedOp::Max => it.fold(f32::NEG_INFINITY, f32::max),
                        RedOp::Min => it.fold(f32::INFINITY, f32::min),
                    };
                }
            }
            mem[*out] = y;
        }
        Step::RmsNorm { x, out, dims, eps } => {
            let [o, l, n] = *dims;
            let mut y = take(mem, *out);
            for oi in 0..o {
                for ni in 0..n {
                    let at = |li: usize| (oi * l + li) * n + ni;
                    let ms = (0..l).map(|li| mem[*x][at(li)].powi(2)).sum::<f32>() / l as f32;
                    let inv = 1.0 / (ms + eps).sqrt();
                    for li in 0..l {
                        y[at(li)] = mem[*x][at(li)] * inv;
                    }
                }
            }
            mem[*out] = y;
        }
        Step::Softmax { x, out, dims } => {
            let [o, l, n] = *dims;
            let mut y = take(mem, *out);
            for oi in 0..o {
                for ni in 0..n {
                    let at = |li: usize| (oi * l + li) * n + ni;
                    let mx = (0..l)
                        .map(|li| mem[*x][at(li)])
                        .fold(f32::NEG_INFINITY, f32::max);
                    let mut s = 0.0;
                    for li in 0..l {
                        let e = (mem[*x][at(li)] - mx).exp();
                        y[at(li)] = e;
                        s += e;
                    }
                    for li in 0..l {
                        y[at(li)] /= s;
                    }
                }
            }
            mem[*out] = y;
        }
        Step::Permute { x, out, shape } => {
            let mut y = take(mem, *out);
            let d = shape.dims.map(|v| v as usize);
            for (i, yv) in y.iter_mut().enumerate() {
                let (mut r, mut src) = (i, 0usize);
                for ax in (0..MAX_RANK).rev() {
                    src += (r % d[ax]) * shape.src_strides[ax] as usize;
                    r /= d[ax];
                }
                *yv = mem[*x][src];
            }
            mem[*out] = y;
        }
        Step::Gather {
            x,
            out,
            dims,
            indices,
        } => {
            let [o, l, n] = *dims;
            let g = indices.len();
            let mut y = take(mem, *out);
            for oi in 0..o {
                for (gi, idx) in indices.iter().enumerate() {
                    let src = &mem[*x][(oi * l + *idx as usize) * n..][..n];
                    y[(oi * g + gi) * n..][..n].copy_from_slice(src);
                }
            }
            mem[*out] = y;
        }
        Step::ConcatPart {
            x,
            out,
            dims,
            total,
            offset,
        } => {
            let [o, l, n] = *dims;
            let mut y = take(mem, *out);
            for oi in 0..o {
                let src = &mem[*x][oi * l * n..][..l * n];
                y[(oi * total + offset) * n..][..l * n].copy_from_slice(src);
            }
            mem[*out] = y;
        }
        Step::MatMul { a, b, out, shape } => {
            let mut y = take(mem, *out);
            let s = shape;
            for b0 in 0..s.batch[0] as usize {
                for b1 in 0..s.batch[1] as usize {
                    for i in 0..s.m as usize {
                        for j in 0..s.n as usize {
                            let mut acc = 0f32;
                            for kk in 0..s.k as usize {
                                let ia = b0 * s.sa[0] as usize
                                    + b1 * s.sa[1] as usize
                                    + i * s.sa[2] as usize
                                    + kk * s.sa[3] as usize;
                                let ib = b0 * s.sb[0] as usize
                                    + b1 * s.sb[1] as usize
                                    + kk * s.sb[2] as usize
                                    + j * s.sb[3] as usize;
                                acc += mem[*a][ia] * mem[*b][ib];
                            }
                            y[b0 * s.sc[0] as usize
                                + b1 * s.sc[1] as usize
                                + i * s.sc[2] as usize
                                + j * s.sc[3] as usize] = acc;
                        }
                    }
                }
            }
            mem[*out] = y;
        }
        Step::Conv {
            x,
            w,
            bias,
            out,
            shape,
        } => {
            let mut y = take(mem, *out);
            conv_cpu(&mem[*x], &mem[*w], bias.map(|b| &mem[b][..]), &mut y, shape);
            mem[*out] = y;
        }
        Step::Int8Linear {
            x,
            out,
            m,
            weights,
            act_scale,
        } => {
            let q = reference::quantize_i8(&mem[*x], *m, weights.k, weights.kp, *act_scale);
            mem[*out] = reference::linear_i8(
                &q,
                weights,
                *act_scale,
                None,
                *m,
                reference::Activation::None,
            );
        }
        Step::Host {
            node,
            inputs,
            input_shapes,
            outputs,
        } => {
            let outs = eval_host(node, inputs, input_shapes, mem)?;
            for (o, t) in outputs.iter().zip(outs) {
                mem[*o] = t;
            }
        }
    }
    Ok(())
}

/// Evaluate a host node with tract, from and to f32 buffers.
pub fn eval_host(
    node: &TypedNode,
    inputs: &[usize],
    shapes: &[Vec<usize>],
    mem: &[Vec<f32>],
) -> Result<Vec<Vec<f32>>, GpuError> {
    let err = |e: TractError| GpuError::Unsupported(format!("host node `{}`: {e:#}", node.name));
    let mut tv = TVec::new();
    for (i, shape) in inputs.iter().zip(shapes) {
        let t = Tensor::from_shape(shape, &mem[*i]).map_err(err)?;
        tv.push(t.into_tvalue());
    }
    let outs =
        node.op.eval_out_of_plan(tv).map_err(err)?.ok_or_else(|| {
            GpuError::Unsupported(format!("host node `{}` needs a plan", node.name))
        })?;
    outs.into_iter()
        .map(|t| {
            let t = t.cast_to::<f32>().map_err(err)?;
            let v = t.try_as_plain_ram().map_err(err)?;
            Ok(v.as_slice::<f32>().map_err(err)?.to_vec())
        })
        .collect()
}

/// `ef_unary` on one value.
pub fn unary(op: UnOp, v: f32) -> f32 {
    match op {
        UnOp::Gelu => reference::act(v, reference::Activation::Gelu),
        UnOp::Exp => v.exp(),
        UnOp::Sqrt => v.sqrt(),
        UnOp::Rsqrt => 1.0 / v.sqrt(),
        UnOp::Recip => 1.0 / v,
        UnOp::Tanh => v.tanh(),
        UnOp::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        UnOp::Erf => reference::erf(v as f64) as f32,
    }
}

/// Direct convolution (`ef_conv2d`'s definition).
pub fn conv_cpu(x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32], s: &Conv2d) {
    let [n, c, h, wd] = s.input.map(|v| v as usize);
    let [o, oh, ow] = s.output.map(|v| v as usize);
    let [kh, kw] = s.kernel.map(|v| v as usize);
    let g = s.group as usize;
    let (cg, og) = (c / g, o / g);
    for ni in 0..n {
        for oc in 0..o {
            let grp = oc / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[oc]);
                    for ic in 0..cg {
                        let ci = grp * cg + ic;
                        for ky in 0..kh {
                            let iy = (oy * s.stride[0] as usize + ky * s.dilation[0] as usize)
                                as isize
                                - s.pad[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * s.stride[1] as usize + kx * s.dilation[1] as usize)
                                    as isize
                                    - s.pad[1] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                acc += x[((ni * c + ci) * h + iy as usize) * wd + ix as usize]
                                    * w[((oc * cg + ic) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    y[((ni * o + oc) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
}
