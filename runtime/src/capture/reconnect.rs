//! Camera recovery: [`Reconnecting`] wraps a live source (a V4L2 camera today, RTSP or CSI
//! sources later) and reopens it in-process when it fails.
//!
//! A failure is any error from the source's `next_frame` (the device vanished: `ENODEV`, `EIO`;
//! a stalled stream: no frame within the stall timeout, which the wrapper hands to every source
//! it opens through [`FrameSource::set_frame_timeout`]) or the end of its stream (a camera does
//! not end). The wrapper then closes the source (so a replugged USB camera gets its device node
//! back), reports [`Health::Offline`] with the reason, and reopens it on a fixed exponential
//! schedule ([`Backoff`]: deterministic, no jitter, so tests can count on it). The first frame
//! after a reopen reports [`Health::Online`]; frames go on with continuous sequence numbers.
//!
//! State changes reach the inference thread through a [`HealthFeed`] (see
//! [`FrameSource::health`]): a small bounded queue checked with one atomic load per frame. While
//! the source is online the wrapper adds no allocation to a frame.
//!
//! A file or synthetic replay is never wrapped: its end is the end of the run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{CaptureError, FrameSource, Interrupt, SourceStats};
use crate::frame::Frame;

/// How long a reopen waits before each attempt: the first attempt at once (a glitch of the USB
/// bus), then `first`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait before the second attempt.
    pub first: Duration,
    /// Longest wait between two attempts.
    pub max: Duration,
}

impl Backoff {
    /// 0, 200 ms, 400 ms, 800 ms, 1.6 s, 3.2 s, then every 5 s.
    pub const DEFAULT: Backoff = Backoff {
        first: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };

    /// The wait before attempt `n` (0-based) of one outage.
    pub fn delay(&self, n: u32) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let doubled = self.first.saturating_mul(1u32 << (n - 1).min(20));
        doubled.min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A live source's state as the run sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The source failed or stalled; it is being reopened.
    Offline,
    /// The source delivers frames again.
    Online,
}

/// One change of a source's [`Health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    /// The new state.
    pub state: Health,
    /// Offline: the error or the stall that took the source down. Online: how long it was
    /// offline and how many reopen attempts it took.
    pub reason: String,
}

/// Most changes queued for the inference thread; older ones are dropped (and counted) first.
const FEED_CAPACITY: usize = 32;

#[derive(Debug, Default)]
struct FeedInner {
    pending: AtomicUsize,
    queue: Mutex<VecDeque<HealthChange>>,
    lost: AtomicU64,
}

/// Health changes from the capture thread to the inference thread. Clones share one queue.
#[derive(Debug, Clone, Default)]
pub struct HealthFeed(Arc<FeedInner>);

impl HealthFeed {
    /// Queue a change (the capture side). A full queue drops its oldest change, counted in
    /// [`HealthFeed::lost`].
    pub fn push(&self, change: HealthChange) {
        let mut q = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() >= FEED_CAPACITY {
            q.pop_front();
            self.0.lost.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(change);
        self.0.pending.store(q.len(), Ordering::Release);
    }

    /// The oldest change not taken yet (the inference side): one atomic load when there is
    /// none, so it can be asked on every frame.
    pub fn take(&self) -> Option<HealthChange> {
        if self.0.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut q = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let c = q.pop_front();
        self.0.pending.store(q.len(), Ordering::Release);
        c
    }

    /// Changes dropped because nobody took them in time.
    pub fn lost(&self) -> u64 {
        self.0.lost.load(Ordering::Relaxed)
    }
}

/// Opens (and reopens) the wrapped source. The [`Interrupt`] is the wrapper's: a source that
/// waits (a paced one) should wake on it.
pub type Opener =
    Box<dyn FnMut(&Interrupt) -> Result<Box<dyn FrameSource>, CaptureError> + Send + 'static>;

/// A live source that is reopened when it fails (see the module documentation).
pub struct Reconnecting {
    uri: String,
    current: Option<Box<dyn FrameSource>>,
    open: Opener,
    backoff: Backoff,
    stall_timeout: Duration,
    /// [`FrameSource::set_min_size`], handed to every source opened.
    min_size: Option<(u32, u32)>,
    interrupt: Interrupt,
    feed: HealthFeed,
    live: bool,
    max_frame_bytes: usize,
    max_source_len: usize,
    description: String,
    seq: u64,
    outages: u64,
    /// Set while offline, until the first frame after a reopen.
    offline_since: Option<Instant>,
    attempts: u32,
    /// Counters of the sources closed so far.
    closed_stats: SourceStats,
}

impl std::fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconnecting")
            .field("uri", &self.uri)
            .field("online", &self.offline_since.is_none())
            .field("outages", &self.outages)
            .finish()
    }
}

