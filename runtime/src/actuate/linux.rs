//! The wiring on a Linux board: the trigger's edge thread, actuators and the status LED on GPIO
//! character-device lines, and a timer thread that ends pulses and blinks the LED. Every line is
//! checked (it exists, it is free, this user may open it) before any is driven.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edgefuse_board::jetson::Board;
use edgefuse_board::linux::{
    check_line_name, chips, find_chip, numbering_of, read_board, BoardError, EdgeWatcher,
    GpioError, LineInput, LineOutput, NumberingDetectError,
};

use super::io::{DriveError, EdgeClock, Io};
use super::spec::{ResolvedPin, Wiring, WiringError};
use crate::decision::Events;

/// Why the wiring cannot be set up on this machine.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    /// Header pins were given without `--board` and this machine is not a known Jetson.
    #[error(transparent)]
    Board(BoardError),
    /// The options do not describe a wiring that can work (see [`WiringError`]).
    #[error(transparent)]
    Wiring(#[from] WiringError),
    /// A line cannot be opened, driven or watched.
    #[error("cannot {action} {pin}: {error}")]
    Line {
        /// `use`, `drive` or `watch`.
        action: &'static str,
        /// The pin's name (`pin 11 (tegra234-gpio line 112)`).
        pin: String,
        /// The character device's error (in the message: printed once).
        error: GpioError,
    },
    /// The kernel's GPIO line numbering could not be told (Tegra194 boards).
    #[error(transparent)]
    Numbering(NumberingDetectError),
    /// An output could not be driven to its initial (inactive) level.
    #[error(transparent)]
    Drive(#[from] DriveError),
    /// The timer thread could not be started.
    #[error("cannot start the GPIO timer thread: {0}")]
    Thread(std::io::Error),
}

impl HardwareError {
    /// Whether the options are at fault (exit code 2) rather than the machine (exit code 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Board(_) | Self::Wiring(_))
    }
}

/// What the wiring did over a run, for the summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HardwareReport {
    /// Firings caused by a trigger edge.
    pub events: u64,
    /// Median trigger-edge → actuator latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// Pin failures counted.
    pub pin_errors: u64,
}

