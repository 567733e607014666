//! GPIO wiring of `run`: a trigger input, label actuators and a status LED on header pins.
//!
//! Specs (`--trigger gpio:pin=7,edge=rising,debounce=20ms`, `--on "7"=pin:11,pulse=200ms`,
//! `--status-led pin:12`) are parsed here and resolved against a board's header map with every
//! check done before any pin is touched: unknown pins, pins used twice, an input-only pin used as
//! an output. [`Io`] then drives actuators and the status LED from the pipeline's results over
//! any embedded-hal `OutputPin` (the Linux character device on a board, mocks in tests), and
//! measures the latency from the trigger edge to the actuator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefuse_board::jetson::Board;
use edgefuse_board::jetson_pins::Direction;
use edgefuse_board::{Actuator, ActuatorMode, Edge, Status, StatusLed, TriggerInput};
use embedded_hal::digital::{InputPin, OutputPin};

use crate::decision::EventKind;
use crate::pipeline::FrameResult;
use crate::stats::Histogram;
use crate::trigger::ExternalTrigger;

/// A pin as the user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinRef {
    /// A 40-pin header pin, BOARD numbering (`pin:11`).
    Header(u8),
    /// A raw line on a chip, for custom carriers (`line:tegra234-gpio:144`, `line:gpiochip0:5`).
    Line {
        /// Chip label, `gpiochipN` or a `/dev/gpiochipN` path.
        chip: String,
        /// Line offset.
        line: u32,
    },
}

impl std::fmt::Display for PinRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinRef::Header(p) => write!(f, "pin {p}"),
            PinRef::Line { chip, line } => write!(f, "line {chip}:{line}"),
        }
    }
}

/// Parse `pin:N`, `pin=N`, `line:CHIP:N` or `line=CHIP:N`.
pub fn parse_pin(s: &str) -> Result<PinRef, String> {
    let bad = || {
        format!("`{s}`: expected pin:N (header pin, BOARD numbering) or line:CHIP:OFFSET (e.g. line:tegra234-gpio:144)")
    };
    let (kind, rest) = s.split_once([':', '=']).ok_or_else(bad)?;
    match kind.trim() {
        "pin" => {
            let n: u8 = rest.trim().parse().map_err(|_| bad())?;
            if !(1..=40).contains(&n) {
                return Err(format!("`{s}`: header pins are numbered 1..=40"));
            }
            Ok(PinRef::Header(n))
        }
        "line" => {
            let (chip, line) = rest.rsplit_once(':').ok_or_else(bad)?;
            let line: u32 = line.trim().parse().map_err(|_| bad())?;
            if chip.trim().is_empty() {
                return Err(bad());
            }
            Ok(PinRef::Line {
                chip: chip.trim().to_string(),
                line,
            })
        }
        _ => Err(bad()),
    }
}

fn parse_ms(s: &str, what: &str) -> Result<u32, String> {
    let v = s.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000)
    } else {
        (v, 1)
    };
    num.trim()
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{what} `{s}`: expected a duration such as 200ms or 2s"))
}

/// `--trigger gpio:pin=7,edge=rising,debounce=20ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct GpioTriggerSpec {
    /// The input pin.
    pub pin: PinRef,
    /// Which transition triggers.
    pub edge: Edge,
    /// Edges within this time after an accepted one are bounces.
    pub debounce: Duration,
}

impl std::str::FromStr for GpioTriggerSpec {
    type Err = String;
    /// Parses the part after `gpio:`.
    fn from_str(args: &str) -> Result<Self, String> {
        let mut pin = None;
        let mut edge = Edge::Rising;
        let mut debounce = Duration::from_millis(20);
        for kv in args.split(',').filter(|a| !a.trim().is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("gpio trigger: expected key=value in `{kv}`"))?;
            match k.trim() {
                "pin" | "line" => pin = Some(parse_pin(kv.trim())?),
                "edge" => {
                    edge = match v.trim() {
                        "rising" => Edge::Rising,
                        "falling" => Edge::Falling,
                        "both" => Edge::Both,
                        o => {
                            return Err(format!(
                                "gpio trigger: edge `{o}`: use rising, falling or both"
                            ))
                        }
                    }
                }
                "debounce" => {
                    debounce = Duration::from_millis(u64::from(parse_ms(v, "gpio trigger debounce")?))
                }
                o => {
                    return Err(format!(
                        "gpio trigger: unknown key `{o}`; use pin=N (or line=CHIP:OFFSET), edge=rising|falling|both, debounce=20ms"
                    ))
                }
            }
        }
        Ok(Self {
            pin: pin.ok_or("gpio trigger: give the input as pin=N, e.g. gpio:pin=7,edge=rising")?,
            edge,
            debounce,
        })
    }
}

