//! int8 execution of the linear layers of a tract graph, and the calibration table that drives it.
//!
//! After tract declutters an ONNX graph, every `MatMul`/`Gemm` against a constant weight is an
//! `EinSum` `…k,kn->…n` (or `…k,nk->…n`) with a constant second input. [`quantize_model`]
//! replaces each of those that the [`CalibrationTable`] covers by a [`QLinear`] node: the weights
//! are quantized per output channel and packed once, at load; at run time the activations are
//! quantized with the calibrated per-tensor scale (symmetric, no zero point), multiplied in
//! int8 with exact i32 accumulation ([`gemm`]), and dequantized to f32. Everything else — layer
//! norms, softmax, GELU, attention's activation × activation products, the bias adds — stays in
//! float in tract.

pub mod gemm;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;

use gemm::{Kernel, PackedWeights};

/// One linear layer found in a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearNode {
    /// Node id in the decluttered model.
    pub id: usize,
    /// Node name (stable across loads of the same file: the calibration key).
    pub name: String,
    /// Contraction length.
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// Weights stored `[n, k]` (Gemm with transB) rather than `[k, n]`.
    pub transposed: bool,
    /// Name of the activation tensor the layer reads (the ONNX tensor name where tract kept it;
    /// the key of the TensorRT calibration cache).
    pub input_tensor: String,
    /// The activation is the model's input, reshaped or transposed but otherwise unchanged (a
    /// patch embedding over the preprocessed image): its range is the preprocessing's, not a
    /// statistic to clip.
    pub reads_input: bool,
}

/// The linear layers of a decluttered model: `EinSum` nodes in f32 whose second input is a
/// constant 2-D weight contracted on the first input's last axis.
pub fn find_linear_nodes(model: &TypedModel) -> TractResult<Vec<LinearNode>> {
    let mut found = Vec::new();
    for node in model.nodes() {
        let Some(op) = node.op_as::<EinSum>() else {
            continue;
        };
        if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
            continue;
        }
        let wfact = model.outlet_fact(node.inputs[1])?;
        log::debug!(
            "einsum {} {} const inputs: {:?}",
            node.name,
            op.axes,
            node.inputs
                .iter()
                .map(|i| model
                    .outlet_fact(*i)
                    .map(|f| f.konst.is_some())
                    .unwrap_or(false))
                .collect::<Vec<_>>()
        );
        let Some(w) = &wfact.konst else { continue };
        if w.datum_type() != f32::datum_type() {
            continue;
        }
        let afact = model.outlet_fact(node.inputs[0])?;
        if afact.konst.is_some() {
            continue;
        }
        let (Some(adims), Some(odims)) = (
            afact.shape.as_concrete(),
            model.outlet_fact(node.id.into())?.shape.as_concrete(),
        ) else {
            continue;
        };
        let Some(shape) = linear_shape(&op.axes.to_string(), adims, w.shape(), odims) else {
            continue;
        };
        let (k, n, transposed) = shape;
        // A layer over the (reshaped) model input is keyed by the input itself: the tensor
        // TensorRT's calibration cache knows, with the same values.
        let source = input_source(model, node.inputs[0]);
        let tensor = source.unwrap_or(node.inputs[0]);
        let input_tensor = model
            .outlet_label(tensor)
            .map(str::to_string)
            .unwrap_or_else(|| model.node(tensor.node).name.clone());
        found.push(LinearNode {
            id: node.id,
            name: node.name.clone(),
            k,
            n,
            transposed,
            input_tensor,
            reads_input: source.is_some(),
        });
    }
    Ok(found)
}

/// The model input that `outlet` is, seen only through reshapes and axis moves; `None` when it
/// is computed otherwise.
pub(crate) fn input_source(model: &TypedModel, mut outlet: OutletId) -> Option<OutletId> {
    loop {
        if model.inputs.contains(&outlet) {
            return Some(outlet);
        }
        let node = model.node(outlet.node);
        if !node.op_is::<AxisOp>() || node.inputs.len() != 1 {
            return None;
        }
        outlet = node.inputs[0];
    }
}

