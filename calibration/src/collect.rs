//! Collecting activation statistics over real frames.
//!
//! Frames from any source go through the same preprocessing as `run`. The image encoder (and
//! the Q-Former, fed with the float encoder's tokens) run in float with the input of every
//! linear layer as an extra output; each feeds a streaming [`AbsHistogram`] (fixed memory,
//! whatever the frame count). The chosen [`Method`] turns each histogram into a clipping range.
//! [`crate::stage::stage_bundle`] then writes the int8 bundle.

use std::collections::BTreeMap;
use std::path::PathBuf;

use edgefuse_models::quant::{CalibrationTable, LayerScale, LinearNode};
use edgefuse_models::{Bundle, LoadedModel, QuantTables};
use edgefuse_runtime::capture::{CaptureError, FrameSource};
use edgefuse_runtime::frame::Frame;
use edgefuse_runtime::preprocess::Preprocessor;
use tract_onnx::prelude::*;

use crate::calibrators::{
    trt_cache_header, trt_cache_line, AbsHistogram, CalibrationError, Method,
};

/// Fewest frames a calibration accepts.
pub const MIN_FRAMES: u64 = 8;

/// Why a calibration cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// The bundle is already int8.
    #[error("{0}: the bundle is already int8 (it has a [quantization] section); calibrate its float original")]
    AlreadyQuantized(PathBuf),
    /// Too few usable frames.
    #[error("only {got} usable calibration frames from {uri}; at least {min} are needed (more is better: 100–500 frames that look like deployment)")]
    TooFewFrames {
        /// Frames used.
        got: u64,
        /// The minimum.
        min: u64,
        /// The source.
        uri: String,
    },
    /// A layer produced NaN or infinity.
    #[error("{model} layer `{layer}` (input tensor `{tensor}`) produced a non-finite activation on frame {frame} ({origin}); the float model is broken for this input")]
    NonFinite {
        /// encoder / qformer.
        model: &'static str,
        /// Layer (node) name.
        layer: String,
        /// The activation tensor.
        tensor: String,
        /// Frame sequence number.
        frame: u64,
        /// The frame's source (file path or URI).
        origin: String,
    },
    /// `--skip` names a layer that does not exist.
    #[error("--skip `{0}`: no such linear layer; the layers are:\n  {1}")]
    UnknownSkip(String, String),
    /// A frame cannot be preprocessed (wrong size or format).
    #[error("frame {seq} ({origin}): {message}")]
    Frame {
        /// Frame sequence number.
        seq: u64,
        /// Its source.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// The source failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// Loading the bundle failed.
    #[error(transparent)]
    Bundle(#[from] edgefuse_models::BundleError),
    /// tract failed.
    #[error("inference failed: {0}")]
    Engine(String),
    /// Writing the output failed.
    #[error("{}: {message}", path.display())]
    Write {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A calibrator failed.
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
}

/// One layer's statistics and chosen range.
#[derive(Debug, Clone)]
pub struct LayerStats {
    /// `encoder` or `qformer`.
    pub model: &'static str,
    /// The layer.
    pub layer: LinearNode,
    /// Histogram of |input activation|.
    pub hist: AbsHistogram,
    /// Chosen clipping range (after [`Calibration::compute`]).
    pub amax: f32,
}

/// Statistics of a calibration run.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// Per layer, encoder layers first.
    pub layers: Vec<LayerStats>,
    /// Frames used.
    pub frames: u64,
    /// The method.
    pub method: Method,
    /// The method as given (`entropy`, `percentile:99.99`).
    pub method_name: String,
    /// The largest |value| preprocessing can give (pixels 0..=1 normalised by the bundle's mean
    /// and std): the range of layers that read the image itself ([`LinearNode::reads_input`]).
    pub input_range: f32,
}

struct Tapped {
    model: LoadedModel,
    regular: usize,
}

/// The largest |(p − mean) / std| over pixels p in 0..=1 and the three channels.
fn input_range(mean: &[f32; 3], std: &[f32; 3]) -> f32 {
    mean.iter()
        .zip(std)
        .map(|(m, s)| m.abs().max((1.0 - m).abs()) / s.abs())
        .fold(0.0, f32::max)
}

fn run_plan(m: &LoadedModel, input: Tensor) -> Result<TVec<TValue>, CalibrateError> {
    m.plan
        .run(tvec!(input.into()))
        .map_err(|e| CalibrateError::Engine(format!("{}: {e:#}", m.path.display())))
}

/// Collect statistics over up to `max_frames` frames of `source`; `progress(frames)` is called
/// after each frame.
pub fn collect(
    bundle: &Bundle,
    source: &mut dyn FrameSource,
    method_name: &str,
    max_frames: u64,
    mut progress: impl FnMut(u64),
) -> Result<Calibration, CalibrateError> {
    if bundle.is_int8() {
        return Err(CalibrateError::AlreadyQuantized(bundle.dir().to_path_buf()));
    }
    let method: Method = method_name.parse()?;
    let m = bundle.manifest();
    let mut pre = Preprocessor::new(&m.preprocess);
    let mut input = vec![0f32; pre.output_len()];
    let [w, h] = m.preprocess.image_size;
    let enc = Tapped {
        regular: bundle.load_encoder()?.output_shapes.len(),
        model: bundle.load_encoder_taps()?,
    };
    let qf = match enc.model.output_shapes.get(1) {
        Some(tokens) if m.qformer.is_some() => bundle.load_qformer_taps(tokens)?.map(|q| Tapped {
            regular: 1,
            model: q,
        }),
        _ => None,
    };
    let mut layers: Vec<LayerStats> = Vec::new();
    for (name, t) in [("encoder", Some(&enc)), ("qformer", qf.as_ref())] {
        if let Some(t) = t {
            layers.extend(t.model.taps.iter().map(|l| LayerStats {
                model: name,
                layer: l.clone(),
                hist: AbsHistogram::default(),
                amax: 0.0,
            }));
        }
    }
    let n_enc = enc.model.taps.len();
    let mut frame = Frame::with_capacity(source.max_frame_bytes());
    let mut frames = 0u64;
    while frames < max_frames && source.next_frame(&mut frame)? {
        pre.run(&frame, &mut input)
            .map_err(|e| CalibrateError::Frame {
                seq: frame.seq,
                origin: frame.source.clone(),
                message: e.to_string(),
            })?;
        let x = Tensor::from_shape(&[1, 3, h as usize, w as usize], &input)
            .map_err(|e| CalibrateError::Engine(e.to_string()))?;
        let out = run_plan(&enc.model, x)?;
        let record = |stats: &mut [LayerStats], outs: &TVec<TValue>, regular: usize| {
            for (s, t) in stats.iter_mut().zip(&outs[regular..]) {
                let plain = t
                    .try_as_plain_ram()
                    .map_err(|e| CalibrateError::Engine(e.to_string()))?;
                let v = plain
                    .as_slice::<f32>()
                    .map_err(|e| CalibrateError::Engine(e.to_string()))?;
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(CalibrateError::NonFinite {
                        model: s.model,
                        layer: s.layer.name.clone(),
                        tensor: s.layer.input_tensor.clone(),
                        frame: frame.seq,
                        origin: frame.source.clone(),
                    });
                }
                s.hist.add(v);
            }
            Ok(())
        };
        record(&mut layers[..n_enc], &out, enc.regular)?;
        if let Some(q) = &qf {
            let tokens = out[1].clone().into_tensor();
            let qout = run_plan(&q.model, tokens)?;
            record(&mut layers[n_enc..], &qout, q.regular)?;
        }
        frames += 1;
        progress(frames);
    }
    if frames < MIN_FRAMES {
        return Err(CalibrateError::TooFewFrames {
            got: frames,
            min: MIN_FRAMES,
            uri: source.uri().to_string(),
        });
    }
    let mut c = Calibration {
        layers,
        frames,
        method,
        method_name: method_name.to_string(),
        input_range: input_range(&m.preprocess.mean, &m.preprocess.std),
    };
    c.compute()?;
    Ok(c)
}

