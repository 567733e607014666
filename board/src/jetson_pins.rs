//! GPIO tables for the 40-pin expansion header of NVIDIA Jetson developer kits.
//!
//! Source: NVIDIA Jetson.GPIO, `lib/python/Jetson/GPIO/gpio_pin_data.py` in the GitHub
//! repository `NVIDIA/jetson-gpio`, version at commit
//! `1b3706b5c092bd8afc5ab1217d4c2c8df98892e5` (copyright 2018-2025; the version that addresses
//! pins by GPIO character-device chip *label* plus line offset, carries a PADCTL/pinmux register
//! column for the Orin tables, and already lists Jetson Thor). Pins are in BOARD numbering
//! (physical header pin), sorted ascending; every pin Jetson.GPIO lists for the board is present
//! (22 per board here — the header's power, ground and I2C/UART-console pins are not GPIOs in
//! Jetson.GPIO and so are absent).
//!
//! Field mapping from the Jetson.GPIO tuple
//! `(line, gpio_name, chip_label, BOARD, BCM, CVM, TEGRA_SOC, pwm_chip, pwm_id[, padctl_reg])`:
//! `line` → [`HeaderPin::line`], `chip_label` → [`HeaderPin::chip`], `BOARD` →
//! [`HeaderPin::board`], `pwm_chip is not None` → [`HeaderPin::pwm`], `padctl_reg` (Orin only)
//! → [`HeaderPin::pinmux_reg`] (0 where the data has no such column). [`HeaderPin::soc_name`] is
//! the `gpio_name` column (port/pin name such as `"PQ.06"`) where NVIDIA gives one; the Nano table
//! leaves that column empty, so for Nano it is the `TEGRA_SOC` column (e.g. `"AUD_MCLK"`).
//!
//! Jetson.GPIO uses one pin table (`JETSON_ORIN_NX_PIN_DEFS`) for both Orin NX and Orin Nano;
//! [`ORIN_NANO`] and [`ORIN_NX`] are therefore the same table, told apart only by their
//! device-tree `compatible` lists.
//!
//! An independent transcription of the same data lives in
//! `tests/fixtures/jetson_pins_reference.json` for cross-checking.

/// One usable GPIO pin of a Jetson 40-pin header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderPin {
    /// Physical header pin number (BOARD numbering, 1..=40).
    pub board: u8,
    /// GPIO character-device chip label, e.g. "tegra234-gpio".
    pub chip: &'static str,
    /// Line offset on that chip.
    pub line: u32,
    /// SoC pad / GPIO name as NVIDIA gives it: the Jetson.GPIO `gpio_name` column (e.g.
    /// "PQ.06"), or for Jetson Nano, where that column is empty, the `TEGRA_SOC` column
    /// (e.g. "AUD_MCLK").
    pub soc_name: &'static str,
    /// Pinmux (PADCTL) register address (Orin only, from the pin data), or 0 when the data has none.
    pub pinmux_reg: u32,
    /// Whether Jetson.GPIO marks the pin as having a PWM function (the pwm chip column is not None).
    pub pwm: bool,
    /// Directions the carrier board allows (Jetson.GPIO's "Input-only / Output-only (due to
    /// base board)" comments).
    pub direction: Direction,
}

/// Which way a header pin can be used on the developer kit's carrier board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Input or output.
    Both,
    /// Input only (driving it has no effect or fights the carrier's driver).
    InputOnly,
    /// Output only (reads are meaningless).
    OutputOnly,
}

const TEGRA210: &str = "tegra-gpio";
const TEGRA194: &str = "tegra194-gpio";
const TEGRA194_AON: &str = "tegra194-gpio-aon";
const TEGRA234: &str = "tegra234-gpio";
const TEGRA234_AON: &str = "tegra234-gpio-aon";

const fn pin(
    board: u8,
    chip: &'static str,
    line: u32,
    soc_name: &'static str,
    pinmux_reg: u32,
    pwm: bool,
) -> HeaderPin {
    HeaderPin {
        board,
        chip,
        line,
        soc_name,
        pinmux_reg,
        pwm,
        direction: Direction::Both,
    }
}

const fn only(p: HeaderPin, direction: Direction) -> HeaderPin {
    HeaderPin { direction, ..p }
}

