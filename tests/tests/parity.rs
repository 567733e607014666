//! tract vs onnxruntime on the bundled model: the same inputs must give the same outputs
//! (max abs diff <= 1e-4). The reference was produced by `models/train/export_bundle.py`.

use edgefuse_models::Bundle;
use edgefuse_runtime::engine::{Inference, TractEngine};
use edgefuse_tests::{default_bundle, fixture};

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tract_matches_onnxruntime_on_encoder_and_qformer() {
    let text = std::fs::read_to_string(fixture("ort_reference.json")).expect("fixture");
    let fx: serde_json::Value = serde_json::from_str(&text).expect("json");
    let bundle = Bundle::open(default_bundle()).expect("bundle");
    let mut engine = TractEngine::new(&bundle).expect("engine");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 3);
    for (i, case) in cases.iter().enumerate() {
        let image = floats(&case["image"]);
        let mut emb = vec![0.0; engine.embedding_dim()];
        engine.run_encoder(&image, &mut emb).expect("encoder");
        let d = max_diff(&emb, &floats(&case["embedding"]));
        println!("case {i}: embedding max abs diff {d:.2e}");
        assert!(
            d <= 1e-4,
            "case {i}: embedding differs from onnxruntime by {d}"
        );
        let mut q = vec![0.0; engine.queries_len()];
        engine.run_qformer(&mut q).expect("qformer");
        let d = max_diff(&q, &floats(&case["queries"]));
        println!("case {i}: q-former max abs diff {d:.2e}");
        assert!(
            d <= 1e-4,
            "case {i}: q-former output differs from onnxruntime by {d}"
        );
    }
}