/// `--on "LABEL"=pin:11,pulse=200ms` (or `hold`, `active-low`).
#[derive(Debug, Clone, PartialEq)]
pub struct ActuatorSpec {
    /// The label that drives it.
    pub label: String,
    /// The output pin.
    pub pin: PinRef,
    /// Pulse or hold.
    pub mode: ActuatorMode,
    /// Active = low level.
    pub active_low: bool,
}

impl ActuatorSpec {
    /// Parse the command-line form `LABEL=SPEC`.
    pub fn parse_flag(s: &str) -> Result<Self, String> {
        // The label may contain '='; the spec starts at the last "=pin" / "=line".
        let at = ["=pin", "=line"]
            .iter()
            .filter_map(|k| s.rfind(k))
            .max()
            .ok_or_else(|| {
                format!("--on `{s}`: expected LABEL=pin:N[,pulse=200ms|hold][,active-low]")
            })?;
        Self::parse(s[..at].trim().trim_matches('"'), &s[at + 1..])
    }

    /// Parse `SPEC` for `label` (the config file's `[on]` table form).
    pub fn parse(label: &str, spec: &str) -> Result<Self, String> {
        if label.is_empty() {
            return Err(format!("actuator `{spec}`: the label is empty"));
        }
        let mut parts = spec.split(',').map(str::trim);
        let pin = parse_pin(parts.next().unwrap_or(""))
            .map_err(|e| format!("actuator for `{label}`: {e}"))?;
        let mut mode = ActuatorMode::Pulse(200);
        let mut active_low = false;
        for p in parts.filter(|p| !p.is_empty()) {
            if p == "hold" {
                mode = ActuatorMode::Hold;
            } else if p == "active-low" {
                active_low = true;
            } else if let Some(v) = p.strip_prefix("pulse=") {
                let ms = parse_ms(v, &format!("actuator for `{label}`: pulse"))?;
                if ms == 0 {
                    return Err(format!("actuator for `{label}`: pulse must be > 0 ms"));
                }
                mode = ActuatorMode::Pulse(ms);
            } else {
                return Err(format!(
                    "actuator for `{label}`: unknown option `{p}`; use pulse=200ms, hold or active-low"
                ));
            }
        }
        Ok(Self {
            label: label.to_string(),
            pin,
            mode,
            active_low,
        })
    }
}

/// `--status-led pin:12[,active-low]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LedSpec {
    /// The output pin.
    pub pin: PinRef,
    /// Lit = low level.
    pub active_low: bool,
}

impl std::str::FromStr for LedSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',').map(str::trim);
        let pin = parse_pin(parts.next().unwrap_or("")).map_err(|e| format!("--status-led {e}"))?;
        let mut active_low = false;
        for p in parts.filter(|p| !p.is_empty()) {
            match p {
                "active-low" => active_low = true,
                o => {
                    return Err(format!(
                        "--status-led: unknown option `{o}`; use active-low"
                    ))
                }
            }
        }
        Ok(Self { pin, active_low })
    }
}

/// A pin after resolution: the chip and line to request, and how to name it in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPin {
    /// Chip label (or name / path for raw lines).
    pub chip: String,
    /// Line offset.
    pub line: u32,
    /// E.g. `pin 11 (tegra234-gpio line 112)`.
    pub name: String,
}

