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
//! Source of the r32 numbering: NVIDIA Jetson.GPIO, `lib/python/Jetson/GPIO/gpio_pin_data.py`.
//! AGX Xavier: `NVIDIA/jetson-gpio` at commit `01bd342b6ea7b823ecd42532fca8c09d6bc5d5a7`
//! (copyright 2018-2019, the release for L4T r32), `JETSON_XAVIER_PIN_DEFS`, whose first column
//! is the line offset within the chip of the sysfs device `2200000.gpio` (main) or
//! `c2f0000.gpio` (always-on). Xavier NX: the 2018-2020 release of the same file (copyright
//! NVIDIA 2018-2020), which keys every Tegra194 offset by the chip's line count
//! (`{224: r32, 169: r35}` for the main chip, `{40: r32, 30: r35}` for the always-on one) —
//! the very rule this module applies; its AGX Xavier rows agree with the commit above and its
//! r35 columns with [`crate::jetson_pins`], which is how the transcription is checked (tests
//! below). On the NX the always-on controller's offsets change too (pin 15: 20 on r32, 16 on
//! r35); on the AGX Xavier they do not.

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

/// Jetson Xavier NX under L4T r32 (Jetson.GPIO 2018-2020, `JETSON_NX_PIN_DEFS`, the `224`/`40`
/// keys). Pad names and PWM flags as in the r35 table.
pub const XAVIER_NX_R32: &[HeaderPin] = &[
    r32(7, MAIN, 148, "PS.04", false),
    r32(11, MAIN, 140, "PR.04", false),
    r32(12, MAIN, 157, "PT.05", false),
    r32(13, MAIN, 192, "PY.00", false),
    r32(15, AON, 20, "PCC.04", true),
    r32(16, MAIN, 196, "PY.04", false),
    r32(18, MAIN, 195, "PY.03", false),
    r32(19, MAIN, 205, "PZ.05", false),
    r32(21, MAIN, 204, "PZ.04", false),
    r32(22, MAIN, 193, "PY.01", false),
    r32(23, MAIN, 203, "PZ.03", false),
    r32(24, MAIN, 206, "PZ.06", false),
    r32(26, MAIN, 207, "PZ.07", false),
    r32(29, MAIN, 133, "PQ.05", false),
    r32(31, MAIN, 134, "PQ.06", false),
    r32(32, MAIN, 136, "PR.00", true),
    r32(33, MAIN, 105, "PN.01", true),
    r32(35, MAIN, 160, "PU.00", false),
    r32(36, MAIN, 141, "PR.05", false),
    r32(37, MAIN, 194, "PY.02", false),
    r32(38, MAIN, 159, "PT.07", false),
    r32(40, MAIN, 158, "PT.06", false),
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
            (Numbering::L4tR32, Board::XavierNx) => Ok(XAVIER_NX_R32),
            // Only Tegra194 numbering changed between kernels.
            (Numbering::L4tR32, b) => Ok(b.pins()),
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
    fn r32_tables_have_the_same_pins_pads_and_chips_as_r35() {
        for (board, r32) in [
            (Board::AgxXavier, AGX_XAVIER_R32),
            (Board::XavierNx, XAVIER_NX_R32),
        ] {
            let now = board.pins();
            assert_eq!(r32.len(), now.len(), "{board}");
            for (old, new) in r32.iter().zip(now) {
                assert_eq!(
                    (old.board, old.chip, old.soc_name, old.direction, old.pwm),
                    (new.board, new.chip, new.soc_name, new.direction, new.pwm),
                    "{board}"
                );
                // r32 counts 8 lines per port from port A (224 main, 40 always-on); r35 only
                // the lines that exist (169, 30), so a pad moves down, never up.
                let r32_lines = if old.chip == AON {
                    40
                } else {
                    T194_MAIN_LINES_R32
                };
                assert!(
                    old.line >= new.line && old.line < r32_lines,
                    "{board} pin {}",
                    old.board
                );
            }
        }
        // The always-on offsets: unchanged on the AGX Xavier, shifted on the NX (pin 15).
        let aon = |t: &[HeaderPin], pin| t.iter().find(|p| p.board == pin).unwrap().line;
        assert_eq!(aon(AGX_XAVIER_R32, 16), aon(Board::AgxXavier.pins(), 16));
        assert_eq!(
            (aon(XAVIER_NX_R32, 15), aon(Board::XavierNx.pins(), 15)),
            (20, 16)
        );
        // Header pin 7 on the NX: line 148 on r32, 118 on r35.
        assert_eq!(
            (aon(XAVIER_NX_R32, 7), aon(Board::XavierNx.pins(), 7)),
            (148, 118)
        );
    }

    #[test]
    fn boards_without_a_second_numbering_keep_their_table() {
        assert_eq!(
            Board::Nano.pins_for(Numbering::L4tR32).unwrap(),
            Board::Nano.pins()
        );
        assert_eq!(
            Board::XavierNx.pins_for(Numbering::L4tR32).unwrap(),
            XAVIER_NX_R32
        );
    }
}
