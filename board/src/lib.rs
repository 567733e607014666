//! edgefuse board support: `no_std` drivers over embedded-hal 1.0 for a trigger input (button,
//! PIR sensor, light barrier), label actuators (LED, relay) and a status LED; the Jetson 40-pin
//! header maps ([`jetson`]); and, with feature `linux`, the GPIO character device, board
//! detection and health ([`linux`]).
//!
//! Drivers own their pins (taken in `new`, handed back by `release`), keep fixed-size state,
//! never allocate, and take time as milliseconds from the caller so they can be tested with a
//! mock clock.

#![cfg_attr(not(feature = "linux"), no_std)]
#![deny(unsafe_code)]
#![deny(missing_docs)]

use embedded_hal::digital::{InputPin, OutputPin};

pub mod jetson;
pub mod jetson_numbering;
pub mod jetson_pins;
#[cfg(feature = "linux")]
pub mod linux;

/// Which transition of the input counts as a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Edge {
    /// Low → high.
    #[default]
    Rising,
    /// High → low.
    Falling,
    /// Either.
    Both,
}

/// Errors of the drivers: the pin's own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// Reading or driving the pin failed.
    Pin(E),
}

/// A debounced trigger input: a level must stay stable for `debounce_ms` before it is accepted,
/// and an accepted transition matching `edge` is reported once.
#[derive(Debug)]
pub struct TriggerInput<P> {
    pin: P,
    edge: Edge,
    debounce_ms: u32,
    stable: bool,
    candidate: bool,
    since_ms: u64,
    primed: bool,
}

impl<P: InputPin> TriggerInput<P> {
    /// Take ownership of `pin`.
    pub fn new(pin: P, edge: Edge, debounce_ms: u32) -> Self {
        Self {
            pin,
            edge,
            debounce_ms,
            stable: false,
            candidate: false,
            since_ms: 0,
            primed: false,
        }
    }

    /// Sample the pin at `now_ms`; `Ok(true)` exactly once per debounced matching edge.
    pub fn poll(&mut self, now_ms: u64) -> Result<bool, Error<P::Error>> {
        let level = self.pin.is_high().map_err(Error::Pin)?;
        if !self.primed {
            self.primed = true;
            self.stable = level;
            self.candidate = level;
            self.since_ms = now_ms;
            return Ok(false);
        }
        if level != self.candidate {
            self.candidate = level;
            self.since_ms = now_ms;
        }
        if self.candidate != self.stable
            && now_ms.saturating_sub(self.since_ms) >= u64::from(self.debounce_ms)
        {
            self.stable = self.candidate;
            let rising = self.stable;
            return Ok(match self.edge {
                Edge::Rising => rising,
                Edge::Falling => !rising,
                Edge::Both => true,
            });
        }
        Ok(false)
    }

    /// Give the pin back.
    pub fn release(self) -> P {
        self.pin
    }
}

/// How an actuator responds to its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActuatorMode {
    /// Active for this many milliseconds after each event.
    Pulse(u32),
    /// Active while the label is active.
    Hold,
}

/// An output driven by a label: an LED or a relay, optionally active-low.
#[derive(Debug)]
pub struct Actuator<P> {
    pin: P,
    mode: ActuatorMode,
    active_low: bool,
    on_until: Option<u64>,
    on: bool,
}

impl<P: OutputPin> Actuator<P> {
    /// Take ownership of `pin` and drive it inactive.
    pub fn new(pin: P, mode: ActuatorMode, active_low: bool) -> Result<Self, Error<P::Error>> {
        let mut a = Self {
            pin,
            mode,
            active_low,
            on_until: None,
            on: true,
        };
        a.drive(false)?;
        Ok(a)
    }

    fn drive(&mut self, on: bool) -> Result<(), Error<P::Error>> {
        if on == self.on {
            return Ok(());
        }
        let high = on != self.active_low;
        if high {
            self.pin.set_high().map_err(Error::Pin)?;
        } else {
            self.pin.set_low().map_err(Error::Pin)?;
        }
        self.on = on;
        Ok(())
    }

