//! Actuation, the last stage of the data path, and the GPIO inputs that trigger it.
//!
//! * [`spec`]: what the options wire (pins, the GPIO trigger, label actuators, the status LED),
//!   parsed and resolved against a board's header map. Pure; depends on the board tables only.
//! * [`io`]: [`Io`] drives actuators and the LED from decision events over embedded-hal pins;
//!   [`EdgeClock`] carries the trigger edge's time to it (the GPIO triggers themselves are the
//!   trigger stage's: `crate::trigger::{EdgeTrigger, PolledTrigger}`).
//! * [`linux`]: the same on a Linux board's GPIO character devices, with its threads.

pub mod io;
pub mod linux;
pub mod spec;

pub use io::{DriveError, EdgeClock, Io};
pub use linux::{Hardware, HardwareError, HardwareReport};
pub use spec::{
    parse_pin, ActuatorSpec, GpioTriggerSpec, LedSpec, PinRef, ResolvedPin, ResolvedWiring, Wiring,
    WiringError,
};
