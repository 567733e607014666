//! `run` and `bench` end to end on the bundled samples: accuracy, the documented output, the
//! decision flags.

use crate::*;

#[test]
fn run_on_bundled_mnist_samples_matches_ground_truth() {
    let dir = repo().join("models/samples/mnist");
    let uri = format!("file://{}", dir.display());
    let truth = ground_truth(&dir);
    if emulated() {
        let r = Run::new(&["run", "--source", &uri, "--json", "--frames", "10"]);
        assert_eq!(r.code(0).json_lines().len(), 10, "{}", r.context());
        r.stderr_has(&["summary: 10 frames classified"]);
        println!("emulated: 10-frame smoke run; the 300-frame accuracy run is the native test's");
        return;
    }
    let r = Run::new(&["run", "--source", &uri, "--json"]);
    r.code(0);
    let lines: Vec<String> = r.stdout().lines().map(str::to_string).collect();
    assert_eq!(
        lines.len(),
        truth.len(),
        "one JSON line per image\n{}",
        r.context()
    );
    let correct = lines
        .iter()
        .map(|l| top1_of(l))
        .filter(|(f, l)| truth.get(f) == Some(l))
        .count();
    let acc = correct as f64 / lines.len() as f64;
    println!(
        "bundled MNIST samples: top-1 {correct}/{} = {:.1}%",
        lines.len(),
        acc * 100.0
    );
    assert!(
        acc >= 0.95,
        "top-1 {acc} on the bundled samples\n{}",
        r.context()
    );
    // The summary goes to stderr in JSON mode; labels.csv is expected there, not a skipped file.
    r.stderr_has(&[
        "summary: 300 frames classified",
        "0 files skipped as non-images",
    ]);
    // Every line has the documented fields.
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    for k in [
        "frame",
        "source",
        "top",
        "time_unix_ms",
        "event",
        "heads",
        "latency_ms",
    ] {
        assert!(v.get(k).is_some(), "missing `{k}` in {}", lines[0]);
    }
    assert!(v["latency_ms"]["encoder"].as_f64().unwrap() > 0.0);
}

#[test]
fn run_on_camera_sequence_finds_the_digits() {
    native_only!("the camera-sequence accuracy run");
    let dir = repo().join("models/samples/camera");
    let uri = format!("file://{}", dir.display());
    let r = Run::new(&["run", "--source", &uri, "--json", "--top-k", "1"]);
    r.code(0);
    let truth = ground_truth(&dir);
    let mut digit_frames = 0;
    let mut correct = 0;
    for line in r.stdout().lines() {
        let (f, l) = top1_of(line);
        let want = &truth[&f];
        if want != "none" {
            digit_frames += 1;
            correct += (want == &l) as usize;
        }
    }
    println!("camera sequence: {correct}/{digit_frames} frames with a digit classified correctly");
    assert!(digit_frames >= 8);
    assert!(
        correct * 4 >= digit_frames * 3,
        "{correct}/{digit_frames}\n{}",
        r.context()
    );
}

#[test]
fn run_without_arguments_uses_bundled_model_and_samples() {
    native_only!("the default model and samples lookup");
    let r = Run::new(&["run", "--frames", "5"]);
    r.code(0);
    let out = r.stdout();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("frame")).count(),
        5,
        "{}",
        r.context()
    );
    assert!(
        out.contains("summary: 5 frames classified"),
        "{}",
        r.context()
    );
}

#[test]
fn hysteresis_flags_reach_the_decision() {
    native_only!("hysteresis flags");
    let dir = repo().join("models/samples/camera");
    let uri = format!("file://{}", dir.display());
    let r = Run::new(&[
        "run",
        "--source",
        &uri,
        "--json",
        "--fire-wins",
        "2",
        "--window",
        "3",
        "--release",
        "2",
    ]);
    r.code(0);
    let fired: Vec<String> = r
        .stdout()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["event"]["label"].as_str().map(str::to_string)
        })
        .collect();
    println!("events: {fired:?}");
    // Four digits pass the camera, each in view for three frames: at most one event each.
    assert!(
        !fired.is_empty() && fired.len() <= 4,
        "{fired:?}\n{}",
        r.context()
    );
}

#[test]
fn bench_prints_the_documented_json() {
    native_only!("bench's JSON");
    let (frames, warmup) = if emulated() { ("5", "2") } else { ("30", "5") };
    let r = Run::new(&["bench", "--frames", frames, "--warmup", warmup]);
    r.code(0);
    let v: serde_json::Value =
        serde_json::from_str(r.stdout().trim()).unwrap_or_else(|e| panic!("{e}\n{}", r.context()));
    assert_eq!(v["frames"].to_string(), frames);
    for k in [
        "queue",
        "preprocess",
        "encoder",
        "qformer",
        "fusion",
        "decision",
    ] {
        assert!(
            v["stages"][k]["p50_ms"].as_f64().is_some(),
            "stage {k}\n{}",
            r.context()
        );
    }
    assert!(v["end_to_end"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(v["fps"].as_f64().unwrap() > 0.0);
    assert_eq!(
        v["allocations_per_frame"]["pipeline"].as_f64(),
        Some(0.0),
        "{}",
        r.context()
    );
    // The default engine (the plan) allocates nothing either; `other` is the rest of the process.
    assert_eq!(
        v["allocations_per_frame"]["engine"].as_f64(),
        Some(0.0),
        "{}",
        r.context()
    );
    assert!(v["allocations_per_frame"]["other"].as_f64().is_some());
    assert!(v["peak_rss_mb"].as_f64().unwrap() > 1.0);
}