/// Jetson Nano (Tegra210; Jetson.GPIO `JETSON_NANO_PIN_DEFS`).
pub const NANO: &[HeaderPin] = &[
    pin(7, TEGRA210, 216, "AUD_MCLK", 0, false),
    pin(11, TEGRA210, 50, "UART2_RTS", 0, false),
    pin(12, TEGRA210, 79, "DAP4_SCLK", 0, false),
    pin(13, TEGRA210, 14, "SPI2_SCK", 0, false),
    pin(15, TEGRA210, 194, "LCD_TE", 0, false),
    pin(16, TEGRA210, 232, "SPI2_CS1", 0, false),
    pin(18, TEGRA210, 15, "SPI2_CS0", 0, false),
    pin(19, TEGRA210, 16, "SPI1_MOSI", 0, false),
    pin(21, TEGRA210, 17, "SPI1_MISO", 0, false),
    pin(22, TEGRA210, 13, "SPI2_MISO", 0, false),
    pin(23, TEGRA210, 18, "SPI1_SCK", 0, false),
    pin(24, TEGRA210, 19, "SPI1_CS0", 0, false),
    pin(26, TEGRA210, 20, "SPI1_CS1", 0, false),
    pin(29, TEGRA210, 149, "CAM_AF_EN", 0, false),
    pin(31, TEGRA210, 200, "GPIO_PZ0", 0, false),
    pin(32, TEGRA210, 168, "LCD_BL_PW", 0, true),
    pin(33, TEGRA210, 38, "GPIO_PE6", 0, true),
    pin(35, TEGRA210, 76, "DAP4_FS", 0, false),
    pin(36, TEGRA210, 51, "UART2_CTS", 0, false),
    pin(37, TEGRA210, 12, "SPI2_MOSI", 0, false),
    pin(38, TEGRA210, 77, "DAP4_DIN", 0, false),
    pin(40, TEGRA210, 78, "DAP4_DOUT", 0, false),
];

/// Jetson Xavier NX (Tegra194; Jetson.GPIO `JETSON_NX_PIN_DEFS`).
pub const XAVIER_NX: &[HeaderPin] = &[
    pin(7, TEGRA194, 118, "PS.04", 0, false),
    pin(11, TEGRA194, 112, "PR.04", 0, false),
    pin(12, TEGRA194, 127, "PT.05", 0, false),
    pin(13, TEGRA194, 149, "PY.00", 0, false),
    pin(15, TEGRA194_AON, 16, "PCC.04", 0, true),
    pin(16, TEGRA194, 153, "PY.04", 0, false),
    pin(18, TEGRA194, 152, "PY.03", 0, false),
    pin(19, TEGRA194, 162, "PZ.05", 0, false),
    pin(21, TEGRA194, 161, "PZ.04", 0, false),
    pin(22, TEGRA194, 150, "PY.01", 0, false),
    pin(23, TEGRA194, 160, "PZ.03", 0, false),
    pin(24, TEGRA194, 163, "PZ.06", 0, false),
    pin(26, TEGRA194, 164, "PZ.07", 0, false),
    pin(29, TEGRA194, 105, "PQ.05", 0, false),
    pin(31, TEGRA194, 106, "PQ.06", 0, false),
    pin(32, TEGRA194, 108, "PR.00", 0, true),
    pin(33, TEGRA194, 84, "PN.01", 0, true),
    pin(35, TEGRA194, 130, "PU.00", 0, false),
    pin(36, TEGRA194, 113, "PR.05", 0, false),
    pin(37, TEGRA194, 151, "PY.02", 0, false),
    pin(38, TEGRA194, 129, "PT.07", 0, false),
    pin(40, TEGRA194, 128, "PT.06", 0, false),
];

