//! Shared by the status server's tests: frames to publish and a minimal HTTP client.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use edgefuse_runtime::decision::{Event, EventKind, Events};
use edgefuse_runtime::frame::{Frame, PixelFormat};
use edgefuse_runtime::fusion::{HeadTop1, TopK};
use edgefuse_runtime::pipeline::{FrameResult, StageTimes};
use edgefuse_sinks::http::{HttpConfig, HttpSink};
use edgefuse_sinks::RunInfo;

pub const W: u32 = 64;
pub const H: u32 = 48;

pub fn info() -> RunInfo {
    RunInfo {
        labels: vec!["cat".into(), "dog".into(), "a \"quoted\" label".into()],
        source: "synthetic://".into(),
        model: "test-bundle 1.0".into(),
        backend: "cpu (test)".into(),
        precision: "float".into(),
        version: "0.0.0".into(),
        max_frame_bytes: (W * H * 2) as usize,
        roi: None,
    }
}

pub fn start(cfg: impl FnOnce(&mut HttpConfig)) -> HttpSink {
    let mut c = HttpConfig::new("127.0.0.1:0".parse().unwrap(), info().max_frame_bytes);
    cfg(&mut c);
    HttpSink::start(c, &info()).expect("start the status server")
}

/// What one frame hands to sinks: storage reused frame after frame.
pub struct Feed {
    pub frame: Frame,
    pub top: TopK,
    pub events: Events,
    /// What `FrameResult::fallbacks` says.
    pub fallbacks: u32,
}

impl Feed {
    pub fn new() -> Self {
        let mut frame = Frame::with_capacity((W * H * 2) as usize);
        assert!(frame.reshape(W, H, PixelFormat::Yuyv));
        frame.data.fill(128);
        Self {
            frame,
            top: TopK::new(),
            events: Events::new(),
            fallbacks: 0,
        }
    }

    /// Frame `seq`, top label `label`; fires `label` when `fire`.
    pub fn result(&mut self, seq: u64, label: u16, fire: bool) -> FrameResult<'_> {
        self.frame.seq = seq;
        self.top.clear();
        let _ = self.top.push((label, 0.9));
        let _ = self.top.push(((label + 1) % 3, 0.1));
        self.events.clear();
        if fire {
            let _ = self.events.push(Event {
                kind: EventKind::Fire,
                label,
                score: 0.9,
                frame: seq,
                at: Instant::now(),
            });
        }
        let mut times = StageTimes::default();
        for (i, t) in times.0.iter_mut().enumerate() {
            *t = Duration::from_micros(300 * (i as u64 + 1));
        }
        FrameResult {
            frame: &self.frame,
            top: &self.top,
            events: &self.events,
            times,
            heads: HeadTop1 {
                clip: label,
                qformer: Some(label),
            },
            fallbacks: self.fallbacks,
        }
    }
}

/// One GET; `(status, headers, body)`.
pub fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n{auth}\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, head, raw[split + 4..].to_vec())
}
