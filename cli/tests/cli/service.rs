//! Running as a service (issue 15 items 6-7): a camera that fails or stalls is reopened and
//! frames resume, systemd's notify protocol (READY, WATCHDOG pings that go on while the camera
//! is offline, STOPPING), SIGHUP reloads the decision settings (an invalid file is rejected and
//! the run goes on), SIGTERM still stops.
//!
//! The camera is `synthetic://?fail_every=N&fail_for=K`: a simulated camera that fails after
//! every N frames and whose next K reopen attempts fail, so the sequence is known in advance.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::*;

/// `offline` / `online` in the order the run logged them.
fn health_sequence(stderr: &str) -> Vec<&'static str> {
    stderr
        .lines()
        .filter_map(|l| {
            if l.contains(" offline: ") {
                Some("offline")
            } else if l.contains(" online again: ") {
                Some("online")
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn a_failing_camera_is_reopened_and_frames_resume() {
    // A short run under qemu (each frame is ~50x slower); the same sequence is checked.
    let (frames, every) = if emulated() { (10, 4) } else { (36, 10) };
    let source = format!("synthetic://?width=64&height=48&fps=25&fail_every={every}&fail_for=2");
    let r = Run::within(
        300,
        &[
            "-v",
            "run",
            "--source",
            &source,
            "--frames",
            &frames.to_string(),
            "--json",
        ],
    );
    r.code(0);
    let err = r.stderr();
    let seq = health_sequence(&err);
    assert!(
        seq.len() >= 4,
        "two outages and two recoveries at least: {seq:?}\n{err}"
    );
    for (i, s) in seq.iter().enumerate() {
        assert_eq!(*s, ["offline", "online"][i % 2], "{seq:?}\n{err}");
    }
    assert!(
        err.contains("the device vanished (simulated: fail_every)"),
        "{err}"
    );
    assert!(
        err.contains("back after") && err.contains("3 reopen attempts"),
        "{err}"
    );
    let lines = r.json_lines();
    assert_eq!(lines.len(), frames, "every frame asked for was classified");
    let seqs: Vec<u64> = lines.iter().map(|l| l["frame"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "frame numbers go on across reopens: {seqs:?}"
    );
    assert!(
        *seqs.last().unwrap() >= 2 * every,
        "frames after the second outage: {seqs:?}"
    );
    assert!(r.stdout().is_empty() || !err.contains("panicked"));
    r.stderr_has(&["source outages:"]);

    // A stall: no frame for the stall timeout is a failure too.
    let source = "synthetic://?width=64&height=48&fps=25&fail_every=5&fail_for=0&fail=stall";
    let r = Run::within(
        300,
        &[
            "-v",
            "run",
            "--source",
            source,
            "--frames",
            "8",
            "--stall-timeout",
            "300ms",
        ],
    );
    r.code(0)
        .stderr_has(&["no frame for 300ms: the stream stalled", "online again"]);
}

#[test]
fn a_bad_stall_timeout_is_a_usage_error() {
    native_only!("option parsing");
    for bad in ["0", "50ms", "2h", "soon"] {
        let r = Run::new(&["run", "--stall-timeout", bad, "--frames", "1"]);
        r.code(2).stderr_has(&[bad, "100ms to 3600s"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgefuse.toml");
    std::fs::write(&cfg, "stall_timeout = \"1s\"\nframes = 1\n").unwrap();
    Run::new(&["run", "--config", cfg.to_str().unwrap()]).code(0);
    std::fs::write(&cfg, "stall_timeout = \"20ms\"\n").unwrap();
    Run::new(&["run", "--config", cfg.to_str().unwrap()])
        .code(2)
        .stderr_has(&["stall_timeout", "100ms to 3600s"]);
}

/// Every datagram the run sent to its notify socket, with when it arrived.
fn notify_messages(
    socket: &UnixDatagram,
    child: &mut Child,
    limit: Duration,
) -> Vec<(Instant, String)> {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            )),
            Err(_) => {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
            }
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("edgefuse still running after {limit:?}; messages: {got:?}");
        }
    }
    got
}

#[test]
fn systemd_hears_ready_then_watchdog_pings_also_while_the_camera_is_offline() {
    native_only!("the systemd watchdog");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    let frames = if emulated() { "8" } else { "40" };
    let mut child = edgefuse_command()
        .args([
            "run",
            "--source",
            // The outage takes 0 + 200 + 400 + 800 ms of reopen attempts.
            "synthetic://?width=64&height=48&fps=20&fail_every=20&fail_for=3",
            "--frames",
            frames,
        ])
        .env_remove("EDGEFUSE_MODEL")
        .env_remove("RUST_LOG")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let msgs = notify_messages(&socket, &mut child, Duration::from_secs(300));
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "{err}");
    let texts: Vec<&str> = msgs.iter().map(|(_, m)| m.as_str()).collect();
    let ready: Vec<usize> = (0..texts.len())
        .filter(|&i| texts[i].starts_with("READY=1\n"))
        .collect();
    assert_eq!(ready.len(), 1, "one READY: {texts:?}");
    assert!(texts[ready[0]].contains("STATUS=classifying frames from synthetic://"));
    assert_eq!(texts.last(), Some(&"STOPPING=1"), "{texts:?}");
    let pings = texts.iter().filter(|m| **m == "WATCHDOG=1").count();
    assert!(pings >= 3, "watchdog pings: {texts:?}");
    if emulated() {
        return;
    }
    // The outage: offline, pings while reopening, online again.
    let off = texts
        .iter()
        .position(|m| m.starts_with("STATUS=camera offline: "))
        .unwrap_or_else(|| panic!("no offline status: {texts:?}\n{err}"));
    let on = off
        + texts[off..]
            .iter()
            .position(|m| m.starts_with("STATUS=classifying"))
            .unwrap_or_else(|| panic!("no online status after offline: {texts:?}"));
    let during = texts[off..on]
        .iter()
        .filter(|m| **m == "WATCHDOG=1")
        .count();
    assert!(
        during >= 3,
        "pings go on during the 1.4 s outage (one per 100 ms is due): {texts:?}"
    );
    assert!(ready[0] < off, "{texts:?}");
}

/// edgefuse in the background with its stdout and stderr lines on channels.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
    /// stderr lines read so far.
    seen: std::cell::RefCell<Vec<String>>,
}

/// A thread sending `r`'s lines to a channel.
fn line_channel(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

impl Background {
    fn new(args: &[&str]) -> Self {
        let mut child = edgefuse_command()
            .args(args)
            .env_remove("EDGEFUSE_MODEL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self {
            lines: line_channel(child.stdout.take().unwrap()),
            errors: line_channel(child.stderr.take().unwrap()),
            child,
            seen: Default::default(),
        }
    }

    /// The next `n` JSON lines (fails after `secs`).
    fn next_lines(&self, n: usize, secs: u64) -> Vec<serde_json::Value> {
        (0..n)
            .map(|_| {
                let l = self
                    .lines
                    .recv_timeout(Duration::from_secs(secs))
                    .expect("a line from the running edgefuse");
                serde_json::from_str(&l).unwrap()
            })
            .collect()
    }

    /// Drop the lines that arrived so far.
    fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// Wait until stderr has a line containing `needle` (fails after `secs`) and return it; the
    /// next wait looks only at the lines after it.
    fn wait_stderr(&self, needle: &str, secs: u64) -> String {
        let t = Instant::now();
        loop {
            let mut seen = self.seen.borrow_mut();
            if let Some(i) = seen.iter().position(|l| l.contains(needle)) {
                return seen.drain(..=i).next_back().unwrap_or_default();
            }
            let left = Duration::from_secs(secs).saturating_sub(t.elapsed());
            match self.errors.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("stderr lacks {needle:?}:\n{}", seen.join("\n")),
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the child this test spawned and has not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Wait for the exit (fails after `secs`): its code and the rest of stderr.
    fn exit(mut self, secs: u64) -> (Option<i32>, String) {
        let t = Instant::now();
        let code = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code();
            }
            if t.elapsed() > Duration::from_secs(secs) {
                let _ = self.child.kill();
                panic!("still running {secs} s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = self.seen.take();
        while let Ok(l) = self.errors.recv_timeout(Duration::from_secs(5)) {
            rest.push(l);
        }
        (code, rest.join("\n"))
    }
}

#[test]
fn sighup_reloads_the_decision_settings_and_an_invalid_file_changes_nothing() {
    native_only!("SIGHUP reload");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgefuse.toml");
    // Each file is written whole, then renamed into place, as editors and configuration tools do.
    let write = |text: &str| {
        let tmp = dir.path().join("edgefuse.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &cfg).unwrap();
    };
    let mnist = repo().join("models/samples/mnist");
    let source = format!("file://{}?loop&fps=20", mnist.display());
    // Nothing can reach a threshold of 1: no frame fires.
    write(&format!("threshold = 1.0\nsource = \"{source}\"\n"));
    let n = if emulated() { 2 } else { 10 };
    let secs = if emulated() { 120 } else { 30 };
    let p = Background::new(&["-v", "run", "--config", cfg.to_str().unwrap(), "--json"]);
    let before = p.next_lines(n, secs);
    assert!(before.iter().all(|l| l["event"].is_null()), "{before:?}");

    // A threshold of 0: the next frames fire.
    write(&format!("threshold = 0.0\nsource = \"{source}\"\n"));
    p.signal(libc::SIGHUP);
    p.wait_stderr("reloaded; from the next frame: threshold 0,", secs);
    let fired = |p: &Background| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if !p.next_lines(1, secs)[0]["event"].is_null() {
                return true;
            }
        }
        false
    };
    assert!(fired(&p), "no event after the reload to threshold 0");

    // An invalid value: rejected with the reason. A key that needs a restart: named and
    // ignored, the rest applied. The run goes on with threshold 0.
    write("threshold = 7\n");
    p.signal(libc::SIGHUP);
    let e = p.wait_stderr("reload rejected, the settings in use stay", secs);
    assert!(
        e.contains("edgefuse.toml:1:") && e.contains("key `threshold`"),
        "names the file, line and key: {e}"
    );
    write("threshold = 0.0\nwindow = 2\nsource = \"synthetic://\"\n");
    p.signal(libc::SIGHUP);
    p.wait_stderr("source changed: that needs a restart", secs);
    p.wait_stderr(
        "from the next frame: threshold 0, fire after 1 of 2 frames",
        secs,
    );
    p.drain();
    assert!(fired(&p), "the run goes on with threshold 0");

    // SIGTERM still stops.
    p.signal(libc::SIGTERM);
    let (code, err) = p.exit(secs);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("summary:"), "{err}");
}

#[test]
fn sighup_without_a_config_file_is_ignored() {
    native_only!("signal handling");
    let p = Background::new(&[
        "run",
        "--source",
        "synthetic://?width=64&height=48&fps=20",
        "--json",
    ]);
    p.next_lines(2, 60);
    p.signal(libc::SIGHUP);
    p.wait_stderr("SIGHUP: no --config file to reload; ignored", 60);
    p.drain();
    p.next_lines(3, 60);
    p.signal(libc::SIGTERM);
    let (code, err) = p.exit(60);
    assert_eq!(code, Some(0), "{err}");
}
