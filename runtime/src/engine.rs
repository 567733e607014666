//! Inference on the CPU: the CLIP image encoder and the Q-Former, loaded once for the bundle's
//! fixed input shape, run by one of two engines ([`CpuEngine`]):
//!
//! * the plan ([`PlanEngine`], the default): tract loads, checks, declutters and optimises the
//!   models, they are lowered to our step list ([`crate::plan`]) and run by [`CpuPlan`] on
//!   every core, with no allocation per frame;
//! * tract itself ([`TractEngine`]): the reference, and the engine for a model with a node the
//!   plan cannot lower. tract allocates its intermediate tensors on every run: that is measured
//!   (see [`crate::alloc::Scope::Engine`]) and reported by `edgefuse bench`, not hidden.
//!
//! Inputs and outputs live in buffers owned by the caller.

use std::time::{Duration, Instant};

use tract_onnx::prelude::*;

use edgefuse_models::{Bundle, BundleError};

use crate::alloc::{scope, Scope};
use crate::plan::{self, CpuPlan, PlanError, Pool};

/// Inference errors.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The bundle could not be loaded.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The plan cannot run the bundle's models (`--cpu-engine plan`), or failed to.
    #[error("{model}: the CPU plan cannot run it: {reason}")]
    Plan {
        /// Which model.
        model: &'static str,
        /// Why (in the message; not a separate source, so it is not printed twice).
        reason: PlanError,
    },
    /// The worker threads could not be started.
    #[error("cannot start {threads} CPU worker threads")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// tract failed while running a model.
    #[error("{model}: inference failed: {message}")]
    Run {
        /// Which model.
        model: &'static str,
        /// tract's message.
        message: String,
    },
}

fn plan_err(model: &'static str) -> impl Fn(PlanError) -> EngineError {
    move |reason| EngineError::Plan { model, reason }
}

/// What both CPU engines offer the backend. The encoder → Q-Former sequence and its timing are
/// written once, in [`Inference::run`].
pub trait Inference {
    /// Width of the pooled embedding.
    fn embedding_dim(&self) -> usize;
    /// Values in the Q-Former output (`queries × dim`), 0 without a Q-Former.
    fn queries_len(&self) -> usize;
    /// Whether a Q-Former runs.
    fn has_qformer(&self) -> bool {
        self.queries_len() > 0
    }
    /// Run the encoder on `image` (`[3, h, w]` values) and write the pooled embedding; the
    /// token sequence is kept for [`Inference::run_qformer`].
    fn run_encoder(&mut self, image: &[f32], embedding: &mut [f32]) -> Result<(), EngineError>;
    /// Run the Q-Former on the tokens of the last encoder run; writes `[queries, dim]` (nothing
    /// without a Q-Former).
    fn run_qformer(&mut self, queries: &mut [f32]) -> Result<(), EngineError>;
    /// Run the encoder on `image`, then the Q-Former when there is one; write the pooled
    /// `embedding` and the `queries`, and return how long each model took (zero for a missing
    /// Q-Former).
    fn run(
        &mut self,
        image: &[f32],
        embedding: &mut [f32],
        queries: &mut [f32],
    ) -> Result<[Duration; 2], EngineError> {
        let t0 = Instant::now();
        self.run_encoder(image, embedding)?;
        let t1 = Instant::now();
        self.run_qformer(queries)?;
        Ok([t1 - t0, t1.elapsed()])
    }
}

fn run_err(model: &'static str) -> impl Fn(TractError) -> EngineError {
    move |e| EngineError::Run {
        model,
        message: format!("{e:#}"),
    }
}

pub(crate) fn f32s(t: &TValue) -> TractResult<&[f32]> {
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
}

impl Inference for TractEngine {
    fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    fn queries_len(&self) -> usize {
        self.queries_len
    }

    fn run_encoder(&mut self, image: &[f32], embedding: &mut [f32]) -> Result<(), EngineError> {
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

    fn run_qformer(&mut self, queries: &mut [f32]) -> Result<(), EngineError> {
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

/// Which engine runs the models on the CPU (`--cpu-engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// The plan when the models lower completely, tract otherwise.
    #[default]
    Auto,
    /// The plan, or an error naming the node it cannot run.
    Plan,
    /// tract (single-threaded; allocates per frame).
    Tract,
}

impl std::str::FromStr for EngineChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "plan" => Ok(Self::Plan),
            "tract" => Ok(Self::Tract),
            _ => Err(format!("unknown CPU engine `{s}`: use auto, plan or tract")),
        }
    }
}

impl std::fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Plan => "plan",
            Self::Tract => "tract",
        })
    }
}

/// How the CPU runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuConfig {
    /// Which engine.
    pub engine: EngineChoice,
    /// Threads for the plan (the caller included); 0 = every core this process may use.
    pub threads: usize,
}

/// The encoder and Q-Former as [`CpuPlan`]s on one worker pool.
pub struct PlanEngine {
    encoder: CpuPlan,
    qformer: Option<CpuPlan>,
}

impl std::fmt::Debug for PlanEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanEngine")
            .field("encoder", &self.encoder)
            .field("qformer", &self.qformer)
            .finish()
    }
}

