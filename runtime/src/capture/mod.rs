//! Frame sources behind one trait, chosen by URI.
//!
//! | URI | source |
//! |---|---|
//! | `v4l2:///dev/videoN?width=640&height=480&fps=30&format=yuyv` | [`v4l2::V4l2Source`] (feature `v4l`) |
//! | `file://PATH?loop=1&fps=10` | [`file::FileSource`]: one image or a folder replayed in name order |
//! | `synthetic://?width=640&height=480&format=yuyv&fps=0&frames=0` | [`synthetic::SyntheticSource`] |
//! | `csi://0?width=1920&height=1080&fps=30` | `gst::GstSource`: a Jetson CSI camera through Argus (feature `gstreamer`) |
//! | `rtsp://[user:password@]host[:port]/path?transport=tcp&latency=200` | `gst::GstSource`: an RTSP stream (feature `gstreamer`) |
//! | `gst://<pipeline ending in appsink>` | `gst::GstSource`: any GStreamer pipeline (feature `gstreamer`) |
//!
//! A camera is opened inside [`reconnect::Reconnecting`], which reopens it when it fails or
//! stalls; `synthetic://?…&fail_every=N` simulates such a camera (see [`synthetic`]).

pub mod file;
#[cfg(feature = "gstreamer")]
pub mod gst;
pub mod mjpeg;
pub mod reconnect;
mod redact;
pub mod synthetic;
#[cfg(feature = "v4l")]
pub mod v4l2;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::frame::Frame;
pub use redact::redact;

/// Errors of frame sources. Each names the URI, file or device and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The URI scheme is not one edgefuse knows.
    #[error("unknown source URI `{uri}`: use v4l2:///dev/videoN, file://PATH, synthetic://, or (built with GStreamer) csi://N, rtsp://HOST/PATH, gst://PIPELINE")]
    UnknownScheme {
        /// The URI given.
        uri: String,
    },
    /// A URI option has a bad value or is unknown.
    #[error("source `{uri}`: option `{key}={value}`: {expected}")]
    BadOption {
        /// The URI given.
        uri: String,
        /// Option name.
        key: String,
        /// Option value.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A file or folder does not exist or cannot be listed.
    #[error("{}: {message}", path.display())]
    Path {
        /// The path.
        path: PathBuf,
        /// What went wrong and what to do.
        message: String,
    },
    /// A camera device problem (missing, busy, vanished, no usable format).
    #[error("camera {device}: {message}")]
    Device {
        /// The device path.
        device: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// The source cannot produce frames the pipeline can use.
    #[error("source `{uri}`: {message}")]
    Unsupported {
        /// The URI.
        uri: String,
        /// What is unsupported and what to do.
        message: String,
    },
}

/// Counters a source keeps about input it could not use (reported in the run summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Files skipped because they are not images.
    pub skipped_non_images: u64,
    /// Images skipped because they could not be decoded (truncated, corrupt, unreadable).
    pub skipped_broken: u64,
    /// Times a live source failed or stalled and was reopened ([`reconnect::Reconnecting`]).
    pub outages: u64,
}

