//! GPIO line numbering per kernel: Tegra194 (Xavier) line offsets depend on the L4T release.
//!
//! L4T r32 (JetPack 4.6, kernel 4.9) registers the Tegra194 main GPIO controller as one chip of
//! 224 lines (8 per port, unused ones included) and the always-on controller with 40; L4T r35
//! and later (JetPack 5+, kernel 5.10+) register only the lines that exist: 169 and 30. The same
//! header pin is a different line offset on each: AGX Xavier pin 7 (pad PQ.06) is line 134 on
//! r32 and 106 on r35. [`crate::jetson_pins`] holds the r35+ numbering ([`Numbering::Current`]);
//! this module adds the r32 one ([`Numbering::L4tR32`]) and picks between them by the main
//! chip's line count, read at run time.
//!
//! Source of the r32 numbering: NVIDIA Jetson.GPIO, `lib/python/Jetson/GPIO/gpio_pin_data.py`
//! in `NVIDIA/jetson-gpio` at commit `01bd342b6ea7b823ecd42532fca8c09d6bc5d5a7` (copyright
//! 2018-2019, the release for L4T r32): `JETSON_XAVIER_PIN_DEFS`, whose first column is the line
//! offset within the chip of the sysfs device `2200000.gpio` (main) or `c2f0000.gpio`
//! (always-on). Only the AGX Xavier table of that release was checked against NVIDIA's
//! repository; the Xavier NX (which that release predates) has no verified r32 numbering here,
//! so its header pins are refused on a 224-line chip (raw `line:CHIP:OFFSET` still works).

use crate::jetson::Board;
use crate::jetson_pins::{Direction, HeaderPin};

/// Lines of the Tegra194 main GPIO chip on L4T r32.
pub const T194_MAIN_LINES_R32: u32 = 224;
/// Lines of the Tegra194 main GPIO chip on L4T r35 and later.
pub const T194_MAIN_LINES_R35: u32 = 169;

/// Which kernel's line numbering a header table uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Numbering {
    /// L4T r35+ (JetPack 5 and later; every Orin, and the Nano's only numbering).
    #[default]
    Current,
    /// L4T r32 (JetPack 4.6) on Tegra194: the 224-line main chip.
    L4tR32,
}

/// Why no numbering applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberingError {
    /// The main chip has a line count no known kernel uses.
    UnknownLineCount {
        /// The board.
        board: Board,
        /// The line count found.
        lines: u32,
    },
    /// The numbering is known to exist but its data was not verified for this board.
    Unverified {
        /// The board.
        board: Board,
        /// The numbering.
        numbering: Numbering,
    },
}

impl core::fmt::Display for NumberingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NumberingError::UnknownLineCount { board, lines } => write!(
                f,
                "the {} main GPIO chip has {lines} lines; edgefuse knows {T194_MAIN_LINES_R32} (L4T r32, JetPack 4.6) \
                 and {T194_MAIN_LINES_R35} (L4T r35+, JetPack 5+): address the pin as line:CHIP:OFFSET",
                board.title()
            ),
            NumberingError::Unverified { board, numbering } => write!(
                f,
                "{} header pins under {} are not supported (no verified pin data); address the pin as line:CHIP:OFFSET",
                board.title(),
                numbering.describe()
            ),
        }
    }
}

impl Numbering {
    /// One line for `board pins` / `board detect`.
    pub fn describe(self) -> &'static str {
        match self {
            Numbering::Current => "L4T r35+ numbering (JetPack 5 and later)",
            Numbering::L4tR32 => "L4T r32 numbering (JetPack 4.6: 224-line Tegra194 main chip)",
        }
    }

    /// The short name (`r35`, `r32`).
    pub fn name(self) -> &'static str {
        match self {
            Numbering::Current => "r35",
            Numbering::L4tR32 => "r32",
        }
    }

    /// The numbering for `board` whose main GPIO chip has `lines` lines. Only Tegra194 boards
    /// depend on it; the others always use [`Numbering::Current`].
    pub fn for_main_chip(board: Board, lines: u32) -> Result<Numbering, NumberingError> {
        if !board.is_tegra194() {
            return Ok(Numbering::Current);
        }
        match lines {
            T194_MAIN_LINES_R35 => Ok(Numbering::Current),
            T194_MAIN_LINES_R32 => Ok(Numbering::L4tR32),
            _ => Err(NumberingError::UnknownLineCount { board, lines }),
        }
    }
}

const MAIN: &str = "tegra194-gpio";
const AON: &str = "tegra194-gpio-aon";

const fn r32(
    board: u8,
    chip: &'static str,
    line: u32,
    soc_name: &'static str,
    pwm: bool,
) -> HeaderPin {
    HeaderPin {
        board,
        chip,
        line,
        soc_name,
        pinmux_reg: 0,
        pwm,
        direction: Direction::Both,
    }
}

