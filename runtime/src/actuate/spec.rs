//! What `run` wires to GPIO, as values: pin names, the GPIO trigger, label actuators and the
//! status LED (`--trigger gpio:pin=7,edge=rising,debounce=20ms`, `--on "7"=pin:11,pulse=200ms`,
//! `--status-led pin:12`), parsed and resolved against a board's header map with every check
//! done before any pin is touched: unknown pins, pins used twice, an input-only pin used as an
//! output. Pure: depends on the board tables only, opens nothing.

use std::time::Duration;

use edgefuse_board::jetson::Board;
use edgefuse_board::jetson_numbering::Numbering;
use edgefuse_board::jetson_pins::Direction;
use edgefuse_board::{ActuatorMode, Edge};

use crate::duration::{parse_duration, DURATION_HELP};

/// Why a GPIO option cannot be used. Every message names the option, the value and what would
/// work instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WiringError {
    /// A pin, trigger, actuator or LED spec does not parse.
    #[error("{0}")]
    Syntax(String),
    /// A header pin was given but the board is not known.
    #[error("{role} uses {pin}, which needs the board: give --board NAME ({boards}) or run on the Jetson")]
    NeedsBoard {
        /// What the pin is for (`the status LED`).
        role: String,
        /// The pin as given (`pin 12`).
        pin: String,
        /// The supported board names.
        boards: String,
    },
    /// The board's header map rejects the pin (not a GPIO on this board).
    #[error("{role}: {message}")]
    Pin {
        /// What the pin is for.
        role: String,
        /// The board table's reason.
        message: String,
    },
    /// An input-only pin used as an output, or an output-only pin as the trigger.
    #[error("{role}: header pin {pin} is {direction} on the {board} carrier board; pick another {wanted} pin")]
    Direction {
        /// What the pin is for.
        role: String,
        /// Header pin number.
        pin: u8,
        /// `input-only` or `output-only`.
        direction: &'static str,
        /// The board's title.
        board: &'static str,
        /// `output` or `input`.
        wanted: &'static str,
    },
    /// One line given two roles.
    #[error("{pin} is used twice: by {first} and by {second}")]
    UsedTwice {
        /// The line (`pin 11 (tegra234-gpio line 112)`).
        pin: String,
        /// Its first role.
        first: String,
        /// Its second role.
        second: String,
    },
    /// An actuator for a label the bundle does not have.
    #[error("--on `{label}`: no label `{label}`; labels are {labels:?}")]
    UnknownLabel {
        /// The label asked for.
        label: String,
        /// The bundle's labels.
        labels: Vec<String>,
    },
}