impl Reconnecting {
    /// Open the source once through `open` (an error here is returned: a camera that is not
    /// there at start is a configuration problem to report, not to wait for), then keep it
    /// open. `stall_timeout` is handed to every source opened.
    pub fn open(
        uri: &str,
        stall_timeout: Duration,
        backoff: Backoff,
        mut open: Opener,
    ) -> Result<Self, CaptureError> {
        let interrupt = Interrupt::default();
        let mut first = open(&interrupt)?;
        first.set_frame_timeout(stall_timeout);
        Ok(Self {
            uri: uri.to_string(),
            live: first.is_live(),
            max_frame_bytes: first.max_frame_bytes(),
            max_source_len: first.max_source_len(),
            description: first.describe(),
            current: Some(first),
            open,
            backoff,
            stall_timeout,
            min_size: None,
            interrupt,
            feed: HealthFeed::default(),
            seq: 0,
            outages: 0,
            offline_since: None,
            attempts: 0,
            closed_stats: SourceStats::default(),
        })
    }

    /// Times the source went offline so far.
    pub fn outages(&self) -> u64 {
        self.outages
    }

    fn go_offline(&mut self, reason: String) {
        if let Some(s) = self.current.take() {
            let st = s.stats();
            self.closed_stats.skipped_non_images += st.skipped_non_images;
            self.closed_stats.skipped_broken += st.skipped_broken;
        }
        if self.offline_since.is_none() {
            self.outages += 1;
            self.offline_since = Some(Instant::now());
            self.attempts = 0;
            log::debug!("{}: offline ({reason}); reopening", self.uri);
            self.feed.push(HealthChange {
                state: Health::Offline,
                reason,
            });
        } else {
            log::debug!("{}: failed again before a frame ({reason})", self.uri);
        }
    }

    /// Reopen with backoff until it works. `Ok(false)` when interrupted (the run ends).
    fn reopen(&mut self) -> Result<bool, CaptureError> {
        let mut last_reason = String::new();
        loop {
            let wait = self.backoff.delay(self.attempts);
            if self.interrupt.sleep_until(Instant::now() + wait) {
                return Ok(false);
            }
            self.attempts = self.attempts.saturating_add(1);
            match (self.open)(&self.interrupt) {
                Ok(mut s) => {
                    if s.max_frame_bytes() > self.max_frame_bytes {
                        return Err(CaptureError::Device {
                            device: self.uri.clone(),
                            message: format!(
                                "came back with larger frames ({} bytes) than the run was sized for ({} bytes: {}); restart edgefuse to use the new format",
                                s.max_frame_bytes(),
                                self.max_frame_bytes,
                                self.description
                            ),
                        });
                    }
                    s.set_frame_timeout(self.stall_timeout);
                    if let Some((w, h)) = self.min_size {
                        s.set_min_size(w, h);
                    }
                    log::debug!(
                        "{}: reopened on attempt {} ({})",
                        self.uri,
                        self.attempts,
                        s.describe()
                    );
                    self.current = Some(s);
                    return Ok(true);
                }
                Err(e) => {
                    let reason = e.to_string();
                    if reason != last_reason {
                        log::info!(
                            "reopen attempt {} failed: {reason}; retrying (next in {:?})",
                            self.attempts,
                            self.backoff.delay(self.attempts)
                        );
                        last_reason = reason;
                    } else {
                        log::debug!("{}: reopen attempt {} failed", self.uri, self.attempts);
                    }
                }
            }
        }
    }
}

impl FrameSource for Reconnecting {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn is_live(&self) -> bool {
        self.live
    }

    fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    fn max_source_len(&self) -> usize {
        self.max_source_len
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        loop {
            if self.interrupt.is_fired() {
                return Ok(false);
            }
            let Some(source) = self.current.as_mut() else {
                if !self.reopen()? {
                    return Ok(false);
                }
                continue;
            };
            match source.next_frame(frame) {
                Ok(true) => {
                    frame.seq = self.seq;
                    self.seq += 1;
                    if let Some(since) = self.offline_since.take() {
                        self.feed.push(HealthChange {
                            state: Health::Online,
                            reason: format!(
                                "back after {:.1} s offline ({} reopen attempt{})",
                                since.elapsed().as_secs_f64(),
                                self.attempts,
                                if self.attempts == 1 { "" } else { "s" }
                            ),
                        });
                    }
                    return Ok(true);
                }
                Ok(false) if self.interrupt.is_fired() => return Ok(false),
                Ok(false) => self.go_offline("the stream ended".to_string()),
                Err(e) => self.go_offline(e.to_string()),
            }
        }
    }

