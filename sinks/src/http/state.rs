//! What the inference thread publishes for the server: one [`Status`] behind a mutex held only
//! for a copy, and the latest frame's pixels in a preallocated buffer. Nothing here allocates
//! on the inference thread after construction.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use edgefuse_runtime::frame::PixelFormat;
use edgefuse_runtime::pipeline::{FrameResult, STAGES};

use super::health::Health;
use crate::event::{EventKind, Fact};

/// Frames whose stage latencies the page plots (the most recent ones).
pub const HISTORY: usize = 240;
/// Events the page lists and an `/events` client can catch up on.
pub const EVENT_HISTORY: usize = 32;
/// Most labels kept per frame (the pipeline's top-k limit).
pub const MAX_TOP: usize = 16;
/// Longest frame source name kept (a file name); longer ones are cut.
pub const SOURCE_CAPACITY: usize = 256;

/// The run as the page and the metrics see it; copied out whole by the server.
#[derive(Debug, Clone)]
pub struct Status {
    /// Frames classified.
    pub frames: u64,
    /// Frames the source numbered but the run did not classify (dropped behind inference,
    /// not triggered, broken), from gaps in the sequence numbers.
    pub skipped: u64,
    /// Events so far (frames that fired or released labels, the camera going offline and
    /// back); the index of the next one.
    pub events: u64,
    /// Last frame's sequence number.
    pub seq: u64,
    /// Last frame's source name (file name), cut to [`SOURCE_CAPACITY`].
    pub source: String,
    /// Last frame's best labels, `top[..top_len]`.
    pub top: [(u16, f32); MAX_TOP],
    /// How many of `top` are set.
    pub top_len: usize,
    /// Top-1 of the CLIP head and the Q-Former head.
    pub heads: (u16, Option<u16>),
    /// Stage latencies of the last [`HISTORY`] frames (ring; ms), see [`STAGES`].
    pub latency_ms: [[f32; STAGES.len()]; HISTORY],
    /// When each of those frames was classified, ms since the sink started.
    pub at_ms: [u64; HISTORY],
    /// Last events as the event sinks' facts (ring, `events % EVENT_HISTORY` is the next slot).
    pub recent_events: [Fact; EVENT_HISTORY],
    /// Times the models moved to the fallback backend (see `FrameResult::fallbacks`).
    pub fallbacks: u32,
    /// The health state machine.
    pub health: Health,
}

impl Status {
    fn new(stall_after: Option<Duration>) -> Self {
        Self {
            frames: 0,
            skipped: 0,
            events: 0,
            seq: 0,
            source: String::with_capacity(SOURCE_CAPACITY),
            top: [(0, 0.0); MAX_TOP],
            top_len: 0,
            heads: (0, None),
            latency_ms: [[0.0; STAGES.len()]; HISTORY],
            at_ms: [0; HISTORY],
            recent_events: [Fact::empty(); EVENT_HISTORY],
            fallbacks: 0,
            health: Health::new(stall_after),
        }
    }

    /// The kept latency rows, oldest first: `(ms since start, per-stage ms)`.
    pub fn history(&self) -> impl Iterator<Item = (u64, &[f32; STAGES.len()])> {
        let n = (self.frames as usize).min(HISTORY);
        let first = self.frames as usize - n;
        (first..self.frames as usize)
            .map(|i| (self.at_ms[i % HISTORY], &self.latency_ms[i % HISTORY]))
    }

    /// The kept events, oldest first.
    pub fn event_history(&self) -> impl Iterator<Item = (u64, &Fact)> {
        let n = (self.events as usize).min(EVENT_HISTORY);
        let first = self.events - n as u64;
        (first..self.events).map(|i| (i, &self.recent_events[i as usize % EVENT_HISTORY]))
    }
}

/// The latest frame's pixels, copied at most a few times a second while someone looks.
#[derive(Debug)]
pub struct Pixels {
    /// Bytes, `format.frame_len(width, height)` long (capacity fixed at construction).
    pub data: Vec<u8>,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Layout.
    pub format: PixelFormat,
    /// The frame's sequence number; `None` before the first copy.
    pub seq: Option<u64>,
}

/// State shared by the inference thread and the server.
#[derive(Debug)]
pub struct Shared {
    /// When the sink started.
    pub started: Instant,
    status: Mutex<Status>,
    pixels: Mutex<Pixels>,
    /// Frames too large for the pixel buffer (not copied; counted).
    pub oversized: std::sync::atomic::AtomicU64,
    /// Until when (ms since `started`) someone wants pixels; 0 = nobody.
    pub wanted_until_ms: std::sync::atomic::AtomicU64,
    /// The minimum time between two pixel copies.
    pub copy_every: Duration,
    last_copy: Mutex<Option<Instant>>,
}

