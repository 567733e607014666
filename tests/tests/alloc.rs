//! Zero heap allocations per frame in our code: capture, ring, trigger, preprocessing, fusion,
//! decision and event emission, for synthetic and file sources. Allocations inside tract are
//! counted separately and reported, not asserted.
//!
//! This file holds one test so that no other test thread allocates while it measures.

use std::io::Write;
use std::sync::atomic::AtomicBool;

use edgefuse_models::Bundle;
use edgefuse_runtime::alloc::CountingAllocator;
use edgefuse_runtime::capture;
use edgefuse_runtime::decision::DecisionConfig;
use edgefuse_runtime::pipeline::{Pipeline, PipelineConfig, RunLimits};
use edgefuse_runtime::trigger::{Trigger, TriggerSpec};
use edgefuse_tests::{default_bundle, samples};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn emulated() -> bool {
    std::env::var_os("EDGEFUSE_TEST_EMULATED").is_some()
}

/// Frames measured per source, and warm-up frames before. Under emulation (`scripts/test-aarch64`
/// sets EDGEFUSE_TEST_EMULATED; qemu runs the model and the preprocessing ~50× slower) a short
/// run with smaller camera frames checks the aarch64 code paths; the assertion is the same exact
/// zero, and the 200-frame soak at camera resolutions is the native run's.
fn frame_counts() -> (u64, u64) {
    if emulated() {
        (12, 4)
    } else {
        (200, 20)
    }
}

fn measure(bundle: &Bundle, uri: &str, trigger: TriggerSpec) -> (u64, u64, u64) {
    let (frames, warmup) = frame_counts();
    let cfg = PipelineConfig {
        top_k: 3,
        decision: DecisionConfig {
            threshold: 0.3,
            fire_wins: 1,
            window: 2,
            release_losses: 1,
            ..Default::default()
        },
        ring_slots: 4,
        device: edgefuse_runtime::gpu::DeviceChoice::Cpu,
    };
    let mut pipeline = Pipeline::new(bundle, cfg).expect("pipeline");
    let mut source = capture::open(uri).expect("source");
    let mut trigger = Trigger::new(&trigger, None).expect("trigger");
    let stop = AtomicBool::new(false);
    // Event emission into a preallocated buffer, formatted like the CLI's output.
    let mut out = vec![0u8; 1 << 16];
    let mut events = 0u64;
    let labels: Vec<String> = pipeline.labels().to_vec();
    let limits = RunLimits {
        max_frames: Some(frames),
        warmup,
    };
    let (summary, result) = pipeline.run(source.as_mut(), &mut trigger, limits, &stop, |r| {
        let mut cur = std::io::Cursor::new(&mut out[..]);
        write!(
            cur,
            "{{\"frame\":{},\"source\":\"{}\",\"top\":[",
            r.frame.seq, r.frame.source
        )?;
        for (l, p) in r.top.iter() {
            write!(cur, "[\"{}\",{p:.4}],", labels[*l as usize])?;
        }
        for e in r.events.iter() {
            events += 1;
            write!(
                cur,
                "{{\"event\":\"{}\",\"score\":{:.4}}}",
                labels[e.label as usize], e.score
            )?;
        }
        write!(cur, "\"latency\":{:.3}}}", r.times.ms(6))?;
        Ok(())
    });
    result.expect("run");
    assert_eq!(
        summary.frames, frames,
        "{uri}: every frame after warm-up classified"
    );
    assert!(events > 0, "{uri}: the decision emitted events");
    (summary.frames, summary.allocations.0, summary.allocations.1)
}

#[test]
fn no_allocation_per_frame_in_the_pipeline() {
    let bundle = Bundle::open(default_bundle()).expect("bundle");
    let (frames, warmup) = frame_counts();
    let n = frames + warmup;
    let ((w1, h1), (w2, h2)) = if emulated() {
        ((160, 120), (320, 180))
    } else {
        ((640, 480), (1280, 720))
    };
    let cases = [
        (
            format!("synthetic://?width={w1}&height={h1}&format=yuyv&frames={n}"),
            TriggerSpec::Continuous,
        ),
        (
            format!("synthetic://?width={w2}&height={h2}&format=nv12&frames={n}"),
            TriggerSpec::Continuous,
        ),
        (
            format!("file://{}?loop", samples("mnist").display()),
            TriggerSpec::Continuous,
        ),
        (
            format!("file://{}?loop", samples("camera").display()),
            TriggerSpec::Motion {
                threshold: 0.0,
                area: 0.0,
            },
        ),
    ];
    for (uri, trigger) in cases {
        let (frames, ours, engine) = measure(&bundle, &uri, trigger);
        println!(
            "{uri}: {frames} frames, pipeline allocations {ours} ({:.2}/frame), engine (tract) allocations {engine} ({:.1}/frame)",
            ours as f64 / frames as f64,
            engine as f64 / frames as f64
        );
        assert_eq!(
            ours, 0,
            "{uri}: our pipeline allocated {ours} times in {frames} frames"
        );
        assert!(
            engine > 0,
            "the counter sees tract's allocations, so a zero above is meaningful"
        );
    }
}
