//! The one event type every sink publishes ([`Event`], serde), and the fixed-size [`Fact`] the
//! inference thread copies a frame's result into (no allocation) for a publisher thread to turn
//! into an [`Event`].
//!
//! An event carries the fields of `run --json`'s line (`frame`, `source`, `top`,
//! `time_unix_ms`, `event`, `released`, `heads`, `latency_ms`) with the same names and values,
//! plus `id` (stable across restarts: the journal's record number), `kind`, `device`, `model`
//! and `snapshot` (the JPEG written for it, when one was).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use edgefuse_runtime::decision::EventKind as DecisionKind;
use edgefuse_runtime::fusion::MAX_TOP_K;
use edgefuse_runtime::pipeline::{FrameResult, STAGES};

/// Longest source name a [`Fact`] holds (Linux's `PATH_MAX`: a file path is never longer).
pub const SOURCE_BYTES: usize = 4096;

/// Most releases one frame reports (the decision's event list holds four events).
const MAX_RELEASED: usize = 4;

/// What an event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A label fired on this frame (other labels may have been released on it too).
    Fire,
    /// Labels were released on this frame and none fired.
    Release,
    /// The live source failed or stalled; the run keeps trying to reopen it.
    CameraOffline,
    /// The live source delivers frames again.
    CameraOnline,
    /// Not an event: one frame's result (`--mqtt-results`), published unjournaled with id 0.
    Result,
}

/// A fired label as `--json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    /// The label's name.
    pub label: String,
    /// Its probability on the frame.
    pub score: f32,
}

/// Top-1 label of each head before fusion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heads {
    /// The CLIP head's best label.
    pub clip: String,
    /// The Q-Former head's best label, when the bundle has one.
    pub qformer: Option<String>,
}

/// Per-stage latencies in milliseconds, in the order of [`STAGES`], written as an object keyed
/// by stage name (as `--json` writes them).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency(pub [f64; STAGES.len()]);

impl Serialize for Latency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(STAGES.len()))?;
        for (name, v) in STAGES.iter().zip(self.0) {
            m.serialize_entry(name, &((v * 1000.0).round() / 1000.0))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = std::collections::BTreeMap::<String, f64>::deserialize(d)?;
        let mut l = Latency::default();
        for (i, name) in STAGES.iter().enumerate() {
            l.0[i] = *m
                .get(*name)
                .ok_or_else(|| serde::de::Error::missing_field(name))?;
        }
        Ok(l)
    }
}

/// The classified frame an event comes from: the fields of `run --json`'s line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameFields {
    /// The frame's sequence number.
    pub frame: u64,
    /// Best labels, best first: `[label, probability]`.
    pub top: Vec<(String, f32)>,
    /// The label that fired on this frame, if one did.
    pub event: Option<Fired>,
    /// Labels released on this frame.
    pub released: Vec<String>,
    /// Top-1 of each head.
    pub heads: Heads,
    /// Per-stage latencies.
    pub latency_ms: Latency,
}

/// One event, as every sink publishes it (MQTT payload, webhook body, journal record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable id: the journal's record number, increasing, kept across restarts (a message
    /// delivered twice after a reconnect carries the same id).
    pub id: u64,
    /// What happened.
    pub kind: EventKind,
    /// The device: its configured id or the host name.
    pub device: String,
    /// The bundle: manifest name and version.
    pub model: String,
    /// The frame's source (image path for file sources, else the URI).
    pub source: String,
    /// Wall-clock time of the decision, milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// The JPEG written for this event, when one was.
    pub snapshot: Option<String>,
    /// Why the source went offline (camera events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The classified frame (fire and release events only).
    #[serde(flatten)]
    pub frame: Option<FrameFields>,
}

