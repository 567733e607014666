//! Linux: the GPIO character device (through `gpiocdev`), board detection from the device tree,
//! and board health (thermal zones, power mode).
//!
//! - [`gpio`]: chips, lines ([`LineOutput`], [`LineInput`]), edge events ([`EdgeWatcher`]) and
//!   their [`GpioError`].
//! - [`detect`]: which board this is ([`read_board`], [`BoardError`]) and which header pins are
//!   muxed away from GPIO ([`non_gpio_pins`]).
//! - [`health`]: thermal zones and the power mode ([`Health`]).
//!
//! Pins are requested by GPIO chip *label* (stable across kernels, unlike `gpiochipN` numbers)
//! and line offset. [`LineOutput`] and [`LineInput`] implement the embedded-hal traits, so the
//! `no_std` drivers of this crate run on them unchanged. [`EdgeWatcher`] waits on the kernel's
//! edge events in a thread (no polling) and timestamps each accepted edge.

pub mod detect;
pub mod gpio;
pub mod health;
pub mod numbering;

pub use detect::{non_gpio_pins, read_board, supported, BoardError};
pub use gpio::{find_chip, EdgeWatcher, GpioError, LineError, LineInput, LineOutput};
pub use health::{Health, Zone};
pub use numbering::{check_line_name, chips, numbering_of, ChipSeen, NumberingDetectError};

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    pub(crate) fn write(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}
