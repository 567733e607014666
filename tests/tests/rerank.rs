//! The image-text-matching re-ranker (`[rerank]`, `edgefuse_runtime::rerank`): the CPU plan
//! reproduces tract on it at every thread count, it changes only the shortlist, the pipeline
//! runs it when asked (it is opt-in), and a broken re-ranker is reported naming the file and
//! field.

use std::sync::Arc;

use edgefuse_models::{sha256_hex, Bundle};
use edgefuse_runtime::capture;
use edgefuse_runtime::frame::Frame;
use edgefuse_runtime::fusion::{top_k, FusionHead, TopK};
use edgefuse_runtime::pipeline::{Pipeline, PipelineConfig};
use edgefuse_runtime::plan::Pool;
use edgefuse_runtime::rerank::Reranker;
use edgefuse_tests::{copy_bundle, default_bundle, edit_manifest, samples};

/// Frames to compare: qemu (`EDGEFUSE_TEST_EMULATED`) runs the models ~50× slower.
fn frames(native: usize) -> usize {
    if std::env::var_os("EDGEFUSE_TEST_EMULATED").is_some() {
        4
    } else {
        native
    }
}

/// Embeddings and queries of the first `n` bundled MNIST samples, through the pipeline.
fn outputs(bundle: &Bundle, n: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
    let cfg = PipelineConfig {
        rerank: false,
        ..Default::default()
    };
    let mut p = Pipeline::new(bundle, cfg).unwrap();
    let uri = format!("file://{}", samples("mnist").display());
    let mut src = capture::open(&uri).unwrap();
    let mut frame = Frame::with_capacity(src.max_frame_bytes());
    let mut v = Vec::new();
    while v.len() < n && src.next_frame(&mut frame).unwrap() {
        p.process(&frame)
            .unwrap()
            .expect("sample frames are readable");
        v.push((p.embedding().to_vec(), p.queries().to_vec()));
    }
    assert_eq!(v.len(), n);
    v
}

