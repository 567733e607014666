//! Driving the wiring: [`Io`] fires and releases label actuators and shows the status LED from
//! each frame's decision events over any embedded-hal `OutputPin` (the Linux character device on
//! a board, mocks in tests), and measures the latency from the trigger edge to the actuator,
//! from the [`EdgeClock`] that the GPIO triggers (`crate::trigger::EdgeTrigger`,
//! `PolledTrigger`) stamp.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefuse_board::{Actuator, ActuatorMode, Status, StatusLed};
use embedded_hal::digital::OutputPin;

use crate::decision::{EventKind, Events};
use crate::stats::Histogram;

/// An output pin could not be driven to its initial level (the machine's fault, not the
/// options': exit code 1, and the service restarts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot drive {0}")]
pub struct DriveError(pub &'static str);

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

    /// Milliseconds from the clock's start to `now` (the time base of the board drivers).
    pub fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Time from the current frame's edge to `now`, if an edge triggered it.
    pub fn since_edge(&self, now: Instant) -> Option<Duration> {
        let ns = self.current.load(Ordering::Acquire);
        (ns != 0).then(|| now.saturating_duration_since(self.epoch + Duration::from_nanos(ns - 1)))
    }
}

/// Drives actuators and the status LED from the decision's events.
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
    ) -> Result<Self, DriveError> {
        let mut acts = Vec::with_capacity(actuators.len());
        for (label, pin, mode, active_low) in actuators {
            acts.push((
                label,
                Actuator::new(pin, mode, active_low)
                    .map_err(|_| DriveError("an actuator pin inactive"))?,
            ));
        }
        let epoch = clock.epoch;
        let led = match led {
            Some((pin, active_low)) => {
                let mut l = StatusLed::new(pin, active_low)
                    .map_err(|_| DriveError("the status LED pin"))?;
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

    /// Act on a classified frame's decision events: fire and release actuators, show
    /// `Inferring`. Returns the trigger-edge → actuator latency when this frame fired an
    /// actuator and an edge triggered it.
    pub fn on_events(&mut self, events: &Events) -> Option<Duration> {
        let now = Instant::now();
        let ms = self.ms(now);
        let mut fired = false;
        let mut failed = false;
        for e in events.iter() {
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
