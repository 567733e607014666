//! Loading a bundle's ONNX graphs with tract: read, check against the manifest, declutter (and
//! quantize, or add calibration taps) into a [`LoadedGraph`], then prepare a [`LoadedModel`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::{Bundle, LoadedGraph, LoadedModel, QuantTables, MANIFEST_FILE};
use crate::quant::gemm::Kernel;
use crate::quant::{find_linear_nodes, quantize_model, CalibrationTable};
use crate::BundleError;

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

    /// Labels the re-ranker scores per frame: `[rerank] top_k`, at most the bundle's labels;
    /// `None` without a re-ranker or with fewer than two labels (nothing to re-rank).
    pub fn rerank_candidates(&self) -> Option<usize> {
        let k = self
            .manifest
            .rerank
            .as_ref()?
            .top_k
            .min(self.manifest.labels.len());
        (k >= 2).then_some(k)
    }

    /// The re-ranker's input shape `[candidates, 2 + queries, embedding_dim]` (see
    /// [`crate::manifest::Rerank`]); `None` when it does not run.
    pub fn rerank_input_shape(&self) -> Option<[usize; 3]> {
        let k = self.rerank_candidates()?;
        let q = self.manifest.qformer.as_ref()?.queries;
        Some([k, 2 + q, self.manifest.encoder.embedding_dim])
    }

    /// Load the image-text-matching re-ranker (always float) for
    /// [`Bundle::rerank_input_shape`] and check its output `[candidates]`. `None` when the
    /// bundle has none (or too few labels for it to run).
    pub fn load_rerank(&self) -> Result<Option<LoadedModel>, BundleError> {
        self.rerank_graph()?
            .map(|g| prepare(g, Mode::Float, None))
            .transpose()
    }

    /// The re-ranker as a decluttered typed graph (see [`Bundle::load_encoder_graph`]).
    pub fn load_rerank_graph(&self) -> Result<Option<LoadedGraph>, BundleError> {
        Ok(self.rerank_graph()?.map(|g| g.graph))
    }

    fn rerank_graph(&self) -> Result<Option<Graph>, BundleError> {
        let (Some(r), Some(shape)) = (&self.manifest.rerank, self.rerank_input_shape()) else {
            return Ok(None);
        };
        let g = load_graph(
            self.dir.join(&r.model.file),
            "rerank",
            &r.input,
            InputSpec::F32(&shape),
            std::slice::from_ref(&r.output),
            Mode::Float,
        )?;
        let out = &g.graph.output_shapes[0];
        if out.as_slice() != [shape[0]] {
            return Err(BundleError::Shape {
                path: g.graph.path.clone(),
                field: "rerank.output".into(),
                message: format!(
                    "output `{}` has shape {out:?} for input {shape:?}, expected [{}]: one match logit per candidate label",
                    r.output, shape[0]
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
    let bytes =
        crate::files::read_limited(&path, crate::files::MAX_MODEL_BYTES).map_err(|error| {
            BundleError::MissingFile {
                path: path.clone(),
                field: field.clone(),
                error,
            }
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
                let hint = if section == "rerank" {
                    "the re-ranker is fed [min(rerank.top_k, labels), 2 + qformer.queries, encoder.embedding_dim]: \
                     export its first axis as dynamic"
                } else {
                    "check preprocess.image_size / the encoder's token shape"
                };
                return Err(BundleError::Shape {
                    path: path.clone(),
                    field: format!("{section}.input"),
                    message: format!(
                        "input `{input}` is declared {:?} in the ONNX file but the manifest feeds {shape:?} ({hint})",
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
    // Patch embeddings become linear layers in every mode, so calibration taps the same layers
    // that int8 loading quantizes.
    crate::rewrite::patch_embeddings_as_linear(&mut typed).map_err(|e| {
        corrupt(format!(
            "cannot rewrite its patch embedding (a convolution over the image with stride = \
                 kernel) as a linear layer: {e:#}; this is an edgefuse bug: report it with this \
                 model file"
        ))
    })?;
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
    use crate::manifest::{FileRef, Quantization};
    use crate::quant::{LayerScale, QLinear};
    use crate::sha256_hex;

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
