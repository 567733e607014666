//! A model bundle folder: the [`Bundle`] and what loading its models hands out.
//!
//! - `open`: reading `bundle.toml`, checking every file's sha256, reading the label embeddings
//!   and the int8 calibration tables.
//! - `validate`: the manifest's fields, and the label-embedding matrix against them.
//! - `write`: rewriting the labels, crash-safe (one commit point: the manifest's rename); a
//!   label change drops fitted fusion parameters (they would no longer match the rows).
//! - `fit`: writing a copy with fitted fusion parameters (`edgefuse fit`).
//! - `load`: parsing the ONNX graphs with tract, checking their inputs and outputs against the
//!   manifest, and turning them into typed graphs ([`LoadedGraph`]) or plans ([`LoadedModel`]).

mod fit;
mod load;
mod open;
mod validate;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::manifest::Manifest;
use crate::quant::CalibrationTable;

pub use fit::FitRecord;
pub use open::sha256_hex;
pub use validate::MAX_LABELS;
pub use write::DroppedFit;

/// Name of the manifest file inside a bundle folder.
pub const MANIFEST_FILE: &str = "bundle.toml";

/// A validated bundle: manifest, folder, and the label-embedding matrix.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
    /// Row-major `[labels, embedding_dim]` label embeddings, each row L2-normalised.
    label_embeddings: Vec<f32>,
    /// The int8 calibration tables of a quantized bundle (`None`: float, or float forced).
    quant: Option<QuantTables>,
    /// The fitted fusion parameters `[fusion_fitted]` names, checked against the bundle.
    fitted: Option<crate::fitted::FittedParams>,
    /// The tract runtime the image encoder and Q-Former are prepared for (`None`: tract's
    /// default CPU plan).
    runtime: Option<&'static dyn tract_onnx::tract_core::runtime::Runtime>,
}

/// The calibration tables of an int8 bundle, one per model file.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuantTables {
    /// Image encoder layers.
    pub encoder: CalibrationTable,
    /// Q-Former layers.
    #[serde(default)]
    pub qformer: Option<CalibrationTable>,
}

/// An optimised tract plan for a fixed input shape, plus the facts of its outputs.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The runnable plan (tract's CPU plan, or one prepared by another runtime such as
    /// tract-cuda); spawn one state per thread.
    pub plan: Arc<dyn Runnable>,
    /// Concrete output shapes, in the order requested.
    pub output_shapes: Vec<Vec<usize>>,
    /// The file the model came from (for error messages).
    pub path: PathBuf,
    /// Layers running in int8 (empty for a float model).
    pub quantized: Vec<String>,
    /// With [`Bundle::load_encoder_taps`] / [`Bundle::load_qformer_taps`]: the linear layers
    /// whose inputs are extra outputs of the plan, after the regular ones, in this order.
    pub taps: Vec<crate::quant::LinearNode>,
}

/// The decluttered typed graph of a model, checked against the manifest like a
/// [`LoadedModel`] but not yet optimised into a plan: for backends that lower tract's graph
/// themselves (the GPU plan). In an int8 bundle the calibrated linear layers are
/// [`crate::quant::QLinear`] nodes.
#[derive(Debug, Clone)]
pub struct LoadedGraph {
    /// The decluttered graph, with its input fact set to the shape the manifest feeds.
    pub model: TypedModel,
    /// Concrete output shapes, in the order requested.
    pub output_shapes: Vec<Vec<usize>>,
    /// The file the model came from (for error messages).
    pub path: PathBuf,
}

impl Bundle {
    /// Prepare the image encoder and Q-Former for `runtime` (e.g. tract-cuda's `cuda`) instead
    /// of tract's CPU plan. The graph is handed over decluttered (and with our int8 operators in
    /// place for an int8 bundle); the runtime optimises it for its device.
    pub fn set_runtime(
        &mut self,
        runtime: Option<&'static dyn tract_onnx::tract_core::runtime::Runtime>,
    ) {
        self.runtime = runtime;
    }

    /// The bundle folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Label names in row order.
    pub fn label_names(&self) -> impl Iterator<Item = &str> {
        self.manifest.labels.iter().map(|l| l.name.as_str())
    }

    /// Whether the linear layers will load in int8.
    pub fn is_int8(&self) -> bool {
        self.quant.is_some()
    }

    /// Load everything in float even if the bundle is int8 (for comparisons).
    pub fn force_float(&mut self) {
        self.quant = None;
    }

    /// The calibration tables, for an int8 bundle.
    pub fn quant_tables(&self) -> Option<&QuantTables> {
        self.quant.as_ref()
    }

    /// L2-normalised label embeddings, row-major `[labels, embedding_dim]`.
    pub fn label_embeddings(&self) -> &[f32] {
        &self.label_embeddings
    }

    /// The fitted fusion parameters, when the bundle has a `[fusion_fitted]` section (checked
    /// against the labels, the embedding width and the Q-Former when the bundle opened).
    pub fn fitted(&self) -> Option<&crate::fitted::FittedParams> {
        self.fitted.as_ref()
    }
}
