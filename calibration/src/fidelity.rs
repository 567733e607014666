//! Fidelity of an int8 bundle: the float and the int8 pipelines side by side on the same
//! frames — embedding and Q-Former cosine, top-1 agreement, accuracy where the frames are
//! labelled — and each layer's activation quantization error. Written as `fidelity.json` into
//! the int8 bundle.

use edgefuse_models::Bundle;
use edgefuse_runtime::capture::FrameSource;
use edgefuse_runtime::frame::Frame;
use edgefuse_runtime::pipeline::{Pipeline, PipelineConfig};
use serde::Serialize;

use crate::collect::{CalibrateError, Calibration};
use crate::truth::GroundTruth;

/// One linear layer's calibration, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// `encoder` or `qformer`.
    pub model: &'static str,
    /// The layer (node) name.
    pub layer: String,
    /// Its input tensor.
    pub tensor: String,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// The chosen clipping range.
    pub amax: f32,
    /// The largest |activation| observed.
    pub observed_max: f64,
    /// Relative quantization error of the activations at `amax` (from the histogram).
    pub activation_rel_error: f64,
    /// Whether the layer runs in int8 (false: kept in float with `--skip`).
    pub int8: bool,
}

/// The fidelity report (`fidelity.json`).
#[derive(Debug, Clone, Serialize)]
pub struct FidelityReport {
    /// Calibration method as given.
    pub method: String,
    /// Frames the ranges were computed on.
    pub calibration_frames: u64,
    /// The evaluation source URI.
    pub eval_source: String,
    /// Frames evaluated.
    pub eval_frames: u64,
    /// Mean cosine similarity of the float and int8 image embeddings.
    pub embedding_cosine_mean: f64,
    /// The worst frame's.
    pub embedding_cosine_min: f64,
    /// Mean cosine of the Q-Former outputs (1 without a Q-Former).
    pub qformer_cosine_mean: f64,
    /// Fraction of frames whose top-1 label agrees.
    pub top1_agreement: f64,
    /// Frames with a ground-truth label (from the folder's `labels.csv`).
    pub labelled_frames: u64,
    /// Float accuracy on those.
    pub accuracy_float: f64,
    /// Int8 accuracy on those.
    pub accuracy_int8: f64,
    /// Per layer, in calibration order.
    pub layers: Vec<LayerReport>,
}

impl FidelityReport {
    /// Layers by activation quantization error, largest first (the candidates for `--skip`).
    pub fn most_sensitive(&self) -> Vec<&LayerReport> {
        let mut v: Vec<&LayerReport> = self.layers.iter().collect();
        v.sort_by(|a, b| b.activation_rel_error.total_cmp(&a.activation_rel_error));
        v
    }
}

/// Cosine similarity in f64; two zero vectors are identical (1), one zero vector is not (0).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        ab += f64::from(*x) * f64::from(*y);
        aa += f64::from(*x) * f64::from(*x);
        bb += f64::from(*y) * f64::from(*y);
    }
    if aa == 0.0 || bb == 0.0 {
        return if aa == bb { 1.0 } else { 0.0 };
    }
    ab / (aa.sqrt() * bb.sqrt())
}

fn ratio(x: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        x as f64 / d as f64
    }
}

/// Run `float` and `int8` on up to `frames` frames of `source` (named `eval_uri` in the report)
/// and report how far apart they are, with `cal`'s per-layer figures (`skip`: layers kept in
/// float).
pub fn evaluate(
    float: &Bundle,
    int8: &Bundle,
    source: &mut dyn FrameSource,
    eval_uri: &str,
    frames: u64,
    cal: &Calibration,
    skip: &[String],
) -> Result<FidelityReport, CalibrateError> {
    fn engine(what: &str, e: impl std::fmt::Display) -> CalibrateError {
        CalibrateError::Engine(format!("{what}: {e}"))
    }
    let cfg = PipelineConfig::default();
    let mut pf = Pipeline::new(float, cfg.clone()).map_err(|e| engine("float pipeline", e))?;
    let mut pq = Pipeline::new(int8, cfg).map_err(|e| engine("int8 pipeline", e))?;
    let mut frame = Frame::with_capacity(source.max_frame_bytes());
    let mut truth = GroundTruth::default();
    let labels = pf.labels().to_vec();
    let (mut n, mut agree, mut labelled, mut right_f, mut right_q) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut cos_e, mut cos_q, mut min_e) = (0f64, 0f64, 1f64);
    while n < frames && source.next_frame(&mut frame)? {
        let Some(rf) = pf.process(&frame).map_err(|e| engine("float", e))? else {
            continue;
        };
        let top_f = rf.top.iter().next().map(|t| t.0 as usize);
        let Some(rq) = pq.process(&frame).map_err(|e| engine("int8", e))? else {
            continue;
        };
        let top_q = rq.top.iter().next().map(|t| t.0 as usize);
        let ce = cosine(pf.embedding(), pq.embedding());
        cos_e += ce;
        min_e = min_e.min(ce);
        cos_q += cosine(pf.queries(), pq.queries());
        n += 1;
        agree += u64::from(top_f == top_q);
        if let Some(t) = truth
            .label(&frame.source)
            .filter(|t| labels.iter().any(|l| l == t))
        {
            labelled += 1;
            let name = |x: Option<usize>| x.map(|i| labels[i].as_str());
            right_f += u64::from(name(top_f) == Some(t));
            right_q += u64::from(name(top_q) == Some(t));
        }
    }
    let layers = cal
        .layers
        .iter()
        .map(|s| LayerReport {
            model: s.model,
            layer: s.layer.name.clone(),
            tensor: s.layer.input_tensor.clone(),
            k: s.layer.k,
            n: s.layer.n,
            amax: s.amax,
            observed_max: s.hist.max(),
            activation_rel_error: s.hist.quantization_error(f64::from(s.amax), 127.0),
            int8: !skip.contains(&s.layer.name),
        })
        .collect();
    Ok(FidelityReport {
        method: cal.method_name.clone(),
        calibration_frames: cal.frames,
        eval_source: eval_uri.to_string(),
        eval_frames: n,
        embedding_cosine_mean: cos_e / n.max(1) as f64,
        embedding_cosine_min: min_e,
        qformer_cosine_mean: if pf.queries().is_empty() {
            1.0
        } else {
            cos_q / n.max(1) as f64
        },
        top1_agreement: ratio(agree, n),
        labelled_frames: labelled,
        accuracy_float: ratio(right_f, labelled),
        accuracy_int8: ratio(right_q, labelled),
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::cosine;

    #[test]
    fn cosine_edges() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
        assert_eq!(cosine(&[0.0], &[0.0]), 1.0);
        assert_eq!(cosine(&[0.0], &[1.0]), 0.0);
    }
}
