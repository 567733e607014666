//! The status server over real loopback sockets: metrics parsed back, health, token auth,
//! non-loopback refusal, and inference that keeps going while clients hang; with a real event
//! sink, the journal's depth and the broker's state on `/metrics` (a closed port, and Debian's
//! mosquitto, see `edgefuse_tests::mosquitto`). Budget: about 6 s.

mod http_common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use edgefuse_sinks::dispatch::{EventConfig, EventSink};
use edgefuse_sinks::http::{HttpConfig, HttpError, HttpSink};
use edgefuse_sinks::mqtt::MqttConfig;
use edgefuse_sinks::{Sink, SourceState};
use edgefuse_tests::mosquitto::{free_port, Broker};
use http_common::*;

/// A strict reader of the Prometheus / OpenMetrics text format: every line is a `# HELP`,
/// `# TYPE`, `# UNIT` or `# EOF` comment or a sample `name{label="value",...} number`; every
/// sample belongs to a family whose TYPE came first; `# EOF` ends the text. Returns the samples
/// as `name{labels}` (labels sorted) → value, and the families' types.
fn parse_exposition(text: &str) -> (HashMap<String, f64>, HashMap<String, String>) {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut samples = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        assert!(!eof, "line {n} after # EOF: {line:?}");
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            let (kw, name) = (w.next().unwrap(), w.next().expect("a family name"));
            assert!(name_ok(name), "line {n}: bad family name {name:?}");
            match kw {
                "TYPE" => {
                    let t = w.next().expect("a type");
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "summary",
                            "unknown"
                        ]
                        .contains(&t),
                        "line {n}: type {t:?}"
                    );
                    assert!(types.insert(name.to_string(), t.to_string()).is_none());
                }
                "HELP" | "UNIT" => {}
                _ => panic!("line {n}: unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("line {n}: value {v:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, v) = rest.split_once("=\"").expect("label=\"value\"");
                    assert!(name_ok(k), "line {n}: label name {k:?}");
                    // The value ends at the first unescaped quote.
                    let mut end = None;
                    let mut esc = false;
                    for (i, c) in v.char_indices() {
                        match (esc, c) {
                            (true, _) => esc = false,
                            (false, '\\') => esc = true,
                            (false, '"') => {
                                end = Some(i);
                                break;
                            }
                            _ => {}
                        }
                    }
                    let end = end.expect("closing quote");
                    labels.push(format!("{k}=\"{}\"", &v[..end]));
                    rest = v[end + 1..].strip_prefix(',').unwrap_or(&v[end + 1..]);
                }
                labels.sort();
                (name, labels.join(","))
            }
            None => (series, String::new()),
        };
        assert!(name_ok(name), "line {n}: sample name {name:?}");
        let family = types
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("line {n}: sample {name} before its TYPE"));
        let suffix = &name[family.len()..];
        let allowed: &[&str] = match types[family].as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        assert!(
            allowed.contains(&suffix),
            "line {n}: {name} in a {} family",
            types[family]
        );
        assert!(
            samples
                .insert(format!("{name}{{{labels}}}"), value)
                .is_none(),
            "line {n}: duplicate series"
        );
    }
    assert!(eof, "the exposition ends with # EOF");
    (samples, types)
}

