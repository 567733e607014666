//! End-to-end tests of the `edgefuse` binary: the bundled samples classify correctly, and bad
//! input gives a clear message, the right exit code and no panic.
//!
//! Over 600 lines on purpose: one test per command or failure mode, all on the qemu-aware
//! runner and the `Run` harness at the top; each test reads on its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `edgefuse` binary under test. Cross-compiled test runs execute under qemu-user, where
/// the host kernel cannot exec a foreign binary (no binfmt): the same emulator then runs it,
/// from `$EDGEFUSE_TEST_RUNNER` (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`) or the default.
fn edgefuse_command() -> Command {
    static RUNNER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let exe = env!("CARGO_BIN_EXE_edgefuse");
    let runner = RUNNER.get_or_init(|| {
        std::env::var("EDGEFUSE_TEST_RUNNER").ok().or_else(|| {
            // Probe whether the binary runs directly. A foreign binary fails with ENOEXEC, or,
            // spawned from inside qemu-user (which turns vfork into fork), exits 127 silently.
            let runs = |cmd: &mut Command| {
                cmd.arg("--version")
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("edgefuse"))
            };
            if runs(&mut Command::new(exe)) {
                return None;
            }
            let qemu = "qemu-aarch64 -L /usr/aarch64-linux-gnu";
            let mut words = qemu.split_whitespace();
            let mut c = Command::new(words.next().unwrap());
            c.args(words).arg(exe);
            assert!(
                runs(&mut c),
                "{exe} runs neither directly nor under `{qemu}`; set EDGEFUSE_TEST_RUNNER"
            );
            Some(qemu.to_string())
        })
    });
    match runner.as_deref().map(str::split_whitespace) {
        Some(mut words) => {
            let mut c = Command::new(words.next().expect("EDGEFUSE_TEST_RUNNER is empty"));
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

/// Run edgefuse; on a failed expectation the harness prints the command, stdout and stderr.
struct Run {
    cmd: String,
    out: Output,
}

impl Run {
    fn new(args: &[&str]) -> Self {
        let out = edgefuse_command()
            .args(args)
            .env_remove("EDGEFUSE_MODEL")
            .env_remove("RUST_LOG")
            .output()
            .expect("spawn edgefuse");
        Run {
            cmd: format!("edgefuse {}", args.join(" ")),
            out,
        }
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn context(&self) -> String {
        format!(
            "command: {}\nexit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmd,
            self.out.status.code(),
            self.stdout().chars().take(4000).collect::<String>(),
            self.stderr()
        )
    }
    fn code(&self, want: i32) -> &Self {
        assert_eq!(self.out.status.code(), Some(want), "{}", self.context());
        assert!(
            !self.stderr().contains("panicked"),
            "panic!\n{}",
            self.context()
        );
        self
    }
    /// stdout parsed as one JSON object per line.
    fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}\n{}", self.context()))
            })
            .collect()
    }
    fn stderr_has(&self, needles: &[&str]) -> &Self {
        let e = self.stderr();
        for n in needles {
            assert!(e.contains(n), "stderr lacks {n:?}\n{}", self.context());
        }
        self
    }
}

/// Under emulation (`scripts/test-aarch64` sets EDGEFUSE_TEST_EMULATED; qemu runs the model ~50×
/// slower) the long end-to-end measurements shrink to a smoke run of the same command; the
/// native run measures them in full.
fn emulated() -> bool {
    std::env::var_os("EDGEFUSE_TEST_EMULATED").is_some()
}

/// Under emulation, tests of architecture-independent CLI behaviour (option parsing, config
/// files, bad input, exit codes) are left to the native run: each process start loads the
/// model under qemu. Returns true (after saying so) when the caller should skip.
fn native_only(what: &str) -> bool {
    if emulated() {
        println!(
            "skipped under emulation: {what} is architecture-independent; the native run checks it"
        );
    }
    emulated()
}

fn ground_truth(dir: &Path) -> std::collections::BTreeMap<String, String> {
    edgefuse_calibration::truth::read_labels_csv(dir).expect("labels.csv")
}