/// Everything `run` wires to GPIO.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wiring {
    /// The trigger input.
    pub trigger: Option<GpioTriggerSpec>,
    /// Label actuators.
    pub actuators: Vec<ActuatorSpec>,
    /// The status LED.
    pub status_led: Option<LedSpec>,
}

/// [`Wiring`] with pins resolved and labels mapped to indices.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedWiring {
    /// Trigger input pin and spec.
    pub trigger: Option<(ResolvedPin, GpioTriggerSpec)>,
    /// `(label index, pin, spec)`.
    pub actuators: Vec<(u16, ResolvedPin, ActuatorSpec)>,
    /// Status LED pin and spec.
    pub status_led: Option<(ResolvedPin, LedSpec)>,
}

impl Wiring {
    /// Whether anything is wired.
    pub fn is_empty(&self) -> bool {
        self.trigger.is_none() && self.actuators.is_empty() && self.status_led.is_none()
    }

    /// Whether any pin is given by header number (then a board is needed).
    pub fn needs_board(&self) -> bool {
        let header = |p: &PinRef| matches!(p, PinRef::Header(_));
        self.trigger.as_ref().is_some_and(|t| header(&t.pin))
            || self.actuators.iter().any(|a| header(&a.pin))
            || self.status_led.as_ref().is_some_and(|l| header(&l.pin))
    }

    /// Check everything and resolve pins; nothing is requested from the kernel here.
    pub fn resolve(
        &self,
        board: Option<Board>,
        labels: &[String],
    ) -> Result<ResolvedWiring, String> {
        let mut used: Vec<(ResolvedPin, String)> = Vec::new();
        let mut resolve = |p: &PinRef, role: String, output: bool| -> Result<ResolvedPin, String> {
            let r = match p {
                PinRef::Header(n) => {
                    let b = board.ok_or_else(|| {
                        format!(
                            "{role} uses {p}, which needs the board: give --board NAME ({}) or run on the Jetson",
                            Board::ALL.map(Board::name).join(", ")
                        )
                    })?;
                    let hp = b.pin(*n).map_err(|e| format!("{role}: {e}"))?;
                    match (hp.direction, output) {
                        (Direction::InputOnly, true) => {
                            return Err(format!(
                                "{role}: header pin {n} is input-only on the {} carrier board; pick another output pin",
                                b.title()
                            ))
                        }
                        (Direction::OutputOnly, false) => {
                            return Err(format!(
                                "{role}: header pin {n} is output-only on the {} carrier board; pick another input pin",
                                b.title()
                            ))
                        }
                        _ => {}
                    }
                    ResolvedPin {
                        chip: hp.chip.to_string(),
                        line: hp.line,
                        name: format!("pin {n} ({} line {})", hp.chip, hp.line),
                    }
                }
                PinRef::Line { chip, line } => ResolvedPin {
                    chip: chip.clone(),
                    line: *line,
                    name: format!("line {chip}:{line}"),
                },
            };
            if let Some((_, other)) = used
                .iter()
                .find(|(u, _)| u.chip == r.chip && u.line == r.line)
            {
                return Err(format!(
                    "{} is used twice: by {other} and by {role}",
                    r.name
                ));
            }
            used.push((r.clone(), role));
            Ok(r)
        };
        let trigger = match &self.trigger {
            Some(t) => Some((
                resolve(&t.pin, "the gpio trigger".into(), false)?,
                t.clone(),
            )),
            None => None,
        };
        let mut actuators = Vec::new();
        for a in &self.actuators {
            let idx = labels.iter().position(|l| *l == a.label).ok_or_else(|| {
                format!(
                    "--on `{}`: no label `{}`; labels are {labels:?}",
                    a.label, a.label
                )
            })?;
            let pin = resolve(&a.pin, format!("the actuator for `{}`", a.label), true)?;
            actuators.push((idx as u16, pin, a.clone()));
        }
        let status_led = match &self.status_led {
            Some(l) => Some((resolve(&l.pin, "the status LED".into(), true)?, l.clone())),
            None => None,
        };
        Ok(ResolvedWiring {
            trigger,
            actuators,
            status_led,
        })
    }
}