#[test]
fn the_default_bundle_has_a_reranker_and_the_plan_matches_tract() {
    let bundle = Bundle::open(default_bundle()).unwrap();
    let r = bundle
        .manifest()
        .rerank
        .as_ref()
        .expect("the default bundle ships itm.onnx");
    assert_eq!(bundle.rerank_candidates(), Some(r.top_k));
    let frames = outputs(&bundle, frames(24));
    let mut tract = Reranker::new(&bundle, None).unwrap().unwrap();
    assert_eq!(tract.engine(), "tract");
    let mut plans: Vec<Reranker> = [1, 3]
        .into_iter()
        .map(|t| {
            let pool = Arc::new(Pool::new(t).unwrap());
            Reranker::new(&bundle, Some(pool)).unwrap().unwrap()
        })
        .collect();
    assert!(plans.iter().all(|p| p.engine() == "plan"));
    assert_eq!(
        plans[0].describe(),
        format!("{}, top {}, plan", r.model.file, r.top_k)
    );
    let mut head = FusionHead::from_bundle(&bundle, true);
    let mut worst = 0f32;
    let mut changed = 0;
    for (e, q) in &frames {
        let mut t = TopK::new();
        head.run(e, Some(q), 3, &mut t);
        let fused = head.probabilities().to_vec();
        tract.run(&mut head, q).unwrap();
        let reference = tract.matches().to_vec();
        let after = head.probabilities().to_vec();
        // Outside the shortlist nothing moves; the total stays 1.
        let short: Vec<usize> = tract.shortlist().iter().map(|x| usize::from(x.0)).collect();
        assert_eq!(short.len(), r.top_k);
        for (i, (a, b)) in after.iter().zip(&fused).enumerate() {
            if !short.contains(&i) {
                assert_eq!(a, b, "label {i} is outside the shortlist");
            }
        }
        assert!((after.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let mut top_after = TopK::new();
        top_k(&after, 1, &mut top_after);
        changed += usize::from(top_after[0].0 != t[0].0);
        for p in &mut plans {
            head.run(e, Some(q), 3, &mut t);
            p.run(&mut head, q).unwrap();
            for (a, b) in p.matches().iter().zip(&reference) {
                worst = worst.max((a - b).abs() / b.abs().max(1.0));
            }
        }
        assert_eq!(plans[0].matches(), plans[1].matches(), "1 vs 3 threads");
    }
    println!(
        "re-ranker over {} frames: plan vs tract worst relative difference {worst:.2e}; top-1 changed on {changed}",
        frames.len()
    );
    assert!(worst <= 1e-4, "plan vs tract: {worst}");
}

#[test]
fn the_pipeline_reranks_when_asked() {
    assert!(!PipelineConfig::default().rerank, "opt-in");
    let bundle = Bundle::open(default_bundle()).unwrap();
    let mut p = Pipeline::new(
        &bundle,
        PipelineConfig {
            rerank: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(p.reranker().is_some());
    // The pipeline's probabilities equal the fusion of its own embeddings followed by the
    // re-ranker.
    let uri = format!("file://{}", samples("mnist").display());
    let mut src = capture::open(&uri).unwrap();
    let mut frame = Frame::with_capacity(src.max_frame_bytes());
    let mut head = FusionHead::from_bundle(&bundle, true);
    let pool = Arc::new(Pool::new(1).unwrap());
    let mut r = Reranker::new(&bundle, Some(pool)).unwrap().unwrap();
    for _ in 0..frames(8) {
        assert!(src.next_frame(&mut frame).unwrap());
        p.process(&frame).unwrap().unwrap();
        let mut t = TopK::new();
        head.run(p.embedding(), Some(p.queries()), 3, &mut t);
        r.run(&mut head, p.queries()).unwrap();
        for (a, b) in p.probabilities().iter().zip(head.probabilities()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}

#[test]
fn one_label_leaves_nothing_to_rerank() {
    let d = copy_bundle();
    let mut b = Bundle::open(d.path()).unwrap();
    let labels = b.manifest().labels[..1].to_vec();
    let rows = b.label_embeddings()[..b.manifest().encoder.embedding_dim].to_vec();
    b.write_labels(labels, &rows).unwrap();
    let b = Bundle::open(d.path()).unwrap();
    assert_eq!(b.rerank_candidates(), None);
    assert!(Reranker::new(&b, None).unwrap().is_none());
}

fn rerank_err(dir: &std::path::Path) -> String {
    match Bundle::open(dir) {
        Err(e) => e.to_string(),
        Ok(b) => match Reranker::new(&b, None) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("the re-ranker in {} unexpectedly loaded", dir.display()),
        },
    }
}

#[test]
fn a_missing_or_damaged_reranker_is_named() {
    let d = copy_bundle();
    std::fs::remove_file(d.path().join("itm.onnx")).unwrap();
    let e = rerank_err(d.path());
    assert!(e.contains("itm.onnx") && e.contains("rerank.file"), "{e}");

    let d = copy_bundle();
    let mut bytes = std::fs::read(d.path().join("itm.onnx")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x5a;
    std::fs::write(d.path().join("itm.onnx"), &bytes).unwrap();
    let e = rerank_err(d.path());
    assert!(e.contains("itm.onnx") && e.contains("sha256"), "{e}");

    // Not a model at all, with a matching checksum.
    let d = copy_bundle();
    let old = sha256_hex(&std::fs::read(d.path().join("itm.onnx")).unwrap());
    let junk = b"not an onnx model";
    std::fs::write(d.path().join("itm.onnx"), junk).unwrap();
    edit_manifest(d.path(), |t| t.replace(&old, &sha256_hex(junk)));
    let e = rerank_err(d.path());
    assert!(e.contains("itm.onnx") && e.contains("rerank.file"), "{e}");

    // Another model of the bundle in its place: the input does not fit.
    let d = copy_bundle();
    let q = std::fs::read(d.path().join("qformer.onnx")).unwrap();
    std::fs::write(d.path().join("itm.onnx"), &q).unwrap();
    edit_manifest(d.path(), |t| {
        t.replace(&old, &sha256_hex(&q))
            .replace("input = \"pairs\"", "input = \"tokens\"")
    });
    let e = rerank_err(d.path());
    assert!(e.contains("itm.onnx") && e.contains("rerank"), "{e}");
}
