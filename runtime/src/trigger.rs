//! Triggers decide which captured frames are classified.
//!
//! `continuous` classifies every frame; `interval:<period>` (`500`, `500ms`, `2s`: the one
//! duration grammar of [`crate::duration`]) at most one frame per period;
//! `motion[:threshold=T,area=A]` when the downscaled luma differs from the previous frame's by more
//! than `T` (0..255) over at least a fraction `A` of the cells; `external` when an
//! [`ExternalTrigger`] has fired since the last frame; `gpio:pin=N,…` is an external trigger on
//! a GPIO input (see [`crate::actuate`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefuse_board::TriggerInput;
use embedded_hal::digital::InputPin;

use crate::actuate::io::EdgeClock;
use crate::actuate::spec::{GpioTriggerSpec, WiringError};
use crate::duration::{parse_duration, DURATION_HELP};
use crate::frame::{Frame, PixelFormat};

/// A trigger that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TriggerError {
    /// The spec does not parse; the message names it and the grammar.
    #[error("{0}")]
    Syntax(String),
    /// The `gpio:` part does not parse.
    #[error(transparent)]
    Gpio(#[from] WiringError),
    /// `external` or `gpio:` without an input to read.
    #[error("the external trigger needs an input: give --trigger gpio:pin=N on a board")]
    NoInput,
}

/// Grid the motion detector downscales luma to.
pub const MOTION_GRID: (usize, usize) = (32, 24);

/// An input that says "classify now" (a button, a PIR sensor, a light barrier).
pub trait ExternalTrigger: Send {
    /// `true` once per activation since the last call; must not block.
    fn poll(&mut self) -> bool;
}

/// Parsed trigger specification.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerSpec {
    /// Every frame.
    Continuous,
    /// At most one frame per period.
    Interval(Duration),
    /// Luma difference over an area.
    Motion {
        /// Per-cell mean-luma difference (0..255) counted as motion.
        threshold: f32,
        /// Fraction of cells (0..1) that must move.
        area: f32,
    },
    /// An external trigger supplied by the caller.
    External,
    /// A GPIO input (`gpio:pin=7,edge=rising,debounce=20ms`); the caller opens the pin and
    /// supplies it as the external trigger.
    Gpio(GpioTriggerSpec),
}

impl std::str::FromStr for TriggerSpec {
    type Err = TriggerError;
    fn from_str(s: &str) -> Result<Self, TriggerError> {
        let err = |m: String| TriggerError::Syntax(m);
        let (name, args) = s.split_once(':').unwrap_or((s, ""));
        match name {
            "continuous" if args.is_empty() => Ok(Self::Continuous),
            "interval" => {
                let period = parse_duration(args).ok_or_else(|| {
                    err(format!(
                        "trigger `{s}`: expected interval:<period>, {DURATION_HELP} (a bare number is milliseconds)"
                    ))
                })?;
                if period.is_zero() {
                    return Err(err(format!("trigger `{s}`: the interval must be > 0 ms")));
                }
                Ok(Self::Interval(period))
            }
            "motion" => {
                let (mut threshold, mut area) = (12.0f32, 0.02f32);
                for kv in args.split(',').filter(|a| !a.is_empty()) {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| err(format!("trigger `{s}`: expected key=value in `{kv}`")))?;
                    let v: f32 = v
                        .parse()
                        .map_err(|_| err(format!("trigger `{s}`: `{kv}` is not a number")))?;
                    match k {
                        "threshold" if (0.0..=255.0).contains(&v) => threshold = v,
                        "area" if (0.0..=1.0).contains(&v) => area = v,
                        _ => {
                            return Err(err(format!(
                                "trigger `{s}`: `{kv}`: use threshold=0..255 and area=0..1"
                            )))
                        }
                    }
                }
                Ok(Self::Motion { threshold, area })
            }
            "external" if args.is_empty() => Ok(Self::External),
            "gpio" => Ok(Self::Gpio(args.parse()?)),
            _ => Err(err(format!("unknown trigger `{s}`: use continuous, interval:<period> (500, 500ms, 2s), motion[:threshold=T,area=A] or gpio:pin=N[,edge=rising|falling|both][,debounce=20ms]"))),
        }
    }
}

/// A trigger instance with its state.
pub enum Trigger {
    /// See [`TriggerSpec::Continuous`].
    Continuous,
    /// See [`TriggerSpec::Interval`].
    Interval {
        /// Period.
        period: Duration,
        /// Last frame accepted.
        last: Option<Instant>,
    },
    /// See [`TriggerSpec::Motion`].
    Motion(Box<MotionDetector>),
    /// See [`TriggerSpec::External`].
    External(Box<dyn ExternalTrigger>),
}