/// A producer of frames.
pub trait FrameSource: Send {
    /// The URI the source was opened from.
    fn uri(&self) -> &str;
    /// `true` for sources whose frames arrive on their own clock (cameras, paced replays):
    /// when inference falls behind, the oldest queued frame is dropped. Unpaced sources are
    /// replayed losslessly instead.
    fn is_live(&self) -> bool;
    /// Largest frame this source will produce, in bytes (for preallocating the ring).
    fn max_frame_bytes(&self) -> usize;
    /// Longest source name ([`Frame::source`]) this source will set, in bytes (for
    /// preallocating the ring): the URI unless the source names frames otherwise.
    fn max_source_len(&self) -> usize {
        self.uri().len()
    }
    /// Overwrite `frame` with the next frame. `Ok(false)` at the end of input.
    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError>;
    /// Counters of unusable input so far.
    fn stats(&self) -> SourceStats {
        SourceStats::default()
    }
    /// Human-readable description of the negotiated format (for `info` and logs).
    fn describe(&self) -> String {
        self.uri().to_string()
    }
    /// A handle that wakes this source while it waits for its next frame's time (a paced
    /// replay), so that stopping a run does not wait a whole frame period. A woken source ends
    /// its input (`Ok(false)`) until the handle is reset. `None` for sources that never wait
    /// longer than a camera's frame period.
    fn interrupt(&self) -> Option<Interrupt> {
        None
    }
    /// Where a source that recovers from failures ([`reconnect::Reconnecting`]) reports going
    /// offline and coming back; `None` for sources that do not.
    fn health(&self) -> Option<reconnect::HealthFeed> {
        None
    }
    /// A source that waits on a device returns an error from `next_frame` when no frame came
    /// within `timeout` (a stalled stream). Sources that never wait on a device ignore it.
    fn set_frame_timeout(&mut self, timeout: Duration) {
        let _ = timeout;
    }
    /// Frames at least `min_width × min_height` are enough (the model's input size): a source
    /// that decodes compressed frames (MJPEG) may then decode at a reduced scale, the largest
    /// divisor `s` of 1, 2, 4, 8 with `ceil(W / s) >= min_width` and `ceil(H / s) >= min_height`
    /// ([`mjpeg::Scale::for_min_size`]). Other sources ignore it and deliver full frames.
    fn set_min_size(&mut self, min_width: u32, min_height: u32) {
        let _ = (min_width, min_height);
    }
}

/// How live sources are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// A live source that delivers no frame for this long is treated as failed and reopened.
    pub stall_timeout: Duration,
    /// When reopen attempts are made.
    pub backoff: reconnect::Backoff,
}

/// The default of [`OpenOptions::stall_timeout`].
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            backoff: reconnect::Backoff::DEFAULT,
        }
    }
}

/// Wakes a [`Pacer`] sleeping until its next frame is due (see [`FrameSource::interrupt`]).
/// Clones share one state; firing it stays in effect until [`Interrupt::reset`]. Neither
/// firing nor waiting allocates.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<(Mutex<bool>, Condvar)>);

impl Interrupt {
    /// Wake the waiting source now, and make every later wait return at once.
    pub fn fire(&self) {
        let (fired, changed) = &*self.0;
        *fired.lock().unwrap_or_else(PoisonError::into_inner) = true;
        changed.notify_all();
    }

    /// Let waits sleep again (for a source reused by another run).
    pub fn reset(&self) {
        *self.0 .0.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }

    /// Whether [`Interrupt::fire`] was called since the last reset.
    pub fn is_fired(&self) -> bool {
        *self.0 .0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleep until `due`, or less if fired. Returns `true` when fired.
    pub fn sleep_until(&self, due: Instant) -> bool {
        let (fired, changed) = &*self.0;
        let mut f = fired.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if *f {
                return true;
            }
            let now = Instant::now();
            if now >= due {
                return false;
            }
            f = changed
                .wait_timeout(f, due - now)
                .map_or_else(|p| p.into_inner().0, |(g, _)| g);
        }
    }
}

/// Open a source from its URI, with the default [`OpenOptions`].
pub fn open(uri: &str) -> Result<Box<dyn FrameSource>, CaptureError> {
    open_with(uri, &OpenOptions::default())
}

/// Open a source from its URI. A camera (and a simulated one, `synthetic://?fail_every=N`) is
/// wrapped in [`reconnect::Reconnecting`]; a replay is not (its end ends the run).
pub fn open_with(uri: &str, opts: &OpenOptions) -> Result<Box<dyn FrameSource>, CaptureError> {
    // GStreamer sources read their URI raw: a pipeline's text is not percent-decoded, and an
    // RTSP URI's credentials are split off before they are.
    if let Some((scheme, _)) = uri.split_once("://") {
        if GST_SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
            return open_gst(uri, opts);
        }
    }
    let parsed = Uri::parse(uri)?;
    match parsed.scheme.as_str() {
        "file" => Ok(Box::new(file::FileSource::open(&parsed)?)),
        "synthetic" if parsed.options.iter().any(|(k, _)| k == "fail_every") => {
            Ok(Box::new(reconnect::Reconnecting::open(
                uri,
                opts.stall_timeout,
                opts.backoff,
                synthetic::simulated_camera(parsed)?,
            )?))
        }
        "synthetic" => Ok(Box::new(synthetic::SyntheticSource::open(&parsed)?)),
        "v4l2" => open_v4l2(parsed, opts),
        _ => Err(CaptureError::UnknownScheme {
            uri: uri.to_string(),
        }),
    }
}

