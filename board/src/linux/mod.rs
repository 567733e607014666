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

use std::path::Path;

pub use detect::{non_gpio_pins, read_board, supported, BoardError};
pub use gpio::{find_chip, EdgeWatcher, GpioError, LineError, LineInput, LineOutput};
pub use health::{Health, Zone};

use crate::jetson::Board;

/// [`read_board`] with its error wrapped in [`GpioError::Board`], the form the runtime's wiring
/// takes today. Transitional: once its callers take a [`BoardError`] from [`read_board`], this
/// and [`GpioError::Board`] go.
pub fn detect_board(root: &Path) -> Result<(Board, String), GpioError> {
    read_board(root).map_err(GpioError::Board)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn write(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn detect_board_keeps_the_board_error_message() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        write(r, "proc/device-tree/compatible", b"brcm,bcm2711\0");
        let old = detect_board(r).unwrap_err();
        assert!(matches!(old, GpioError::Board(BoardError::Unknown { .. })));
        assert_eq!(old.to_string(), read_board(r).unwrap_err().to_string());
    }
}