impl Calibration {
    /// Compute each layer's range with the method; a layer that reads the image itself gets
    /// the whole range preprocessing can give (and at least what was seen): every pixel value
    /// is signal there, and clipping the rare bright ones (the entropy method's choice on
    /// mostly dark frames) or a range narrowed to the calibration frames' colours would distort
    /// every frame that has them.
    pub fn compute(&mut self) -> Result<(), CalibrateError> {
        for s in &mut self.layers {
            s.amax = if s.layer.reads_input {
                self.input_range.max(s.hist.max() as f32)
            } else {
                s.hist.amax(self.method, &s.layer.name)? as f32
            };
            if s.amax.is_nan() || s.amax <= 0.0 {
                // An all-zero input: any positive range quantizes it exactly.
                s.amax = 1.0;
            }
        }
        Ok(())
    }

    /// Check `skip` against the layers.
    pub fn check_skip(&self, skip: &[String]) -> Result<(), CalibrateError> {
        for s in skip {
            if !self.layers.iter().any(|l| &l.layer.name == s) {
                let all: Vec<String> = self
                    .layers
                    .iter()
                    .map(|l| format!("{} ({})", l.layer.name, l.model))
                    .collect();
                return Err(CalibrateError::UnknownSkip(s.clone(), all.join("\n  ")));
            }
        }
        Ok(())
    }

