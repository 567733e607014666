//! The GPU execution plan, checked without a GPU: the bundle's encoder and Q-Former graphs
//! lowered to kernel steps (`edgefuse_runtime::gpu::graph`) and executed with the steps' CPU
//! definitions must reproduce tract's outputs, in float and in int8. The CUDA executor runs the
//! same steps with kernels that `gpu_parity` checks against the same definitions.

use edgefuse_calibration as calibrate;
use edgefuse_models::Bundle;
use edgefuse_runtime::capture::{self, synthetic::render};
use edgefuse_runtime::engine::TractEngine;
use edgefuse_runtime::frame::PixelFormat;
use edgefuse_runtime::gpu::graph::{lower_bundle, run_cpu, Step};
use edgefuse_runtime::preprocess::Preprocessor;
use edgefuse_tests::{default_bundle, samples};

fn emulated() -> bool {
    std::env::var_os("EDGEFUSE_TEST_EMULATED").is_some()
}

fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    (d, m)
}

fn check(bundle: &Bundle, what: &str, tol: f32) {
    let (enc, qf) = lower_bundle(bundle).unwrap();
    let qf = qf.expect("the default bundle has a Q-Former");
    let count = |p: &edgefuse_runtime::gpu::graph::Plan, f: fn(&Step) -> bool| {
        p.steps.iter().filter(|s| f(s)).count()
    };
    println!(
        "{what}: encoder {} steps ({} matmul of which {} linear-layout, {} int8, {} conv), q-former {} steps; host nodes: {:?} / {:?}",
        enc.steps.len(),
        count(&enc, |s| matches!(s, Step::MatMul { .. })),
        count(&enc, |s| matches!(s, Step::MatMul { shape, .. } if shape.is_linear())),
        count(&enc, |s| matches!(s, Step::Int8Linear { .. })),
        count(&enc, |s| matches!(s, Step::Conv { .. })),
        qf.steps.len(),
        enc.host_nodes,
        qf.host_nodes
    );
    assert!(enc.host_nodes.is_empty(), "encoder nodes left on the host");
    assert!(qf.host_nodes.is_empty(), "q-former nodes left on the host");
    let mut engine = TractEngine::new(bundle).unwrap();
    let mut pre = Preprocessor::new(&bundle.manifest().preprocess);
    let mut input = vec![0.0; pre.output_len()];
    let mut emb = vec![0.0; engine.embedding_dim()];
    let mut queries = vec![0.0; engine.queries_len()];
    let mut worst = (0f32, 0f32);
    // Fewer frames under emulation (scripts/test-aarch64): the plan's reference loops are slow.
    let frames = if emulated() { 1 } else { 4 };
    for i in 0..frames {
        let frame = render(640, 480, PixelFormat::Yuyv, i, "synthetic://");
        pre.run(&frame, &mut input).unwrap();
        engine.run_encoder(&input, &mut emb).unwrap();
        engine.run_qformer(&mut queries).unwrap();
        let outs = run_cpu(&enc, &input).unwrap();
        let (d, m) = max_diff(&outs[0], &emb);
        assert!(
            d <= tol * m.max(1.0),
            "{what} frame {i}: embedding differs by {d} (max {m})"
        );
        worst.0 = worst.0.max(d);
        let q = run_cpu(&qf, &outs[1]).unwrap();
        let (d, m) = max_diff(&q[0], &queries);
        assert!(
            d <= tol * m.max(1.0),
            "{what} frame {i}: q-former differs by {d} (max {m})"
        );
        worst.1 = worst.1.max(d);
    }
    println!(
        "{what}: max |plan - tract| embedding {:.2e}, queries {:.2e}",
        worst.0, worst.1
    );
}

#[test]
fn float_plan_reproduces_tract() {
    check(&Bundle::open(default_bundle()).unwrap(), "float", 1e-4);
}

#[test]
fn int8_plan_reproduces_tract_int8() {
    let float = Bundle::open(default_bundle()).unwrap();
    let uri = format!("file://{}", samples("mnist").display());
    let mut src = capture::open(&uri).unwrap();
    let cal = calibrate::collect(
        &float,
        src.as_mut(),
        "entropy",
        if emulated() { 10 } else { 40 },
        |_| {},
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("int8");
    calibrate::stage_bundle(&float, &cal, &[], &out)
        .unwrap()
        .commit()
        .unwrap();
    let int8 = Bundle::open(&out).unwrap();
    assert!(int8.is_int8());
    // The GEMMs are exact on both sides, but float rounding outside them differs by ~1e-6, and
    // an activation sitting on a quantization boundary then rounds to the neighbouring integer:
    // one step (scale ≈ amax/127) in one input moves outputs by far more than 1e-6. Through the
    // encoder and 4 Q-Former layers that stays under 1% of the output range.
    check(&int8, "int8", 1e-2);
}