/// A poisoned lock still holds consistent plain data (no invariant spans a panic): use it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// State for frames of at most `max_frame_bytes` bytes, copying pixels at most
    /// `snapshots_per_s` times a second.
    pub fn new(
        max_frame_bytes: usize,
        snapshots_per_s: f64,
        stall_after: Option<Duration>,
    ) -> Self {
        Self {
            started: Instant::now(),
            status: Mutex::new(Status::new(stall_after)),
            pixels: Mutex::new(Pixels {
                data: Vec::with_capacity(max_frame_bytes),
                width: 0,
                height: 0,
                format: PixelFormat::Rgb,
                seq: None,
            }),
            oversized: Default::default(),
            wanted_until_ms: Default::default(),
            copy_every: Duration::from_secs_f64(1.0 / snapshots_per_s.clamp(0.1, 30.0)),
            last_copy: Mutex::new(None),
        }
    }

    /// The status, locked (for a copy or an update; never held across slow work).
    pub fn status(&self) -> MutexGuard<'_, Status> {
        lock(&self.status)
    }

    /// The pixels, locked.
    pub fn pixels(&self) -> MutexGuard<'_, Pixels> {
        lock(&self.pixels)
    }

    fn ms_since_start(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Someone asked for the picture: keep copying frames for the next 10 s.
    pub fn want_pixels(&self) {
        let until = self.ms_since_start(Instant::now()) + 10_000;
        self.wanted_until_ms
            .fetch_max(until, std::sync::atomic::Ordering::Relaxed);
    }

    /// Record that the source went offline (with `reason`) or came back, as an event.
    pub fn camera(&self, offline: bool, reason: &str) {
        let mut s = self.status();
        s.health.source(offline, reason);
        let slot = s.events as usize % EVENT_HISTORY;
        let kind = if offline {
            EventKind::CameraOffline
        } else {
            EventKind::CameraOnline
        };
        s.recent_events[slot].camera(kind, reason);
        s.events += 1;
    }

    /// Publish one classified frame (inference thread; no allocation). `uri` names the source
    /// of a frame without a name of its own.
    pub fn publish(&self, r: &FrameResult<'_>, uri: &str) {
        let now = Instant::now();
        let now_ms = self.ms_since_start(now);
        {
            let mut s = self.status();
            if s.frames > 0 && r.frame.seq > s.seq + 1 {
                s.skipped += r.frame.seq - s.seq - 1;
            }
            s.seq = r.frame.seq;
            s.source.clear();
            let name = r.frame.source.as_str();
            let mut end = name.len().min(SOURCE_CAPACITY);
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            s.source.push_str(&name[..end]);
            let n = r.top.len().min(MAX_TOP);
            for (dst, src) in s.top.iter_mut().zip(r.top.iter()) {
                *dst = *src;
            }
            s.top_len = n;
            s.heads = (r.heads.clip, r.heads.qformer);
            s.fallbacks = r.fallbacks;
            let slot = s.frames as usize % HISTORY;
            for (dst, d) in s.latency_ms[slot].iter_mut().zip(r.times.0) {
                *dst = (d.as_secs_f64() * 1000.0) as f32;
            }
            s.at_ms[slot] = now_ms;
            s.frames += 1;
            if Fact::kind_of(r).is_some() {
                let slot = s.events as usize % EVENT_HISTORY;
                s.recent_events[slot].fill(r, uri);
                s.events += 1;
            }
            s.health.frame(now);
        }
        let wanted = self
            .wanted_until_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if now_ms >= wanted {
            return;
        }
        {
            let mut last = lock(&self.last_copy);
            if last.is_some_and(|t| now.saturating_duration_since(t) < self.copy_every) {
                return;
            }
            *last = Some(now);
        }
        // Never wait for the server here: a busy buffer skips this frame's copy.
        let Ok(mut p) = self.pixels.try_lock() else {
            return;
        };
        let f = r.frame;
        if f.data.len() > p.data.capacity() {
            self.oversized
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        p.data.clear();
        p.data.extend_from_slice(&f.data);
        p.width = f.width;
        p.height = f.height;
        p.format = f.format;
        p.seq = Some(f.seq);
    }
}
