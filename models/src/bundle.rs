//! Opening and validating a model bundle folder, and loading its ONNX graphs with tract.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use crate::manifest::{FileRef, Manifest, FORMAT_VERSION};
use crate::quant::gemm::Kernel;
use crate::quant::{find_linear_nodes, quantize_model, CalibrationTable};
use crate::BundleError;

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

/// How [`load_graph`] and [`prepare`] build the graph and the plan.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// Everything in float.
    Float,
    /// Linear layers in the table in int8.
    Int8(&'a CalibrationTable, &'a [String]),
    /// Float, with every linear layer's input as an extra output (calibration).
    Taps,
}

impl Bundle {
    /// Open `dir/bundle.toml`, check every field and every file checksum, and read the label
    /// embeddings. ONNX graphs are parsed later by [`Bundle::load_encoder`] and friends.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).map_err(|source| {
            BundleError::ManifestRead {
                path: manifest_path.clone(),
                source,
            }
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| BundleError::ManifestParse {
            path: manifest_path.clone(),
            message: e.to_string(),
        })?;
        let bundle = Self::from_manifest(dir, manifest)?;
        log::info!(
            "bundle {} {} from {}: {} labels, embedding {}, q-former {}",
            bundle.manifest.name,
            bundle.manifest.version,
            bundle.dir.display(),
            bundle.manifest.labels.len(),
            bundle.manifest.encoder.embedding_dim,
            if bundle.manifest.qformer.is_some() {
                "yes"
            } else {
                "no"
            }
        );
        Ok(bundle)
    }

    /// Validate an in-memory manifest against the files of `dir`.
    pub fn from_manifest(dir: PathBuf, manifest: Manifest) -> Result<Self, BundleError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let field_err = |field: &str, message: String| BundleError::Field {
            path: manifest_path.clone(),
            field: field.to_string(),
            message,
        };
        validate_fields(&manifest, &field_err)?;
        let m = &manifest;
        verify_file(&dir, &m.encoder.model, "encoder.file")?;
        if let Some(q) = &m.qformer {
            verify_file(&dir, &q.model, "qformer.file")?;
        }
        if let Some(t) = &m.text_encoder {
            verify_file(&dir, &t.model, "text_encoder.file")?;
        }
        let raw = verify_file(&dir, &m.text_embeddings.data, "text_embeddings.file")?;
        let dim = m.encoder.embedding_dim;
        let path = dir.join(&m.text_embeddings.data.file);
        if raw.len() % 4 != 0 || raw.len() / 4 % dim != 0 {
            return Err(BundleError::Shape {
                path,
                field: "text_embeddings.file".into(),
                message: format!(
                    "{} bytes is not a whole number of f32 rows of encoder.embedding_dim = {dim}; \
                     the label-embedding width must equal the encoder's embedding width",
                    raw.len()
                ),
            });
        }
        let rows = raw.len() / 4 / dim;
        if rows != m.labels.len() {
            return Err(BundleError::Shape {
                path,
                field: "labels".into(),
                message: format!(
                    "the embedding file has {rows} rows of width {dim} but the manifest lists {} labels; \
                     re-run `edgefuse labels` or the exporter to regenerate it",
                    m.labels.len()
                ),
            });
        }
        let mut label_embeddings: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        for (i, row) in label_embeddings.chunks_exact_mut(dim).enumerate() {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if !norm.is_finite() || norm == 0.0 {
                return Err(BundleError::Shape {
                    path: path.clone(),
                    field: format!("labels[{i}]"),
                    message: format!(
                        "embedding row {i} (label `{}`) is zero or not finite",
                        m.labels[i].name
                    ),
                });
            }
            row.iter_mut().for_each(|v| *v /= norm);
        }
        let quant = match &manifest.quantization {
            Some(q) => {
                let raw = verify_file(&dir, &q.table, "quantization.table")?;
                let tables: QuantTables =
                    serde_json::from_slice(&raw).map_err(|e| BundleError::Field {
                        path: dir.join(&q.table.file),
                        field: "quantization.table".into(),
                        message: format!(
                            "not a calibration table ({e}); re-run `edgefuse calibrate` to rebuild the int8 bundle"
                        ),
                    })?;
                if manifest.qformer.is_some() != tables.qformer.is_some() {
                    return Err(BundleError::Field {
                        path: dir.join(&q.table.file),
                        field: "quantization.table".into(),
                        message: "the table's Q-Former section does not match the manifest's [qformer]; re-run `edgefuse calibrate`".into(),
                    });
                }
                Some(tables)
            }
            None => None,
        };
        Ok(Self {
            dir,
            manifest,
            label_embeddings,
            quant,
            runtime: None,
        })
    }

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

    fn encoder_mode(&self) -> Mode<'_> {
        match (&self.quant, &self.manifest.quantization) {
            (Some(t), Some(q)) => Mode::Int8(&t.encoder, &q.skip),
            _ => Mode::Float,
        }
    }

    fn qformer_mode(&self) -> Mode<'_> {
        match (&self.quant, &self.manifest.quantization) {
            (
                Some(QuantTables {
                    qformer: Some(t), ..
                }),
                Some(q),
            ) => Mode::Int8(t, &q.skip),
            _ => Mode::Float,
        }
    }

    /// The image encoder in float with every linear layer's input as an extra output.
    pub fn load_encoder_taps(&self) -> Result<LoadedModel, BundleError> {
        self.load_encoder_mode(Mode::Taps)
    }

    /// The Q-Former in float with every linear layer's input as an extra output.
    pub fn load_qformer_taps(
        &self,
        token_shape: &[usize],
    ) -> Result<Option<LoadedModel>, BundleError> {
        self.load_qformer_mode(token_shape, Mode::Taps)
    }

    /// L2-normalised label embeddings, row-major `[labels, embedding_dim]`.
    pub fn label_embeddings(&self) -> &[f32] {
        &self.label_embeddings
    }

    /// Load the image encoder for input `[1, 3, height, width]` and check its outputs:
    /// the pooled embedding `[1, embedding_dim]` and, when requested, the token sequence
    /// `[1, tokens, width]` (returned second).
    pub fn load_encoder(&self) -> Result<LoadedModel, BundleError> {
        self.load_encoder_mode(self.encoder_mode())
    }

    /// The image encoder as [`Bundle::load_encoder`] reads and checks it, as a decluttered typed
    /// graph (int8 linear layers as [`crate::quant::QLinear`] nodes in an int8 bundle) instead of
    /// a runnable plan: for backends that lower the graph themselves.
    pub fn load_encoder_graph(&self) -> Result<LoadedGraph, BundleError> {
        Ok(self.encoder_graph(self.encoder_mode())?.graph)
    }

    fn load_encoder_mode(&self, mode: Mode<'_>) -> Result<LoadedModel, BundleError> {
        prepare(self.encoder_graph(mode)?, mode, self.runtime)
    }

    fn encoder_graph(&self, mode: Mode<'_>) -> Result<Graph, BundleError> {
        let e = &self.manifest.encoder;
        let [w, h] = self.manifest.preprocess.image_size;
        let mut outputs = vec![e.embedding_output.clone()];
        if self.manifest.qformer.is_some() {
            if let Some(t) = &e.tokens_output {
                outputs.push(t.clone());
            }
        }
        let input_shape = [1usize, 3, h as usize, w as usize];
        let g = load_graph(
            self.dir.join(&e.model.file),
            "encoder",
            &e.input,
            InputSpec::F32(&input_shape),
            &outputs,
            mode,
        )?;
        let (shapes, path) = (&g.graph.output_shapes, &g.graph.path);
        let emb = &shapes[0];
        if emb.len() != 2 || emb[0] != 1 || emb[1] != e.embedding_dim {
            return Err(BundleError::Shape {
                path: path.clone(),
                field: "encoder.embedding_output".into(),
                message: format!(
                    "output `{}` has shape {emb:?}, expected [1, {}] (encoder.embedding_dim, the label-embedding width)",
                    e.embedding_output, e.embedding_dim
                ),
            });
        }
        if let Some(tok) = shapes.get(1) {
            if tok.len() != 3 || tok[0] != 1 {
                return Err(BundleError::Shape {
                    path: path.clone(),
                    field: "encoder.tokens_output".into(),
                    message: format!("output has shape {tok:?}, expected [1, tokens, width]"),
                });
            }
        }
        Ok(g)
    }

    /// Load the Q-Former for the encoder's token shape `[1, tokens, width]` and check its output
    /// `[1, queries, embedding_dim]`. `None` when the bundle has no Q-Former.
    pub fn load_qformer(&self, token_shape: &[usize]) -> Result<Option<LoadedModel>, BundleError> {
        self.load_qformer_mode(token_shape, self.qformer_mode())
    }

    /// The Q-Former as [`Bundle::load_qformer`] reads and checks it, as a decluttered typed graph
    /// (see [`Bundle::load_encoder_graph`]). `None` when the bundle has no Q-Former.
    pub fn load_qformer_graph(
        &self,
        token_shape: &[usize],
    ) -> Result<Option<LoadedGraph>, BundleError> {
        Ok(self
            .qformer_graph(token_shape, self.qformer_mode())?
            .map(|g| g.graph))
    }

    fn load_qformer_mode(
        &self,
        token_shape: &[usize],
        mode: Mode<'_>,
    ) -> Result<Option<LoadedModel>, BundleError> {
        self.qformer_graph(token_shape, mode)?
            .map(|g| prepare(g, mode, self.runtime))
            .transpose()
    }

    fn qformer_graph(
        &self,
        token_shape: &[usize],
        mode: Mode<'_>,
    ) -> Result<Option<Graph>, BundleError> {
        let Some(q) = &self.manifest.qformer else {
            return Ok(None);
        };
        let g = load_graph(
            self.dir.join(&q.model.file),
            "qformer",
            &q.input,
            InputSpec::F32(token_shape),
            std::slice::from_ref(&q.output),
            mode,
        )?;
        let out = &g.graph.output_shapes[0];
        let dim = self.manifest.encoder.embedding_dim;
        if out.len() != 3 || out[0] != 1 || out[1] != q.queries || out[2] != dim {
            return Err(BundleError::Shape {
                path: g.graph.path.clone(),
                field: "qformer.output".into(),
                message: format!(
                    "output `{}` has shape {out:?}, expected [1, {} (qformer.queries), {dim} (encoder.embedding_dim)]",
                    q.output, q.queries
                ),
            });
        }
        Ok(Some(g))
    }

    /// Load the text tower (`[1, context_length]` i64 tokens → `[1, embedding_dim]`).
    pub fn load_text_encoder(&self) -> Result<LoadedModel, BundleError> {
        let Some(t) = &self.manifest.text_encoder else {
            return Err(BundleError::Field {
                path: self.dir.join(MANIFEST_FILE),
                field: "text_encoder".into(),
                message:
                    "this bundle has no text tower, so labels cannot be embedded on the device; \
                          re-export it with the text tower"
                        .into(),
            });
        };
        let g = load_graph(
            self.dir.join(&t.model.file),
            "text_encoder",
            &t.input,
            InputSpec::I64(&[1, t.context_length]),
            std::slice::from_ref(&t.output),
            Mode::Float,
        )?;
        let out = &g.graph.output_shapes[0];
        let dim = self.manifest.encoder.embedding_dim;
        if out != &[1, dim] {
            return Err(BundleError::Shape {
                path: g.graph.path.clone(),
                field: "text_encoder.output".into(),
                message: format!(
                    "output has shape {out:?}, expected [1, {dim}]: the text width must equal encoder.embedding_dim"
                ),
            });
        }
        // The text tower always runs on tract's CPU plan.
        prepare(g, Mode::Float, None)
    }

    /// Replace the labels and their (unnormalised) embedding rows, rewrite the embedding file and
    /// the manifest with fresh checksums. Used by `edgefuse labels add/remove`; unchanged rows
    /// can be taken from [`Bundle::label_embeddings`].
    pub fn write_labels(
        &mut self,
        labels: Vec<crate::manifest::Label>,
        rows: &[f32],
    ) -> Result<(), BundleError> {
        let dim = self.manifest.encoder.embedding_dim;
        assert_eq!(
            rows.len(),
            labels.len() * dim,
            "one embedding row per label"
        );
        let mut bytes = Vec::with_capacity(rows.len() * 4);
        rows.iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        let mut manifest = self.manifest.clone();
        manifest.labels = labels;
        manifest.text_embeddings.data.sha256 = sha256_hex(&bytes);
        let emb_path = self.dir.join(&manifest.text_embeddings.data.file);
        write_atomic(&emb_path, &bytes)?;
        let text = toml::to_string_pretty(&manifest).map_err(|e| BundleError::ManifestParse {
            path: self.dir.join(MANIFEST_FILE),
            message: e.to_string(),
        })?;
        write_atomic(&self.dir.join(MANIFEST_FILE), text.as_bytes())?;
        *self = Self::from_manifest(self.dir.clone(), manifest)?;
        Ok(())
    }
}

