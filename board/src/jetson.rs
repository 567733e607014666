//! Jetson boards: 40-pin header maps (BOARD pin number → GPIO chip label and line offset) and
//! detection from the device tree's `compatible` property.

pub use crate::jetson_pins::HeaderPin;
use crate::jetson_pins::*;

/// A Jetson module / developer kit with a 40-pin header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Board {
    /// Jetson Nano (Tegra210).
    Nano,
    /// Jetson Xavier NX (Tegra194).
    XavierNx,
    /// Jetson AGX Xavier (Tegra194).
    AgxXavier,
    /// Jetson Orin Nano (Tegra234).
    OrinNano,
    /// Jetson Orin NX (Tegra234).
    OrinNx,
    /// Jetson AGX Orin (Tegra234).
    AgxOrin,
}

/// Errors of the pin lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinError {
    /// The header pin is not a GPIO on this board (power, ground, or a dedicated function).
    NotGpio {
        /// The board.
        board: Board,
        /// The header pin asked for.
        pin: u8,
    },
}

impl Board {
    /// Every supported board.
    pub const ALL: [Board; 6] = [
        Board::Nano,
        Board::XavierNx,
        Board::AgxXavier,
        Board::OrinNano,
        Board::OrinNx,
        Board::AgxOrin,
    ];

    /// The short name used on the command line and in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Board::Nano => "nano",
            Board::XavierNx => "xavier-nx",
            Board::AgxXavier => "agx-xavier",
            Board::OrinNano => "orin-nano",
            Board::OrinNx => "orin-nx",
            Board::AgxOrin => "agx-orin",
        }
    }

    /// The marketing name.
    pub fn title(self) -> &'static str {
        match self {
            Board::Nano => "Jetson Nano",
            Board::XavierNx => "Jetson Xavier NX",
            Board::AgxXavier => "Jetson AGX Xavier",
            Board::OrinNano => "Jetson Orin Nano",
            Board::OrinNx => "Jetson Orin NX",
            Board::AgxOrin => "Jetson AGX Orin",
        }
    }

    /// Look a board up by [`Board::name`].
    pub fn from_name(name: &str) -> Option<Board> {
        Board::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The usable GPIO pins of the 40-pin header, sorted by BOARD number.
    pub fn pins(self) -> &'static [HeaderPin] {
        match self {
            Board::Nano => NANO,
            Board::XavierNx => XAVIER_NX,
            Board::AgxXavier => AGX_XAVIER,
            Board::OrinNano => ORIN_NANO,
            Board::OrinNx => ORIN_NX,
            Board::AgxOrin => AGX_ORIN,
        }
    }

    /// Device-tree `compatible` entries that identify this board.
    pub fn compatible(self) -> &'static [&'static str] {
        match self {
            Board::Nano => NANO_COMPATIBLE,
            Board::XavierNx => XAVIER_NX_COMPATIBLE,
            Board::AgxXavier => AGX_XAVIER_COMPATIBLE,
            Board::OrinNano => ORIN_NANO_COMPATIBLE,
            Board::OrinNx => ORIN_NX_COMPATIBLE,
            Board::AgxOrin => AGX_ORIN_COMPATIBLE,
        }
    }

    /// Whether the board is a Tegra234 (Orin): its header pads may be muxed to another
    /// function than GPIO until the pinmux is set.
    pub fn is_orin(self) -> bool {
        matches!(self, Board::OrinNano | Board::OrinNx | Board::AgxOrin)
    }

    /// The header pin with BOARD number `pin`.
    pub fn pin(self, pin: u8) -> Result<&'static HeaderPin, PinError> {
        self.pins()
            .iter()
            .find(|p| p.board == pin)
            .ok_or(PinError::NotGpio { board: self, pin })
    }

    /// Detect the board from the raw device-tree `compatible` property (NUL-separated strings,
    /// as read from `/proc/device-tree/compatible`). The most specific match wins: every entry
    /// of the property is tried in order against every board.
    pub fn detect(compatible: &[u8]) -> Option<Board> {
        compatible
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .find_map(|entry| {
                Board::ALL
                    .into_iter()
                    .find(|b| b.compatible().iter().any(|c| c.as_bytes() == entry))
            })
    }
}

impl core::fmt::Display for Board {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::fmt::Display for PinError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PinError::NotGpio { board, pin } => {
                write!(
                    f,
                    "header pin {pin} is not a GPIO on the {}; GPIO pins are",
                    board.title()
                )?;
                for (i, p) in board.pins().iter().enumerate() {
                    write!(f, "{}{}", if i == 0 { " " } else { ", " }, p.board)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_tables_are_sorted_and_unique() {
        for b in Board::ALL {
            assert_eq!(Board::from_name(b.name()), Some(b));
            let pins = b.pins();
            assert!(!pins.is_empty(), "{b}");
            for w in pins.windows(2) {
                assert!(
                    w[0].board < w[1].board,
                    "{b}: {} before {}",
                    w[0].board,
                    w[1].board
                );
            }
            for (i, p) in pins.iter().enumerate() {
                assert!((1..=40).contains(&p.board), "{b}: pin {}", p.board);
                for q in &pins[i + 1..] {
                    assert!(
                        (p.chip, p.line) != (q.chip, q.line),
                        "{b}: pins {} and {} share {}:{}",
                        p.board,
                        q.board,
                        p.chip,
                        p.line
                    );
                }
            }
            assert!(!b.compatible().is_empty(), "{b}");
        }
        assert_eq!(Board::from_name("pi4"), None);
    }

    #[test]
    fn known_lines() {
        let p = Board::OrinNano.pin(7).unwrap();
        assert_eq!((p.chip, p.line), ("tegra234-gpio", 144));
        let p = Board::AgxOrin.pin(16).unwrap();
        assert_eq!((p.chip, p.line), ("tegra234-gpio-aon", 9));
        let p = Board::XavierNx.pin(7).unwrap();
        assert_eq!((p.chip, p.line), ("tegra194-gpio", 118));
        let p = Board::Nano.pin(7).unwrap();
        assert_eq!((p.chip, p.line), ("tegra-gpio", 216));
        // Pin 1 is 3.3 V, pin 6 ground: never GPIO.
        for b in Board::ALL {
            assert_eq!(b.pin(1), Err(PinError::NotGpio { board: b, pin: 1 }));
            assert!(b.pin(6).is_err());
        }
    }

    #[test]
    fn detection_picks_the_most_specific_entry() {
        for b in Board::ALL {
            for c in b.compatible() {
                let mut raw = heapless::Vec::<u8, 128>::new();
                raw.extend_from_slice(c.as_bytes()).unwrap();
                raw.push(0).unwrap();
                assert_eq!(Board::detect(&raw), Some(b), "{c}");
            }
        }
        assert_eq!(
            Board::detect(b"raspberrypi,4-model-b\0brcm,bcm2711\0"),
            None
        );
        assert_eq!(Board::detect(b""), None);
    }
}
