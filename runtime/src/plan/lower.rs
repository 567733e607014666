//! Lowering tract's decluttered typed model to a [`Plan`]: one [`Step`] per node that has a
//! kernel, a `Step::Host` for any other.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{Gather, Slice, TypedConcat};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::logic::Iff;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, RmsNorm, Softmax, SoftmaxKind};
use tract_onnx::tract_core::ops::source::TypedSource;

use edgefuse_models::quant::QLinear;

use super::einsum::einsum_matmul;
use super::ir::{
    strides, BinOp, Broadcast, Buffer, Conv2d, Epilogue, Permute, Plan, RedOp, Step, UnOp, MAX_RANK,
};
use super::PlanError;

fn unsupported(node: &TypedNode, why: impl std::fmt::Display) -> PlanError {
    PlanError::Unsupported(format!("node `{}` ({}): {why}", node.name, node.op.name()))
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
    fn shape(&self, o: OutletId) -> Result<Vec<usize>, PlanError> {
        let fact = self
            .model
            .outlet_fact(o)
            .map_err(|e| PlanError::Unsupported(format!("{e:#}")))?;
        fact.shape
            .as_concrete()
            .map(|s| s.to_vec())
            .ok_or_else(|| PlanError::Unsupported(format!("outlet {o:?} has no concrete shape")))
    }

    fn new_buffer(&mut self, shape: Vec<usize>, init: Option<Arc<[f32]>>) -> usize {
        self.plan.buffers.push(Buffer { shape, init });
        self.plan.buffers.len() - 1
    }

    /// The buffer of an outlet, materialising a constant on first use.
    fn buf(&mut self, o: OutletId) -> Result<usize, PlanError> {
        if let Some(b) = self.map.get(&o) {
            return Ok(*b);
        }
        let t = self
            .consts
            .get(&o)
            .ok_or_else(|| PlanError::Unsupported(format!("outlet {o:?} was not lowered")))?
            .clone();
        let f = t
            .cast_to::<f32>()
            .map_err(|e| PlanError::Unsupported(format!("constant {o:?}: {e:#}")))?;
        let data: Arc<[f32]> = f
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>().map(|s| s.into()))
            .map_err(|e| PlanError::Unsupported(format!("constant {o:?}: {e:#}")))?;
        let b = self.new_buffer(t.shape().to_vec(), Some(data));
        self.map.insert(o, b);
        Ok(b)
    }

    fn out(&mut self, node: &TypedNode) -> Result<usize, PlanError> {
        let o = OutletId::new(node.id, 0);
        let b = self.new_buffer(self.shape(o)?, None);
        self.map.insert(o, b);
        Ok(b)
    }

    fn lower_node(&mut self, node: &TypedNode) -> Result<(), PlanError> {
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
        // `IsNaN` feeding only `Where(isnan, 0, x)` selects: the selects become one step each.
        if self.is_nan_only_for_selects(node) {
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

    fn host(&mut self, node: &TypedNode) -> Result<(), PlanError> {
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

    /// For a `Where(IsNaN(x), 0, x)` node: `x`.
    fn nan_select_input(&self, node: &TypedNode) -> Option<OutletId> {
        node.op.downcast_ref::<Iff>()?;
        let [cond, then, other] = node.inputs[..] else {
            return None;
        };
        let isnan = self.model.node(cond.node);
        let ew = isnan.op.downcast_ref::<ElementWiseOp>()?;
        if ew.0.name() != "IsNan" || isnan.inputs.first() != Some(&other) {
            return None;
        }
        let zeros = self.model.outlet_fact(then).ok()?.konst.clone()?;
        let zeros = zeros.cast_to::<f32>().ok()?;
        let plain = zeros.try_as_plain_ram().ok()?;
        plain
            .as_slice::<f32>()
            .ok()?
            .iter()
            .all(|v| *v == 0.0)
            .then_some(other)
    }

    /// An `IsNaN` node whose every consumer is a `Where(IsNaN(x), 0, x)`.
    fn is_nan_only_for_selects(&self, node: &TypedNode) -> bool {
        let is_isnan = node
            .op
            .downcast_ref::<ElementWiseOp>()
            .is_some_and(|ew| ew.0.name() == "IsNan");
        let succ = &node.outputs[0].successors;
        is_isnan
            && !succ.is_empty()
            && succ.iter().all(|s| {
                let n = self.model.node(s.node);
                self.nan_select_input(n).is_some()
            })
    }

    /// `Ok(false)`: no GPU lowering for this node (it runs on the host).
    fn try_lower(&mut self, node: &TypedNode) -> Result<bool, PlanError> {
        let op = &node.op;
        let f32_out = self
            .model
            .outlet_fact(OutletId::new(node.id, 0))
            .map(|f| f.datum_type == f32::datum_type())
            .unwrap_or(false);
        if !f32_out || node.outputs.len() != 1 {
            return Ok(false);
        }
        if let Some(x) = self.nan_select_input(node) {
            let so = self.shape(OutletId::new(node.id, 0))?;
            if self.shape(x)? != so {
                return Ok(false);
            }
            let x = self.buf(x)?;
            let out = self.out(node)?;
            self.plan.steps.push(Step::Unary {
                op: UnOp::NanToZero,
                x,
                out,
            });
            return Ok(true);
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
        if let Some(sl) = op.downcast_ref::<Slice>() {
            // A contiguous range along one axis: a gather of consecutive indices (ViT encoders
            // slice the class token off the token sequence).
            let si = self.shape(node.inputs[0])?;
            let dims = split3(&si, sl.axis);
            let (Ok(start), Ok(end)) = (sl.start.to_i64(), sl.end.to_i64()) else {
                return Ok(false);
            };
            if start < 0 || end < start || end > dims[1] as i64 {
                return Err(unsupported(
                    node,
                    format!("slice {start}..{end} outside 0..{}", dims[1]),
                ));
            }
            let x = self.buf(node.inputs[0])?;
            let out = self.out(node)?;
            self.plan.steps.push(Step::Gather {
                x,
                out,
                dims,
                indices: (start as i32..end as i32).collect::<Vec<_>>().into(),
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
            let (sa, sb) = (self.shape(node.inputs[0])?, self.shape(node.inputs[1])?);
            let sc = self.shape(OutletId::new(node.id, 0))?;
            let Some(mut shape) = einsum_matmul(e, &sa, &sb, &sc) else {
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
                weights: q.weights_arc(),
                kernel: q.kernel(),
                act_scale: q.act_scale(),
                epilogue: Epilogue::default(),
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
    ) -> Result<bool, PlanError> {
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
}

/// Lower a decluttered typed model (single input, f32 outputs).
pub fn lower(model: &TypedModel) -> Result<Plan, PlanError> {
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
        .map_err(|e| PlanError::Unsupported(format!("{e:#}")))?;
    for id in order {
        l.lower_node(model.node(id))?;
    }
    if l.plan.input == usize::MAX {
        return Err(PlanError::Unsupported("the model has no input".into()));
    }
    let outs = model
        .output_outlets()
        .map_err(|e| PlanError::Unsupported(format!("{e:#}")))?
        .to_vec();
    for o in outs {
        let b = l.buf(o)?;
        l.plan.outputs.push(b);
    }
    Ok(l.plan)
}

/// The decluttered graphs of a bundle's encoder and Q-Former (int8 operators in place for an
/// int8 bundle), lowered.
pub fn lower_bundle(bundle: &edgefuse_models::Bundle) -> Result<(Plan, Option<Plan>), PlanError> {
    let err = |e: edgefuse_models::BundleError| PlanError::Unsupported(e.to_string());
    let enc = bundle.load_encoder_graph().map_err(err)?;
    let enc_plan = lower(&enc.model)?;
    let qf_plan = match enc.output_shapes.get(1) {
        Some(shape) => match bundle.load_qformer_graph(shape).map_err(err)? {
            Some(q) => Some(lower(&q.model)?),
            None => None,
        },
        None => None,
    };
    Ok((enc_plan, qf_plan))
}