    /// The tables for the bundle (layers in `skip` left out: they stay float).
    pub fn tables(&self, skip: &[String]) -> QuantTables {
        let table = |model: &str| CalibrationTable {
            method: self.method_name.clone(),
            frames: self.frames,
            layers: self
                .layers
                .iter()
                .filter(|s| s.model == model && !skip.contains(&s.layer.name))
                .map(|s| {
                    (
                        s.layer.name.clone(),
                        LayerScale {
                            amax: s.amax,
                            observed_max: s.hist.max() as f32,
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        };
        QuantTables {
            encoder: table("encoder"),
            qformer: self
                .layers
                .iter()
                .any(|s| s.model == "qformer")
                .then(|| table("qformer")),
        }
    }

    /// A TensorRT calibration cache: header, then one `tensor: hex(scale)` line per layer input.
    pub fn trt_cache(&self) -> String {
        let mut out = trt_cache_header("8600", self.method);
        out.push('\n');
        for s in &self.layers {
            out.push_str(&trt_cache_line(&s.layer.input_tensor, f64::from(s.amax)));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, reads_input: bool, values: &[f32]) -> LayerStats {
        let mut hist = AbsHistogram::default();
        hist.add(values);
        LayerStats {
            model: "encoder",
            layer: LinearNode {
                id: 0,
                name: name.into(),
                k: 4,
                n: 4,
                transposed: false,
                input_tensor: name.into(),
                reads_input,
            },
            hist,
            amax: 0.0,
        }
    }

    #[test]
    fn layers_reading_the_image_get_the_whole_preprocessed_range() {
        // CLIP's normalisation: the brightest red pixel is (1 − 0.408) / 0.276 ≈ 2.146.
        let clip = input_range(
            &[0.48145466, 0.4578275, 0.40821073],
            &[0.268_629_5, 0.261_302_6, 0.275_777_1],
        );
        assert!((clip - 2.1459).abs() < 1e-3, "{clip}");
        // Mostly dark frames with a few bright pixels: entropy clips the bright ones in an
        // ordinary layer, never in one that reads the image.
        let mut values = vec![-1.79f32; 20_000];
        values.extend((0..20_000).map(|i| -1.79 + (i % 100) as f32 * 1e-3));
        values.extend([2.1f32; 10]);
        let mut c = Calibration {
            layers: vec![
                layer("patches", true, &values),
                layer("mlp", false, &values),
            ],
            frames: 8,
            method: Method::Entropy,
            method_name: "entropy".into(),
            input_range: clip,
        };
        c.compute().unwrap();
        assert_eq!(c.layers[0].amax, clip);
        assert!(c.layers[1].amax < 2.0, "entropy keeps {}", c.layers[1].amax);
        // Values beyond the normalisation's range (another preprocessing upstream) are kept.
        c.input_range = 1.0;
        c.compute().unwrap();
        assert_eq!(c.layers[0].amax, c.layers[0].hist.max() as f32);
    }
}