    fn stats(&self) -> SourceStats {
        let now = self.current.as_ref().map(|s| s.stats()).unwrap_or_default();
        SourceStats {
            skipped_non_images: self.closed_stats.skipped_non_images + now.skipped_non_images,
            skipped_broken: self.closed_stats.skipped_broken + now.skipped_broken,
            outages: self.outages,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} (reopened when it fails or stalls for {:?})",
            self.description, self.stall_timeout
        )
    }

    fn interrupt(&self) -> Option<Interrupt> {
        Some(self.interrupt.clone())
    }

    fn health(&self) -> Option<HealthFeed> {
        Some(self.feed.clone())
    }

    fn set_frame_timeout(&mut self, timeout: Duration) {
        self.stall_timeout = timeout;
        if let Some(s) = self.current.as_mut() {
            s.set_frame_timeout(timeout);
        }
    }

    fn set_min_size(&mut self, min_width: u32, min_height: u32) {
        self.min_size = Some((min_width, min_height));
        if let Some(s) = self.current.as_mut() {
            s.set_min_size(min_width, min_height);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_doubles_from_zero_up_to_the_cap() {
        let ms = Duration::from_millis;
        let b = Backoff::DEFAULT;
        let got: Vec<Duration> = (0..9).map(|n| b.delay(n)).collect();
        assert_eq!(
            got,
            [0, 200, 400, 800, 1600, 3200, 5000, 5000, 5000].map(ms)
        );
        assert_eq!(b.delay(u32::MAX), ms(5000), "no overflow");
    }

    /// A source that delivers `frames` frames of `bytes` bytes, then fails.
    struct Scripted {
        frames: u32,
        bytes: usize,
    }

    impl FrameSource for Scripted {
        fn uri(&self) -> &str {
            "test://"
        }
        fn is_live(&self) -> bool {
            true
        }
        fn max_frame_bytes(&self) -> usize {
            self.bytes
        }
        fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
            if self.frames == 0 {
                return Err(CaptureError::Device {
                    device: "test".into(),
                    message: "gone (ENODEV)".into(),
                });
            }
            self.frames -= 1;
            frame.seq = 999;
            Ok(true)
        }
    }

    /// Opens: the first works, then `plan` says for each later attempt whether it works and
    /// with how large frames.
    fn opener(plan: Vec<Option<usize>>) -> Opener {
        let mut plan = plan.into_iter();
        let mut first = true;
        Box::new(move |_: &Interrupt| {
            let bytes = if std::mem::take(&mut first) {
                Some(100)
            } else {
                plan.next().unwrap_or(None)
            };
            match bytes {
                Some(bytes) => Ok(Box::new(Scripted { frames: 2, bytes }) as Box<dyn FrameSource>),
                None => Err(CaptureError::Device {
                    device: "test".into(),
                    message: "not there".into(),
                }),
            }
        })
    }

    #[test]
    fn offline_then_online_with_frame_numbers_going_on() {
        let fast = Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let mut r = Reconnecting::open(
            "test://",
            Duration::from_secs(1),
            fast,
            opener(vec![None, None, Some(100), Some(80), Some(200)]),
        )
        .unwrap();
        let feed = r.health().unwrap();
        let mut f = Frame::with_capacity(100);
        let mut seqs = Vec::new();
        let mut states = Vec::new();
        for _ in 0..6 {
            assert!(r.next_frame(&mut f).unwrap());
            seqs.push(f.seq);
            states.extend(std::iter::from_fn(|| feed.take()).map(|c| c.state));
        }
        assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
        use Health::*;
        assert_eq!(states, [Offline, Online, Offline, Online]);
        assert_eq!(r.stats().outages, 2);
        // A source that comes back with larger frames than the ring holds ends the run.
        let e = r.next_frame(&mut f).unwrap_err().to_string();
        assert!(e.contains("larger frames (200 bytes)"), "{e}");
    }

    #[test]
    fn stopping_cuts_the_backoff_short() {
        let slow = Backoff {
            first: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
        };
        let mut r = Reconnecting::open("test://", Duration::from_secs(1), slow, opener(vec![None]))
            .unwrap();
        let stop = r.interrupt().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            stop.fire();
        });
        let mut f = Frame::with_capacity(100);
        let started = Instant::now();
        let mut n = 0;
        while r.next_frame(&mut f).unwrap() {
            n += 1;
        }
        assert_eq!(n, 2);
        assert!(started.elapsed() < Duration::from_secs(60));
        t.join().unwrap();
    }

    #[test]
    fn the_feed_keeps_order_and_counts_what_it_drops() {
        let f = HealthFeed::default();
        assert_eq!(f.take(), None);
        for i in 0..FEED_CAPACITY + 3 {
            f.push(HealthChange {
                state: if i % 2 == 0 {
                    Health::Offline
                } else {
                    Health::Online
                },
                reason: i.to_string(),
            });
        }
        assert_eq!(f.lost(), 3);
        let all: Vec<String> = std::iter::from_fn(|| f.take()).map(|c| c.reason).collect();
        assert_eq!(all.len(), FEED_CAPACITY);
        assert_eq!(all[0], "3");
        assert_eq!(f.take(), None);
    }
}
