//! The backend seam: where the models run on one frame (preprocess → encoder → Q-Former).
//!
//! [`Backend`] is what [`Pipeline`](crate::pipeline::Pipeline) hands each frame to. Two
//! implement it: [`CpuBackend`] (the CPU preprocessor and tract, always built) and the CUDA
//! backend (`gpu::cuda::CudaBackend`, with a CUDA feature). The pipeline runs a primary backend
//! and, when that is not the CPU, keeps a [`CpuBackend`] as the fallback: a failing device moves
//! the run to the CPU without losing the frame.

use std::time::{Duration, Instant};

use edgefuse_models::Bundle;

use crate::engine::{CpuConfig, CpuEngine, EngineError};
use crate::frame::Frame;
use crate::preprocess::{PreprocessError, Preprocessor, Roi};

/// How long one frame spent in each model stage: preprocess, encoder, Q-Former (zero without a
/// Q-Former).
pub type ModelTimes = [Duration; 3];

/// Runs the models on one frame.
pub trait Backend: Send {
    /// A short description for logs and `bench` (`cpu (plan, 6 threads)`, `cpu (tract)`, `cuda:0 Orin (sm_87, …)`).
    fn describe(&self) -> String;

    /// Preprocess `frame`, run the encoder and the Q-Former; write the pooled `embedding` and
    /// (when the bundle has a Q-Former) the `queries`, and each stage's time. Must not allocate
    /// per frame. A [`BackendError::BrokenFrame`] says the frame cannot be read (the pipeline
    /// skips it); any other error says this backend failed.
    fn run(
        &mut self,
        frame: &Frame,
        embedding: &mut [f32],
        queries: &mut [f32],
        times: &mut ModelTimes,
    ) -> Result<(), BackendError>;

    /// Preprocess only this region of each frame from now on (`None`: whole frames). Returns
    /// `false` when this backend cannot cut a region (the default, for backends that do not
    /// preprocess themselves); a region it cannot apply to a frame fails that frame with
    /// [`BackendError::Roi`].
    fn set_roi(&mut self, roi: Option<Roi>) -> bool {
        roi.is_none()
    }
}

/// Why a backend did not produce a frame's embeddings.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The frame cannot be preprocessed (its bytes do not match its geometry): skip it, the
    /// backend itself is fine.
    #[error(transparent)]
    BrokenFrame(#[from] PreprocessError),
    /// The region of interest does not fit the source's frames: a configuration error that no
    /// other backend would fix.
    #[error("{0}; fix --roi (or roi= in the source URI or the config file)")]
    Roi(PreprocessError),
    /// tract failed while running a model.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The device failed (a launch error, a lost device, …); the source is the backend's own
    /// error (`gpu::GpuError` for CUDA).
    #[error(transparent)]
    Device(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl BackendError {
    /// A device failure carrying `source`.
    pub fn device(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Device(Box::new(source))
    }
}

/// The models on the CPU: the CPU preprocessor and a [`CpuEngine`] (the plan on every core, or
/// tract), with the input sized once.
pub struct CpuBackend {
    pre: Preprocessor,
    input: Vec<f32>,
    engine: CpuEngine,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("engine", &self.engine)
            .finish()
    }
}

impl CpuBackend {
    /// Load and optimise the bundle's models for the CPU with the default engine and every
    /// core.
    pub fn new(bundle: &Bundle) -> Result<Self, EngineError> {
        Self::with_config(bundle, CpuConfig::default())
    }

    /// Load the bundle's models for the CPU as `cfg` says.
    pub fn with_config(bundle: &Bundle, cfg: CpuConfig) -> Result<Self, EngineError> {
        let engine = CpuEngine::new(bundle, cfg)?;
        let mut pre = Preprocessor::new(&bundle.manifest().preprocess);
        // Preprocessing splits its rows over the plan's pool (nothing spawned per frame).
        pre.set_pool(engine.pool());
        Ok(Self {
            input: vec![0.0; pre.output_len()],
            pre,
            engine,
        })
    }

    /// The engine (its output sizes).
    pub fn engine(&self) -> &CpuEngine {
        &self.engine
    }
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!("cpu ({})", self.engine.describe())
    }

    fn set_roi(&mut self, roi: Option<Roi>) -> bool {
        self.pre.set_roi(roi);
        true
    }

    fn run(
        &mut self,
        frame: &Frame,
        embedding: &mut [f32],
        queries: &mut [f32],
        times: &mut ModelTimes,
    ) -> Result<(), BackendError> {
        let t0 = Instant::now();
        self.pre.run(frame, &mut self.input).map_err(|e| match e {
            PreprocessError::Roi { .. } => BackendError::Roi(e),
            e => BackendError::BrokenFrame(e),
        })?;
        let preprocess = t0.elapsed();
        let [encoder, qformer] = self
            .engine
            .models_mut()
            .run(&self.input, embedding, queries)?;
        *times = [preprocess, encoder, qformer];
        Ok(())
    }
}