    /// The label fired at `now_ms`.
    pub fn fire(&mut self, now_ms: u64) -> Result<(), Error<P::Error>> {
        if let ActuatorMode::Pulse(ms) = self.mode {
            self.on_until = Some(now_ms + u64::from(ms));
        }
        self.drive(true)
    }

    /// The label was released (ends a `Hold`; a pulse runs its course).
    pub fn release_label(&mut self) -> Result<(), Error<P::Error>> {
        if self.mode == ActuatorMode::Hold {
            self.drive(false)?;
        }
        Ok(())
    }

    /// Advance time: ends a pulse when due.
    pub fn update(&mut self, now_ms: u64) -> Result<(), Error<P::Error>> {
        if let Some(t) = self.on_until {
            if now_ms >= t {
                self.on_until = None;
                self.drive(false)?;
            }
        }
        Ok(())
    }

    /// Whether the output is active.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Drive inactive and give the pin back.
    pub fn release(mut self) -> Result<P, Error<P::Error>> {
        self.drive(false)?;
        Ok(self.pin)
    }
}

/// What the status LED shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Steady on: running, waiting for a trigger.
    Ready,
    /// Fast blink (100 ms on, 100 ms off): classifying.
    Inferring,
    /// Three short blinks then a pause (each 150 ms, 1 s period): a fault (camera lost, error).
    Error,
    /// Off.
    Off,
}

/// A status LED with blink codes, advanced by [`StatusLed::update`] with the caller's clock.
#[derive(Debug)]
pub struct StatusLed<P> {
    led: Actuator<P>,
    status: Status,
    since_ms: u64,
}

impl<P: OutputPin> StatusLed<P> {
    /// Take ownership of `pin` (LED off).
    pub fn new(pin: P, active_low: bool) -> Result<Self, Error<P::Error>> {
        Ok(Self {
            led: Actuator::new(pin, ActuatorMode::Hold, active_low)?,
            status: Status::Off,
            since_ms: 0,
        })
    }

    /// Show `status` from `now_ms` (restarts the blink pattern when it changes).
    pub fn set(&mut self, status: Status, now_ms: u64) -> Result<(), Error<P::Error>> {
        if status != self.status {
            self.status = status;
            self.since_ms = now_ms;
        }
        self.update(now_ms)
    }

    /// The status shown.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether the LED is lit now.
    pub fn is_on(&self) -> bool {
        self.led.is_on()
    }

    /// Advance the blink pattern to `now_ms`.
    pub fn update(&mut self, now_ms: u64) -> Result<(), Error<P::Error>> {
        let t = now_ms.saturating_sub(self.since_ms);
        let on = match self.status {
            Status::Ready => true,
            Status::Off => false,
            Status::Inferring => (t / 100).is_multiple_of(2),
            Status::Error => {
                let phase = t % 1000;
                phase < 900 && (phase / 150).is_multiple_of(2)
            }
        };
        if on {
            self.led.fire(now_ms)
        } else {
            self.led.release_label()
        }
    }

    /// Turn off and give the pin back.
    pub fn release(self) -> Result<P, Error<P::Error>> {
        self.led.release()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction as T};

    #[test]
    fn debounce_rejects_bounces_and_reports_one_rising_edge() {
        let seq = [
            T::get(State::Low),  // t=0 prime
            T::get(State::High), // t=1 bounce starts
            T::get(State::Low),  // t=3 bounced back
            T::get(State::High), // t=5 candidate high
            T::get(State::High), // t=15 not yet 20 ms
            T::get(State::High), // t=25 stable 20 ms -> edge
            T::get(State::High), // t=40 no repeat
            T::get(State::Low),  // t=50
            T::get(State::Low),  // t=80 falling accepted, not reported for Rising
        ];
        let mut pin = Mock::new(&seq);
        let mut t = TriggerInput::new(pin.clone(), Edge::Rising, 20);
        let got: [bool; 9] = [0u64, 1, 3, 5, 15, 25, 40, 50, 80].map(|now| t.poll(now).unwrap());
        assert_eq!(
            got,
            [false, false, false, false, false, true, false, false, false]
        );
        t.release();
        pin.done();
    }

