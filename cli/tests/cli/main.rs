//! End-to-end tests of the `edgefuse` binary: the bundled samples classify correctly, and bad
//! input gives a clear message, the right exit code and no panic. One test binary: this file is
//! the qemu-aware runner and the `Run` harness; the tests are grouped by job in the modules.

/// `native_only!("what")`: under emulation, say so and return from the test (see
/// [`skip_under_emulation`]).
macro_rules! native_only {
    ($what:expr) => {
        if crate::skip_under_emulation($what) {
            return;
        }
    };
}

mod commands;
mod config;
mod crash;
mod device;
mod events;
mod fusion;
mod http;
mod inputs;
mod models;
mod run;
mod service;
mod signals;
mod stdout;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A copy of the default bundle in `into` (created, or emptied first), for tests that edit one.
fn copy_default_bundle(into: &Path) {
    let _ = std::fs::remove_dir_all(into);
    std::fs::create_dir_all(into).unwrap();
    for e in std::fs::read_dir(repo().join("models/default")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), into.join(e.file_name())).unwrap();
    }
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
    /// Like [`Run::new`], but fail the test (after killing edgefuse) if it has not exited within
    /// `secs` seconds: for inputs that used to block forever.
    fn within(secs: u64, args: &[&str]) -> Self {
        let mut child = edgefuse_command()
            .args(args)
            .env_remove("EDGEFUSE_MODEL")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn edgefuse");
        let started = std::time::Instant::now();
        while child.try_wait().expect("wait for edgefuse").is_none() {
            if started.elapsed() > std::time::Duration::from_secs(secs) {
                let _ = child.kill();
                let out = child.wait_with_output().expect("reap edgefuse");
                panic!(
                    "edgefuse {} still running after {secs} s (killed)\n--- stderr ---\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Run {
            cmd: format!("edgefuse {}", args.join(" ")),
            out: child.wait_with_output().expect("collect edgefuse's output"),
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
/// files, bad input, exit codes, model management, signals, the page in chromium) are left to
/// the native run: each process start loads the model under qemu, and on a slow host this group
/// alone took 20 minutes of CI. What stays under qemu is a smoke set of the aarch64 binary end
/// to end: `run` on the bundled samples against their labels, `info`, the status server's
/// endpoints, a failing camera reopened, a closed stdout, and the board's pin maps; the
/// packaged binary is run again by `scripts/check-deb`. Returns true (after saying so) when the
/// caller should skip.
fn skip_under_emulation(what: &str) -> bool {
    if emulated() {
        println!(
            "skipped under emulation ({what}): the native run checks it; each start loads the model under qemu"
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
