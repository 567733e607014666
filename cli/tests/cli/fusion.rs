//! `fit` and `eval` end to end on the default bundle and an int8 bundle, their bad input, and a
//! label change dropping the fitted parameters.

use std::path::Path;

use crate::{copy_default_bundle, repo, Run};

fn samples() -> String {
    format!("file://{}", repo().join("models/samples/mnist").display())
}

/// Fit on the first `per` frames of each label with `--method auto`, then eval on `per` others;
/// every head and method shows up (and the re-ranker after each), the fitted bundle runs with
/// the re-ranker.
fn fit_and_eval(model: &str, out: &Path, per: &str) -> String {
    let o = out.to_str().unwrap();
    let r = Run::new(&[
        "fit",
        "--model",
        model,
        "--source",
        &samples(),
        "--per-label",
        per,
        "--out",
        o,
    ]);
    r.code(0);
    let s = r.stdout();
    for needle in [
        "fitted bundle:",
        "head   adapter",
        "fusion stacking",
        "fusion concat",
    ] {
        assert!(s.contains(needle), "{needle}\n{}", r.context());
    }
    let r = Run::new(&[
        "eval",
        "--model",
        o,
        "--source",
        &samples(),
        "--skip-per-label",
        per,
        "--per-label",
        per,
    ]);
    r.code(0);
    let t = r.stdout();
    for needle in [
        "head    clip",
        "head    qformer",
        "head    adapter",
        "fusion  weighted_logits",
        "fusion  voting",
        "fusion  learned_weights",
        "fusion  stacking",
        "fusion  gated",
        "fusion  concat",
        // The bundle's image-text-matching re-ranker after each method (int8 bundles carry it).
        "rerank  weighted_logits + itm top-3",
        "rerank  concat + itm top-3",
        "* the bundle's method",
        &format!("skipping the first {per} of each label"),
    ] {
        assert!(t.contains(needle), "{needle}\n{}", r.context());
    }
    let r = Run::new(&["run", "--model", o, "--frames", "3", "--json", "--rerank"]);
    r.code(0);
    assert_eq!(r.stdout().lines().count(), 3, "{}", r.context());
    t
}

#[test]
fn fit_and_eval_on_the_default_and_an_int8_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    native_only!(
        "40 frames through the model per bundle; the fitting code's unit tests run under qemu"
    );
    // Debug builds run the model at ~50-100 ms a frame: 2 frames of each label to fit, 2 to
    // measure.
    let per = "2";
    let default = repo().join("models/default");
    let t = fit_and_eval(default.to_str().unwrap(), &tmp.path().join("fitted"), per);
    println!("{t}");
    // int8: a quick calibration (8 frames), then the same.
    let int8 = tmp.path().join("int8");
    Run::new(&[
        "calibrate",
        "--source",
        &samples(),
        "--frames",
        "8",
        "--eval-frames",
        "1",
        "--out",
        int8.to_str().unwrap(),
    ])
    .code(0);
    let t = fit_and_eval(int8.to_str().unwrap(), &tmp.path().join("int8-fitted"), per);
    assert!(t.contains("(int8)"), "{t}");
}

#[test]
fn fit_and_eval_refuse_bad_input_and_a_label_change_drops_the_fit() {
    native_only!("bad-input messages");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    // A folder without labels.csv.
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    let src = repo().join("models/samples/mnist");
    for f in ["mnist_00000.png", "mnist_00001.png", "mnist_00002.png"] {
        std::fs::copy(src.join(f), bare.join(f)).unwrap();
    }
    let bare_uri = format!("file://{}", bare.display());
    for cmd in ["fit", "eval"] {
        let mut args = vec![cmd, "--source", &bare_uri];
        if cmd == "fit" {
            args.extend(["--out", o]);
        }
        Run::new(&args)
            .code(2)
            .stderr_has(&["has no labels.csv", "file,label"]);
    }
    // Labels the bundle does not have.
    std::fs::write(
        bare.join("labels.csv"),
        "file,label\nmnist_00000.png,7\nmnist_00001.png,cat\nmnist_00002.png,cat\n",
    )
    .unwrap();
    Run::new(&["fit", "--source", &bare_uri, "--out", o])
        .code(2)
        .stderr_has(&[
            "labels the bundle does not have: `cat` (2 frames)",
            "--ignore-label",
        ]);
    // Ignoring them leaves too few frames: every label needs frames, named with its count.
    Run::new(&[
        "fit",
        "--source",
        &bare_uri,
        "--ignore-label",
        "cat",
        "--out",
        o,
    ])
    .code(2)
    .stderr_has(&[
        "fitting needs at least 1 labelled frame(s) per label",
        "`0` (0 frames)",
    ]);
    // One frame per label: the meta-classifiers need two (cross-validation), named.
    Run::new(&[
        "fit",
        "--source",
        &samples(),
        "--per-label",
        "1",
        "--method",
        "stacking",
        "--out",
        o,
    ])
    .code(2)
    .stderr_has(&["stacking needs at least 2", "`0` (1 frame)"]);
    Run::new(&[
        "fit",
        "--source",
        &samples(),
        "--method",
        "median",
        "--out",
        o,
    ])
    .code(2)
    .stderr_has(&["--method median: unknown", "stacking"]);
    assert!(!out.exists(), "nothing written after a refused fit");

    // A fitted copy of the default bundle; `labels remove` drops the fit and says so.
    let bundle = tmp.path().join("bundle");
    copy_default_bundle(&bundle);
    let b = bundle.to_str().unwrap();
    Run::new(&[
        "fit",
        "--model",
        b,
        "--source",
        &samples(),
        "--per-label",
        "2",
        "--method",
        "stacking",
        "--out",
        o,
    ])
    .code(0);
    Run::new(&["fit", "--source", &samples(), "--out", o])
        .code(2)
        .stderr_has(&["already exists"]);
    let r = Run::new(&["labels", "remove", "--label", "9", "--model", o]);
    r.code(0);
    assert!(
        r.stdout()
            .contains("fitted for the old labels and are removed")
            && r.stdout().contains("stacking -> weighted_logits"),
        "{}",
        r.context()
    );
    let m = std::fs::read_to_string(out.join("bundle.toml")).unwrap();
    assert!(!m.contains("fusion_fitted"), "{m}");
    Run::new(&["run", "--model", o, "--frames", "2"]).code(0);
}