#[test]
fn metrics_parse_back_with_the_frames_events_and_latencies_published() {
    let mut sink = start(|_| {});
    let mut feed = Feed::new();
    for seq in 0..5 {
        sink.frame(&feed.result(seq * 2, 0, seq == 1)).unwrap();
    }
    feed.fallbacks = 1;
    sink.frame(&feed.result(20, 2, true)).unwrap();
    let (status, head, body) = get(sink.addr(), "/metrics", None);
    assert_eq!(status, 200);
    assert!(head.contains("openmetrics-text"), "{head}");
    let text = String::from_utf8(body).unwrap();
    let (m, types) = parse_exposition(&text);
    assert_eq!(m["edgefuse_frames_total{}"], 6.0);
    // Frames 0, 2, 4, 6, 8, 20: 4 + 11 numbers skipped.
    assert_eq!(m["edgefuse_frames_skipped_total{}"], 15.0);
    assert_eq!(m["edgefuse_events_total{kind=\"fire\",label=\"cat\"}"], 1.0);
    assert_eq!(
        m["edgefuse_events_total{kind=\"release\",label=\"cat\"}"],
        0.0
    );
    assert_eq!(
        m["edgefuse_events_total{kind=\"fire\",label=\"a \\\"quoted\\\" label\"}"], 1.0,
        "label values are escaped"
    );
    assert_eq!(types["edgefuse_stage_latency_seconds"], "histogram");
    let e2e = "stage=\"end_to_end\"";
    assert_eq!(
        m[&format!("edgefuse_stage_latency_seconds_count{{{e2e}}}")],
        6.0
    );
    let sum = m[&format!("edgefuse_stage_latency_seconds_sum{{{e2e}}}")];
    assert!((sum - 6.0 * 0.0021).abs() < 1e-9, "{sum}");
    // Buckets are cumulative: 2.1 ms is over 2 ms and within 5 ms.
    assert_eq!(
        m[&format!("edgefuse_stage_latency_seconds_bucket{{le=\"0.002\",{e2e}}}")],
        0.0
    );
    assert_eq!(
        m[&format!("edgefuse_stage_latency_seconds_bucket{{le=\"0.005\",{e2e}}}")],
        6.0
    );
    assert_eq!(
        m[&format!("edgefuse_stage_latency_seconds_bucket{{le=\"+Inf\",{e2e}}}")],
        6.0
    );
    assert_eq!(m["edgefuse_source_online{}"], 1.0);
    assert!(m["edgefuse_resident_memory_bytes{}"] > 1e6);
    assert_eq!(types["edgefuse_build"], "info");
    assert!(text.contains("precision=\"float\""), "{text}");
    assert_eq!(m["edgefuse_backend_fallbacks_total{}"], 1.0);
    assert_eq!(types["edgefuse_backend_fallbacks"], "counter");
    assert!(
        !text.contains("journal") && !text.contains("broker"),
        "no event sink, no event series:\n{text}"
    );
    let (_, _, body) = get(sink.addr(), "/api/status", None);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["backend_fallbacks"], 1);
    sink.finish(&Default::default()).unwrap();
}

/// The event sink for `uri` (journal in `journal`) and a status server showing its figures.
fn event_and_http_sinks(uri: &str, journal: Option<&std::path::Path>) -> (EventSink, HttpSink) {
    let events = EventSink::start(
        EventConfig {
            device: "dev1".into(),
            journal: journal.map(Into::into),
            journal_max_bytes: 1 << 20,
            mqtt: Some(MqttConfig::parse(uri, None).unwrap()),
            ..Default::default()
        },
        &info(),
    )
    .unwrap();
    let stats = events.stats();
    let http = start(|c| c.events = Some(stats));
    (events, http)
}

/// Scrape `/metrics` until `done` holds of the samples (10 s at most); the last samples.
fn scrape_until(
    http: &HttpSink,
    what: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> (HashMap<String, f64>, HashMap<String, String>) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = get(http.addr(), "/metrics", None);
        assert_eq!(status, 200);
        let (m, types) = parse_exposition(&String::from_utf8(body).unwrap());
        if done(&m) {
            return (m, types);
        }
        assert!(Instant::now() < until, "{what}: {m:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Frames `from..to`, each firing a label, to both sinks.
fn fire(feed: &mut Feed, events: &mut EventSink, http: &mut HttpSink, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        let r = feed.result(seq, (seq % 3) as u16, true);
        events.frame(&r).unwrap();
        http.frame(&r).unwrap();
    }
}

#[test]
fn metrics_show_the_journal_filling_while_the_broker_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("mqtt://127.0.0.1:{}/t", free_port());
    let (mut events, mut http) = event_and_http_sinks(&uri, Some(dir.path()));
    let mut feed = Feed::new();
    fire(&mut feed, &mut events, &mut http, 0..5);
    let (m, types) = scrape_until(&http, "5 events journaled", |m| {
        m["edgefuse_events_journaled_total{}"] == 5.0
    });
    assert_eq!(m["edgefuse_broker_connected{}"], 0.0);
    assert_eq!(m["edgefuse_journal_pending_events{}"], 5.0);
    assert_eq!(m["edgefuse_events_acknowledged_total{}"], 0.0);
    assert_eq!(m["edgefuse_journal_dropped_events_total{}"], 0.0);
    assert_eq!(m["edgefuse_event_queue_dropped_events_total{}"], 0.0);
    assert_eq!(m["edgefuse_journal_limit_bytes{}"], (1u64 << 20) as f64);
    assert_eq!(types["edgefuse_broker_connected"], "gauge");
    assert_eq!(types["edgefuse_journal_pending_events"], "gauge");
    assert_eq!(types["edgefuse_journal_dropped_events"], "counter");
    assert!(
        !m.keys().any(|k| k.contains("webhook")),
        "no webhook, no webhook series"
    );
    // Once the sink has stopped (journal synced), the size is what the folder holds.
    events.finish(&Default::default()).unwrap();
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let (m, _) = scrape_until(&http, "journal size", |_| true);
    assert!(on_disk > 0);
    assert_eq!(m["edgefuse_journal_size_bytes{}"], on_disk as f64);
    assert_eq!(
        m["edgefuse_journal_pending_events{}"], 5.0,
        "left for the next start"
    );
    http.finish(&Default::default()).unwrap();
}

