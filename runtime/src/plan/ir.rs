//! The plan's intermediate representation: buffers sized once, and [`Step`]s, each one kernel
//! launch. The `#[repr(C)]` geometry structs are passed to the kernels by value and laid out like
//! their twins in `kernels/graph.cu`.

use std::sync::Arc;

use tract_onnx::prelude::TypedNode;

use edgefuse_models::quant::gemm::{Kernel, PackedWeights};

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
    /// `x`, with NaN replaced by 0 (`Where(IsNaN(x), 0, x)`: attention's guard for fully masked
    /// rows).
    NanToZero = 8,
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
    /// Rows (of A and C).
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
    /// Layer normalization without its affine part, exactly as the four steps it replaces
    /// compute it along the rows of `[outer, len]`: `mean = Σx · scale`, `d = x − mean`,
    /// `out = d / √(mean(d²) + eps)`. Built only by the CPU plan's
    /// [`super::fuse_layer_norms`] from a sum, a scale, a subtraction and an RMS norm.
    LayerNorm {
        /// Input.
        x: usize,
        /// Output.
        out: usize,
        /// Rows and row length.
        dims: [usize; 2],
        /// A one-value constant: the scale that turns the sum into the mean (1/len).
        scale: usize,
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
        /// The layer's packed weights (shared with the `QLinear` operator).
        weights: Arc<PackedWeights>,
        /// The int8 kernel the weights were quantized for (their width: 7-bit for AVX2).
        kernel: Kernel,
        /// Activation scale.
        act_scale: f32,
        /// Adds done inside the step (none as lowered; the CPU plan moves the bias and
        /// residual adds that follow into it, [`super::fuse_epilogues`]).
        epilogue: Epilogue,
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

impl Step {
    /// The four steps that spell a layer norm without its affine part, as the lowering emits
    /// them and [`Step::LayerNorm`] replaces them, over buffers `[x, scale, sum, mean, centred,
    /// out]`: `sum = Σ row`, `mean = sum · scale`, `centred = x − mean`, `out = RMS norm`.
    pub fn layer_norm_spelled(b: [usize; 6], rows: usize, len: usize, eps: f32) -> [Step; 4] {
        let [x, scale, sum, mean, centred, out] = b;
        let (r, l) = (rows as i32, len as i32);
        let two_d = |d: [i32; 2], sa: [i32; 2], sb: [i32; 2]| Broadcast {
            dims: [1, 1, 1, 1, d[0], d[1]],
            sa: [0, 0, 0, 0, sa[0], sa[1]],
            sb: [0, 0, 0, 0, sb[0], sb[1]],
        };
        [
            Step::Reduce {
                op: RedOp::Sum,
                x,
                out: sum,
                dims: [rows, len, 1],
            },
            Step::Binary {
                op: BinOp::Mul,
                a: sum,
                b: scale,
                out: mean,
                shape: two_d([1, r], [0, 1], [0, 0]),
            },
            Step::Binary {
                op: BinOp::Sub,
                a: x,
                b: mean,
                out: centred,
                shape: two_d([r, l], [l, 1], [1, 0]),
            },
            Step::RmsNorm {
                x: centred,
                out,
                dims: [rows, len, 1],
                eps,
            },
        ]
    }

    /// Buffers read and the buffer written (none for a host step).
    pub fn io(&self) -> (Vec<usize>, Option<usize>) {
        match self {
            Step::Binary { a, b, out, .. } | Step::MatMul { a, b, out, .. } => {
                (vec![*a, *b], Some(*out))
            }
            Step::Unary { x, out, .. }
            | Step::Reduce { x, out, .. }
            | Step::RmsNorm { x, out, .. }
            | Step::Softmax { x, out, .. }
            | Step::Permute { x, out, .. }
            | Step::Gather { x, out, .. }
            | Step::ConcatPart { x, out, .. } => (vec![*x], Some(*out)),
            Step::LayerNorm { x, out, scale, .. } => (vec![*x, *scale], Some(*out)),
            Step::Int8Linear {
                x, out, epilogue, ..
            } => {
                let mut r = vec![*x];
                r.extend(epilogue.bias);
                r.extend(epilogue.residual);
                (r, Some(*out))
            }
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
}

/// What an int8 layer adds to its dequantized `[m, n]` product before writing it, in this
/// order: `+ bias[j]`, `+ residual[i][j]`. Each is the same f32 operation as the separate
/// step it replaces, so a fused plan gives the same bits as the unfused one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Epilogue {
    /// A constant `[n]` added to every row.
    pub bias: Option<usize>,
    /// A `[m, n]` buffer added last (a transformer block's skip connection).
    pub residual: Option<usize>,
}

impl Epilogue {
    /// Whether it does anything.
    pub fn is_empty(&self) -> bool {
        *self == Epilogue::default()
    }
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

/// Row-major element strides of `shape`.
pub(super) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}
