//! On-device label embedding matches the Python tokenizer + text tower.

use edgefuse_models::text::LabelEmbedder;
use edgefuse_models::Bundle;
use edgefuse_tests::{default_bundle, fixture};

#[test]
fn tokenizer_and_text_tower_match_python() {
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("text_reference.json")).expect("fixture"),
    )
    .expect("json");
    let bundle = Bundle::open(default_bundle()).expect("bundle");
    let emb = LabelEmbedder::new(&bundle).expect("text tower");
    for case in fx["cases"].as_array().expect("cases") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let want: Vec<i64> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(
            emb.tokenize(prompt).expect("tokenize"),
            want,
            "tokens of {prompt:?}"
        );
        let got = emb.embed(prompt).expect("embed");
        let reference: Vec<f32> = case["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let dot: f32 = got.iter().zip(&reference).map(|(a, b)| a * b).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (n(&got) * n(&reference));
        println!("{prompt:?}: cosine {cos:.6}");
        assert!(cos >= 0.9999, "{prompt:?}: cosine {cos}");
    }
}

#[test]
fn empty_and_overlong_prompts_are_refused_with_the_limit() {
    let bundle = Bundle::open(default_bundle()).expect("bundle");
    let emb = LabelEmbedder::new(&bundle).expect("text tower");
    let e = emb.tokenize("   ").unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let long = "a very long description of a handwritten digit that goes on and on and on";
    let e = emb.tokenize(long).unwrap_err().to_string();
    assert!(e.contains("at most 16"), "{e}");
}
