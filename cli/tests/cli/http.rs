//! `run --http`: the status server end to end on the bundled samples (every endpoint over
//! loopback), and the page in a real headless Chromium (Debian's `chromium`): the DOM shows the
//! top label of the frame being classified, and a screenshot is kept under `target/`.
//! Budget: about 15 s natively (model load, two browser loads); the browser part is skipped
//! under qemu (Debian's chromium is built for the host only).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{edgefuse_command, emulated, ground_truth, repo};

/// A running `edgefuse run --http`, killed when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start(extra: &[&str]) -> (Self, String) {
        let dir = repo().join("models/samples/mnist");
        let (file, label) = ground_truth(&dir).into_iter().next().expect("a sample");
        // One sample looped at a steady pace: the page always shows that frame.
        let source = format!("file://{}?loop&fps=4", dir.join(&file).display());
        let mut child = edgefuse_command()
            .args(["run", "--http", "127.0.0.1:0", "--source", &source])
            .args(extra)
            .env_remove("EDGEFUSE_MODEL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn edgefuse");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(if emulated() { 300 } else { 60 });
        let mut seen = String::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `status page at` line on stderr:\n{seen}"));
            if let Some(rest) = line.strip_prefix("edgefuse: status page at http://") {
                break rest.trim_end_matches('/').parse().expect("an address");
            }
            seen.push_str(&line);
            seen.push('\n');
        };
        (
            Served {
                child,
                addr,
                stderr: rx,
            },
            label,
        )
    }

    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read");
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, head, raw[split + 4..].to_vec())
    }

    /// `/api/status` once a frame has been classified.
    fn status_after_a_frame(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(if emulated() { 300 } else { 60 });
        loop {
            let (code, _, body) = self.get("/api/status");
            assert_eq!(code, 200);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if v["frames"].as_u64().unwrap() >= 2 {
                return v;
            }
            assert!(Instant::now() < deadline, "no frame classified: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stderr_so_far(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

#[test]
fn run_http_serves_every_endpoint_on_the_bundled_samples() {
    let (served, label) = Served::start(&[]);
    let s = served.status_after_a_frame();
    assert_eq!(s["top"][0]["label"], label.as_str(), "{s}");
    assert_eq!(s["health"]["ok"], true, "{s}");
    assert!(s["model"].as_str().unwrap().contains("1.0.0"), "{s}");
    assert_eq!(s["precision"], "float");
    assert!(
        s["board"]["zones"].is_array() && s["board"]["throttling"].is_array(),
        "{s}"
    );
    let (code, _, body) = served.get("/healthz");
    assert_eq!(
        (code, String::from_utf8_lossy(&body).trim()),
        (200, "ok: frames are classified")
    );
    let (code, head, body) = served.get("/metrics");
    assert_eq!(code, 200, "{head}");
    let text = String::from_utf8(body).unwrap();
    for want in [
        "edgefuse_frames_total ",
        "edgefuse_stage_latency_seconds_bucket{le=\"+Inf\",stage=\"encoder\"}",
        &format!("edgefuse_events_total{{label=\"{label}\",kind=\"fire\"}} 1"),
        "edgefuse_resident_memory_bytes ",
        "edgefuse_backend_fallbacks_total 0",
        "# EOF",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    assert!(
        !text.contains("edgefuse_journal"),
        "no event output, no journal:\n{text}"
    );
    // The first request asks for pixels; the next classified frame is copied (under qemu a
    // frame can take longer than the server's 2 s wait, so ask again until then).
    let deadline = Instant::now() + Duration::from_secs(if emulated() { 300 } else { 60 });
    let (jpeg, head) = loop {
        let (code, head, body) = served.get("/snapshot.jpg");
        if code == 200 {
            break (body, head);
        }
        assert!(code == 503 && Instant::now() < deadline, "{code} {head}");
    };
    assert!(head.contains("image/jpeg"), "{head}");
    assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff], "a JPEG");
    let (code, _, page) = served.get("/");
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&page).contains("id=\"top-label\""));
    // /events: the head and the stream's opening comment arrive at once.
    let mut s = TcpStream::connect(served.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /events HTTP/1.1\r\n\r\n").unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 512];
    while !got.contains(": edgefuse events") {
        let n = s.read(&mut buf).expect("the event stream opens");
        assert!(n > 0, "closed: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        got.starts_with("HTTP/1.1 200") && got.contains("text/event-stream"),
        "{got}"
    );
    assert!(!served.stderr_so_far().contains("panicked"));
}

#[test]
fn run_http_with_mqtt_shows_the_journal_and_the_broker_state_on_metrics() {
    native_only!("the MQTT state on /metrics; the sinks crate's broker tests run under qemu");
    // A port nobody listens on: the broker is down, the frame's event waits in the journal.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let (served, _) = Served::start(&["--mqtt", &format!("mqtt://127.0.0.1:{port}/t")]);
    served.status_after_a_frame();
    let deadline = Instant::now() + Duration::from_secs(if emulated() { 300 } else { 60 });
    loop {
        let (code, _, body) = served.get("/metrics");
        assert_eq!(code, 200);
        let text = String::from_utf8(body).unwrap();
        if text.contains("edgefuse_journal_pending_events 1\n") {
            assert!(text.contains("edgefuse_broker_connected 0\n"), "{text}");
            assert!(
                text.contains("edgefuse_events_journaled_total 1\n"),
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the event never reached the journal:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn run_http_refuses_a_public_address_without_a_token() {
    native_only!("option checks");
    let r = crate::Run::within(60, &["run", "--http", "0.0.0.0:0", "--frames", "1"]);
    r.code(1)
        .stderr_has(&["--http 0.0.0.0:0", "--http-token-file"]);
}

/// Debian's chromium, when installed.
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn headless(browser: &Path, profile: &Path, what: &[&str], url: &str) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Let the page's script poll /api/status and draw before the DOM is taken.
            "--virtual-time-budget=5000",
            "--window-size=1000,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(what)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_page_in_headless_chromium_shows_the_label_being_classified() {
    native_only!("the page in chromium");
    if emulated() {
        println!("skipped under emulation: Debian's chromium runs on the host only; the endpoint tests run here");
        return;
    }
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is not installed: CI must install it (scripts/setup --test)"
        );
        println!("skipped: chromium is not installed (apt-get install chromium; scripts/setup --test does)");
        return;
    };
    let (served, label) = Served::start(&[]);
    served.status_after_a_frame();
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", served.addr);
    let dom = headless(&browser, profile.path(), &["--dump-dom"], &url);
    let top = dom
        .split("id=\"top-label\"")
        .nth(1)
        .and_then(|rest| rest.split_once('>'))
        .and_then(|(attrs, rest)| Some((attrs, rest.split_once('<')?.0)))
        .unwrap_or_else(|| panic!("no #top-label in the DOM:\n{dom}"));
    assert!(
        top.0.contains("data-state=\"live\""),
        "the script did not fill it: {top:?}"
    );
    assert_eq!(top.1, label, "the page's top label");
    assert!(
        dom.contains("ok: frames are classified"),
        "health shown:\n{dom}"
    );
    // The screenshot: a CI artifact, and what the README shows.
    let shot = repo().join("target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &browser,
        profile.path(),
        &[&format!("--screenshot={}", shot.display())],
        &url,
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    println!("screenshot: {}", shot.display());
}

#[test]
fn the_config_file_key_http_starts_the_server_and_a_bad_address_is_a_usage_error() {
    native_only!("config file keys");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "http = \"127.0.0.1:0\"\nframes = 2\n").unwrap();
    let r = crate::Run::within(60, &["run", "--config", good.to_str().unwrap()]);
    r.code(0)
        .stderr_has(&["edgefuse: status page at http://127.0.0.1:"]);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "frames = 2\nhttp = \"localhost-8080\"\n").unwrap();
    let r = crate::Run::within(60, &["run", "--config", bad.to_str().unwrap()]);
    r.code(2).stderr_has(&[":2:", "key `http`"]);
    let r = crate::Run::within(
        60,
        &[
            "run",
            "--http",
            "127.0.0.1:0",
            "--http-token-file",
            "/nonexistent/token",
            "--frames",
            "1",
        ],
    );
    r.code(1)
        .stderr_has(&["--http-token-file /nonexistent/token"]);
}