fn validate_fields(
    m: &Manifest,
    err: &dyn Fn(&str, String) -> BundleError,
) -> Result<(), BundleError> {
    if m.format_version != FORMAT_VERSION {
        return Err(err(
            "format_version",
            format!("is {}, this edgefuse reads version {FORMAT_VERSION}; upgrade edgefuse or re-export the bundle", m.format_version),
        ));
    }
    let p = &m.preprocess;
    if p.image_size[0] == 0
        || p.image_size[1] == 0
        || p.image_size[0] > 4096
        || p.image_size[1] > 4096
    {
        return Err(err(
            "preprocess.image_size",
            format!("{:?} must be 1..=4096 pixels per side", p.image_size),
        ));
    }
    for (i, s) in p.std.iter().enumerate() {
        if !(s.is_finite() && *s > 0.0) {
            return Err(err(
                &format!("preprocess.std[{i}]"),
                format!("{s} must be a positive number"),
            ));
        }
    }
    if p.mean.iter().any(|v| !v.is_finite()) {
        return Err(err(
            "preprocess.mean",
            format!("{:?} must be finite", p.mean),
        ));
    }
    if m.encoder.embedding_dim == 0 {
        return Err(err("encoder.embedding_dim", "must be > 0".into()));
    }
    if m.labels.is_empty() {
        return Err(err(
            "labels",
            "the bundle lists no labels; add some with `edgefuse labels add`".into(),
        ));
    }
    for (i, l) in m.labels.iter().enumerate() {
        if l.name.trim().is_empty() {
            return Err(err(&format!("labels[{i}].name"), "is empty".into()));
        }
        if m.labels[..i].iter().any(|o| o.name == l.name) {
            return Err(err(
                &format!("labels[{i}].name"),
                format!("`{}` appears twice", l.name),
            ));
        }
    }
    check_head(&m.fusion.clip, "fusion.clip", err)?;
    match (&m.qformer, &m.fusion.qformer) {
        (Some(q), Some(h)) => {
            check_head(h, "fusion.qformer", err)?;
            if m.encoder.tokens_output.is_none() {
                return Err(err(
                    "encoder.tokens_output",
                    "is required when the bundle has a [qformer]".into(),
                ));
            }
            if q.queries == 0 {
                return Err(err("qformer.queries", "must be > 0".into()));
            }
        }
        (Some(_), None) => {
            return Err(err(
                "fusion.qformer",
                "is required when the bundle has a [qformer]".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                "fusion.qformer",
                "is set but the bundle has no [qformer] section".into(),
            ))
        }
        (None, None) => {}
    }
    if let Some(t) = &m.text_encoder {
        if t.tokenizer != "clip-bpe" {
            return Err(err(
                "text_encoder.tokenizer",
                format!("`{}` is not supported; use `clip-bpe`", t.tokenizer),
            ));
        }
        if !(3..=1024).contains(&t.context_length) {
            return Err(err(
                "text_encoder.context_length",
                format!("{} must be 3..=1024", t.context_length),
            ));
        }
    }
    Ok(())
}