impl std::fmt::Debug for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Continuous => write!(f, "continuous"),
            Trigger::Interval { period, .. } => write!(f, "interval:{}ms", period.as_millis()),
            Trigger::Motion(m) => write!(f, "motion:threshold={},area={}", m.threshold, m.area),
            Trigger::External(_) => write!(f, "external"),
        }
    }
}

impl Trigger {
    /// Build from a spec; `external` needs the caller's trigger.
    pub fn new(
        spec: &TriggerSpec,
        external: Option<Box<dyn ExternalTrigger>>,
    ) -> Result<Self, TriggerError> {
        Ok(match spec {
            TriggerSpec::Continuous => Trigger::Continuous,
            TriggerSpec::Interval(p) => Trigger::Interval {
                period: *p,
                last: None,
            },
            TriggerSpec::Motion { threshold, area } => {
                Trigger::Motion(Box::new(MotionDetector::new(*threshold, *area)))
            }
            TriggerSpec::External | TriggerSpec::Gpio(_) => {
                Trigger::External(external.ok_or(TriggerError::NoInput)?)
            }
        })
    }

    /// Whether to classify this frame.
    pub fn accept(&mut self, frame: &Frame) -> bool {
        match self {
            Trigger::Continuous => true,
            Trigger::Interval { period, last } => {
                let now = frame.captured_at;
                if last.is_none_or(|l| now.duration_since(l) >= *period) {
                    *last = Some(now);
                    true
                } else {
                    false
                }
            }
            Trigger::Motion(m) => m.update(frame),
            Trigger::External(e) => e.poll(),
        }
    }
}

/// The trigger for kernel edge events: an edge thread calls [`EdgeClock::edge`]; the pipeline
/// polls this once per frame.
pub struct EdgeTrigger(pub Arc<EdgeClock>);

impl ExternalTrigger for EdgeTrigger {
    fn poll(&mut self) -> bool {
        self.0.take()
    }
}

/// A trigger sampled once per frame through embedded-hal (boards without edge interrupts;
/// mock pins in tests), debounced by [`TriggerInput`].
pub struct PolledTrigger<I: InputPin> {
    input: TriggerInput<I>,
    clock: Arc<EdgeClock>,
    errors: u64,
}

impl<I: InputPin> PolledTrigger<I> {
    /// Wrap a trigger input.
    pub fn new(input: TriggerInput<I>, clock: Arc<EdgeClock>) -> Self {
        Self {
            input,
            clock,
            errors: 0,
        }
    }

    /// Give the pin back.
    pub fn release(self) -> I {
        self.input.release()
    }
}

impl<I: InputPin + Send> ExternalTrigger for PolledTrigger<I> {
    fn poll(&mut self) -> bool {
        let now = Instant::now();
        let ms = self.clock.ms(now);
        match self.input.poll(ms) {
            Ok(true) => {
                self.clock.edge(now);
                self.clock.take()
            }
            Ok(false) => false,
            Err(_) => {
                self.errors += 1;
                if self.errors == 1 {
                    log::error!("reading the trigger input failed; it will not fire");
                }
                false
            }
        }
    }
}

/// Frame-difference motion detector on a fixed luma grid; never allocates.
#[derive(Debug, Clone)]
pub struct MotionDetector {
    threshold: f32,
    area: f32,
    prev: [[f32; MOTION_GRID.0]; MOTION_GRID.1],
    cur: [[f32; MOTION_GRID.0]; MOTION_GRID.1],
    primed: bool,
}

impl MotionDetector {
    /// `threshold` in luma levels, `area` as a fraction of the grid.
    pub fn new(threshold: f32, area: f32) -> Self {
        Self {
            threshold,
            area,
            prev: [[0.0; MOTION_GRID.0]; MOTION_GRID.1],
            cur: [[0.0; MOTION_GRID.0]; MOTION_GRID.1],
            primed: false,
        }
    }

    /// Mean luma of each grid cell, sampling every pixel of the cell at a stride.
    fn grid(frame: &Frame, out: &mut [[f32; MOTION_GRID.0]; MOTION_GRID.1]) {
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (gw, gh) = MOTION_GRID;
        let step = (w.min(h) / 96).max(1);
        for (gy, row) in out.iter_mut().enumerate() {
            let (y0, y1) = (gy * h / gh, ((gy + 1) * h / gh).max(gy * h / gh + 1).min(h));
            for (gx, cell) in row.iter_mut().enumerate() {
                let (x0, x1) = (gx * w / gw, ((gx + 1) * w / gw).max(gx * w / gw + 1).min(w));
                let (mut sum, mut n) = (0u32, 0u32);
                for y in (y0..y1).step_by(step) {
                    for x in (x0..x1).step_by(step) {
                        sum += luma(frame, x, y) as u32;
                        n += 1;
                    }
                }
                *cell = if n > 0 { sum as f32 / n as f32 } else { 0.0 };
            }
        }
    }

