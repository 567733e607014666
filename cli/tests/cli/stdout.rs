//! A stdout that fails: a closed pipe (`edgefuse info | head -1` after `head` exited) ends
//! quietly with exit 0; another write error (a full device) is a runtime error (exit 1) naming
//! stdout. Neither panics (exit 101, as every command did before).

use std::process::Stdio;

use crate::*;

/// Run edgefuse with `stdout` as its standard output (stderr captured).
fn run_to(stdout: Stdio, args: &[&str]) -> Run {
    let out = edgefuse_command()
        .args(args)
        .env_remove("EDGEFUSE_MODEL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .expect("spawn edgefuse");
    Run {
        cmd: format!("edgefuse {}", args.join(" ")),
        out,
    }
}

/// A pipe whose reading end is already closed: every write gets EPIPE.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer.into()
}

fn dev_full() -> Stdio {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full")
        .into()
}

/// `args` ends quietly on a closed pipe and fails with a message on a full device.
fn check(args: &[&str]) {
    let r = run_to(closed_pipe(), args);
    r.code(0);
    assert!(
        !r.stderr().contains("edgefuse:"),
        "a closed pipe is not an error\n{}",
        r.context()
    );
    run_to(dev_full(), args)
        .code(1)
        .stderr_has(&["cannot write to stdout", "No space left on device"]);
}

#[test]
fn commands_survive_a_closed_or_full_stdout() {
    check(&["info"]);
    check(&["labels", "list"]);
    check(&["board", "pins", "--board", "orin-nano"]);
    check(&["board", "pins", "--board", "orin-nano", "--json"]);
    check(&["bench", "--frames", "2", "--warmup", "0"]);
    check(&["run", "--frames", "2"]);
    check(&["run", "--frames", "2", "--json"]);
}

#[test]
fn calibrate_survives_a_closed_or_full_stdout_after_writing_its_bundle() {
    native_only!("calibrate with a failing stdout");
    let tmp = tempfile::tempdir().unwrap();
    let samples = format!("file://{}", repo().join("models/samples/mnist").display());
    for (name, stdout, code) in [("piped", closed_pipe(), 0), ("full", dev_full(), 1)] {
        let out = tmp.path().join(name);
        let o = out.to_str().unwrap();
        let r = run_to(
            stdout,
            &[
                "calibrate",
                "--source",
                &samples,
                "--frames",
                "8",
                "--method",
                "minmax",
                "--out",
                o,
            ],
        );
        r.code(code);
        if code == 1 {
            r.stderr_has(&["is complete", "cannot write to stdout"]);
        }
        // The bundle was committed before the report and is usable.
        Run::new(&["info", "--model", o]).code(0);
    }
}