/// GPIO on the board, opened for one run.
pub struct Hardware {
    io: Arc<Mutex<Io<LineOutput>>>,
    clock: Arc<EdgeClock>,
    watcher: Option<EdgeWatcher>,
    ticker_stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Hardware {
    /// Resolve `wiring` for `board` (detected from the device tree when `None` and a header pin
    /// needs it) and `labels`, check every line, then take the outputs and start the trigger's
    /// edge thread and the timer thread.
    pub fn open(
        wiring: &Wiring,
        board: Option<Board>,
        labels: &[String],
    ) -> Result<Self, HardwareError> {
        let board = match board {
            Some(b) => Some(b),
            None if wiring.needs_board() => {
                let (b, model) = read_board(Path::new("/")).map_err(HardwareError::Board)?;
                log::info!("board: {} ({model})", b.title());
                Some(b)
            }
            None => None,
        };
        // Tegra194 line offsets depend on the kernel (L4T r32: 224-line main chip; r35+: 169).
        let numbering = match board {
            Some(b) if b.is_tegra194() && wiring.needs_board() => {
                let n = numbering_of(b, &chips()).map_err(HardwareError::Numbering)?;
                log::info!("GPIO lines: {}", n.describe());
                n
            }
            _ => Default::default(),
        };
        let w = wiring.resolve_numbered(board, numbering, labels)?;
        let line_err = |action, p: &ResolvedPin| {
            let pin = p.name.clone();
            move |error| HardwareError::Line { action, pin, error }
        };
        // Pre-flight: every line can be opened and is free, before any is driven.
        let mut paths: HashMap<(String, u32), PathBuf> = HashMap::new();
        let pins = w
            .trigger
            .iter()
            .map(|(p, _)| p)
            .chain(w.actuators.iter().map(|(_, p, _)| p))
            .chain(w.status_led.iter().map(|(p, _)| p));
        for p in pins {
            let path = find_chip(&p.chip).map_err(line_err("use", p))?;
            if let Some(pad) = p.pad {
                check_line_name(&path, p.line, pad).map_err(line_err("use", p))?;
            }
            LineInput::request(&path, p.line, "edgefuse-check").map_err(line_err("use", p))?;
            paths.insert((p.chip.clone(), p.line), path);
        }
        let path_of = |p: &ResolvedPin| paths[&(p.chip.clone(), p.line)].clone();
        let mut outputs = Vec::new();
        for (label, p, spec) in &w.actuators {
            let pin =
                LineOutput::request(&path_of(p), p.line, "edgefuse-actuator", spec.active_low)
                    .map_err(line_err("drive", p))?;
            log::info!("actuator for `{}` on {}", spec.label, p.name);
            outputs.push((*label, pin, spec.mode, spec.active_low));
        }
        let led = match &w.status_led {
            Some((p, spec)) => {
                let pin =
                    LineOutput::request(&path_of(p), p.line, "edgefuse-status", spec.active_low)
                        .map_err(line_err("drive", p))?;
                log::info!("status LED on {}", p.name);
                Some((pin, spec.active_low))
            }
            None => None,
        };
        let clock = EdgeClock::new();
        let io = Io::new(outputs, led, clock.clone())?;
        let watcher = match &w.trigger {
            Some((p, spec)) => {
                let c = clock.clone();
                let watcher = EdgeWatcher::start(
                    &path_of(p),
                    p.line,
                    spec.edge,
                    spec.debounce,
                    "edgefuse-trigger",
                    move |t| c.edge(t),
                )
                .map_err(line_err("watch", p))?;
                log::info!(
                    "trigger on {} ({:?} edge, debounce {:?})",
                    p.name,
                    spec.edge,
                    spec.debounce
                );
                Some(watcher)
            }
            None => None,
        };
        let io = Arc::new(Mutex::new(io));
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (i, s) = (io.clone(), ticker_stop.clone());
        let ticker = std::thread::Builder::new()
            .name("edgefuse-gpio-tick".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if let Ok(mut io) = i.lock() {
                        io.tick(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .map_err(HardwareError::Thread)?;
        Ok(Self {
            io,
            clock,
            watcher,
            ticker_stop,
            ticker: Some(ticker),
        })
    }

    /// The clock the trigger input's edge thread stamps, when a GPIO trigger input is wired:
    /// the pipeline's trigger is `trigger::EdgeTrigger` over it.
    pub fn trigger_clock(&self) -> Option<Arc<EdgeClock>> {
        self.watcher.as_ref().map(|_| self.clock.clone())
    }

    /// Act on one classified frame's events; the edge → actuator latency when it fired.
    pub fn on_events(&self, events: &Events) -> Option<Duration> {
        self.io.lock().ok().and_then(|mut io| io.on_events(events))
    }

    /// Stop the threads, show the error code for 3 s after a failed run, drive everything
    /// inactive and give the pins back; returns the trigger → actuator latency figures.
    pub fn finish(mut self, failed: bool) -> Option<HardwareReport> {
        drop(self.watcher.take());
        // Only a status LED has an error code to show; without one, return at once.
        let shows_error = failed && self.io.lock().is_ok_and(|mut io| io.error(Instant::now()));
        if shows_error {
            std::thread::sleep(Duration::from_secs(3));
        }
        self.ticker_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        let io = Arc::try_unwrap(self.io)
            .ok()?
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        let report = HardwareReport {
            events: io.latency.count(),
            p50_ms: io.latency.quantile_ms(0.5),
            p99_ms: io.latency.quantile_ms(0.99),
            pin_errors: io.errors(),
        };
        io.release();
        Some(report)
    }
}