fn check_head(
    h: &crate::manifest::HeadParams,
    field: &str,
    err: &dyn Fn(&str, String) -> BundleError,
) -> Result<(), BundleError> {
    if !(h.logit_scale.is_finite() && h.logit_scale > 0.0) {
        return Err(err(
            &format!("{field}.logit_scale"),
            format!("{} must be a positive number", h.logit_scale),
        ));
    }
    if !(h.weight.is_finite() && h.weight >= 0.0) {
        return Err(err(
            &format!("{field}.weight"),
            format!("{} must be >= 0", h.weight),
        ));
    }
    Ok(())
}

/// Read a bundle file and check its sha256; returns its bytes.
fn verify_file(dir: &Path, f: &FileRef, field: &str) -> Result<Vec<u8>, BundleError> {
    let path = dir.join(&f.file);
    let bytes = std::fs::read(&path).map_err(|source| BundleError::MissingFile {
        path: path.clone(),
        field: field.to_string(),
        source,
    })?;
    let actual = sha256_hex(&bytes);
    if !actual.eq_ignore_ascii_case(f.sha256.trim()) {
        return Err(BundleError::Checksum {
            path,
            field: field.to_string(),
            expected: f.sha256.clone(),
            actual,
        });
    }
    Ok(bytes)
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let tmp = path.with_extension("tmp-edgefuse");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| BundleError::Write {
            path: path.to_path_buf(),
            source,
        })
}

