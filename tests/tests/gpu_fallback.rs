//! The pipeline's GPU fallback, checked without a GPU: a backend that fails on its fourth frame
//! (as a lost device or a launch error would) must move the run to the CPU, log once, never be
//! called again and lose no frame; every frame's result equals the CPU-only run's.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use edgefuse_models::Bundle;
use edgefuse_runtime::backend::{Backend, BackendError, CpuBackend, ModelTimes};
use edgefuse_runtime::capture;
use edgefuse_runtime::frame::Frame;
use edgefuse_runtime::gpu::{DeviceChoice, GpuError};
use edgefuse_runtime::pipeline::{Pipeline, PipelineConfig, RunLimits};
use edgefuse_runtime::trigger::Trigger;
use edgefuse_tests::{default_bundle, samples};

/// Computes exactly what the CPU backend computes, then fails on call `fail_at` (0-based).
struct FlakyDevice {
    cpu: CpuBackend,
    calls: Arc<AtomicUsize>,
    fail_at: usize,
}

impl Backend for FlakyDevice {
    fn describe(&self) -> String {
        "flaky test device".into()
    }

    fn run(
        &mut self,
        frame: &Frame,
        embedding: &mut [f32],
        queries: &mut [f32],
        times: &mut ModelTimes,
    ) -> Result<(), BackendError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n == self.fail_at {
            // Half-written outputs, as a device dying mid-frame leaves them.
            embedding.fill(f32::NAN);
            return Err(BackendError::device(GpuError::Driver {
                what: "launching ef_linear_f32".into(),
                message: "CUDA_ERROR_LAUNCH_FAILED".into(),
            }));
        }
        self.cpu.run(frame, embedding, queries, times)
    }
}

/// `(seq, top label, top probability)` of every classified frame, and what each frame's
/// result said of fallbacks so far.
fn classify(pipeline: &mut Pipeline, frames: u64) -> (Vec<(u64, u16, f32)>, Vec<u32>) {
    let uri = format!("file://{}", samples("mnist").display());
    let mut source = capture::open(&uri).unwrap();
    let mut out = Vec::new();
    let mut fallbacks = Vec::new();
    let (summary, result) = pipeline.run(
        source.as_mut(),
        &mut Trigger::Continuous,
        RunLimits {
            max_frames: Some(frames),
            warmup: 0,
        },
        &AtomicBool::new(false),
        |r| {
            let (label, p) = *r.top.first().expect("a label");
            out.push((r.frame.seq, label, p));
            fallbacks.push(r.fallbacks);
            Ok(())
        },
    );
    result.unwrap();
    assert_eq!(summary.frames, frames);
    assert_eq!(summary.broken, 0);
    (out, fallbacks)
}

#[test]
fn backend_failure_moves_the_run_to_the_cpu_without_losing_a_frame() {
    let bundle = Bundle::open(default_bundle()).unwrap();
    let cfg = PipelineConfig {
        device: DeviceChoice::Cpu,
        ..Default::default()
    };
    let frames = 10;
    let mut cpu = Pipeline::new(&bundle, cfg.clone()).unwrap();
    assert!(cpu.device().starts_with("cpu (plan, "), "{}", cpu.device());
    let (want, cpu_fallbacks) = classify(&mut cpu, frames);
    assert!(cpu_fallbacks.iter().all(|&f| f == 0), "{cpu_fallbacks:?}");

    let calls = Arc::new(AtomicUsize::new(0));
    let flaky = FlakyDevice {
        cpu: CpuBackend::new(&bundle).unwrap(),
        calls: calls.clone(),
        fail_at: 3,
    };
    let mut p = Pipeline::new(&bundle, cfg)
        .unwrap()
        .with_backend(Box::new(flaky));
    assert_eq!(p.device(), "flaky test device");
    let (got, fallbacks) = classify(&mut p, frames);

    // Frames 0-2 on the device, frame 3 failed there and was redone on the CPU, 4-9 on the CPU.
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "called again after failing"
    );
    assert_eq!(p.fallbacks(), 1);
    // Each frame's result says so from the frame that moved on.
    assert_eq!(fallbacks, [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]);
    assert!(p.device().starts_with("cpu (plan, "), "{}", p.device());
    assert_eq!(got, want, "results differ from the CPU-only run");
    assert!(p.embedding().iter().all(|v| v.is_finite()));
}

#[test]
fn auto_runs_on_the_cpu_when_no_gpu_is_usable_and_cuda_refuses() {
    let bundle = Bundle::open(default_bundle()).unwrap();
    let Err(reason) = edgefuse_runtime::gpu::probe() else {
        println!("skipped: a usable GPU is present; the GPU path is covered by gpu_parity");
        return;
    };
    let auto = Pipeline::new(
        &bundle,
        PipelineConfig {
            device: DeviceChoice::Auto,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        auto.device().starts_with("cpu (plan, "),
        "{}",
        auto.device()
    );
    let err = Pipeline::new(
        &bundle,
        PipelineConfig {
            device: DeviceChoice::Cuda,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.to_string(), reason.to_string());
    println!("no usable GPU here: {reason}");
}
