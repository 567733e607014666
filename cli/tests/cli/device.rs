//! `--device` and the config key `device` on a machine without a usable GPU.

use crate::*;

#[test]
fn device_flag_cpu_auto_and_cuda_without_a_usable_gpu() {
    native_only!("--device selection without a GPU");
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
    // bench on the CPU with extra options: its JSON report.
    let bench = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["bench", "--frames", "3", "--warmup", "1", "--device", "cpu"];
        args.extend_from_slice(extra);
        let r = Run::new(&args);
        r.code(0);
        serde_json::from_str(r.stdout().trim())
            .unwrap_or_else(|e| panic!("bench {extra:?}: {e}\n{}", r.context()))
    };
    let v = bench(&[]);
    let d = v["device"].as_str().unwrap_or_default();
    assert!(d.starts_with("cpu (plan, "), "{v}");
    assert_eq!(v["allocations_per_frame"]["engine"], 0.0, "{v}");
    assert_eq!(v["gpu_fallbacks"], 0);
    // The reference engine on request, and an explicit thread count.
    let v = bench(&["--cpu-engine", "tract"]);
    assert_eq!(v["device"], "cpu (tract)", "{v}");
    let v = bench(&["--threads", "3"]);
    assert_eq!(v["device"], "cpu (plan, 3 threads)", "{v}");
    let bad = Run::new(&["bench", "--frames", "3", "--cpu-engine", "onnx"]);
    bad.code(2);
    assert!(
        bad.stderr().contains("use auto, plan or tract"),
        "{}",
        bad.context()
    );
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
