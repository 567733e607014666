//! The other commands end to end: `info`, `labels`, `calibrate`, `kernels`, `board`.

use crate::*;

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
    native_only!("labels add/remove");
    let tmp = tempfile::tempdir().unwrap();
    copy_default_bundle(tmp.path());
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

#[test]
fn labels_add_and_remove_refuse_the_installed_default_bundle() {
    native_only!("the default-bundle refusal");
    let manifest = repo().join("models/default/bundle.toml");
    let before = std::fs::read(&manifest).unwrap();
    Run::new(&["labels", "add", "--label", "cat", "a photo of a cat"])
        .code(2)
        .stderr_has(&["installed default bundle", "cp -r", "--model my-bundle"]);
    Run::new(&["labels", "remove", "--label", "7"])
        .code(2)
        .stderr_has(&["installed default bundle", "cp -r"]);
    assert_eq!(std::fs::read(&manifest).unwrap(), before, "unchanged");
}

/// A folder where the old code wrote its temporary manifest (`bundle.tmp-edgefuse`, also what
/// an interrupted update can leave) made `labels add` fail after it had replaced the embeddings:
/// a bundle nothing could open. Now the update commits with one rename and the bundle opens.
#[test]
fn labels_add_with_stray_temporary_files_keeps_the_bundle_usable() {
    native_only!("labels with stray files");
    let tmp = tempfile::tempdir().unwrap();
    copy_default_bundle(tmp.path());
    std::fs::create_dir(tmp.path().join("bundle.tmp-edgefuse")).unwrap();
    std::fs::write(tmp.path().join("text_embeddings.tmp-edgefuse"), "junk").unwrap();
    let m = tmp.path().to_str().unwrap();
    Run::new(&[
        "labels",
        "add",
        "--model",
        m,
        "--label",
        "cat",
        "a photo of a cat",
    ])
    .code(0);
    let r = Run::new(&["labels", "list", "--model", m]);
    r.code(0);
    assert_eq!(r.stdout().lines().count(), 11, "{}", r.context());
    assert!(
        r.stdout().contains("cat\ta photo of a cat"),
        "{}",
        r.context()
    );
    Run::new(&["labels", "remove", "--model", m, "--label", "cat"]).code(0);
    Run::new(&["run", "--model", m, "--frames", "1"]).code(0);
}

#[test]
fn calibrate_bad_input_is_refused_and_writes_nothing() {
    native_only!("calibrate's refusals");
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
    // --eval-frames 0 used to write a meaningless fidelity report (cosine mean 0, min 1).
    Run::new(&[
        "calibrate",
        "--source",
        &samples,
        "--frames",
        "8",
        "--eval-frames",
        "0",
        "--out",
        o,
    ])
    .code(2)
    .stderr_has(&["--eval-frames", "at least 1 frame"]);
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

#[test]
fn kernels_command_checks_its_arguments_and_reports_missing_cuda() {
    native_only!("the kernels command's argument checks");
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

#[test]
fn board_pins_shows_either_xavier_numbering() {
    let line7 = |numbering: &str| {
        let r = Run::new(&[
            "board",
            "pins",
            "--board",
            "agx-xavier",
            "--json",
            "--numbering",
            numbering,
        ]);
        r.code(0);
        let rows: Vec<serde_json::Value> = serde_json::from_str(r.stdout().trim()).unwrap();
        let p = rows.iter().find(|p| p["pin"] == 7).unwrap().clone();
        assert_eq!(p["numbering"], numbering, "{}", r.context());
        p["line"].as_u64().unwrap()
    };
    // NVIDIA's Jetson.GPIO data: pin 7 (PQ.06) is line 134 on L4T r32, 106 on r35+.
    assert_eq!((line7("r32"), line7("r35")), (134, 106));
    let r = Run::new(&[
        "board",
        "pins",
        "--board",
        "agx-xavier",
        "--numbering",
        "r32",
    ]);
    r.code(0);
    assert!(r.stdout().contains("L4T r32 numbering"), "{}", r.context());
    // The Xavier NX has both too: pin 7 (PS.04) is line 148 on r32.
    let r = Run::new(&[
        "board",
        "pins",
        "--board",
        "xavier-nx",
        "--numbering",
        "r32",
    ]);
    r.code(0);
    assert!(
        r.stdout().lines().any(|l| l
            .split_whitespace()
            .take(3)
            .eq(["7", "tegra194-gpio", "148"])),
        "{}",
        r.context()
    );
    Run::new(&[
        "board",
        "pins",
        "--board",
        "agx-xavier",
        "--numbering",
        "r36",
    ])
    .code(2)
    .stderr_has(&["--numbering \"r36\"", "r32", "r35"]);
}