    /// Feed a frame; `true` when it moved relative to the previous one (the first frame counts
    /// as motion so a scene is classified once at start).
    pub fn update(&mut self, frame: &Frame) -> bool {
        if frame.width == 0 || frame.height == 0 {
            return false;
        }
        Self::grid(frame, &mut self.cur);
        let moved = if self.primed {
            let cells = (MOTION_GRID.0 * MOTION_GRID.1) as f32;
            let changed = self
                .cur
                .iter()
                .flatten()
                .zip(self.prev.iter().flatten())
                .filter(|(a, b)| (*a - *b).abs() > self.threshold)
                .count() as f32;
            changed / cells >= self.area
        } else {
            true
        };
        self.prev = self.cur;
        self.primed = true;
        moved
    }
}

/// Luma of one pixel (BT.601 weights for RGB/BGR).
#[inline]
fn luma(f: &Frame, x: usize, y: usize) -> u8 {
    let w = f.width as usize;
    let d = &f.data;
    match f.format {
        PixelFormat::Grey | PixelFormat::Nv12 => d[y * w + x],
        PixelFormat::Yuyv => d[(y * w + x) * 2],
        PixelFormat::Rgb => {
            let p = &d[(y * w + x) * 3..][..3];
            ((77 * p[0] as u32 + 150 * p[1] as u32 + 29 * p[2] as u32) >> 8) as u8
        }
        PixelFormat::Bgr => {
            let p = &d[(y * w + x) * 3..][..3];
            ((77 * p[2] as u32 + 150 * p[1] as u32 + 29 * p[0] as u32) >> 8) as u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::synthetic::render;

    #[test]
    fn parses_specs() {
        assert_eq!(
            "continuous".parse::<TriggerSpec>().unwrap(),
            TriggerSpec::Continuous
        );
        assert_eq!(
            "interval:250".parse::<TriggerSpec>().unwrap(),
            TriggerSpec::Interval(Duration::from_millis(250))
        );
        assert_eq!(
            "motion:threshold=20,area=0.1"
                .parse::<TriggerSpec>()
                .unwrap(),
            TriggerSpec::Motion {
                threshold: 20.0,
                area: 0.1
            }
        );
        assert!("interval:0".parse::<TriggerSpec>().is_err());
        assert!("sometimes"
            .parse::<TriggerSpec>()
            .unwrap_err()
            .to_string()
            .contains("continuous"));
        // The one duration grammar: 2s and 250ms work here as they do for pulse= and debounce=.
        for (v, ms) in [
            ("interval:2s", 2000),
            ("interval:250ms", 250),
            ("interval:250", 250),
        ] {
            assert_eq!(
                v.parse::<TriggerSpec>().unwrap(),
                TriggerSpec::Interval(Duration::from_millis(ms))
            );
        }
        assert!(matches!(
            "gpio:edge=up".parse::<TriggerSpec>(),
            Err(TriggerError::Gpio(_))
        ));
    }

    #[test]
    fn motion_fires_on_change_only() {
        let mut m = MotionDetector::new(12.0, 0.02);
        let a = render(64, 48, PixelFormat::Yuyv, 0, "s");
        let b = render(64, 48, PixelFormat::Yuyv, 4, "s");
        assert!(m.update(&a), "first frame primes");
        assert!(!m.update(&a), "same frame: no motion");
        assert!(m.update(&b), "moved square: motion");
        assert!(!m.update(&b));
    }

    #[test]
    fn interval_limits_rate() {
        let mut t = Trigger::new(&TriggerSpec::Interval(Duration::from_millis(100)), None).unwrap();
        let mut f = render(8, 8, PixelFormat::Grey, 0, "s");
        let t0 = Instant::now();
        let mut accepted = 0;
        for i in 0..10 {
            f.captured_at = t0 + Duration::from_millis(30 * i);
            accepted += t.accept(&f) as u32;
        }
        // t = 0, 120, 240 accepted (270 is only 30 after 240) -> 0,120,240 => 3
        assert_eq!(accepted, 3);
    }

    #[test]
    fn external_needs_an_input() {
        assert!(Trigger::new(&TriggerSpec::External, None).is_err());
        struct Once(bool);
        impl ExternalTrigger for Once {
            fn poll(&mut self) -> bool {
                std::mem::replace(&mut self.0, false)
            }
        }
        let mut t = Trigger::new(&TriggerSpec::External, Some(Box::new(Once(true)))).unwrap();
        let f = render(8, 8, PixelFormat::Grey, 0, "s");
        assert!(t.accept(&f));
        assert!(!t.accept(&f));
    }
}
