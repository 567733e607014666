//! Signals: a paced run stops within moments of SIGTERM whatever its pace, a second signal
//! exits at once (128 + the signal), an interrupted `calibrate` leaves no temporary bundle.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::*;

/// edgefuse running in the background, its stdout lines arriving on a channel (until
/// [`Spawned::stop_reading`]) and its stderr collected.
pub(crate) struct Spawned {
    child: Child,
    pub(crate) lines: mpsc::Receiver<String>,
    stop_reading: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
    cmd: String,
}

impl Spawned {
    pub(crate) fn new(args: &[&str]) -> Self {
        let mut child = edgefuse_command()
            .args(args)
            .env_remove("EDGEFUSE_MODEL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn edgefuse");
        let (tx, lines) = mpsc::channel();
        let stop_reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = stop_reading.clone();
        let out = child.stdout.take().unwrap();
        // The smallest pipe (one page), so that a test can fill it quickly.
        // SAFETY: F_SETPIPE_SZ on a pipe descriptor this process owns.
        unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&out),
                libc::F_SETPIPE_SZ,
                4096,
            )
        };
        let stdout = std::thread::spawn(move || {
            let mut all = String::new();
            let mut r = BufReader::new(out);
            let mut line = String::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                all.push_str(&line);
                let _ = tx.send(line.clone());
            }
            // Hold the pipe open, unread, until edgefuse exits.
            while stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = r.read_to_string(&mut all);
            all
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Self {
            child,
            lines,
            stop_reading,
            stdout,
            stderr,
            cmd: format!("edgefuse {}", args.join(" ")),
        }
    }

    /// Wait for the first stdout line (the run has started).
    fn first_line(&mut self, secs: u64) -> String {
        match self.lines.recv_timeout(Duration::from_secs(secs)) {
            Ok(l) => l,
            Err(_) => {
                let _ = self.child.kill();
                panic!("{}: no output within {secs} s", self.cmd);
            }
        }
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Wait up to `limit` for the exit; returns the exit code, the time it took, stdout, stderr.
    pub(crate) fn exit_within(
        mut self,
        limit: Duration,
    ) -> (Option<i32>, Duration, String, String) {
        let t = Instant::now();
        while self.running() {
            if t.elapsed() > limit {
                let _ = self.child.kill();
                self.stop_reading
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                let err = self.stderr.join().unwrap_or_default();
                panic!(
                    "{} still running {limit:?} after the signal (killed)\n--- stderr ---\n{err}",
                    self.cmd
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = t.elapsed();
        let code = self.child.wait().expect("wait").code();
        self.stop_reading
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let out = self.stdout.join().unwrap_or_default();
        let err = self.stderr.join().unwrap_or_default();
        (code, took, out, err)
    }
}

#[test]
fn a_paced_run_stops_within_moments_of_sigterm_whatever_the_pace() {
    native_only!("SIGTERM on a paced run");
    let mnist = repo().join("models/samples/mnist");
    let file = format!("file://{}?loop&fps=0.02", mnist.display());
    for source in ["synthetic://?fps=0.02", file.as_str()] {
        let mut p = Spawned::new(&["run", "--source", source]);
        p.first_line(120);
        // The next frame is 50 s away: the run is now waiting for it.
        std::thread::sleep(Duration::from_millis(300));
        p.signal("TERM");
        let (code, took, out, err) =
            p.exit_within(Duration::from_secs(if emulated() { 10 } else { 2 }));
        println!("{source}: stopped {took:?} after SIGTERM");
        assert_eq!(code, Some(0), "{source}\n{err}");
        assert!(
            out.contains("summary: 1 frames classified"),
            "{source}: no summary\n{out}\n{err}"
        );
    }
}

#[test]
fn a_second_signal_exits_at_once_when_the_first_cannot_stop_the_run() {
    native_only!("a full stdout pipe under qemu");
    // A one-page stdout pipe and long file names (long result lines): the unread pipe fills
    // after a few frames, and the run then blocks writing, where the first signal cannot stop it.
    let dir = tempfile::tempdir().unwrap();
    let deep = dir
        .path()
        .join(format!("{}/{}", "d".repeat(200), "e".repeat(200)));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::copy(
        repo().join("models/samples/mnist/mnist_00000.png"),
        deep.join(format!("{}.png", "x".repeat(200))),
    )
    .unwrap();
    let uri = format!("file://{}?loop", deep.display());
    let mut p = Spawned::new(&["run", "--source", &uri]);
    p.first_line(120);
    p.stop_reading
        .store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    p.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        p.running(),
        "blocked on stdout, the first SIGTERM cannot end the run"
    );
    p.signal("TERM");
    let (code, took, _, err) = p.exit_within(Duration::from_secs(2));
    println!("second SIGTERM: exited {took:?} later with {code:?}");
    assert_eq!(code, Some(143), "{err}");
    assert!(err.contains("second signal"), "{err}");
}

/// The hidden temporary folders `calibrate` stages its output in, next to `out`.
fn staging_dirs(parent: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp-edgefuse"))
        .collect()
}

#[test]
fn an_interrupted_calibrate_leaves_no_temporary_bundle() {
    native_only!("a long calibration under qemu");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("int8");
    let mnist = repo().join("models/samples/mnist");
    let source = format!("file://{}", mnist.display());
    let eval = format!("file://{}?loop", mnist.display());
    let mut p = Spawned::new(&[
        "calibrate",
        "--source",
        &source,
        "--method",
        "minmax",
        "--frames",
        "20",
        "--eval",
        &eval,
        "--eval-frames",
        "1000000",
        "--out",
        out.to_str().unwrap(),
    ]);
    // Wait for the staged bundle: the fidelity pass is running.
    let t = Instant::now();
    while staging_dirs(dir.path()).is_empty() {
        assert!(p.running(), "calibrate ended before staging its bundle");
        assert!(t.elapsed() < Duration::from_secs(120), "no staging folder");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    p.signal("TERM");
    let (code, took, _, err) = p.exit_within(Duration::from_secs(5));
    println!("calibrate stopped {took:?} after SIGTERM");
    assert_eq!(code, Some(143), "{err}");
    assert!(err.contains("removed the unfinished"), "{err}");
    assert_eq!(staging_dirs(dir.path()), Vec::<String>::new(), "{err}");
    assert!(!out.exists());
}

#[test]
fn calibrate_removes_stale_temporary_folders_of_its_own() {
    native_only!("architecture-independent");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("int8");
    // Left by a calibration that was SIGKILLed (pid_max is at most 2^22: the process is gone),
    // and by an older edgefuse (no pid in the name).
    let gone = dir.path().join(".int8.tmp-edgefuse-999999999");
    let legacy = dir.path().join(".int8.tmp-edgefuse");
    // Not ours: kept.
    let other = dir.path().join(".int8.tmp-something");
    for d in [&gone, &legacy, &other] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("bundle.toml"), "x").unwrap();
    }
    // The calibration itself fails at once (no such source): the cleanup comes before.
    let r = Run::new(&[
        "calibrate",
        "--source",
        "file:///nonexistent-edgefuse-frames",
        "--out",
        out.to_str().unwrap(),
    ]);
    r.code(1).stderr_has(&[
        &format!("removed {}", gone.display()),
        "process 999999999",
        &format!("removed {}", legacy.display()),
    ]);
    assert!(!gone.exists() && !legacy.exists(), "{}", r.context());
    assert!(other.exists());
}