impl PlanEngine {
    /// Lower the bundle's models and prepare them on a pool of `threads` (0 = all cores).
    pub fn new(bundle: &Bundle, threads: usize) -> Result<Self, EngineError> {
        let (enc, qf) = plan::lower_bundle(bundle).map_err(plan_err("encoder"))?;
        let want = if threads == 0 {
            plan::available_threads()
        } else {
            threads
        };
        let pool = std::sync::Arc::new(Pool::new(want).map_err(|source| EngineError::Threads {
            threads: want,
            source,
        })?);
        let encoder = CpuPlan::new(&enc, pool.clone()).map_err(plan_err("encoder"))?;
        let qformer = match qf {
            Some(q) => Some(CpuPlan::new(&q, pool).map_err(plan_err("qformer"))?),
            None => None,
        };
        let embedding_dim = bundle.manifest().encoder.embedding_dim;
        if encoder.output_len(0) != embedding_dim {
            return Err(EngineError::Plan {
                model: "encoder",
                reason: PlanError::Unsupported(format!(
                    "embedding has {} values, the manifest says {embedding_dim}",
                    encoder.output_len(0)
                )),
            });
        }
        Ok(Self { encoder, qformer })
    }

    /// Time each step of both plans on `image` (see [`CpuPlan::profile`]).
    pub fn profile(
        &mut self,
        image: &[f32],
    ) -> Result<Vec<(String, Duration, usize)>, EngineError> {
        let mut v: Vec<_> = self
            .encoder
            .profile(image)
            .map_err(plan_err("encoder"))?
            .into_iter()
            .map(|(k, d, n)| (format!("encoder {k}"), d, n))
            .collect();
        if let Some(q) = self.qformer.as_mut() {
            let p = q
                .profile(self.encoder.output(1))
                .map_err(plan_err("qformer"))?;
            v.extend(
                p.into_iter()
                    .map(|(k, d, n)| (format!("qformer {k}"), d, n)),
            );
        }
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        Ok(v)
    }

    /// Threads a frame runs on.
    pub fn threads(&self) -> usize {
        self.encoder.threads()
    }
}

impl Inference for PlanEngine {
    fn embedding_dim(&self) -> usize {
        self.encoder.output_len(0)
    }

    fn queries_len(&self) -> usize {
        self.qformer.as_ref().map_or(0, |q| q.output_len(0))
    }

    fn run_encoder(&mut self, image: &[f32], embedding: &mut [f32]) -> Result<(), EngineError> {
        let _s = scope(Scope::Engine);
        self.encoder.run(image).map_err(plan_err("encoder"))?;
        embedding.copy_from_slice(self.encoder.output(0));
        Ok(())
    }

    fn run_qformer(&mut self, queries: &mut [f32]) -> Result<(), EngineError> {
        let _s = scope(Scope::Engine);
        if let Some(q) = self.qformer.as_mut() {
            // The tokens stay where the encoder wrote them: no copy.
            q.run(self.encoder.output(1)).map_err(plan_err("qformer"))?;
            queries.copy_from_slice(q.output(0));
        }
        Ok(())
    }
}

/// The engine [`crate::backend::CpuBackend`] runs.
#[derive(Debug)]
pub enum CpuEngine {
    /// Our plan executor.
    Plan(PlanEngine),
    /// tract.
    Tract(TractEngine),
}

impl CpuEngine {
    /// The engine `cfg` asks for; with [`EngineChoice::Auto`], tract when the plan cannot run
    /// the models (logged with the reason).
    pub fn new(bundle: &Bundle, cfg: CpuConfig) -> Result<Self, EngineError> {
        match cfg.engine {
            EngineChoice::Tract => Ok(Self::Tract(TractEngine::new(bundle)?)),
            EngineChoice::Plan => Ok(Self::Plan(PlanEngine::new(bundle, cfg.threads)?)),
            EngineChoice::Auto => match PlanEngine::new(bundle, cfg.threads) {
                Ok(p) => Ok(Self::Plan(p)),
                Err(e @ EngineError::Plan { .. }) => {
                    log::warn!("{e}; running the models in tract (one thread)");
                    Ok(Self::Tract(TractEngine::new(bundle)?))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// `plan, 6 threads` or `tract`.
    pub fn describe(&self) -> String {
        match self {
            Self::Plan(p) => format!(
                "plan, {} thread{}",
                p.threads(),
                if p.threads() == 1 { "" } else { "s" }
            ),
            Self::Tract(_) => "tract".to_string(),
        }
    }

    /// The plan's worker pool (`None` for tract, which runs on the calling thread).
    pub fn pool(&self) -> Option<std::sync::Arc<Pool>> {
        match self {
            CpuEngine::Plan(p) => Some(p.encoder.pool().clone()),
            CpuEngine::Tract(_) => None,
        }
    }

    /// The engine's models, whichever engine it is.
    pub fn models_mut(&mut self) -> &mut dyn Inference {
        match self {
            Self::Plan(p) => p,
            Self::Tract(t) => t,
        }
    }

    /// The engine's models, read-only (their sizes).
    pub fn models(&self) -> &dyn Inference {
        match self {
            Self::Plan(p) => p,
            Self::Tract(t) => t,
        }
    }
}