#[test]
fn metrics_show_the_broker_connected_and_the_journal_drained_by_its_acknowledgements() {
    let Some(mut broker) = Broker::start("http_metrics_broker") else {
        return;
    };
    let (mut events, mut http) = event_and_http_sinks(&broker.uri("t"), None);
    scrape_until(&http, "connected", |m| {
        m["edgefuse_broker_connected{}"] == 1.0
    });
    let mut feed = Feed::new();
    fire(&mut feed, &mut events, &mut http, 0..5);
    let (m, _) = scrape_until(&http, "5 acknowledged, none pending", |m| {
        m["edgefuse_events_acknowledged_total{}"] == 5.0
            && m["edgefuse_journal_pending_events{}"] == 0.0
    });
    assert_eq!(m["edgefuse_events_journaled_total{}"], 5.0);
    // The broker goes: the state says so and the journal holds what comes meanwhile.
    broker.stop();
    scrape_until(&http, "disconnected", |m| {
        m["edgefuse_broker_connected{}"] == 0.0
    });
    fire(&mut feed, &mut events, &mut http, 5..8);
    let (m, _) = scrape_until(&http, "3 pending", |m| {
        m["edgefuse_journal_pending_events{}"] == 3.0
    });
    assert_eq!(m["edgefuse_events_journaled_total{}"], 8.0);
    assert_eq!(m["edgefuse_events_acknowledged_total{}"], 5.0);
    events.finish(&Default::default()).unwrap();
    http.finish(&Default::default()).unwrap();
}

#[test]
fn healthz_follows_frames_the_camera_and_a_stall() {
    let mut sink = start(|c| c.stall_after = Some(Duration::from_millis(300)));
    let addr = sink.addr();
    let (status, _, body) = get(addr, "/healthz", None);
    assert_eq!(
        (status, &body[..]),
        (503, &b"starting: no frame classified yet\n"[..])
    );
    let mut feed = Feed::new();
    sink.frame(&feed.result(0, 1, false)).unwrap();
    assert_eq!(get(addr, "/healthz", None).0, 200);
    sink.source(SourceState::Offline, "/dev/video0: No such device")
        .unwrap();
    let (status, _, body) = get(addr, "/healthz", None);
    assert_eq!(status, 503);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "camera offline: /dev/video0: No such device\n"
    );
    let (_, _, metrics) = get(addr, "/metrics", None);
    assert!(String::from_utf8(metrics)
        .unwrap()
        .contains("edgefuse_source_online 0"));
    sink.source(SourceState::Online, "").unwrap();
    assert_eq!(get(addr, "/healthz", None).0, 200);
    // The camera's changes are events too, as the event sinks publish them.
    let (_, _, body) = get(addr, "/api/status", None);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let kinds: Vec<&str> = v["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["camera_offline", "camera_online"]);
    assert_eq!(
        v["recent_events"][0]["reason"],
        "/dev/video0: No such device"
    );
    std::thread::sleep(Duration::from_millis(400));
    let (status, _, body) = get(addr, "/healthz", None);
    assert_eq!(status, 503);
    assert!(String::from_utf8(body).unwrap().starts_with("stalled: "));
    sink.finish(&Default::default()).unwrap();
    assert!(TcpStream::connect(addr).is_err(), "finish stops the server");
}

#[test]
fn a_token_is_required_when_given() {
    let token = "0123456789abcdef-token";
    let mut sink = start(|c| c.token = Some(token.into()));
    let addr = sink.addr();
    for path in [
        "/",
        "/metrics",
        "/healthz",
        "/api/status",
        "/snapshot.jpg",
        "/events",
    ] {
        let (status, head, _) = get(addr, path, None);
        assert_eq!(status, 401, "{path} without a token");
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        assert_eq!(
            get(addr, path, Some("0123456789abcdef-tokeN")).0,
            401,
            "{path}"
        );
    }
    assert_eq!(get(addr, "/metrics", Some(token)).0, 200);
    assert_eq!(get(addr, "/", Some(token)).0, 200);
    assert_eq!(
        get(addr, &format!("/api/status?access_token={token}"), None).0,
        200
    );
    sink.finish(&Default::default()).unwrap();
}