/// Whether an einsum `formula` over concrete dims is a linear layer in memory terms: the
/// contracted axes are the activation's innermost ones (one axis, or several such as a
/// multi-head output projection's `heads × head_dim`), in the same order and adjacent in the
/// weight; the weight has one other non-unit axis `n`, before or after them; the output's non-unit
/// axes are the activation's remaining ones (in order) then `n` innermost. Size-1 axes may sit
/// anywhere (tract's declutter moves them around). Returns `(k, n, transposed)` with `k` the
/// product of the contracted dims.
fn linear_shape(
    formula: &str,
    adims: &[usize],
    wdims: &[usize],
    odims: &[usize],
) -> Option<(usize, usize, bool)> {
    let (ins, out) = formula.split_once("->")?;
    let (a, b) = ins.split_once(',')?;
    let (a, b, o): (Vec<char>, Vec<char>, Vec<char>) = (
        a.chars().collect(),
        b.chars().collect(),
        out.chars().collect(),
    );
    if a.len() != adims.len() || b.len() != wdims.len() || o.len() != odims.len() {
        return None;
    }
    let dim =
        |axes: &[char], dims: &[usize], c: char| axes.iter().position(|x| *x == c).map(|i| dims[i]);
    let contracted: Vec<char> = a
        .iter()
        .copied()
        .filter(|c| b.contains(c) && !o.contains(c))
        .collect();
    if contracted.is_empty() || a[a.len() - contracted.len()..] != contracted[..] {
        return None;
    }
    let k: usize = contracted
        .iter()
        .map(|c| dim(&a, adims, *c))
        .product::<Option<usize>>()?;
    // The weight's non-unit axes: the contracted block (same order) and `n`, one before the other.
    let big_b: Vec<char> = b
        .iter()
        .copied()
        .filter(|c| dim(&b, wdims, *c) != Some(1))
        .collect();
    let big_c: Vec<char> = contracted
        .iter()
        .copied()
        .filter(|c| dim(&a, adims, *c) != Some(1))
        .collect();
    let others: Vec<char> = big_b
        .iter()
        .copied()
        .filter(|c| !contracted.contains(c))
        .collect();
    let [nax] = others[..] else { return None };
    let n = dim(&b, wdims, nax)?;
    let transposed = if big_b[1..] == big_c[..] && big_b[0] == nax {
        true
    } else if big_b[..big_b.len() - 1] == big_c[..] && big_b[big_b.len() - 1] == nax {
        false
    } else {
        return None;
    };
    for c in &contracted {
        if dim(&b, wdims, *c)? != dim(&a, adims, *c)? {
            return None;
        }
    }
    // Output: the activation's other non-unit axes in order, then n, nothing non-unit after n.
    let big_a: Vec<char> = a[..a.len() - contracted.len()]
        .iter()
        .copied()
        .filter(|c| dim(&a, adims, *c) != Some(1))
        .collect();
    let big_o: Vec<char> = o
        .iter()
        .copied()
        .filter(|c| dim(&o, odims, *c) != Some(1))
        .collect();
    let mut want = big_a;
    want.push(nax);
    if big_o != want || dim(&o, odims, nax) != Some(n) {
        return None;
    }
    Some((k, n, transposed))
}

/// Per-layer activation scales from `edgefuse calibrate`, stored in a bundle as
/// `calibration.json` (one table per model file).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CalibrationTable {
    /// How the scales were computed (`entropy`, `percentile:99.99`, …).
    pub method: String,
    /// Frames the statistics came from.
    pub frames: u64,
    /// Layers by node name; layers absent here stay in float.
    pub layers: BTreeMap<String, LayerScale>,
}

/// One layer's activation range.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LayerScale {
    /// The clipping threshold: activations are mapped to `[-amax, amax]` → `[-127, 127]`.
    pub amax: f32,
    /// The largest |activation| seen during calibration.
    pub observed_max: f32,
}

/// A linear layer in int8: packed weights, the activation scale, the output shape rule.
#[derive(Debug, Clone)]
pub struct QLinear {
    weights: Arc<PackedWeights>,
    act_scale: f32,
    kernel: Kernel,
    /// The replaced einsum's output shape (same memory layout as `[m, n]`).
    out_shape: TVec<usize>,
}

impl PartialEq for QLinear {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights)
            && self.act_scale == other.act_scale
            && self.kernel == other.kernel
    }
}

impl Eq for QLinear {}

impl QLinear {
    /// The packed weights (8-bit, or 7-bit for the AVX2 kernel) and their per-channel scales.
    pub fn weights(&self) -> &PackedWeights {
        &self.weights
    }

    /// The packed weights, shared (an execution plan keeps them without a copy).
    pub fn weights_arc(&self) -> Arc<PackedWeights> {
        Arc::clone(&self.weights)
    }

    /// The kernel the weights were quantized for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The activation scale (`amax / 127`).
    pub fn act_scale(&self) -> f32 {
        self.act_scale
    }

    /// Quantize `w` with scale `amax / 127` for the activations.
    pub fn new(
        w: &Tensor,
        lin: &LinearNode,
        out_shape: &[usize],
        amax: f32,
        kernel: Kernel,
    ) -> TractResult<Self> {
        let (k, n, transposed) = (lin.k, lin.n, lin.transposed);
        let plain = w.try_as_plain_ram()?;
        let data = plain.as_slice::<f32>()?;
        ensure!(
            amax.is_finite() && amax > 0.0,
            "activation range {amax} must be finite and > 0"
        );
        Ok(QLinear {
            weights: Arc::new(PackedWeights::quantize_for(kernel, data, k, n, transposed)),
            act_scale: amax / gemm::ACT_MAX,
            kernel,
            out_shape: out_shape.into(),
        })
    }
}