fn top1_of(line: &str) -> (String, String) {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
    let source = v["source"].as_str().unwrap().to_string();
    let file = Path::new(&source)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    (file, v["top"][0][0].as_str().unwrap().to_string())
}

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
    // The summary goes to stderr in JSON mode and counts the skipped labels.csv.
    r.stderr_has(&[
        "summary: 300 frames classified",
        "1 files skipped as non-images",
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
    if native_only("the camera-sequence accuracy run") {
        return;
    }
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
    if native_only("the default model and samples lookup") {
        return;
    }
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
    if native_only("hysteresis flags") {
        return;
    }
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
    assert!(v["allocations_per_frame"]["engine"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_mb"].as_f64().unwrap() > 1.0);
}

#[test]
fn info_describes_the_bundle() {
    let r = Run::new(&["info"]);
    r.code(0);
    let out = r.stdout();
    for n in [
        "edgefuse-mnist-clip",
        "q-former",
        "labels      10",
        "cpu: tract",
    ] {
        assert!(out.contains(n), "lacks {n:?}\n{}", r.context());
    }
}

#[test]
fn labels_list_add_remove_roundtrip() {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(repo().join("models/default")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    let m = tmp.path().to_str().unwrap();
    Run::new(&[
        "labels",
        "add",
        "--model",
        m,
        "--label",
        "blank",
        "an empty sheet of paper",
        "a blank page",
    ])
    .code(0);
    let r = Run::new(&["labels", "list", "--model", m]);
    r.code(0);
    assert!(
        r.stdout()
            .contains("blank\tan empty sheet of paper | a blank page"),
        "{}",
        r.context()
    );
    // The modified bundle still validates and runs.
    Run::new(&["run", "--model", m, "--frames", "2"]).code(0);
    Run::new(&["labels", "remove", "--model", m, "--label", "blank"]).code(0);
    let r = Run::new(&["labels", "list", "--model", m]);
    assert_eq!(r.stdout().lines().count(), 10, "{}", r.context());
    Run::new(&["labels", "remove", "--model", m, "--label", "nope"])
        .code(2)
        .stderr_has(&["no label `nope`"]);
    Run::new(&["labels", "add", "--model", m, "--label", "x", ""])
        .code(1)
        .stderr_has(&["empty"]);
    Run::new(&[
        "labels",
        "add",
        "--model",
        m,
        "--label",
        "x",
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen",
    ])
    .code(1)
    .stderr_has(&["at most 16"]);
}

// ---- bad input --------------------------------------------------------------------------------

#[test]
fn unknown_uri_scheme_is_a_usage_error() {
    if native_only("URI scheme errors") {
        return;
    }
    Run::new(&["run", "--source", "rtsp://camera.local/stream"])
        .code(2)
        .stderr_has(&["rtsp://camera.local/stream", "v4l2://"]);
    Run::new(&["run", "--source", "/dev/video0"])
        .code(2)
        .stderr_has(&["unknown source URI"]);
}

#[test]
fn unsupported_pixel_format_is_a_usage_error() {
    if native_only("pixel format errors") {
        return;
    }
    Run::new(&[
        "run",
        "--source",
        "synthetic://?format=bayer",
        "--frames",
        "1",
    ])
    .code(2)
    .stderr_has(&["format=bayer", "yuyv"]);
}

#[test]
fn missing_camera_is_a_clear_error() {
    if native_only("the missing-camera error") {
        return;
    }
    Run::new(&["run", "--source", "v4l2:///dev/video99"])
        .code(1)
        .stderr_has(&["/dev/video99"]);
}

#[test]
fn missing_model_folder_is_a_clear_error() {
    if native_only("the missing-model error") {
        return;
    }
    Run::new(&["run", "--model", "/nonexistent/bundle"])
        .code(1)
        .stderr_has(&["/nonexistent/bundle", "bundle.toml"]);
}

#[test]
fn truncated_and_non_image_files_are_skipped_by_name() {
    if native_only("skipping broken files") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = repo().join("models/samples/mnist");
    std::fs::copy(src.join("mnist_00000.png"), tmp.path().join("a.png")).unwrap();
    std::fs::copy(src.join("mnist_00001.png"), tmp.path().join("c.png")).unwrap();
    let bytes = std::fs::read(src.join("mnist_00002.png")).unwrap();
    std::fs::write(tmp.path().join("b.png"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "hello").unwrap();
    std::fs::write(tmp.path().join("d.jpg"), "not a jpeg").unwrap();
    let uri = format!("file://{}", tmp.path().display());
    let r = Run::new(&["run", "--source", &uri, "--json"]);
    r.code(0).stderr_has(&[
        "b.png",
        "d.jpg",
        "notes.txt",
        "2 images undecodable",
        "1 files skipped",
    ]);
    assert_eq!(r.stdout().lines().count(), 2, "{}", r.context());
}

#[test]
fn folder_of_only_broken_images_fails() {
    if native_only("a folder of broken images") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("x.png"), "garbage").unwrap();
    let uri = format!("file://{}", tmp.path().display());
    Run::new(&["run", "--source", &uri])
        .code(1)
        .stderr_has(&["x.png", "could be decoded"]);
}

#[test]
fn bad_flags_are_usage_errors() {
    if native_only("flag validation") {
        return;
    }
    Run::new(&["run", "--top-k", "0"]).code(2);
    Run::new(&["run", "--threshold", "1.5"])
        .code(2)
        .stderr_has(&["between 0 and 1"]);
    Run::new(&["run", "--trigger", "sometimes"])
        .code(2)
        .stderr_has(&["unknown trigger"]);
    Run::new(&["run", "--fire-wins", "3", "--window", "2"])
        .code(2)
        .stderr_has(&["--fire-wins"]);
    Run::new(&["run", "--label-threshold", "eleven=0.5"])
        .code(2)
        .stderr_has(&["no label `eleven`"]);
    Run::new(&["frobnicate"]).code(2);
}

#[test]
fn config_file_sets_options_and_the_command_line_overrides_it() {
    if native_only("config file merging") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("edgefuse.toml");
    let samples = repo().join("models/samples/mnist");
    std::fs::write(
        &cfg,
        format!(
            "source = \"file://{}\"\nframes = 4\njson = true\ntop_k = 2\n\n[label_thresholds]\n\"7\" = 0.9\n",
            samples.display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let r = Run::new(&["run", "--config", cfg]);
    let lines = r.code(0).json_lines();
    assert_eq!(lines.len(), 4, "frames = 4 from the file\n{}", r.context());
    assert!(
        lines
            .iter()
            .all(|v| v["top"].as_array().unwrap().len() == 2),
        "top_k = 2 from the file\n{}",
        r.context()
    );
    // The command line wins over the file.
    let r = Run::new(&["run", "--config", cfg, "--frames", "2", "--top-k", "1"]);
    let lines = r.code(0).json_lines();
    assert_eq!(lines.len(), 2, "{}", r.context());
    assert!(lines
        .iter()
        .all(|v| v["top"].as_array().unwrap().len() == 1));
}

#[test]
fn bad_config_files_are_usage_errors_naming_file_line_and_key() {
    if native_only("config file errors") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("edgefuse.toml");
    let c = cfg.to_str().unwrap();

    std::fs::write(&cfg, "frames = 3\ntop-k = 2\n").unwrap();
    Run::new(&["run", "--config", c]).code(2).stderr_has(&[
        &format!("{c}:2:"),
        "key `top-k`",
        "unknown field",
        "top_k",
    ]);

    std::fs::write(&cfg, "window = 0\n").unwrap();
    Run::new(&["run", "--config", c]).code(2).stderr_has(&[
        &format!("{c}:1:"),
        "key `window`",
        "1..=32",
    ]);

    std::fs::write(&cfg, "[label_thresholds]\neleven = 0.5\n").unwrap();
    Run::new(&["run", "--config", c])
        .code(2)
        .stderr_has(&["[label_thresholds]", "no label `eleven`"]);

    std::fs::write(&cfg, "fire_wins = 3\n").unwrap();
    Run::new(&["run", "--config", c, "--window", "2"])
        .code(2)
        .stderr_has(&["fire_wins", "larger than"]);

    let missing = tmp.path().join("nope.toml");
    Run::new(&["run", "--config", missing.to_str().unwrap()])
        .code(2)
        .stderr_has(&["nope.toml", "cannot read config file"]);
}

#[test]
fn calibrate_bad_input_is_refused_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("int8");
    let o = out.to_str().unwrap();
    let samples = format!("file://{}", repo().join("models/samples/mnist").display());

    // Too few frames: the count and the minimum.
    let few = tmp.path().join("few");
    std::fs::create_dir(&few).unwrap();
    for f in ["mnist_00000.png", "mnist_00001.png", "mnist_00002.png"] {
        std::fs::copy(repo().join("models/samples/mnist").join(f), few.join(f)).unwrap();
    }
    Run::new(&[
        "calibrate",
        "--source",
        &format!("file://{}", few.display()),
        "--out",
        o,
    ])
    .code(2)
    .stderr_has(&["only 3 usable calibration frames", "at least 8"]);
    // Unknown method, unknown layer to skip.
    Run::new(&[
        "calibrate",
        "--source",
        &samples,
        "--frames",
        "8",
        "--method",
        "median",
        "--out",
        o,
    ])
    .code(2)
    .stderr_has(&["unknown calibration method `median`"]);
    Run::new(&[
        "calibrate",
        "--source",
        &samples,
        "--frames",
        "8",
        "--skip",
        "/no/such/MatMul",
        "--out",
        o,
    ])
    .code(2)
    .stderr_has(&[
        "--skip `/no/such/MatMul`: no such linear layer",
        "/vision/blocks.0/mlp/mlp.0/MatMul",
    ]);
    assert!(!out.exists(), "nothing written after a failed calibration");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "only the `few` folder: {leftovers:?}");

    // A real calibration, then: the result runs, and calibrating it again is refused. Under
    // emulation on the fewest frames calibration accepts.
    let frames = if emulated() { "8" } else { "40" };
    let r = Run::new(&[
        "calibrate",
        "--source",
        &samples,
        "--frames",
        frames,
        "--method",
        "percentile:99.99",
        "--out",
        o,
    ]);
    r.code(0);
    assert!(r.stdout().contains("top-1 agreement"), "{}", r.context());
    for f in [
        "calibration.json",
        "calibration.cache",
        "fidelity.json",
        "bundle.toml",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let fid: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fidelity.json")).unwrap()).unwrap();
    assert_eq!(fid["eval_frames"].to_string(), frames);
    assert!(fid["layers"].as_array().unwrap().len() >= 20);
    Run::new(&["info", "--model", o]).code(0);
    let r = Run::new(&["run", "--model", o, "--frames", "5", "--json"]);
    r.code(0);
    assert_eq!(r.stdout().lines().count(), 5);
    Run::new(&[
        "calibrate",
        "--model",
        o,
        "--source",
        &samples,
        "--out",
        &format!("{o}2"),
    ])
    .code(2)
    .stderr_has(&["already int8"]);
    // --out that exists.
    Run::new(&["calibrate", "--source", &samples, "--out", o])
        .code(2)
        .stderr_has(&["already exists"]);
}

/// The `gpu` line of `edgefuse info`: `Some(reason)` when no GPU is used.
fn gpu_unusable_reason() -> Option<String> {
    let r = Run::new(&["info"]);
    r.code(0);
    let out = r.stdout();
    let line = out
        .lines()
        .find(|l| l.starts_with("gpu "))
        .unwrap_or_else(|| panic!("no gpu line\n{}", r.context()));
    line.split_once("not used: ")
        .map(|(_, why)| why.to_string())
}

/// Whether the binary under test was built with CUDA support (features unify across the
/// workspace, so this crate's own `cfg!` cannot tell): `edgefuse info` names the build variant.
fn cuda_build() -> bool {
    let r = Run::new(&["info"]);
    r.code(0);
    let build = r
        .stdout()
        .lines()
        .find(|l| l.starts_with("build"))
        .map(str::to_string)
        .unwrap_or_default();
    build.contains("cuda-")
}

#[test]
fn device_flag_cpu_auto_and_cuda_without_a_usable_gpu() {
    if native_only("--device selection without a GPU") {
        return;
    }
    Run::new(&["run", "--device", "tpu"])
        .code(2)
        .stderr_has(&["unknown device `tpu`", "auto, cpu or cuda"]);
    let Some(reason) = gpu_unusable_reason() else {
        println!("skipped: a usable GPU is present; tests/gpu_parity.rs covers the GPU path");
        return;
    };
    // cuda: refuse, saying why (no driver here, or a build without CUDA).
    Run::new(&["run", "--device", "cuda", "--frames", "1"])
        .code(1)
        .stderr_has(&[&reason]);
    // auto: classify on the CPU; a CUDA build warns once with the reason.
    let r = Run::new(&["run", "--device", "auto", "--frames", "2", "--json"]);
    r.code(0);
    assert_eq!(r.json_lines().len(), 2, "{}", r.context());
    if cuda_build() {
        r.stderr_has(&["GPU not used", &reason]);
        assert_eq!(r.stderr().matches("GPU not used").count(), 1);
    }
    let b = Run::new(&["bench", "--frames", "3", "--warmup", "1", "--device", "cpu"]);
    b.code(0);
    let v: serde_json::Value = serde_json::from_str(b.stdout().trim()).unwrap();
    assert_eq!(v["device"], "cpu (tract)", "{}", b.context());
    assert_eq!(v["gpu_fallbacks"], 0);
    // The config file takes `device` too, checked like every other key.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("edgefuse.toml");
    let c = cfg.to_str().unwrap();
    std::fs::write(&cfg, "frames = 1\ndevice = \"tpu\"\n").unwrap();
    Run::new(&["run", "--config", c]).code(2).stderr_has(&[
        &format!("{c}:2:"),
        "key `device`",
        "auto",
    ]);
    std::fs::write(&cfg, "frames = 1\ndevice = \"cuda\"\n").unwrap();
    Run::new(&["run", "--config", c])
        .code(1)
        .stderr_has(&[&reason]);
}

#[test]
fn kernels_command_checks_its_arguments_and_reports_missing_cuda() {
    Run::new(&["kernels", "--arch", "sm_30"])
        .code(2)
        .stderr_has(&["--arch `sm_30`", "sm_87"]);
    Run::new(&["kernels", "--arch", "volta"])
        .code(2)
        .stderr_has(&["--arch `volta`"]);
    if !cuda_build() {
        Run::new(&["kernels"])
            .code(1)
            .stderr_has(&["built without CUDA support", "--features cuda-jp6"]);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let r = Run::new(&[
        "kernels",
        "--arch",
        "sm_87",
        "--ptx-dir",
        tmp.path().to_str().unwrap(),
    ]);
    if r.out.status.code() == Some(1) && r.stderr().contains("no NVRTC") {
        println!("skipped: libnvrtc not loadable here (scripts/check-kernels provides it)");
        return;
    }
    r.code(0);
    assert!(r
        .stdout()
        .contains("6 kernel files x 1 architectures compiled clean"));
    let ptx = std::fs::read_to_string(tmp.path().join("linear.sm_87.ptx")).unwrap();
    assert!(
        ptx.contains(".entry ef_linear_i8_mma"),
        "PTX lacks the mma kernel"
    );
    assert!(ptx.contains("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32"));
    assert!(ptx.contains("dp4a.s32.s32"));
}

#[test]
fn board_pins_prints_the_header_map() {
    let r = Run::new(&["board", "pins", "--board", "orin-nano", "--json"]);
    r.code(0);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(r.stdout().trim()).unwrap_or_else(|e| panic!("{e}\n{}", r.context()));
    let pin7 = rows
        .iter()
        .find(|p| p["pin"] == 7)
        .unwrap_or_else(|| panic!("no pin 7\n{}", r.context()));
    assert_eq!(pin7["chip"], "tegra234-gpio", "{}", r.context());
    for k in ["pin", "chip", "line", "soc_name", "pwm", "direction"] {
        assert!(pin7.get(k).is_some(), "missing `{k}` in {pin7}");
    }
    let r = Run::new(&["board", "pins", "--board", "orin-nano"]);
    r.code(0);
    assert!(r.stdout().contains("BOARD numbering"), "{}", r.context());
    Run::new(&["board", "pins", "--board", "pi4"])
        .code(2)
        .stderr_has(&["unknown board `pi4`", "orin-nano"]);
}