enum InputSpec<'a> {
    F32(&'a [usize]),
    I64(&'a [usize]),
}

/// A model read and checked by [`load_graph`], with what the mode did to it.
struct Graph {
    graph: LoadedGraph,
    /// The manifest section (`encoder`, `qformer`, `text_encoder`), for error messages.
    section: &'static str,
    /// The input shape the graph was typed for.
    input_shape: Vec<usize>,
    /// Layers put in int8 ([`Mode::Int8`]).
    quantized: Vec<String>,
    /// Linear layers whose inputs were appended as outputs ([`Mode::Taps`]).
    taps: Vec<crate::quant::LinearNode>,
}

/// Read an ONNX model, check its input and outputs against the manifest, and declutter it into
/// a typed graph; with [`Mode::Int8`] the covered linear layers are [`crate::quant::QLinear`]
/// nodes, with [`Mode::Taps`] every linear layer's input is an extra output.
fn load_graph(
    path: PathBuf,
    section: &'static str,
    input: &str,
    spec: InputSpec,
    outputs: &[String],
    mode: Mode<'_>,
) -> Result<Graph, BundleError> {
    let field = format!("{section}.file");
    let corrupt = |message: String| BundleError::CorruptModel {
        path: path.clone(),
        field: field.clone(),
        message,
    };
    let bytes = std::fs::read(&path).map_err(|source| BundleError::MissingFile {
        path: path.clone(),
        field: field.clone(),
        source,
    })?;
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .map_err(|e| corrupt(format!("{e:#}")))?;
    let inputs = model
        .input_outlets()
        .map_err(|e| corrupt(format!("{e:#}")))?
        .to_vec();
    let names: Vec<String> = inputs
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    let Some(ix) = names.iter().position(|n| n == input) else {
        return Err(BundleError::Shape {
            path: path.clone(),
            field: format!("{section}.input"),
            message: format!("the model has no input `{input}`; its inputs are {names:?}"),
        });
    };
    if inputs.len() != 1 {
        return Err(BundleError::Shape {
            path: path.clone(),
            field: format!("{section}.input"),
            message: format!(
                "the model has {} inputs {names:?}; edgefuse feeds exactly one",
                inputs.len()
            ),
        });
    }
    let (shape, fact) = match spec {
        InputSpec::F32(s) => (s, f32::fact(s)),
        InputSpec::I64(s) => (s, i64::fact(s)),
    };
    // A declared concrete input shape must match what the manifest will feed.
    if let Ok(declared) = model.input_fact(ix) {
        if let Some(dims) = declared.shape.as_concrete_finite().ok().flatten() {
            if dims.as_slice() != shape {
                return Err(BundleError::Shape {
                    path: path.clone(),
                    field: format!("{section}.input"),
                    message: format!(
                        "input `{input}` is declared {:?} in the ONNX file but the manifest feeds {shape:?} \
                         (check preprocess.image_size / the encoder's token shape)",
                        dims.as_slice()
                    ),
                });
            }
        }
    }
    model
        .set_input_fact(ix, fact.into())
        .map_err(|e| corrupt(format!("{e:#}")))?;
    model
        .select_outputs_by_name(outputs)
        .map_err(|e| BundleError::Shape {
            path: path.clone(),
            field: format!("{section} outputs"),
            message: format!("cannot select outputs {outputs:?}: {e:#}"),
        })?;
    let shape_err = input_shape_err(&path, section, shape);
    let mut typed = model
        .into_typed()
        .and_then(|t| t.into_decluttered())
        .map_err(&shape_err)?;
    let mut quantized = Vec::new();
    let mut taps = Vec::new();
    match mode {
        Mode::Float => {}
        Mode::Int8(table, skip) => {
            quantized = quantize_model(&mut typed, table, skip, Kernel::best())
                .map_err(|e| corrupt(format!("cannot quantize: {e:#}")))?;
            let expected = table.layers.keys().filter(|k| !skip.contains(k)).count();
            if quantized.len() != expected {
                return Err(BundleError::Field {
                    path: path.clone(),
                    field: "quantization.table".into(),
                    message: format!(
                        "the table names {expected} {section} layers but {} were found in the graph; \
                         the model file changed since calibration: re-run `edgefuse calibrate`",
                        quantized.len()
                    ),
                });
            }
            log::info!("{section}: {} linear layers in int8", quantized.len());
        }
        Mode::Taps => {
            taps = find_linear_nodes(&typed).map_err(|e| corrupt(format!("{e:#}")))?;
            let mut outs = typed.output_outlets().map_err(&shape_err)?.to_vec();
            for l in &taps {
                outs.push(typed.node(l.id).inputs[0]);
            }
            typed.select_output_outlets(&outs).map_err(&shape_err)?;
        }
    }
    drop(shape_err);
    let mut output_shapes = Vec::with_capacity(outputs.len());
    for (i, name) in outputs.iter().enumerate() {
        let fact = typed
            .output_fact(i)
            .map_err(|e| corrupt(format!("{e:#}")))?;
        if fact.datum_type != f32::datum_type() {
            return Err(BundleError::Shape {
                path: path.clone(),
                field: format!("{section} outputs"),
                message: format!("output `{name}` is {:?}, expected f32", fact.datum_type),
            });
        }
        let dims = fact.shape.as_concrete().ok_or_else(|| {
            corrupt(format!(
                "output `{name}` has no concrete shape: {:?}",
                fact.shape
            ))
        })?;
        output_shapes.push(dims.to_vec());
    }
    Ok(Graph {
        graph: LoadedGraph {
            model: typed,
            output_shapes,
            path,
        },
        section,
        input_shape: shape.to_vec(),
        quantized,
        taps,
    })
}

/// The error of a model that does not accept the input shape the manifest feeds.
fn input_shape_err<'a>(
    path: &'a Path,
    section: &'a str,
    shape: &'a [usize],
) -> impl Fn(TractError) -> BundleError + 'a {
    move |e| BundleError::Shape {
        path: path.to_path_buf(),
        field: format!("{section}.input"),
        message: format!("the model does not accept input {shape:?}: {e:#}"),
    }
}