/// What the inference thread copies out of a frame for a publisher: fixed size, `Copy`, no
/// heap. Label indices stay indices until the publisher names them.
#[derive(Clone, Copy)]
pub struct Fact {
    /// Event kind, or `None` for a per-frame result without an event.
    pub kind: Option<EventKind>,
    /// Frame sequence number.
    pub seq: u64,
    /// Wall-clock time, ms since the epoch.
    pub unix_ms: u64,
    /// When the fact was taken (event latency is measured from here).
    pub at: Instant,
    /// A snapshot job was queued for this frame.
    pub snapshot: bool,
    top: [(u16, f32); MAX_TOP_K],
    top_len: u8,
    fired: Option<(u16, f32)>,
    released: [u16; MAX_RELEASED],
    released_len: u8,
    heads: (u16, Option<u16>),
    latency: [f64; STAGES.len()],
    text: [u8; SOURCE_BYTES],
    text_len: u16,
}

impl std::fmt::Debug for Fact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fact")
            .field("kind", &self.kind)
            .field("seq", &self.seq)
            .field("text", &self.text())
            .finish()
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Fact {
    /// An empty fact (the queue's slots start as these).
    pub fn empty() -> Self {
        Fact {
            kind: None,
            seq: 0,
            unix_ms: 0,
            at: Instant::now(),
            snapshot: false,
            top: [(0, 0.0); MAX_TOP_K],
            top_len: 0,
            fired: None,
            released: [0; MAX_RELEASED],
            released_len: 0,
            heads: (0, None),
            latency: [0.0; STAGES.len()],
            text: [0; SOURCE_BYTES],
            text_len: 0,
        }
    }

    /// The frame's event kind: fire when a label fired, release when labels were only
    /// released, `None` when nothing happened.
    pub fn kind_of(r: &FrameResult<'_>) -> Option<EventKind> {
        if r.events.iter().any(|e| e.kind == DecisionKind::Fire) {
            Some(EventKind::Fire)
        } else if r.events.is_empty() {
            None
        } else {
            Some(EventKind::Release)
        }
    }

    /// Overwrite `self` with what `r` says (no allocation). `uri` names the source when the
    /// frame has no name of its own.
    pub fn fill(&mut self, r: &FrameResult<'_>, uri: &str) {
        self.kind = Self::kind_of(r);
        self.seq = r.frame.seq;
        self.unix_ms = unix_ms();
        self.at = Instant::now();
        self.top_len = r.top.len().min(MAX_TOP_K) as u8;
        for (d, s) in self.top.iter_mut().zip(r.top.iter()) {
            *d = *s;
        }
        self.fired = r
            .events
            .iter()
            .find(|e| e.kind == DecisionKind::Fire)
            .map(|e| (e.label, e.score));
        self.released_len = 0;
        for e in r.events.iter().filter(|e| e.kind == DecisionKind::Release) {
            if (self.released_len as usize) < MAX_RELEASED {
                self.released[self.released_len as usize] = e.label;
                self.released_len += 1;
            }
        }
        self.heads = (r.heads.clip, r.heads.qformer);
        for (d, t) in self.latency.iter_mut().zip(r.times.0) {
            *d = t.as_secs_f64() * 1000.0;
        }
        let source = if r.frame.source.is_empty() {
            uri
        } else {
            r.frame.source.as_str()
        };
        self.set_text(source);
    }

    /// A camera event: `reason` says why it went offline (empty when it came back).
    pub fn camera(&mut self, kind: EventKind, reason: &str) {
        self.kind = Some(kind);
        self.seq = 0;
        self.unix_ms = unix_ms();
        self.at = Instant::now();
        self.top_len = 0;
        self.fired = None;
        self.released_len = 0;
        self.set_text(reason);
    }

    /// Copy `s` into the fixed text buffer, cut at a character boundary if it is longer.
    fn set_text(&mut self, s: &str) {
        let mut n = s.len().min(SOURCE_BYTES);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.text[..n].copy_from_slice(&s.as_bytes()[..n]);
        self.text_len = n as u16;
    }

    /// The source name (frame facts) or the reason (camera facts).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.text[..self.text_len as usize]).unwrap_or("")
    }

    /// The event this fact describes, named with `ctx`'s labels (a fact without an event kind
    /// is a per-frame result: kind [`EventKind::Result`]).
    pub fn event(&self, id: u64, ctx: &EventContext, snapshot: Option<String>) -> Event {
        let name = |i: u16| ctx.labels.get(i as usize).cloned().unwrap_or_default();
        let kind = self.kind.unwrap_or(EventKind::Result);
        let camera = matches!(kind, EventKind::CameraOffline | EventKind::CameraOnline);
        Event {
            id,
            kind,
            device: ctx.device.clone(),
            model: ctx.model.clone(),
            source: if camera {
                ctx.uri.clone()
            } else {
                self.text().to_string()
            },
            time_unix_ms: self.unix_ms,
            snapshot,
            reason: (kind == EventKind::CameraOffline).then(|| self.text().to_string()),
            frame: (!camera).then(|| FrameFields {
                frame: self.seq,
                top: self.top[..self.top_len as usize]
                    .iter()
                    .map(|&(l, p)| (name(l), p))
                    .collect(),
                event: self.fired.map(|(l, score)| Fired {
                    label: name(l),
                    score,
                }),
                released: self.released[..self.released_len as usize]
                    .iter()
                    .map(|&l| name(l))
                    .collect(),
                heads: Heads {
                    clip: name(self.heads.0),
                    qformer: self.heads.1.map(name),
                },
                latency_ms: Latency(self.latency),
            }),
        }
    }
}