/// Jetson AGX Xavier (Tegra194; Jetson.GPIO `JETSON_XAVIER_PIN_DEFS`).
///
/// Pin 16's name is `"BB.00"` verbatim from NVIDIA's data (the port is PBB.00).
pub const AGX_XAVIER: &[HeaderPin] = &[
    pin(7, TEGRA194, 106, "PQ.06", 0, false),
    pin(11, TEGRA194, 112, "PR.04", 0, false),
    pin(12, TEGRA194, 51, "PH.07", 0, false),
    pin(13, TEGRA194, 108, "PR.00", 0, true),
    pin(15, TEGRA194, 84, "PN.01", 0, true),
    pin(16, TEGRA194_AON, 8, "BB.00", 0, false),
    pin(18, TEGRA194, 44, "PH.00", 0, true),
    pin(19, TEGRA194, 162, "PZ.05", 0, false),
    pin(21, TEGRA194, 161, "PZ.04", 0, false),
    pin(22, TEGRA194, 101, "PQ.01", 0, false),
    pin(23, TEGRA194, 160, "PZ.03", 0, false),
    pin(24, TEGRA194, 163, "PZ.06", 0, false),
    pin(26, TEGRA194, 164, "PZ.07", 0, false),
    pin(29, TEGRA194_AON, 3, "PAA.03", 0, false),
    pin(31, TEGRA194_AON, 2, "PAA.02", 0, false),
    pin(32, TEGRA194_AON, 9, "PBB.01", 0, false),
    pin(33, TEGRA194_AON, 0, "PAA.00", 0, false),
    pin(35, TEGRA194, 54, "PI.02", 0, false),
    // Input-only (due to base board).
    only(
        pin(36, TEGRA194, 113, "PR.05", 0, false),
        Direction::InputOnly,
    ),
    pin(37, TEGRA194_AON, 1, "PAA.01", 0, false),
    pin(38, TEGRA194, 53, "PI.01", 0, false),
    pin(40, TEGRA194, 52, "PI.00", 0, false),
];

/// Jetson Orin NX (Tegra234; Jetson.GPIO `JETSON_ORIN_NX_PIN_DEFS`, shared with Orin Nano).
pub const ORIN_NX: &[HeaderPin] = &[
    pin(7, TEGRA234, 144, "PAC.06", 0x0244_8030, false),
    pin(11, TEGRA234, 112, "PR.04", 0x0243_0098, false),
    pin(12, TEGRA234, 50, "PH.07", 0x0243_4088, false),
    pin(13, TEGRA234, 122, "PY.00", 0x0243_D030, false),
    pin(15, TEGRA234, 85, "PN.01", 0x0244_0020, true),
    pin(16, TEGRA234, 126, "PY.04", 0x0243_D020, false),
    pin(18, TEGRA234, 125, "PY.03", 0x0243_D010, false),
    pin(19, TEGRA234, 135, "PZ.05", 0x0243_D040, false),
    pin(21, TEGRA234, 134, "PZ.04", 0x0243_D018, false),
    pin(22, TEGRA234, 123, "PY.01", 0x0243_D000, false),
    pin(23, TEGRA234, 133, "PZ.03", 0x0243_D028, false),
    pin(24, TEGRA234, 136, "PZ.06", 0x0243_D008, false),
    pin(26, TEGRA234, 137, "PZ.07", 0x0243_D038, false),
    pin(29, TEGRA234, 105, "PQ.05", 0x0243_0068, false),
    pin(31, TEGRA234, 106, "PQ.06", 0x0243_0070, false),
    pin(32, TEGRA234, 41, "PG.06", 0x0243_4080, true),
    pin(33, TEGRA234, 43, "PH.00", 0x0243_4040, true),
    pin(35, TEGRA234, 53, "PI.02", 0x0243_40A0, false),
    pin(36, TEGRA234, 113, "PR.05", 0x0243_0090, false),
    pin(37, TEGRA234, 124, "PY.02", 0x0243_D048, false),
    pin(38, TEGRA234, 52, "PI.01", 0x0243_4098, false),
    pin(40, TEGRA234, 51, "PI.00", 0x0243_4090, false),
];

/// Jetson Orin Nano (Tegra234): Jetson.GPIO maps `JETSON_ORIN_NANO` to the same
/// `JETSON_ORIN_NX_PIN_DEFS` table as Orin NX, so this is [`ORIN_NX`].
pub const ORIN_NANO: &[HeaderPin] = ORIN_NX;