/// Shared between the trigger (which records when the accepted edge happened) and [`Io`]
/// (which measures from it to the actuator).
#[derive(Debug)]
pub struct EdgeClock {
    epoch: Instant,
    /// Nanoseconds since `epoch` + 1 of the newest edge not yet consumed by a frame; 0 = none.
    pending: AtomicU64,
    /// Same, of the edge that triggered the frame being classified.
    current: AtomicU64,
}

impl EdgeClock {
    /// A clock starting now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            pending: AtomicU64::new(0),
            current: AtomicU64::new(0),
        })
    }

    /// An edge happened at `at` (called from the edge thread).
    pub fn edge(&self, at: Instant) {
        let ns = at.saturating_duration_since(self.epoch).as_nanos() as u64 + 1;
        self.pending.store(ns, Ordering::Release);
    }

    /// Consume a pending edge: `true` if there was one (it becomes the current frame's edge).
    pub fn take(&self) -> bool {
        let ns = self.pending.swap(0, Ordering::AcqRel);
        if ns != 0 {
            self.current.store(ns, Ordering::Release);
        }
        ns != 0
    }

    /// Time from the current frame's edge to `now`, if an edge triggered it.
    pub fn since_edge(&self, now: Instant) -> Option<Duration> {
        let ns = self.current.load(Ordering::Acquire);
        (ns != 0).then(|| now.saturating_duration_since(self.epoch + Duration::from_nanos(ns - 1)))
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
        let ms = now.saturating_duration_since(self.clock.epoch).as_millis() as u64;
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

/// Drives actuators and the status LED from the pipeline's results.
pub struct Io<O: OutputPin> {
    actuators: Vec<(u16, Actuator<O>)>,
    led: Option<StatusLed<O>>,
    clock: Arc<EdgeClock>,
    epoch: Instant,
    last_result: Option<Instant>,
    /// Trigger edge → actuator latency of each firing caused by an edge.
    pub latency: Histogram,
    errors: u64,
}

impl<O: OutputPin> Io<O> {
    /// Take the pins: `(label index, pin, mode, active_low)` per actuator, and the LED.
    /// Every output is driven inactive; the LED shows `Ready`.
    pub fn new(
        actuators: Vec<(u16, O, ActuatorMode, bool)>,
        led: Option<(O, bool)>,
        clock: Arc<EdgeClock>,
    ) -> Result<Self, String> {
        let mut acts = Vec::with_capacity(actuators.len());
        for (label, pin, mode, active_low) in actuators {
            acts.push((
                label,
                Actuator::new(pin, mode, active_low)
                    .map_err(|_| "cannot drive an actuator pin inactive".to_string())?,
            ));
        }
        let epoch = clock.epoch;
        let led = match led {
            Some((pin, active_low)) => {
                let mut l = StatusLed::new(pin, active_low)
                    .map_err(|_| "cannot drive the status LED pin".to_string())?;
                let _ = l.set(Status::Ready, 0);
                Some(l)
            }
            None => None,
        };
        Ok(Self {
            actuators: acts,
            led,
            clock,
            epoch,
            last_result: None,
            latency: Histogram::default(),
            errors: 0,
        })
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn pin_error(&mut self) {
        self.errors += 1;
        if self.errors == 1 {
            log::error!("driving an output pin failed; further failures are counted, not logged");
        }
    }

    /// Act on a classified frame: fire and release actuators, show `Inferring`. Returns the
    /// trigger-edge → actuator latency when this frame fired an actuator and an edge
    /// triggered it.
    pub fn on_result(&mut self, r: &FrameResult<'_>) -> Option<Duration> {
        let now = Instant::now();
        let ms = self.ms(now);
        let mut fired = false;
        let mut failed = false;
        for e in r.events.iter() {
            for (_, a) in self.actuators.iter_mut().filter(|(l, _)| *l == e.label) {
                let res = match e.kind {
                    EventKind::Fire => {
                        fired = true;
                        a.fire(ms)
                    }
                    EventKind::Release => a.release_label(),
                };
                failed |= res.is_err();
            }
        }
        if failed {
            self.pin_error();
        }
        let latency = if fired {
            self.clock.since_edge(Instant::now())
        } else {
            None
        };
        if let Some(l) = latency {
            self.latency.record(l);
        }
        self.last_result = Some(now);
        if let Some(led) = &mut self.led {
            if led.set(Status::Inferring, ms).is_err() {
                self.errors += 1;
            }
        }
        latency
    }

    /// Advance time: end pulses, blink the LED, fall back to `Ready` 500 ms after the last
    /// classified frame. Call every few milliseconds.
    pub fn tick(&mut self, now: Instant) {
        let ms = self.ms(now);
        let mut failed = false;
        for (_, a) in &mut self.actuators {
            failed |= a.update(ms).is_err();
        }
        if let Some(led) = &mut self.led {
            let idle = self
                .last_result
                .is_none_or(|t| now.saturating_duration_since(t) > Duration::from_millis(500));
            let res = if idle && led.status() == Status::Inferring {
                led.set(Status::Ready, ms)
            } else {
                led.update(ms)
            };
            failed |= res.is_err();
        }
        if failed {
            self.pin_error();
        }
    }

    /// Show the error blink code (the run failed); `false` when there is no status LED.
    pub fn error(&mut self, now: Instant) -> bool {
        let ms = self.ms(now);
        match &mut self.led {
            Some(led) => {
                let _ = led.set(Status::Error, ms);
                true
            }
            None => false,
        }
    }

    /// Pin failures counted so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Drive everything inactive and give the pins back (actuators in order, then the LED).
    pub fn release(self) -> (Vec<O>, Option<O>) {
        let pins = self
            .actuators
            .into_iter()
            .filter_map(|(_, a)| a.release().ok())
            .collect();
        let led = self.led.and_then(|l| l.release().ok());
        (pins, led)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_specs_parse() {
        assert_eq!(parse_pin("pin:11"), Ok(PinRef::Header(11)));
        assert_eq!(parse_pin("pin=7"), Ok(PinRef::Header(7)));
        assert_eq!(
            parse_pin("line:tegra234-gpio:144"),
            Ok(PinRef::Line {
                chip: "tegra234-gpio".into(),
                line: 144
            })
        );
        assert!(parse_pin("pin:41").unwrap_err().contains("1..=40"));
        assert!(parse_pin("gpio11").is_err());
        assert!(parse_pin("line:5").is_err());
    }

    #[test]
    fn trigger_actuator_and_led_specs_parse() {
        let t: GpioTriggerSpec = "pin=7,edge=falling,debounce=50ms".parse().unwrap();
        assert_eq!(t.pin, PinRef::Header(7));
        assert_eq!(t.edge, Edge::Falling);
        assert_eq!(t.debounce, Duration::from_millis(50));
        let t: GpioTriggerSpec = "pin=7".parse().unwrap();
        assert_eq!(
            (t.edge, t.debounce),
            (Edge::Rising, Duration::from_millis(20))
        );
        assert!("edge=rising"
            .parse::<GpioTriggerSpec>()
            .unwrap_err()
            .contains("pin=N"));
        assert!("pin=7,edge=up"
            .parse::<GpioTriggerSpec>()
            .unwrap_err()
            .contains("rising"));
        assert!("pin=7,bounce=3"
            .parse::<GpioTriggerSpec>()
            .unwrap_err()
            .contains("unknown key"));

        let a = ActuatorSpec::parse_flag("\"7\"=pin:11,pulse=1s").unwrap();
        assert_eq!(a.label, "7");
        assert_eq!(a.pin, PinRef::Header(11));
        assert_eq!(a.mode, ActuatorMode::Pulse(1000));
        let a = ActuatorSpec::parse_flag("a=b=line:gpiochip0:3,hold,active-low").unwrap();
        assert_eq!(a.label, "a=b");
        assert_eq!((a.mode, a.active_low), (ActuatorMode::Hold, true));
        assert!(ActuatorSpec::parse_flag("7")
            .unwrap_err()
            .contains("LABEL=pin:N"));
        assert!(ActuatorSpec::parse("7", "pin:11,blink")
            .unwrap_err()
            .contains("unknown option"));
        assert!(ActuatorSpec::parse("7", "pin:11,pulse=0").is_err());

        let l: LedSpec = "pin:12,active-low".parse().unwrap();
        assert_eq!((l.pin, l.active_low), (PinRef::Header(12), true));
    }

    fn labels() -> Vec<String> {
        (0..10).map(|i| i.to_string()).collect()
    }

    #[test]
    fn resolution_checks_everything_before_touching_a_pin() {
        let w = Wiring {
            trigger: Some("pin=7".parse().unwrap()),
            actuators: vec![ActuatorSpec::parse("3", "pin:11").unwrap()],
            status_led: Some("pin:12".parse().unwrap()),
        };
        let r = w.resolve(Some(Board::OrinNano), &labels()).unwrap();
        let (tp, _) = r.trigger.unwrap();
        assert_eq!((tp.chip.as_str(), tp.line), ("tegra234-gpio", 144));
        assert_eq!(r.actuators[0].0, 3);
        assert_eq!(r.actuators[0].1.line, 112);
        assert_eq!(r.status_led.unwrap().0.line, 50);

        // A header pin needs a board.
        let e = w.resolve(None, &labels()).unwrap_err();
        assert!(e.contains("--board"), "{e}");
        // Not a GPIO.
        let mut bad = w.clone();
        bad.status_led = Some("pin:1".parse().unwrap());
        let e = bad.resolve(Some(Board::OrinNano), &labels()).unwrap_err();
        assert!(
            e.contains("pin 1 is not a GPIO") && e.contains("status LED"),
            "{e}"
        );
        // Used twice.
        let mut bad = w.clone();
        bad.status_led = Some("pin:11".parse().unwrap());
        let e = bad.resolve(Some(Board::OrinNano), &labels()).unwrap_err();
        assert!(
            e.contains("used twice") && e.contains("`3`") && e.contains("status LED"),
            "{e}"
        );
        // The same line named two ways is still the same line.
        let mut bad = w.clone();
        bad.status_led = Some("line:tegra234-gpio:112".parse().unwrap());
        assert!(bad
            .resolve(Some(Board::OrinNano), &labels())
            .unwrap_err()
            .contains("used twice"));
        // Input-only pin as an output (AGX Xavier 36), output-only as the trigger (AGX Orin 11).
        let mut bad = w.clone();
        bad.status_led = Some("pin:36".parse().unwrap());
        let e = bad.resolve(Some(Board::AgxXavier), &labels()).unwrap_err();
        assert!(e.contains("input-only"), "{e}");
        let mut bad = w.clone();
        bad.trigger = Some("pin=11".parse().unwrap());
        bad.actuators.clear();
        let e = bad.resolve(Some(Board::AgxOrin), &labels()).unwrap_err();
        assert!(e.contains("output-only"), "{e}");
        // Unknown label.
        let mut bad = w.clone();
        bad.actuators = vec![ActuatorSpec::parse("cat", "pin:11").unwrap()];
        assert!(bad
            .resolve(Some(Board::OrinNano), &labels())
            .unwrap_err()
            .contains("no label `cat`"));
        // Raw lines need no board.
        let raw = Wiring {
            trigger: Some("line=gpiochip0:3".parse().unwrap()),
            ..Default::default()
        };
        assert!(!raw.needs_board());
        assert!(raw.resolve(None, &labels()).is_ok());
    }

    #[test]
    fn edge_clock_hands_the_edge_to_one_frame() {
        let c = EdgeClock::new();
        assert!(!c.take());
        assert_eq!(c.since_edge(Instant::now()), None);
        let t = Instant::now();
        c.edge(t);
        assert!(c.take());
        assert!(!c.take(), "one edge triggers one frame");
        let d = c.since_edge(t + Duration::from_millis(30)).unwrap();
        assert!((29..=30).contains(&d.as_millis()), "{d:?}");
    }
}