/// What names a fact's indices and stamps its events: fixed for the run.
#[derive(Debug, Clone)]
pub struct EventContext {
    /// Label names in index order.
    pub labels: Vec<String>,
    /// The device id.
    pub device: String,
    /// The bundle's name and version.
    pub model: String,
    /// The source URI.
    pub uri: String,
}

/// The device id when none is configured: the host name (`/proc/sys/kernel/hostname`), or
/// `edgefuse` when it cannot be read.
pub fn default_device_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| valid_device_id(s).is_ok())
        .unwrap_or_else(|| "edgefuse".to_string())
}

/// Whether `id` can be a device id: one MQTT topic level (no `/`, `+`, `#`, no control
/// characters), 1..=64 bytes.
pub fn valid_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!(
            "device id `{id}` must be 1 to 64 bytes long (it is one level of the MQTT topic)"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|&c| matches!(c, '/' | '+' | '#') || c.is_control())
    {
        return Err(format!(
            "device id `{}` contains {c:?}; it is one level of an MQTT topic: use letters, digits, `-`, `_`, `.`",
            id.escape_debug()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_events_carry_reason_and_no_frame_fields() {
        let ctx = EventContext {
            labels: vec!["a".into()],
            device: "cam1".into(),
            model: "m 1".into(),
            uri: "v4l2:///dev/video0".into(),
        };
        let mut f = Fact::empty();
        f.camera(EventKind::CameraOffline, "ENODEV: no such device");
        let e = f.event(7, &ctx, None);
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "camera_offline");
        assert_eq!(v["reason"], "ENODEV: no such device");
        assert_eq!(v["source"], "v4l2:///dev/video0");
        assert!(v.get("frame").is_none() && v.get("top").is_none(), "{v}");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let mut f = Fact::empty();
        let s = "é".repeat(SOURCE_BYTES);
        f.set_text(&s);
        assert_eq!(f.text().len(), SOURCE_BYTES);
        f.set_text(&format!("x{s}"));
        assert_eq!(f.text().len(), SOURCE_BYTES - 1);
    }

    #[test]
    fn device_ids_are_one_topic_level() {
        assert!(valid_device_id("jetson-01").is_ok());
        for bad in ["", "a/b", "a+", "#", "a\nb"] {
            assert!(valid_device_id(bad).is_err(), "{bad:?}");
        }
        assert!(valid_device_id(&default_device_id()).is_ok());
    }
}