/// Turn a checked graph into a runnable plan: handed to `runtime` as it is, or optimised into
/// tract's CPU plan. [`Mode::Taps`] always gets tract's CPU plan: calibration runs on the CPU.
fn prepare(
    graph: Graph,
    mode: Mode<'_>,
    runtime: Option<&'static dyn tract_onnx::tract_core::runtime::Runtime>,
) -> Result<LoadedModel, BundleError> {
    let Graph {
        graph:
            LoadedGraph {
                model: mut typed,
                output_shapes,
                path,
            },
        section,
        input_shape,
        quantized,
        taps,
    } = graph;
    let runtime = if matches!(mode, Mode::Taps) {
        None
    } else {
        runtime
    };
    let plan: Arc<dyn Runnable> = match runtime {
        Some(rt) => Arc::from(rt.prepare(typed).map_err(|e| BundleError::Runtime {
            path: path.clone(),
            runtime: rt.name().to_string(),
            message: format!("{e:#}"),
        })?),
        None => {
            let shape_err = input_shape_err(&path, section, &input_shape);
            // `optimize` is the rest of what `into_optimized` does after decluttering; the int8
            // patches and the taps' extra outputs get one more declutter pass first.
            match mode {
                Mode::Float => typed.optimize().map_err(&shape_err)?,
                Mode::Int8(..) | Mode::Taps => {
                    typed = typed.into_optimized().map_err(&shape_err)?
                }
            }
            Arc::new(
                typed
                    .into_runnable()
                    .map_err(|e| BundleError::CorruptModel {
                        path: path.clone(),
                        field: format!("{section}.file"),
                        message: format!("{e:#}"),
                    })?,
            )
        }
    };
    Ok(LoadedModel {
        plan,
        output_shapes,
        path,
        quantized,
        taps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Quantization;
    use crate::quant::{LayerScale, QLinear};

    fn default_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("default")
    }

    /// The graph's output facts are the shapes it reports, and the plans agree.
    fn check_graph(g: &LoadedGraph, plan_shapes: &[Vec<usize>]) {
        assert_eq!(g.output_shapes, plan_shapes);
        let outs = g.model.output_outlets().unwrap();
        assert_eq!(outs.len(), g.output_shapes.len());
        for (i, shape) in g.output_shapes.iter().enumerate() {
            let fact = g.model.output_fact(i).unwrap();
            assert_eq!(fact.datum_type, f32::datum_type());
            assert_eq!(fact.shape.as_concrete().unwrap(), shape.as_slice());
        }
    }

    fn qlinear_nodes(g: &LoadedGraph) -> usize {
        g.model
            .nodes()
            .iter()
            .filter(|n| n.op_as::<QLinear>().is_some())
            .count()
    }

    /// Encoder and Q-Former graphs of `bundle`; returns their QLinear node counts.
    fn check_bundle(bundle: &Bundle) -> (usize, usize) {
        let m = bundle.manifest();
        let enc = bundle.load_encoder_graph().unwrap();
        assert_eq!(enc.path, bundle.dir().join(&m.encoder.model.file));
        assert_eq!(enc.output_shapes.len(), 2, "embedding and tokens");
        assert_eq!(enc.output_shapes[0], [1, m.encoder.embedding_dim]);
        check_graph(&enc, &bundle.load_encoder().unwrap().output_shapes);
        let tokens = enc.output_shapes[1].clone();
        let qf = bundle.load_qformer_graph(&tokens).unwrap().unwrap();
        let queries = m.qformer.as_ref().unwrap().queries;
        assert_eq!(
            qf.output_shapes,
            [vec![1, queries, m.encoder.embedding_dim]]
        );
        let plan = bundle.load_qformer(&tokens).unwrap().unwrap();
        check_graph(&qf, &plan.output_shapes);
        (qlinear_nodes(&enc), qlinear_nodes(&qf))
    }

    #[test]
    fn float_graphs_match_their_output_shapes() {
        let bundle = Bundle::open(default_dir()).unwrap();
        assert!(!bundle.is_int8());
        assert_eq!(check_bundle(&bundle), (0, 0));
    }

    #[test]
    fn int8_graphs_carry_qlinear_nodes() {
        let tmp = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(default_dir()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
        let float = Bundle::open(tmp.path()).unwrap();
        let table = |taps: &[crate::quant::LinearNode]| CalibrationTable {
            method: "test".into(),
            frames: 1,
            layers: taps
                .iter()
                .map(|l| {
                    let s = LayerScale {
                        amax: 4.0,
                        observed_max: 4.0,
                    };
                    (l.name.clone(), s)
                })
                .collect(),
        };
        let enc_taps = float.load_encoder_taps().unwrap();
        let qf_taps = float
            .load_qformer_taps(&enc_taps.output_shapes[1])
            .unwrap()
            .unwrap();
        let tables = QuantTables {
            encoder: table(&enc_taps.taps),
            qformer: Some(table(&qf_taps.taps)),
        };
        let (n_enc, n_qf) = (tables.encoder.layers.len(), qf_taps.taps.len());
        assert!(n_enc > 0 && n_qf > 0, "the default model has linear layers");
        let json = serde_json::to_vec(&tables).unwrap();
        std::fs::write(tmp.path().join("calibration.json"), &json).unwrap();
        let mut manifest = float.manifest().clone();
        manifest.quantization = Some(Quantization {
            method: "test".into(),
            frames: 1,
            table: FileRef {
                file: "calibration.json".into(),
                sha256: sha256_hex(&json),
            },
            skip: Vec::new(),
        });
        let int8 = Bundle::from_manifest(tmp.path().to_path_buf(), manifest).unwrap();
        assert!(int8.is_int8());
        assert_eq!(check_bundle(&int8), (n_enc, n_qf));
    }
}
