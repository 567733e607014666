//! The CUDA accelerator: GPU preprocessing, then the encoder and Q-Former on our graph executor
//! or on tract-cuda, with per-stage CUDA-event timing.

use std::time::Instant;

use cudarc::driver::sys as dsys;

use edgefuse_models::Bundle;

use super::device::{driver_err, Gpu};
use super::exec::GraphExec;
use super::launch::check_exact;
use super::preprocess::GpuPreprocess;
use crate::engine::TractEngine;
use crate::frame::Frame;
use crate::gpu::{AccelTimes, Accelerator, GpuError};

/// How the accelerator runs the encoder and the Q-Former.
enum Models {
    /// Our kernels over the lowered graphs ([`crate::gpu::graph`]): everything stays on the GPU
    /// from the frame to the embeddings; int8 bundles run their linear layers in int8.
    Ours {
        enc: Box<GraphExec>,
        qf: Option<Box<GraphExec>>,
    },
    /// tract (tract-cuda on the GPU, or tract on the CPU) from the host tensor.
    Tract {
        engine: Box<TractEngine>,
        on_gpu: bool,
        input: Vec<f32>,
    },
}

/// Which engine runs the models: `$EDGEFUSE_GPU_MODELS` = `ours` (default), `tract-cuda` or
/// `cpu`. Until measured on the target, `ours` is the default: it is the only path that keeps
/// int8 bundles in int8 and works on JetPack 5; `scripts/gpu-check` times each.
fn models_choice() -> String {
    std::env::var("EDGEFUSE_GPU_MODELS").unwrap_or_else(|_| "ours".into())
}

/// The CUDA accelerator: fused preprocessing on the GPU, then the encoder and Q-Former on our
/// kernels (or tract-cuda / the CPU: `$EDGEFUSE_GPU_MODELS`), with per-stage CUDA-event timing.
pub struct CudaAccelerator {
    gpu: Gpu,
    pre: GpuPreprocess,
    models: Models,
    events: [cudarc::driver::CudaEvent; 4],
}

impl CudaAccelerator {
    /// Open device 0 and prepare everything for `bundle`: kernels compiled (or loaded from the
    /// cache), weights uploaded, every buffer allocated.
    pub fn new(bundle: &Bundle) -> Result<Self, GpuError> {
        let mut gpu = Gpu::open(0)?;
        let pre = GpuPreprocess::new(&mut gpu, &bundle.manifest().preprocess)?;
        let choice = models_choice();
        let models = match choice.as_str() {
            "ours" => match ours(&mut gpu, bundle) {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("our GPU graph executor cannot run this bundle ({e}); trying tract");
                    tract_models(bundle, true)?
                }
            },
            "tract-cuda" => tract_models(bundle, true)?,
            "cpu" => tract_models(bundle, false)?,
            other => {
                return Err(GpuError::Unsupported(format!(
                    "EDGEFUSE_GPU_MODELS=`{other}`: use ours, tract-cuda or cpu"
                )))
            }
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
    let (enc, qf) = crate::gpu::graph::lower_bundle(bundle)?;
    let enc = Box::new(GraphExec::new(gpu, enc)?);
    let qf = match qf {
        Some(p) => Some(Box::new(GraphExec::new(gpu, p)?)),
        None => None,
    };
    Ok(Models::Ours { enc, qf })
}

fn tract_models(bundle: &Bundle, gpu: bool) -> Result<Models, GpuError> {
    let (engine, on_gpu) = if gpu {
        models_engine(bundle)?
    } else {
        cpu_engine(bundle)?
    };
    let [w, h] = bundle.manifest().preprocess.image_size;
    Ok(Models::Tract {
        engine: Box::new(engine),
        on_gpu,
        input: vec![0.0; 3 * w as usize * h as usize],
    })
}

#[cfg(any(feature = "cuda-jp6", feature = "cuda-jp7"))]
fn models_engine(bundle: &Bundle) -> Result<(TractEngine, bool), GpuError> {
    // Referencing the crate links it, which registers its `cuda` runtime with tract.
    let _ = std::any::type_name::<tract_cuda::CudaTransform>();
    use tract_onnx::tract_core::runtime::runtime_for_name;
    let rt = runtime_for_name("cuda").ok().flatten();
    let why = match rt {
        None => "tract-cuda's runtime is not registered".to_string(),
        Some(rt) => match rt.check() {
            Err(e) => format!("tract-cuda cannot start: {e:#}"),
            Ok(()) => {
                let mut b = bundle.clone();
                b.set_runtime(Some(rt));
                match TractEngine::new(&b) {
                    Ok(e) => return Ok((e, true)),
                    Err(e) => format!("tract-cuda cannot run the models: {e}"),
                }
            }
        },
    };
    log::warn!("{why}; the encoder and Q-Former run on the CPU, preprocessing on the GPU");
    cpu_engine(bundle)
}

#[cfg(not(any(feature = "cuda-jp6", feature = "cuda-jp7")))]
fn models_engine(bundle: &Bundle) -> Result<(TractEngine, bool), GpuError> {
    log::warn!("this build has no tract-cuda (JetPack 5): tract runs the models on the CPU");
    cpu_engine(bundle)
}

fn cpu_engine(bundle: &Bundle) -> Result<(TractEngine, bool), GpuError> {
    TractEngine::new(bundle)
        .map(|e| (e, false))
        .map_err(|e| GpuError::Unsupported(e.to_string()))
}

impl Accelerator for CudaAccelerator {
    fn describe(&self) -> String {
        let models = match &self.models {
            Models::Ours { enc, .. } if enc.plan().host_nodes.is_empty() => {
                "our kernels".to_string()
            }
            Models::Ours { enc, .. } => format!(
                "our kernels ({} nodes on the host)",
                enc.plan().host_nodes.len()
            ),
            Models::Tract { on_gpu: true, .. } => "tract-cuda".into(),
            Models::Tract { .. } => "the CPU (tract)".into(),
        };
        format!(
            "{}: preprocessing on our kernel, encoder and Q-Former on {models}",
            self.gpu.describe()
        )
    }

    fn run(
        &mut self,
        frame: &Frame,
        embedding: &mut [f32],
        queries: &mut [f32],
        times: &mut AccelTimes,
    ) -> Result<(), GpuError> {
        let stream = self.gpu.stream().clone();
        let rec = |e: &cudarc::driver::CudaEvent| {
            e.record(&stream).map_err(driver_err("recording an event"))
        };
        let t0 = Instant::now();
        match &mut self.models {
            Models::Ours { enc, qf } => {
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
                self.gpu.synchronize()?;
                let ms = |a: usize, b: usize| {
                    self.events[a]
                        .elapsed_ms(&self.events[b])
                        .map(|v| std::time::Duration::from_secs_f64(f64::from(v.max(0.0)) / 1e3))
                        .unwrap_or_default()
                };
                *times = [ms(0, 1), ms(1, 2), ms(2, 3)];
            }
            Models::Tract { engine, input, .. } => {
                self.pre.run(frame, input)?;
                let t1 = Instant::now();
                let model_err = |e: crate::engine::EngineError| GpuError::Driver {
                    what: "running the models".into(),
                    message: e.to_string(),
                };
                engine.run_encoder(input, embedding).map_err(model_err)?;
                let t2 = Instant::now();
                if engine.has_qformer() {
                    engine.run_qformer(queries).map_err(model_err)?;
                }
                *times = [t1 - t0, t2 - t1, t2.elapsed()];
            }
        }
        Ok(())
    }
}
