//! Inference with tract on the CPU: the CLIP image encoder and the Q-Former, loaded once and
//! optimised for the bundle's fixed input shape.
//!
//! Inputs and outputs live in buffers owned by the caller; each call copies the input into a
//! tract tensor, runs one persistent plan state and copies the outputs back. tract itself
//! allocates its intermediate tensors on every run: that is measured (see
//! [`crate::alloc::Scope::Engine`]) and reported by `edgefuse bench`, not hidden.

use std::time::{Duration, Instant};

use tract_onnx::prelude::*;

use edgefuse_models::{Bundle, BundleError};

use crate::alloc::{scope, Scope};

/// Inference errors.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The bundle could not be loaded.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// tract failed while running a model.
    #[error("{model}: inference failed: {message}")]
    Run {
        /// Which model.
        model: &'static str,
        /// tract's message.
        message: String,
    },
}

fn run_err(model: &'static str) -> impl Fn(TractError) -> EngineError {
    move |e| EngineError::Run {
        model,
        message: format!("{e:#}"),
    }
}

fn f32s(t: &TValue) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}

/// The image encoder (and its optional Q-Former) ready to run.
pub struct TractEngine {
    encoder: Box<dyn State>,
    qformer: Option<Box<dyn State>>,
    input: Tensor,
    tokens_in: Option<Tensor>,
    embedding_dim: usize,
    token_shape: Option<Vec<usize>>,
    queries_len: usize,
}

impl std::fmt::Debug for TractEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractEngine")
            .field("embedding_dim", &self.embedding_dim)
            .field("token_shape", &self.token_shape)
            .field("qformer", &self.qformer.is_some())
            .finish()
    }
}

impl TractEngine {
    /// Load and optimise the bundle's encoder and Q-Former.
    pub fn new(bundle: &Bundle) -> Result<Self, EngineError> {
        let enc = bundle.load_encoder()?;
        let token_shape = enc.output_shapes.get(1).cloned();
        let qf = match &token_shape {
            Some(shape) => bundle.load_qformer(shape)?,
            None => None,
        };
        let [w, h] = bundle.manifest().preprocess.image_size;
        let input =
            Tensor::zero::<f32>(&[1, 3, h as usize, w as usize]).map_err(run_err("encoder"))?;
        let tokens_in = match &token_shape {
            Some(s) if qf.is_some() => Some(Tensor::zero::<f32>(s).map_err(run_err("qformer"))?),
            _ => None,
        };
        let queries_len = qf
            .as_ref()
            .map(|m| m.output_shapes[0].iter().product())
            .unwrap_or(0);
        let encoder = enc.plan.spawn().map_err(run_err("encoder"))?;
        let qformer = match qf {
            Some(m) => Some(m.plan.spawn().map_err(run_err("qformer"))?),
            None => None,
        };
        log::info!(
            "tract CPU engine: encoder {:?}, tokens {:?}, q-former {}",
            enc.output_shapes[0],
            token_shape,
            if qformer.is_some() { "loaded" } else { "none" }
        );
        Ok(Self {
            encoder,
            qformer,
            input,
            tokens_in,
            embedding_dim: bundle.manifest().encoder.embedding_dim,
            token_shape,
            queries_len,
        })
    }

    /// Width of the pooled embedding.
    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// Values in the Q-Former output (`queries × dim`), 0 without a Q-Former.
    pub fn queries_len(&self) -> usize {
        self.queries_len
    }

    /// Whether a Q-Former runs.
    pub fn has_qformer(&self) -> bool {
        self.qformer.is_some()
    }

    /// Run the encoder on `image` (`[3, h, w]` values), then the Q-Former when there is one;
    /// write the pooled `embedding` and the `queries`, and return how long each model took
    /// (zero for a missing Q-Former). The one place this sequence and its timing are written.
    pub fn run(
        &mut self,
        image: &[f32],
        embedding: &mut [f32],
        queries: &mut [f32],
    ) -> Result<[Duration; 2], EngineError> {
        let t0 = Instant::now();
        self.run_encoder(image, embedding)?;
        let t1 = Instant::now();
        if self.has_qformer() {
            self.run_qformer(queries)?;
        }
        Ok([t1 - t0, t1.elapsed()])
    }

    /// Run the encoder on `image` (`[3, h, w]` values) and write the pooled embedding.
    /// The token sequence is kept for [`TractEngine::run_qformer`].
    pub fn run_encoder(&mut self, image: &[f32], embedding: &mut [f32]) -> Result<(), EngineError> {
        let _s = scope(Scope::Engine);
        self.input
            .try_as_plain_ram_mut()
            .and_then(|mut v| v.as_slice_mut::<f32>().map(|s| s.copy_from_slice(image)))
            .map_err(run_err("encoder"))?;
        let out = self
            .encoder
            .run(tvec!(self.input.clone().into_tvalue()))
            .map_err(run_err("encoder"))?;
        embedding.copy_from_slice(f32s(&out[0]).map_err(run_err("encoder"))?);
        if let (Some(t), Some(tok)) = (self.tokens_in.as_mut(), out.get(1)) {
            let src = f32s(tok).map_err(run_err("encoder"))?;
            t.try_as_plain_ram_mut()
                .and_then(|mut v| v.as_slice_mut::<f32>().map(|d| d.copy_from_slice(src)))
                .map_err(run_err("encoder"))?;
        }
        Ok(())
    }

    /// Run the Q-Former on the tokens of the last encoder run; writes `[queries, dim]`.
    pub fn run_qformer(&mut self, queries: &mut [f32]) -> Result<(), EngineError> {
        let _s = scope(Scope::Engine);
        let (Some(state), Some(tokens)) = (self.qformer.as_mut(), self.tokens_in.as_ref()) else {
            return Ok(());
        };
        let out = state
            .run(tvec!(tokens.clone().into_tvalue()))
            .map_err(run_err("qformer"))?;
        queries.copy_from_slice(f32s(&out[0]).map_err(run_err("qformer"))?);
        Ok(())
    }
}
