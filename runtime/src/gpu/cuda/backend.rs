//! The CUDA backend: preprocessing on our kernel, then the encoder and Q-Former on our graph
//! executor or on tract-cuda ([`GpuModels`]), with per-stage timing.

use std::time::{Duration, Instant};

use cudarc::driver::{sys as dsys, CudaEvent};

use edgefuse_models::Bundle;

use super::device::{driver_err, Gpu};
use super::exec::GraphExec;
use super::launch::check_exact;
use super::preprocess::GpuPreprocess;
use crate::backend::{Backend, BackendError, ModelTimes};
use crate::engine::{Inference, TractEngine};
use crate::frame::Frame;
use crate::gpu::{GpuError, GpuModels};
use crate::preprocess::Preprocessor;

/// How the backend runs the encoder and the Q-Former.
enum Models {
    /// Our kernels over the lowered graphs ([`crate::plan`]): everything stays on the GPU
    /// from the frame to the embeddings; int8 bundles run their linear layers in int8.
    Ours {
        enc: Box<GraphExec>,
        qf: Option<Box<GraphExec>>,
    },
    /// tract-cuda, from the preprocessed tensor on the host.
    Tract {
        engine: Box<TractEngine>,
        input: Vec<f32>,
    },
}

/// The CUDA backend: fused preprocessing on the GPU, then the encoder and Q-Former on our
/// kernels or on tract-cuda (`--device cuda`, `cuda:ours`, `cuda:tract`).
pub struct CudaBackend {
    gpu: Gpu,
    pre: GpuPreprocess,
    models: Models,
    events: [CudaEvent; 4],
}

impl CudaBackend {
    /// Open device 0 and prepare everything for `bundle` with the models on `models`: kernels
    /// compiled (or loaded from the cache), weights uploaded, every buffer allocated.
    pub fn new(bundle: &Bundle, models: GpuModels) -> Result<Self, GpuError> {
        let mut gpu = Gpu::open(0)?;
        let pre = GpuPreprocess::new(&mut gpu, &bundle.manifest().preprocess)?;
        let models = match models {
            GpuModels::Ours => ours(&mut gpu, bundle)?,
            GpuModels::Tract => tract_cuda(bundle)?,
            GpuModels::OursElseTract => match ours(&mut gpu, bundle) {
                Ok(m) => m,
                Err(ours_err) => {
                    log::warn!(
                        "our GPU graph executor cannot run this bundle ({ours_err}); trying tract-cuda"
                    );
                    tract_cuda(bundle).map_err(|e| {
                        GpuError::Unsupported(format!(
                            "our GPU graph executor cannot run this bundle ({ours_err}), and {e}"
                        ))
                    })?
                }
            },
        };
        let event = || {
            gpu.ctx
                .new_event(Some(dsys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(driver_err("creating a CUDA event"))
        };
        let events = [event()?, event()?, event()?, event()?];
        Ok(Self {
            gpu,
            pre,
            models,
            events,
        })
    }
}

fn ours(gpu: &mut Gpu, bundle: &Bundle) -> Result<Models, GpuError> {
    let (enc, qf) = crate::plan::lower_bundle(bundle)?;
    let enc = Box::new(GraphExec::new(gpu, enc)?);
    let qf = match qf {
        Some(p) => Some(Box::new(GraphExec::new(gpu, p)?)),
        None => None,
    };
    Ok(Models::Ours { enc, qf })
}

/// The models on tract-cuda, or why they cannot run there.
fn tract_cuda(bundle: &Bundle) -> Result<Models, GpuError> {
    let engine = tract_cuda_engine(bundle).map_err(GpuError::Unsupported)?;
    let [w, h] = bundle.manifest().preprocess.image_size;
    Ok(Models::Tract {
        engine: Box::new(engine),
        input: vec![0.0; 3 * w as usize * h as usize],
    })
}

#[cfg(any(feature = "cuda-jp6", feature = "cuda-jp7"))]
fn tract_cuda_engine(bundle: &Bundle) -> Result<TractEngine, String> {
    // Referencing the crate links it, which registers its `cuda` runtime with tract.
    let _ = std::any::type_name::<tract_cuda::CudaTransform>();
    use tract_onnx::tract_core::runtime::runtime_for_name;
    let rt = runtime_for_name("cuda")
        .ok()
        .flatten()
        .ok_or("tract-cuda's runtime is not registered")?;
    rt.check()
        .map_err(|e| format!("tract-cuda cannot start: {e:#}"))?;
    let mut b = bundle.clone();
    b.set_runtime(Some(rt));
    TractEngine::new(&b).map_err(|e| format!("tract-cuda cannot run the models: {e}"))
}

#[cfg(not(any(feature = "cuda-jp6", feature = "cuda-jp7")))]
fn tract_cuda_engine(_bundle: &Bundle) -> Result<TractEngine, String> {
    Err("this build has no tract-cuda (cuda-jp5: tract-cuda needs CUDA 12)".into())
}

impl Backend for CudaBackend {
    fn describe(&self) -> String {
        let models = match &self.models {
            Models::Ours { .. } => "our kernels",
            Models::Tract { .. } => "tract-cuda",
        };
        format!(
            "{}: preprocessing on our kernel, encoder and Q-Former on {models}",
            self.gpu.describe()
        )
    }

    fn set_roi(&mut self, roi: Option<crate::preprocess::Roi>) -> bool {
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
        // A broken frame is the source's fault, not the device's: skipped, not a failure.
        Preprocessor::check(frame)?;
        let dev = BackendError::device;
        let stream = self.gpu.stream().clone();
        let rec = |e: &CudaEvent| e.record(&stream).map_err(driver_err("recording an event"));
        match &mut self.models {
            Models::Ours { enc, qf } => {
                let mut launch = || -> Result<(), GpuError> {
                    rec(&self.events[0])?;
                    self.pre.launch(frame, false)?;
                    rec(&self.events[1])?;
                    enc.set_input_from(&self.pre.out)?;
                    enc.run()?;
                    rec(&self.events[2])?;
                    if let Some(qf) = qf {
                        qf.set_input_from(enc.output(1))?;
                        qf.run()?;
                    }
                    rec(&self.events[3])?;
                    check_exact("embedding", embedding.len(), enc.output(0).len())?;
                    stream
                        .memcpy_dtoh(enc.output(0), embedding)
                        .map_err(driver_err("copying the embedding"))?;
                    if let Some(qf) = qf {
                        check_exact("queries", queries.len(), qf.output(0).len())?;
                        stream
                            .memcpy_dtoh(qf.output(0), queries)
                            .map_err(driver_err("copying the queries"))?;
                    }
                    self.gpu.synchronize()
                };
                launch().map_err(dev)?;
                let ms = |a: usize, b: usize| {
                    self.events[a]
                        .elapsed_ms(&self.events[b])
                        .map(|v| Duration::from_secs_f64(f64::from(v.max(0.0)) / 1e3))
                        .unwrap_or_default()
                };
                *times = [ms(0, 1), ms(1, 2), ms(2, 3)];
            }
            Models::Tract { engine, input } => {
                let t0 = Instant::now();
                self.pre.run(frame, input).map_err(dev)?;
                let preprocess = t0.elapsed();
                let [encoder, qformer] = engine.run(input, embedding, queries)?;
                *times = [preprocess, encoder, qformer];
            }
        }
        Ok(())
    }
}