fn syntax(message: String) -> WiringError {
    WiringError::Syntax(message)
}

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
pub fn parse_pin(s: &str) -> Result<PinRef, WiringError> {
    let bad = || {
        syntax(format!("`{s}`: expected pin:N (header pin, BOARD numbering) or line:CHIP:OFFSET (e.g. line:tegra234-gpio:144)"))
    };
    let (kind, rest) = s.split_once([':', '=']).ok_or_else(bad)?;
    match kind.trim() {
        "pin" => {
            let n: u8 = rest.trim().parse().map_err(|_| bad())?;
            if !(1..=40).contains(&n) {
                return Err(syntax(format!("`{s}`: header pins are numbered 1..=40")));
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

/// A duration option in whole milliseconds (the one grammar of [`crate::duration`]).
fn parse_ms(s: &str, what: &str) -> Result<u32, WiringError> {
    parse_duration(s)
        .and_then(|d| u32::try_from(d.as_millis()).ok())
        .ok_or_else(|| syntax(format!("{what} `{s}`: expected {DURATION_HELP}")))
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
    type Err = WiringError;
    /// Parses the part after `gpio:`.
    fn from_str(args: &str) -> Result<Self, WiringError> {
        let mut pin = None;
        let mut edge = Edge::Rising;
        let mut debounce = Duration::from_millis(20);
        for kv in args.split(',').filter(|a| !a.trim().is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| syntax(format!("gpio trigger: expected key=value in `{kv}`")))?;
            match k.trim() {
                "pin" | "line" => pin = Some(parse_pin(kv.trim())?),
                "edge" => {
                    edge = match v.trim() {
                        "rising" => Edge::Rising,
                        "falling" => Edge::Falling,
                        "both" => Edge::Both,
                        o => {
                            return Err(syntax(format!(
                                "gpio trigger: edge `{o}`: use rising, falling or both"
                            )))
                        }
                    }
                }
                "debounce" => {
                    debounce = Duration::from_millis(u64::from(parse_ms(v, "gpio trigger debounce")?))
                }
                o => {
                    return Err(syntax(format!(
                        "gpio trigger: unknown key `{o}`; use pin=N (or line=CHIP:OFFSET), edge=rising|falling|both, debounce=20ms"
                    )))
                }
            }
        }
        Ok(Self {
            pin: pin.ok_or_else(|| {
                syntax("gpio trigger: give the input as pin=N, e.g. gpio:pin=7,edge=rising".into())
            })?,
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
    pub fn parse_flag(s: &str) -> Result<Self, WiringError> {
        // The label may contain '='; the spec starts at the last "=pin" / "=line".
        let at = ["=pin", "=line"]
            .iter()
            .filter_map(|k| s.rfind(k))
            .max()
            .ok_or_else(|| {
                syntax(format!(
                    "--on `{s}`: expected LABEL=pin:N[,pulse=200ms|hold][,active-low]"
                ))
            })?;
        Self::parse(s[..at].trim().trim_matches('"'), &s[at + 1..])
    }

    /// Parse `SPEC` for `label` (the config file's `[on]` table form).
    pub fn parse(label: &str, spec: &str) -> Result<Self, WiringError> {
        if label.is_empty() {
            return Err(syntax(format!("actuator `{spec}`: the label is empty")));
        }
        let mut parts = spec.split(',').map(str::trim);
        let pin = parse_pin(parts.next().unwrap_or(""))
            .map_err(|e| syntax(format!("actuator for `{label}`: {e}")))?;
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
                    return Err(syntax(format!(
                        "actuator for `{label}`: pulse must be > 0 ms"
                    )));
                }
                mode = ActuatorMode::Pulse(ms);
            } else {
                return Err(syntax(format!(
                    "actuator for `{label}`: unknown option `{p}`; use pulse=200ms, hold or active-low"
                )));
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
    type Err = WiringError;
    fn from_str(s: &str) -> Result<Self, WiringError> {
        let mut parts = s.split(',').map(str::trim);
        let pin = parse_pin(parts.next().unwrap_or(""))
            .map_err(|e| syntax(format!("--status-led {e}")))?;
        let mut active_low = false;
        for p in parts.filter(|p| !p.is_empty()) {
            match p {
                "active-low" => active_low = true,
                o => {
                    return Err(syntax(format!(
                        "--status-led: unknown option `{o}`; use active-low"
                    )))
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
    /// The SoC pad a header pin is (e.g. `PQ.06`), checked against the line's name where the
    /// kernel exposes names; `None` for raw lines.
    pub pad: Option<&'static str>,
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

    /// Check everything and resolve pins; nothing is requested from the kernel here. Header
    /// pins use the current (L4T r35+) line numbering; see [`Wiring::resolve_numbered`].
    pub fn resolve(
        &self,
        board: Option<Board>,
        labels: &[String],
    ) -> Result<ResolvedWiring, WiringError> {
        self.resolve_numbered(board, Numbering::Current, labels)
    }

    /// [`Wiring::resolve`] with header pins in `numbering` (the kernel's, for Tegra194 boards:
    /// see [`edgefuse_board::jetson_numbering`]).
    pub fn resolve_numbered(
        &self,
        board: Option<Board>,
        numbering: Numbering,
        labels: &[String],
    ) -> Result<ResolvedWiring, WiringError> {
        let mut used: Vec<(ResolvedPin, String)> = Vec::new();
        let mut resolve = |p: &PinRef, role: String, output: bool| {
            let r = resolve_pin(p, &role, board, numbering, output)?;
            if let Some((_, other)) = used
                .iter()
                .find(|(u, _)| u.chip == r.chip && u.line == r.line)
            {
                return Err(WiringError::UsedTwice {
                    pin: r.name.clone(),
                    first: other.clone(),
                    second: role,
                });
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
                WiringError::UnknownLabel {
                    label: a.label.clone(),
                    labels: labels.to_vec(),
                }
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

/// One pin: a header pin through the board's table (with its direction checked), or a raw line.
fn resolve_pin(
    p: &PinRef,
    role: &str,
    board: Option<Board>,
    numbering: Numbering,
    output: bool,
) -> Result<ResolvedPin, WiringError> {
    match p {
        PinRef::Header(n) => {
            let b = board.ok_or_else(|| WiringError::NeedsBoard {
                role: role.to_string(),
                pin: p.to_string(),
                boards: Board::ALL.map(Board::name).join(", "),
            })?;
            let table = b.pins_for(numbering).map_err(|e| WiringError::Pin {
                role: role.to_string(),
                message: e.to_string(),
            })?;
            let hp = match table.iter().find(|hp| hp.board == *n) {
                Some(hp) => hp,
                None => {
                    return Err(WiringError::Pin {
                        role: role.to_string(),
                        message: b.pin(*n).err().map_or_else(
                            || format!("pin {n} is not a GPIO on {}", b.title()),
                            |e| e.to_string(),
                        ),
                    })
                }
            };
            let wrong = match (hp.direction, output) {
                (Direction::InputOnly, true) => Some(("input-only", "output")),
                (Direction::OutputOnly, false) => Some(("output-only", "input")),
                _ => None,
            };
            if let Some((direction, wanted)) = wrong {
                return Err(WiringError::Direction {
                    role: role.to_string(),
                    pin: *n,
                    direction,
                    board: b.title(),
                    wanted,
                });
            }
            Ok(ResolvedPin {
                chip: hp.chip.to_string(),
                line: hp.line,
                name: if numbering == Numbering::Current {
                    format!("pin {n} ({} line {})", hp.chip, hp.line)
                } else {
                    format!(
                        "pin {n} ({} line {}, {})",
                        hp.chip,
                        hp.line,
                        numbering.name()
                    )
                },
                pad: Some(hp.soc_name),
            })
        }
        PinRef::Line { chip, line } => Ok(ResolvedPin {
            chip: chip.clone(),
            line: *line,
            name: format!("line {chip}:{line}"),
            pad: None,
        }),
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
        assert!(parse_pin("pin:41")
            .unwrap_err()
            .to_string()
            .contains("1..=40"));
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
            .to_string()
            .contains("pin=N"));
        assert!("pin=7,edge=up"
            .parse::<GpioTriggerSpec>()
            .unwrap_err()
            .to_string()
            .contains("rising"));
        assert!("pin=7,bounce=3"
            .parse::<GpioTriggerSpec>()
            .unwrap_err()
            .to_string()
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
            .to_string()
            .contains("LABEL=pin:N"));
        assert!(ActuatorSpec::parse("7", "pin:11,blink")
            .unwrap_err()
            .to_string()
            .contains("unknown option"));
        assert!(ActuatorSpec::parse("7", "pin:11,pulse=0").is_err());

        let l: LedSpec = "pin:12,active-low".parse().unwrap();
        assert_eq!((l.pin, l.active_low), (PinRef::Header(12), true));
    }

    fn labels() -> Vec<String> {
        (0..10).map(|i| i.to_string()).collect()
    }

    #[test]
    fn header_pins_follow_the_kernel_numbering() {
        let w = Wiring {
            trigger: Some("pin=7".parse().unwrap()),
            actuators: vec![ActuatorSpec::parse("3", "pin:16").unwrap()],
            status_led: None,
        };
        let b = Some(Board::AgxXavier);
        let now = w.resolve(b, &labels()).unwrap();
        let old = w.resolve_numbered(b, Numbering::L4tR32, &labels()).unwrap();
        let (t_now, t_old) = (now.trigger.unwrap().0, old.trigger.unwrap().0);
        assert_eq!((t_now.line, t_old.line), (106, 134));
        assert_eq!(t_old.pad, Some("PQ.06"));
        assert!(t_old.name.contains("r32"), "{}", t_old.name);
        // The always-on chip keeps its offsets.
        assert_eq!(old.actuators[0].1.line, 8);
        // The Xavier NX: header pin 7 is line 148 on r32, 118 on r35.
        let nx = Some(Board::XavierNx);
        let old = w
            .resolve_numbered(nx, Numbering::L4tR32, &labels())
            .unwrap();
        let now = w.resolve(nx, &labels()).unwrap();
        let (t_now, t_old) = (now.trigger.unwrap().0, old.trigger.unwrap().0);
        assert_eq!((t_now.line, t_old.line), (118, 148));
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
        let e = w.resolve(None, &labels()).unwrap_err().to_string();
        assert!(e.contains("--board"), "{e}");
        // Not a GPIO.
        let mut bad = w.clone();
        bad.status_led = Some("pin:1".parse().unwrap());
        let e = bad
            .resolve(Some(Board::OrinNano), &labels())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pin 1 is not a GPIO") && e.contains("status LED"),
            "{e}"
        );
        // Used twice.
        let mut bad = w.clone();
        bad.status_led = Some("pin:11".parse().unwrap());
        let e = bad
            .resolve(Some(Board::OrinNano), &labels())
            .unwrap_err()
            .to_string();
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
            .to_string()
            .contains("used twice"));
        // Input-only pin as an output (AGX Xavier 36), output-only as the trigger (AGX Orin 11).
        let mut bad = w.clone();
        bad.status_led = Some("pin:36".parse().unwrap());
        let e = bad
            .resolve(Some(Board::AgxXavier), &labels())
            .unwrap_err()
            .to_string();
        assert!(e.contains("input-only"), "{e}");
        let mut bad = w.clone();
        bad.trigger = Some("pin=11".parse().unwrap());
        bad.actuators.clear();
        let e = bad
            .resolve(Some(Board::AgxOrin), &labels())
            .unwrap_err()
            .to_string();
        assert!(e.contains("output-only"), "{e}");
        // Unknown label.
        let mut bad = w.clone();
        bad.actuators = vec![ActuatorSpec::parse("cat", "pin:11").unwrap()];
        assert!(bad
            .resolve(Some(Board::OrinNano), &labels())
            .unwrap_err()
            .to_string()
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
    fn durations_share_one_grammar() {
        // pulse and debounce accept what `interval:` accepts: 200, 200ms, 2s.
        for (v, ms) in [("200", 200), ("200ms", 200), ("2s", 2000)] {
            let a = ActuatorSpec::parse("7", &format!("pin:11,pulse={v}")).unwrap();
            assert_eq!(a.mode, ActuatorMode::Pulse(ms), "{v}");
            let t: GpioTriggerSpec = format!("pin=7,debounce={v}").parse().unwrap();
            assert_eq!(t.debounce, Duration::from_millis(u64::from(ms)), "{v}");
        }
        let e = ActuatorSpec::parse("7", "pin:11,pulse=2m").unwrap_err();
        assert!(matches!(e, WiringError::Syntax(_)), "{e}");
        assert!(e.to_string().contains("200ms or 2s"), "{e}");
    }
}
