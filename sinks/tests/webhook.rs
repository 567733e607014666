//! The webhook against a local HTTP server (std's TcpListener, loopback): events arrive in
//! order as JSON with a correct HMAC-SHA256 signature and their id header; a server that
//! answers 500 and then refuses connections is retried until it accepts, and nothing is lost
//! or reordered. Budget: a few seconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgefuse_runtime::decision::{Event as Decided, EventKind as DecidedKind, Events};
use edgefuse_runtime::frame::Frame;
use edgefuse_runtime::fusion::{HeadTop1, TopK};
use edgefuse_runtime::pipeline::{FrameResult, RunSummary, StageTimes};
use edgefuse_sinks::dispatch::{EventConfig, EventSink};
use edgefuse_sinks::event::Event;
use edgefuse_sinks::webhook::{signature, WebhookConfig};
use edgefuse_sinks::{RunInfo, Sink};

struct Request {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Serve on `listener`: answer `statuses` in turn (then 200), record every request.
fn serve(listener: TcpListener, statuses: Vec<u16>, log: Arc<Mutex<Vec<Request>>>) {
    std::thread::spawn(move || {
        let mut statuses = statuses.into_iter();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut r = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap();
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let status = statuses.next().unwrap_or(200);
                log.lock().unwrap().push(Request { headers, body });
                let _ = write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            }
        }
    });
}

fn feed(sink: &mut EventSink, seq: u64) {
    let mut frame = Frame::with_capacity(0);
    frame.seq = seq;
    let mut top = TopK::new();
    top.push(((seq % 3) as u16, 0.8)).unwrap();
    let mut events = Events::new();
    events
        .push(Decided {
            kind: DecidedKind::Fire,
            label: (seq % 3) as u16,
            score: 0.8,
            frame: seq,
            at: Instant::now(),
        })
        .unwrap();
    let r = FrameResult {
        frame: &frame,
        top: &top,
        events: &events,
        times: StageTimes::default(),
        heads: HeadTop1 {
            clip: 0,
            qformer: None,
        },
        fallbacks: 0,
    };
    sink.frame(&r).unwrap();
}

#[test]
fn events_are_posted_signed_in_order_and_retried_until_accepted() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    // The first two attempts fail (500, 503): the same event is retried, with backoff.
    serve(listener, vec![500, 503], log.clone());
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let cfg = EventConfig {
        device: "hook1".into(),
        journal: Some(dir.path().join("journal")),
        journal_max_bytes: 1 << 20,
        webhook: Some(
            WebhookConfig::new(
                &format!("http://127.0.0.1:{port}/hook"),
                Some(&secret),
                Duration::from_secs(2),
            )
            .unwrap(),
        ),
        ..Default::default()
    };
    let info = RunInfo {
        labels: ["a", "b", "c"].map(String::from).to_vec(),
        source: "synthetic://".into(),
        model: "m 1".into(),
        ..Default::default()
    };
    let mut sink = EventSink::start(cfg, &info).unwrap();
    let n = 8;
    for seq in 0..n {
        feed(&mut sink, seq);
    }
    sink.finish(&RunSummary::default()).unwrap();
    let summary = sink.summary().unwrap();
    eprintln!("{summary}");
    assert!(
        summary.contains(&format!("webhook: {n} delivered, 2 attempts failed")),
        "{summary}"
    );
    assert!(summary.contains("0 left undelivered"), "{summary}");
    let log = log.lock().unwrap();
    assert_eq!(log.len() as u64, n + 2);
    // The failed attempts were the first event, sent again.
    let ids: Vec<u64> = log
        .iter()
        .map(|r| r.header("x-edgefuse-event-id").unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, [1, 1, 1, 2, 3, 4, 5, 6, 7, 8]);
    for r in log.iter() {
        assert_eq!(
            r.header("x-edgefuse-signature").unwrap(),
            signature(b"s3cret", &r.body),
            "signed with the file's secret, newline removed"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        let e: Event = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(e.id.to_string(), r.header("x-edgefuse-event-id").unwrap());
        assert_eq!(e.device, "hook1");
    }
    // A wrong key does not verify.
    assert_ne!(
        log[0].header("x-edgefuse-signature").unwrap(),
        signature(b"other", &log[0].body)
    );
}

#[test]
fn an_unreachable_endpoint_keeps_events_journaled_for_the_next_start() {
    let port = edgefuse_tests::mosquitto::free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = || EventConfig {
        device: "hook2".into(),
        journal: Some(dir.path().to_path_buf()),
        journal_max_bytes: 1 << 20,
        webhook: Some(
            WebhookConfig::new(
                &format!("http://127.0.0.1:{port}/"),
                None,
                Duration::from_secs(1),
            )
            .unwrap(),
        ),
        ..Default::default()
    };
    let info = RunInfo {
        labels: ["a", "b", "c"].map(String::from).to_vec(),
        ..Default::default()
    };
    let mut sink = EventSink::start(cfg(), &info).unwrap();
    for seq in 0..3 {
        feed(&mut sink, seq);
    }
    sink.finish(&RunSummary::default()).unwrap();
    let summary = sink.summary().unwrap();
    assert!(summary.contains("3 left undelivered"), "{summary}");
    // Now the endpoint is up: the next start delivers the three, then its own.
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    serve(listener, vec![], log.clone());
    let mut sink = EventSink::start(cfg(), &info).unwrap();
    feed(&mut sink, 10);
    sink.finish(&RunSummary::default()).unwrap();
    let ids: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.header("x-edgefuse-event-id").unwrap().to_string())
        .collect();
    assert_eq!(ids, ["1", "2", "3", "4"]);
    assert!(log.lock().unwrap()[0]
        .header("x-edgefuse-signature")
        .is_none());
}
