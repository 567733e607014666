//! Frame sources behind one trait, chosen by URI.
//!
//! | URI | source |
//! |---|---|
//! | `v4l2:///dev/videoN?width=640&height=480&fps=30&format=yuyv` | [`v4l2::V4l2Source`] (feature `v4l`) |
//! | `file://PATH?loop=1&fps=10` | [`file::FileSource`]: one image or a folder replayed in name order |
//! | `synthetic://?width=640&height=480&format=yuyv&fps=0&frames=0` | [`synthetic::SyntheticSource`] |

pub mod file;
pub mod synthetic;
#[cfg(feature = "v4l")]
pub mod v4l2;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::frame::Frame;

/// Errors of frame sources. Each names the URI, file or device and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The URI scheme is not one edgefuse knows.
    #[error("unknown source URI `{uri}`: use v4l2:///dev/videoN, file://PATH or synthetic://")]
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

/// Open a source from its URI.
pub fn open(uri: &str) -> Result<Box<dyn FrameSource>, CaptureError> {
    let parsed = Uri::parse(uri)?;
    match parsed.scheme.as_str() {
        "file" => Ok(Box::new(file::FileSource::open(&parsed)?)),
        "synthetic" => Ok(Box::new(synthetic::SyntheticSource::open(&parsed)?)),
        "v4l2" => open_v4l2(&parsed),
        _ => Err(CaptureError::UnknownScheme {
            uri: uri.to_string(),
        }),
    }
}

#[cfg(feature = "v4l")]
fn open_v4l2(uri: &Uri) -> Result<Box<dyn FrameSource>, CaptureError> {
    Ok(Box::new(v4l2::V4l2Source::open(uri)?))
}

#[cfg(not(feature = "v4l"))]
fn open_v4l2(uri: &Uri) -> Result<Box<dyn FrameSource>, CaptureError> {
    Err(CaptureError::Unsupported {
        uri: uri.raw.clone(),
        message: "this edgefuse was built without V4L2 support; rebuild with `--features v4l`"
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
    /// Split a URI; options without `=` get the value `1`.
    pub fn parse(uri: &str) -> Result<Self, CaptureError> {
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(CaptureError::UnknownScheme {
                uri: uri.to_string(),
            });
        };
        let (path, query) = match rest.rsplit_once('?') {
            Some((p, q)) => (p, q),
            None => (rest, ""),
        };
        let options = query
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_ascii_lowercase(), v.to_string()),
                None => (kv.to_ascii_lowercase(), "1".to_string()),
            })
            .collect();
        Ok(Self {
            raw: uri.to_string(),
            scheme: scheme.to_ascii_lowercase(),
            path: path.to_string(),
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
        let e = open("rtsp://cam").err().unwrap();
        assert!(e.to_string().contains("rtsp://cam"), "{e}");
        assert!(e.to_string().contains("v4l2://"), "{e}");
    }

    #[test]
    fn unknown_option_is_refused() {
        let e = open("synthetic://?colour=red").err().unwrap();
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