#[cfg(feature = "v4l")]
fn open_v4l2(uri: Uri, opts: &OpenOptions) -> Result<Box<dyn FrameSource>, CaptureError> {
    let raw = uri.raw.clone();
    let opener: reconnect::Opener = Box::new(move |_: &Interrupt| {
        Ok(Box::new(v4l2::V4l2Source::open(&uri)?) as Box<dyn FrameSource>)
    });
    Ok(Box::new(reconnect::Reconnecting::open(
        &raw,
        opts.stall_timeout,
        opts.backoff,
        opener,
    )?))
}

#[cfg(not(feature = "v4l"))]
fn open_v4l2(uri: Uri, _: &OpenOptions) -> Result<Box<dyn FrameSource>, CaptureError> {
    Err(CaptureError::Unsupported {
        uri: uri.raw.clone(),
        message: "this edgefuse was built without V4L2 support; rebuild with `--features v4l`"
            .into(),
    })
}

/// The schemes of the GStreamer sources (feature `gstreamer`).
const GST_SCHEMES: [&str; 4] = ["csi", "rtsp", "rtsps", "gst"];

#[cfg(feature = "gstreamer")]
fn open_gst(uri: &str, opts: &OpenOptions) -> Result<Box<dyn FrameSource>, CaptureError> {
    gst::open(uri, opts)
}

#[cfg(not(feature = "gstreamer"))]
fn open_gst(uri: &str, _: &OpenOptions) -> Result<Box<dyn FrameSource>, CaptureError> {
    // Credentials in an rtsp:// URI stay out of the error.
    let shown = redact(uri);
    Err(CaptureError::Unsupported {
        uri: shown,
        message: "this edgefuse was built without GStreamer support (csi://, rtsp://, gst://); rebuild with `--features gstreamer` (needs libgstreamer1.0-dev and libgstreamer-plugins-base1.0-dev)"
            .into(),
    })
}

/// A parsed source URI: `scheme://path?key=value&…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// The URI as given.
    pub raw: String,
    /// Lower-case scheme.
    pub scheme: String,
    /// Everything between `://` and `?`.
    pub path: String,
    /// Options in order.
    pub options: Vec<(String, String)>,
}