/// Jetson AGX Orin (Tegra234; Jetson.GPIO `JETSON_ORIN_PIN_DEFS`).
pub const AGX_ORIN: &[HeaderPin] = &[
    pin(7, TEGRA234, 106, "PQ.06", 0x0243_0070, false),
    // Output-only (due to base board).
    only(
        pin(11, TEGRA234, 112, "PR.04", 0x0243_0098, false),
        Direction::OutputOnly,
    ),
    pin(12, TEGRA234, 50, "PH.07", 0x0243_4088, false),
    pin(13, TEGRA234, 108, "PR.00", 0x0243_0080, true),
    pin(15, TEGRA234, 85, "PN.01", 0x0244_0020, true),
    pin(16, TEGRA234_AON, 9, "PBB.01", 0x0C30_3048, false),
    pin(18, TEGRA234, 43, "PH.00", 0x0243_4040, true),
    pin(19, TEGRA234, 135, "PZ.05", 0x0243_D040, false),
    pin(21, TEGRA234, 134, "PZ.04", 0x0243_D018, false),
    pin(22, TEGRA234, 96, "PP.04", 0x0243_0020, false),
    pin(23, TEGRA234, 133, "PZ.03", 0x0243_D028, false),
    pin(24, TEGRA234, 136, "PZ.06", 0x0243_D008, false),
    pin(26, TEGRA234, 137, "PZ.07", 0x0243_D038, false),
    pin(29, TEGRA234_AON, 1, "PAA.01", 0x0C30_3018, false),
    pin(31, TEGRA234_AON, 0, "PAA.00", 0x0C30_3010, false),
    pin(32, TEGRA234_AON, 8, "PBB.00", 0x0C30_3040, false),
    pin(33, TEGRA234_AON, 2, "PAA.02", 0x0C30_3000, false),
    pin(35, TEGRA234, 53, "PI.02", 0x0243_40A0, false),
    pin(36, TEGRA234, 113, "PR.05", 0x0243_0090, false),
    pin(37, TEGRA234_AON, 3, "PAA.03", 0x0C30_3008, false),
    pin(38, TEGRA234, 52, "PI.01", 0x0243_4098, false),
    pin(40, TEGRA234, 51, "PI.00", 0x0243_4090, false),
];

/// Device-tree `compatible` strings identifying Jetson Nano (Jetson.GPIO `compats_nano`).
pub const NANO_COMPATIBLE: &[&str] = &[
    "nvidia,p3450-0000",
    "nvidia,p3450-0002",
    "nvidia,jetson-nano",
];

/// Device-tree `compatible` strings identifying Jetson Xavier NX (Jetson.GPIO `compats_nx`).
pub const XAVIER_NX_COMPATIBLE: &[&str] = &[
    "nvidia,p3509-0000+p3668-0000",
    "nvidia,p3509-0000+p3668-0001",
    "nvidia,p3449-0000+p3668-0000",
    "nvidia,p3449-0000+p3668-0001",
    "nvidia,p3449-0000+p3668-0003",
];

/// Device-tree `compatible` strings identifying Jetson AGX Xavier (Jetson.GPIO `compats_xavier`).
pub const AGX_XAVIER_COMPATIBLE: &[&str] = &[
    "nvidia,p2972-0000",
    "nvidia,p2972-0006",
    "nvidia,jetson-xavier",
    "nvidia,galen-industrial",
    "nvidia,jetson-xavier-industrial",
];

/// Device-tree `compatible` strings identifying Jetson Orin Nano, p3767-0003/-0004/-0005
/// modules (Jetson.GPIO `compats_jetson_orins_nano`).
pub const ORIN_NANO_COMPATIBLE: &[&str] = &[
    "nvidia,p3509-0000+p3767-0003",
    "nvidia,p3768-0000+p3767-0003",
    "nvidia,p3509-0000+p3767-0004",
    "nvidia,p3768-0000+p3767-0004",
    "nvidia,p3509-0000+p3767-0005",
    "nvidia,p3768-0000+p3767-0005",
    "nvidia,p3768-0000+p3767-0005-super",
    "nvidia,p3768-0000+p3767-0003-super",
    "nvidia,p3768-0000+p3767-0004-super",
];

/// Device-tree `compatible` strings identifying Jetson Orin NX, p3767-0000/-0001 modules
/// (Jetson.GPIO `compats_jetson_orins_nx`).
pub const ORIN_NX_COMPATIBLE: &[&str] = &[
    "nvidia,p3509-0000+p3767-0000",
    "nvidia,p3768-0000+p3767-0000",
    "nvidia,p3509-0000+p3767-0001",
    "nvidia,p3768-0000+p3767-0001",
    "nvidia,p3768-0000+p3767-0000-super",
    "nvidia,p3768-0000+p3767-0001-super",
];

/// Device-tree `compatible` strings identifying Jetson AGX Orin (Jetson.GPIO
/// `compats_jetson_orins`).
pub const AGX_ORIN_COMPATIBLE: &[&str] = &[
    "nvidia,p3737-0000+p3701-0000",
    "nvidia,p3737-0000+p3701-0004",
    "nvidia,p3737-0000+p3701-0008",
    "nvidia,p3737-0000+p3701-0005",
    "nvidia,p3737-0000+p3701-0001",
];