    #[test]
    fn falling_and_both_edges() {
        let seq = [T::get(State::High), T::get(State::Low), T::get(State::High)];
        let mut pin = Mock::new(&seq);
        let mut t = TriggerInput::new(pin.clone(), Edge::Falling, 0);
        assert_eq!(
            [0u64, 1, 2].map(|n| t.poll(n).unwrap()),
            [false, true, false]
        );
        t.release();
        pin.done();
        let mut pin = Mock::new(&seq);
        let mut t = TriggerInput::new(pin.clone(), Edge::Both, 0);
        assert_eq!(
            [0u64, 1, 2].map(|n| t.poll(n).unwrap()),
            [false, true, true]
        );
        t.release();
        pin.done();
    }

    #[test]
    fn pulse_actuator_times_out_with_mock_clock() {
        let seq = [T::set(State::Low), T::set(State::High), T::set(State::Low)];
        let mut pin = Mock::new(&seq);
        let mut a = Actuator::new(pin.clone(), ActuatorMode::Pulse(200), false).unwrap();
        a.fire(1000).unwrap();
        a.update(1100).unwrap();
        assert!(a.is_on());
        a.update(1200).unwrap();
        assert!(!a.is_on());
        a.release().unwrap();
        pin.done();
    }

    #[test]
    fn status_led_blink_codes() {
        use State::{High, Low};
        // new: off (low); Ready: on; Inferring at t=1000: on until 1100, off until 1200, on;
        // Error at t=2000: blinks at 0, 300, 600 (150 ms each), dark 900-1000, then again.
        let seq = [
            T::set(Low),
            T::set(High), // ready
            T::set(Low),  // inferring t=1100
            T::set(High), // t=1200
            T::set(Low),  // error t=2150
            T::set(High), // t=2300
            T::set(Low),  // t=2950 pause
            T::set(High), // t=3000 next period
            T::set(Low),  // release
        ];
        let mut pin = Mock::new(&seq);
        let mut led = StatusLed::new(pin.clone(), false).unwrap();
        led.set(Status::Ready, 0).unwrap();
        led.update(500).unwrap();
        assert!(led.is_on());
        led.set(Status::Inferring, 1000).unwrap(); // still on: no transaction
        led.update(1050).unwrap();
        led.update(1100).unwrap();
        assert!(!led.is_on());
        led.update(1200).unwrap();
        assert!(led.is_on());
        led.set(Status::Error, 2000).unwrap();
        led.update(2150).unwrap();
        led.update(2300).unwrap();
        led.update(2650).unwrap(); // third blink (600..750): still on, no transaction
        assert!(led.is_on());
        led.update(2950).unwrap();
        assert!(!led.is_on());
        led.update(3000).unwrap();
        assert_eq!(led.status(), Status::Error);
        led.release().unwrap();
        pin.done();
    }

    #[test]
    fn hold_actuator_active_low() {
        // active-low: inactive = high, active = low.
        let seq = [T::set(State::High), T::set(State::Low), T::set(State::High)];
        let mut pin = Mock::new(&seq);
        let mut a = Actuator::new(pin.clone(), ActuatorMode::Hold, true).unwrap();
        a.fire(0).unwrap();
        a.fire(10).unwrap(); // already on: no pin transaction
        a.update(10_000).unwrap(); // hold ignores time
        assert!(a.is_on());
        a.release_label().unwrap();
        a.release().unwrap();
        pin.done();
    }
}