impl Uri {
    /// Split a URI at its first `?`; options without `=` get the value `1`. The path and the
    /// options are percent-decoded (`%3F` is a `?` in a file name, `%25` a `%`, `%26` an `&`);
    /// a `%` not followed by two hex digits is kept as it is.
    pub fn parse(uri: &str) -> Result<Self, CaptureError> {
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(CaptureError::UnknownScheme {
                uri: uri.to_string(),
            });
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, q),
            None => (rest, ""),
        };
        let decode = |what: &str, s: &str| {
            percent_decode(s).ok_or_else(|| CaptureError::BadOption {
                uri: uri.to_string(),
                key: what.to_string(),
                value: s.to_string(),
                expected: "its percent-encoding (%XX) decodes to bytes that are not UTF-8".into(),
            })
        };
        let mut options = Vec::new();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, "1"));
            options.push((decode(k, k)?.to_ascii_lowercase(), decode(k, v)?));
        }
        Ok(Self {
            raw: uri.to_string(),
            scheme: scheme.to_ascii_lowercase(),
            path: decode("path", path)?,
            options,
        })
    }

    /// Fail on options not in `known`.
    pub fn check_known(&self, known: &[&str]) -> Result<(), CaptureError> {
        for (k, v) in &self.options {
            if !known.contains(&k.as_str()) {
                return Err(self.bad(
                    k,
                    v,
                    &format!("unknown option; this source accepts {}", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// The value of option `key`, parsed, or `default`.
    pub fn get<T: std::str::FromStr>(
        &self,
        key: &str,
        default: T,
        expected: &str,
    ) -> Result<T, CaptureError> {
        match self.options.iter().rev().find(|(k, _)| k == key) {
            None => Ok(default),
            Some((k, v)) => v.parse().map_err(|_| self.bad(k, v, expected)),
        }
    }

    /// A boolean option (`1/0/true/false/yes/no`).
    pub fn flag(&self, key: &str) -> Result<bool, CaptureError> {
        match self.options.iter().rev().find(|(k, _)| k == key) {
            None => Ok(false),
            Some((k, v)) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(self.bad(k, v, "expected true or false")),
            },
        }
    }

    /// A `BadOption` error for this URI.
    pub fn bad(&self, key: &str, value: &str, expected: &str) -> CaptureError {
        CaptureError::BadOption {
            uri: self.raw.clone(),
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }

    /// The `fps` option: `None` (unpaced) when absent or 0; otherwise within
    /// [`MIN_FPS`]`..=`[`MAX_FPS`], so the frame period always fits a `Duration`.
    pub fn fps(&self) -> Result<Option<f64>, CaptureError> {
        let fps: f64 = self.get(
            "fps",
            0.0,
            "expected a frame rate in frames per second, e.g. fps=30",
        )?;
        if fps == 0.0 {
            return Ok(None);
        }
        if !fps.is_finite() || !(MIN_FPS..=MAX_FPS).contains(&fps) {
            let raw = self
                .options
                .iter()
                .rev()
                .find(|(k, _)| k == "fps")
                .map_or_else(|| fps.to_string(), |(_, v)| v.clone());
            return Err(self.bad(
                "fps",
                &raw,
                &format!(
                    "expected 0 (unpaced) or a frame rate from {MIN_FPS} (one frame every {} s) to {MAX_FPS} frames per second",
                    1.0 / MIN_FPS
                ),
            ));
        }
        Ok(Some(fps))
    }
}

/// Decode `%XX` escapes; a `%` without two hex digits stays as it is. `None` when the result
/// is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The slowest paced rate a source accepts (one frame every 10 000 s, about 2.8 hours).
pub const MIN_FPS: f64 = 1e-4;
/// The fastest paced rate a source accepts.
pub const MAX_FPS: f64 = 10_000.0;

/// Sleeps so that successive frames are released at a fixed rate; an [`Interrupt`] cuts the
/// sleep short.
#[derive(Debug, Clone)]
pub struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
    interrupt: Interrupt,
}

impl Pacer {
    /// A pacer at `fps` frames per second; `None` never waits.
    pub fn new(fps: Option<f64>) -> Self {
        Self {
            // `Uri::fps` keeps the rate in MIN_FPS..=MAX_FPS; a rate whose period does not fit
            // a Duration (only reachable by calling this directly) is clamped, not a panic.
            period: fps.map(|f| {
                Duration::try_from_secs_f64(1.0 / f.clamp(MIN_FPS, MAX_FPS))
                    .unwrap_or(Duration::from_secs(1))
            }),
            next: None,
            interrupt: Interrupt::default(),
        }
    }

    /// The handle that cuts [`Pacer::wait`] short.
    pub fn interrupt(&self) -> Interrupt {
        self.interrupt.clone()
    }

    /// Wake on `interrupt` instead (a wrapper's, shared by every source it opens).
    pub fn set_interrupt(&mut self, interrupt: Interrupt) {
        self.interrupt = interrupt;
    }

    /// Wait until the next frame is due. Returns `false` when interrupted (the caller ends its
    /// input), `true` otherwise.
    #[must_use]
    pub fn wait(&mut self) -> bool {
        let Some(period) = self.period else {
            return !self.interrupt.is_fired();
        };
        let now = Instant::now();
        let due = self.next.unwrap_or(now);
        if self.interrupt.sleep_until(due) {
            return false;
        }
        // If we are late by more than a period, resynchronise instead of bursting.
        let base = if now > due + period { now } else { due };
        self.next = Some(base + period);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris() {
        let u = Uri::parse("file:///tmp/x?loop&fps=5").unwrap();
        assert_eq!(u.scheme, "file");
        assert_eq!(u.path, "/tmp/x");
        assert!(u.flag("loop").unwrap());
        assert_eq!(u.fps().unwrap(), Some(5.0));
        assert!(matches!(
            Uri::parse("/dev/video0"),
            Err(CaptureError::UnknownScheme { .. })
        ));
        let e = Uri::parse("synthetic://?fps=abc")
            .unwrap()
            .fps()
            .unwrap_err();
        assert!(e.to_string().contains("fps=abc"), "{e}");
    }

    #[test]
    fn a_question_mark_or_percent_escapes_in_a_path_reach_the_file_name() {
        let u = Uri::parse("file:///tmp/a%3Fb%20c%25/x.png?loop&fps=2").unwrap();
        assert_eq!(u.path, "/tmp/a?b c%/x.png");
        assert!(u.flag("loop").unwrap());
        assert_eq!(u.fps().unwrap(), Some(2.0));
        // The first `?` starts the query: a literal `?` later is part of an option.
        let u = Uri::parse("file:///tmp/x?loop&fps=1?").unwrap();
        assert_eq!(u.path, "/tmp/x");
        // A `%` without two hex digits is kept; a trailing one too.
        assert_eq!(Uri::parse("file:///100%.png").unwrap().path, "/100%.png");
        assert_eq!(Uri::parse("file:///a%4").unwrap().path, "/a%4");
        assert_eq!(Uri::parse("file:///a%").unwrap().path, "/a%");
        assert_eq!(Uri::parse("file:///%e7%8c%ab").unwrap().path, "/猫");
        // Escapes that decode to non-UTF-8 are refused, naming the URI.
        let e = Uri::parse("file:///a%ff").unwrap_err().to_string();
        assert!(e.contains("file:///a%ff") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn fps_out_of_range_is_refused_with_the_value_and_the_range() {
        for v in ["1e-20", "0.00001", "-1", "10001", "1e300", "inf", "NaN"] {
            let uri = format!("synthetic://?fps={v}");
            let e = Uri::parse(&uri).unwrap().fps().unwrap_err().to_string();
            assert!(e.contains(&format!("fps={v}")), "{e}");
            assert!(e.contains("0.0001") && e.contains("10000"), "{e}");
            // Opening the source is refused the same way, without a panic.
            let e = open(&uri).err().unwrap().to_string();
            assert!(e.contains(&format!("fps={v}")), "{e}");
        }
        for (v, want) in [("0", None), ("0.0001", Some(1e-4)), ("10000", Some(1e4))] {
            let u = Uri::parse(&format!("synthetic://?fps={v}")).unwrap();
            assert_eq!(u.fps().unwrap(), want);
        }
        // The pacer never panics, even on a rate that bypassed the URI check.
        let _ = Pacer::new(Some(1e-20));
        let _ = Pacer::new(Some(f64::MIN_POSITIVE));
    }

    #[test]
    fn an_interrupt_cuts_a_long_pacer_wait_short() {
        let mut pacer = Pacer::new(Some(MIN_FPS));
        assert!(pacer.wait(), "the first frame is due at once");
        let interrupt = pacer.interrupt();
        let firer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            interrupt.fire();
        });
        let t = Instant::now();
        assert!(!pacer.wait(), "interrupted");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        firer.join().unwrap();
        // Fired stays fired (a later wait returns at once) until reset.
        assert!(!pacer.wait());
        pacer.interrupt().reset();
        assert!(!pacer.interrupt().is_fired());
    }

    #[test]
    fn unknown_scheme_is_named() {
        let e = open("ftp://cam").err().unwrap();
        assert!(e.to_string().contains("ftp://cam"), "{e}");
        assert!(e.to_string().contains("v4l2://"), "{e}");
        assert!(e.to_string().contains("rtsp://"), "{e}");
    }

    #[cfg(not(feature = "gstreamer"))]
    #[test]
    fn gstreamer_schemes_without_the_feature_say_how_to_get_it() {
        for uri in [
            "csi://0",
            "RTSP://u:secret@cam/live",
            "gst://videotestsrc ! appsink",
        ] {
            let e = open(uri).err().unwrap().to_string();
            assert!(e.contains("--features gstreamer"), "{e}");
            assert!(!e.contains("secret"), "{e}");
        }
        let e = open("rtsp://u:secret@cam/live").err().unwrap().to_string();
        assert!(e.contains("rtsp://u:***@cam/live"), "{e}");
    }

    #[test]
    fn unknown_option_is_refused() {
        let e = open("synthetic://?colour=red").err().unwrap();
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