thread_local! {
    /// Per-thread scratch for quantized activations and accumulators (no allocation per run
    /// once warm).
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<i32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

impl Op for QLinear {
    fn name(&self) -> StaticName {
        "QLinear".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "int8 {}x{} ({}-bit weights per channel, activation scale {:e}, {:?})",
            self.weights.k,
            self.weights.n,
            if self.weights.qmax > gemm::WEIGHT_MAX_7BIT {
                8
            } else {
                7
            },
            self.act_scale,
            self.kernel
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QLinear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let plain_in = input.try_as_plain_ram()?;
        let x = plain_in.as_slice::<f32>()?;
        let w = &*self.weights;
        let shape = input.shape();
        // The contracted axes are the input's innermost ones (checked when the layer was found):
        // their product is `k`.
        ensure!(
            x.len() % w.k == 0,
            "QLinear expects …×{} input, got {shape:?}",
            w.k
        );
        let m = x.len() / w.k;
        ensure!(
            m * w.n == self.out_shape.iter().product::<usize>(),
            "QLinear: input {shape:?} does not give output {:?}",
            self.out_shape
        );
        // SAFETY: every element is written below before the tensor is read.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.out_shape)? };
        let mut plain_out = out.try_as_plain_ram_mut()?;
        let y = plain_out.as_slice_mut::<f32>()?;
        SCRATCH.with(|s| {
            let (qa, acc) = &mut *s.borrow_mut();
            qa.resize(m * w.kp, 128);
            acc.resize(m * w.n, 0);
            gemm::quantize_activations(x, m, w.k, w.kp, self.act_scale, qa);
            gemm::gemm(self.kernel, qa, m, w, acc);
            for i in 0..m {
                for (nn, (o, a)) in y[i * w.n..(i + 1) * w.n]
                    .iter_mut()
                    .zip(&acc[i * w.n..(i + 1) * w.n])
                    .enumerate()
                {
                    *o = *a as f32 * (self.act_scale * w.scales[nn]);
                }
            }
        });
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QLinear {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&self.out_shape)))
    }

    as_op!();
}

/// Replace every linear layer named in `table` (and not in `skip`) by [`QLinear`]; returns the
/// names of the layers quantized. `model` must be decluttered, not yet optimized.
pub fn quantize_model(
    model: &mut TypedModel,
    table: &CalibrationTable,
    skip: &[String],
    kernel: Kernel,
) -> TractResult<Vec<String>> {
    let mut done = Vec::new();
    for lin in find_linear_nodes(model)? {
        if skip.contains(&lin.name) {
            continue;
        }
        let Some(scale) = table.layers.get(&lin.name) else {
            continue;
        };
        let node = model.node(lin.id).clone();
        let w = model
            .outlet_fact(node.inputs[1])?
            .konst
            .clone()
            .context("weights are constant")?;
        let out_shape = model
            .outlet_fact(node.id.into())?
            .shape
            .as_concrete()
            .context("concrete output shape")?
            .to_vec();
        let op = QLinear::new(&w, &lin, &out_shape, scale.amax, kernel)
            .with_context(|| format!("layer {}", lin.name))?;
        let patch = TypedModelPatch::replace_single_op(model, &node, &node.inputs[..1], op)?;
        patch.apply(model)?;
        done.push(lin.name);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::linear_shape;

    #[test]
    fn linear_layers_are_recognised_with_one_or_several_contracted_axes() {
        // Plain, transposed (Gemm transB), with unit axes anywhere.
        assert_eq!(
            linear_shape("mk,kn->mn", &[50, 768], &[768, 3072], &[50, 3072]),
            Some((768, 3072, false))
        );
        assert_eq!(
            linear_shape("mk,nk->mn", &[50, 768], &[512, 768], &[50, 512]),
            Some((768, 512, true))
        );
        assert_eq!(
            linear_shape("amk,kn->amn", &[1, 49, 768], &[768, 768], &[1, 49, 768]),
            Some((768, 768, false))
        );
        // A multi-head output projection: heads × head_dim contracted together.
        assert_eq!(
            linear_shape("mbk,bkn->mn", &[50, 12, 64], &[12, 64, 768], &[50, 768]),
            Some((768, 768, false))
        );
        assert_eq!(
            linear_shape("mbk,nbk->mn", &[50, 12, 64], &[768, 12, 64], &[50, 768]),
            Some((768, 768, true))
        );
        // Not linear layers: contracted axes not innermost, in another order in the weight, or
        // the output reordered.
        assert_eq!(
            linear_shape("km,kn->mn", &[768, 50], &[768, 3072], &[50, 3072]),
            None
        );
        assert_eq!(
            linear_shape("mbk,kbn->mn", &[50, 12, 64], &[64, 12, 768], &[50, 768]),
            None
        );
        assert_eq!(
            linear_shape("mk,kn->nm", &[50, 768], &[768, 3072], &[3072, 50]),
            None
        );
        assert_eq!(
            linear_shape("mk,kno->mno", &[50, 768], &[768, 4, 8], &[50, 4, 8]),
            None
        );
    }
}