/// Jetson AGX Xavier under L4T r32 (NVIDIA/jetson-gpio @01bd342b, `JETSON_XAVIER_PIN_DEFS`).
/// Chips are named by role as in the r35 table: `tegra194-gpio` is the main controller
/// (`2200000.gpio`), `tegra194-gpio-aon` the always-on one (`c2f0000.gpio`, whose offsets are
/// the same on both kernels). Pad names and PWM flags are those of the same pads in the r35
/// table (the r32 data names pads by function, not port).
pub const AGX_XAVIER_R32: &[HeaderPin] = &[
    r32(7, MAIN, 134, "PQ.06", false),
    r32(11, MAIN, 140, "PR.04", false),
    r32(12, MAIN, 63, "PH.07", false),
    r32(13, MAIN, 136, "PR.00", true),
    r32(15, MAIN, 105, "PN.01", true),
    r32(16, AON, 8, "BB.00", false),
    r32(18, MAIN, 56, "PH.00", true),
    r32(19, MAIN, 205, "PZ.05", false),
    r32(21, MAIN, 204, "PZ.04", false),
    r32(22, MAIN, 129, "PQ.01", false),
    r32(23, MAIN, 203, "PZ.03", false),
    r32(24, MAIN, 206, "PZ.06", false),
    r32(26, MAIN, 207, "PZ.07", false),
    r32(29, AON, 3, "PAA.03", false),
    r32(31, AON, 2, "PAA.02", false),
    r32(32, AON, 9, "PBB.01", false),
    r32(33, AON, 0, "PAA.00", false),
    r32(35, MAIN, 66, "PI.02", false),
    // Input-only (due to base board).
    HeaderPin {
        direction: Direction::InputOnly,
        ..r32(36, MAIN, 141, "PR.05", false)
    },
    r32(37, AON, 1, "PAA.01", false),
    r32(38, MAIN, 65, "PI.01", false),
    r32(40, MAIN, 64, "PI.00", false),
];

impl Board {
    /// Whether the board is a Tegra194 (Xavier), whose line numbering depends on the kernel.
    pub fn is_tegra194(self) -> bool {
        matches!(self, Board::XavierNx | Board::AgxXavier)
    }

    /// The header table under `numbering`.
    pub fn pins_for(self, numbering: Numbering) -> Result<&'static [HeaderPin], NumberingError> {
        match (numbering, self) {
            (Numbering::Current, b) => Ok(b.pins()),
            (Numbering::L4tR32, Board::AgxXavier) => Ok(AGX_XAVIER_R32),
            (Numbering::L4tR32, b) if !b.is_tegra194() => Ok(b.pins()),
            (n, board) => Err(NumberingError::Unverified {
                board,
                numbering: n,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_count_picks_the_numbering() {
        let b = Board::AgxXavier;
        assert_eq!(Numbering::for_main_chip(b, 224), Ok(Numbering::L4tR32));
        assert_eq!(Numbering::for_main_chip(b, 169), Ok(Numbering::Current));
        assert!(Numbering::for_main_chip(b, 200).is_err());
        // Only Tegra194 depends on it.
        assert_eq!(
            Numbering::for_main_chip(Board::AgxOrin, 224),
            Ok(Numbering::Current)
        );
        // The example: AGX Xavier header pin 7 is line 134 on r32, 106 on r35.
        let pin7 = |n| {
            *b.pins_for(n)
                .unwrap()
                .iter()
                .find(|p| p.board == 7)
                .unwrap()
        };
        assert_eq!(
            (pin7(Numbering::L4tR32).line, pin7(Numbering::Current).line),
            (134, 106)
        );
    }

    #[test]
    fn r32_table_has_the_same_pins_pads_and_chips_as_r35() {
        let now = Board::AgxXavier.pins();
        assert_eq!(AGX_XAVIER_R32.len(), now.len());
        for (old, new) in AGX_XAVIER_R32.iter().zip(now) {
            assert_eq!(
                (old.board, old.chip, old.soc_name, old.direction),
                (new.board, new.chip, new.soc_name, new.direction)
            );
            if old.chip == AON {
                // The always-on controller's offsets did not change.
                assert_eq!(old.line, new.line, "pin {}", old.board);
            } else {
                // r32 counts 8 lines per port from port A; r35 only the lines that exist, so a
                // pad moves down, never up, and stays within the 224 lines.
                assert!(
                    old.line >= new.line && old.line < T194_MAIN_LINES_R32,
                    "pin {}",
                    old.board
                );
            }
        }
    }

    #[test]
    fn unverified_numberings_are_refused_with_a_way_out() {
        let e = Board::XavierNx.pins_for(Numbering::L4tR32).unwrap_err();
        let mut s = heapless::String::<256>::new();
        core::fmt::write(&mut s, format_args!("{e}")).unwrap();
        assert!(s.contains("line:CHIP:OFFSET"), "{s}");
        assert_eq!(
            Board::Nano.pins_for(Numbering::L4tR32).unwrap(),
            Board::Nano.pins()
        );
    }
}
