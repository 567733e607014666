//! The configuration file: it sets options, the command line overrides it, and its errors name
//! the file, line and key.

use crate::*;

#[test]
fn config_file_sets_options_and_the_command_line_overrides_it() {
    native_only!("config file merging");
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
    native_only!("config file errors");
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
fn config_that_is_a_device_a_fifo_or_too_large_is_refused_at_once() {
    native_only!("config file reading");
    // Used to grow without bound (5 GB in 3 s).
    Run::within(30, &["run", "--config", "/dev/zero"])
        .code(2)
        .stderr_has(&["/dev/zero", "a character device, not a regular file"]);
    let tmp = tempfile::tempdir().unwrap();
    // Used to block forever.
    let fifo = tmp.path().join("edgefuse.toml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    Run::within(30, &["run", "--config", fifo.to_str().unwrap()])
        .code(2)
        .stderr_has(&["edgefuse.toml", "a FIFO, not a regular file"]);
    let big = tmp.path().join("big.toml");
    std::fs::write(&big, "# padding\n".repeat(120_000)).unwrap();
    Run::within(30, &["run", "--config", big.to_str().unwrap()])
        .code(2)
        .stderr_has(&["big.toml", "larger than 1 MiB"]);
}