#[test]
fn a_non_loopback_address_needs_a_token_and_bad_tokens_are_refused() {
    let c = HttpConfig::new("0.0.0.0:0".parse().unwrap(), 1024);
    let e = HttpSink::start(c, &info()).unwrap_err();
    assert!(matches!(e, HttpError::NeedsToken(_)));
    let msg = e.to_string();
    assert!(
        msg.contains("--http-token-file") && msg.contains("0.0.0.0:0"),
        "{msg}"
    );
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "abc\n").unwrap();
    let e = edgefuse_sinks::http::read_token(&short)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 16") && e.contains("short"), "{e}");
    let good = dir.path().join("good");
    std::fs::write(&good, "  s3cret-token-0123456789\n").unwrap();
    assert_eq!(
        edgefuse_sinks::http::read_token(&good).unwrap(),
        "s3cret-token-0123456789"
    );
    // With a token, a non-loopback address serves.
    let mut c = HttpConfig::new("0.0.0.0:0".parse().unwrap(), 1024);
    c.token = Some("s3cret-token-0123456789".into());
    let mut sink = HttpSink::start(c, &info()).unwrap();
    sink.finish(&Default::default()).unwrap();
}

#[test]
fn inference_keeps_going_while_clients_open_connections_and_never_read() {
    let mut sink = start(|c| c.limits.timeout = Duration::from_secs(2));
    let addr = sink.addr();
    // Clients that send nothing, and clients that ask for a picture and never read it.
    let mut idle: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for _ in 0..8 {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = write!(s, "GET /snapshot.jpg HTTP/1.1\r\n\r\n");
        idle.push(s);
    }
    let mut feed = Feed::new();
    sink.app().shared_want_pixels();
    for seq in 0..500 {
        sink.frame(&feed.result(seq, (seq % 3) as u16, seq % 50 == 0))
            .unwrap();
    }
    let s = sink.app().status_json();
    assert_eq!(s["frames"], 500, "every frame was published");
    assert_eq!(s["top"][0]["label"], "dog");
    // Once the hung clients time out, the server answers again; some were refused at once.
    std::thread::sleep(Duration::from_millis(2500));
    let (status, _, body) = get(addr, "/metrics", None);
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let rejected = text
        .lines()
        .find_map(|l| l.strip_prefix("edgefuse_http_rejected_connections_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(rejected > 0, "a full server refuses at once:\n{text}");
    drop(idle);
    sink.finish(&Default::default()).unwrap();
}

#[test]
fn every_endpoint_answers_and_bad_requests_are_refused() {
    let mut sink = start(|_| {});
    let addr = sink.addr();
    let mut feed = Feed::new();
    let (status, _, _) = get(addr, "/snapshot.jpg", None);
    assert_eq!(status, 503, "no frame yet");
    sink.frame(&feed.result(0, 1, true)).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    sink.frame(&feed.result(1, 1, false)).unwrap();
    let (status, head, jpeg) = get(addr, "/snapshot.jpg", None);
    assert_eq!(status, 200);
    assert!(head.contains("image/jpeg"));
    let img = image::load_from_memory(&jpeg).expect("a JPEG");
    assert_eq!((img.width(), img.height()), (W, H));
    let (status, _, page) = get(addr, "/", None);
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("id=\"top-label\"") && page.contains("api/status"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
    let (_, _, status_json) = get(addr, "/api/status", None);
    let v: serde_json::Value = serde_json::from_slice(&status_json).unwrap();
    assert_eq!(v["top"][0]["label"], "dog");
    let e = &v["recent_events"][0];
    assert_eq!(
        (&e["kind"], &e["event"]["label"], &e["frame"]),
        (&"fire".into(), &"dog".into(), &0.into()),
        "{e}"
    );
    assert_eq!(e["model"], "test-bundle 1.0");
    assert_eq!(v["model"], "test-bundle 1.0");
    assert_eq!(get(addr, "/nope", None).0, 404);
    // Not GET: 405; a head over the limit: 431; garbage: 400.
    let raw = |req: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(req).unwrap();
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
        out
    };
    assert!(
        raw(b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").starts_with("HTTP/1.1 405")
    );
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert!(raw(big.as_bytes()).starts_with("HTTP/1.1 431"));
    assert!(raw(b"\x16\x03\x01 hello\r\n\r\n").starts_with("HTTP/1.1 400"));
    // Server-Sent Events: the next event arrives as a data line.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /events HTTP/1.1\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    sink.frame(&feed.result(2, 0, true)).unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 1024];
    while !got.contains("\"label\":\"cat\"") {
        let n = std::io::Read::read(&mut s, &mut buf).unwrap();
        assert!(n > 0, "stream closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        got.contains("text/event-stream") && got.contains("data: {"),
        "{got}"
    );
    sink.finish(&Default::default()).unwrap();
}
