//! Which line numbering the running kernel uses ([`Numbering`]), read from the Tegra194 main GPIO
//! chip's line count, and the check that a line is the pad a header table says (where the kernel
//! names its lines).

use std::path::{Path, PathBuf};

use crate::jetson::Board;
use crate::jetson_numbering::{Numbering, NumberingError};

use super::gpio::GpioError;

/// One GPIO chip as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChipSeen {
    /// Character device (`/dev/gpiochipN`).
    pub path: PathBuf,
    /// Kernel name (`gpiochipN`).
    pub name: String,
    /// Label (`tegra194-gpio` on kernels 5.10+).
    pub label: String,
    /// Line count.
    pub lines: u32,
    /// The platform device it belongs to (`2200000.gpio`), where sysfs says.
    pub device: Option<String>,
}

/// Every GPIO chip this process can read.
pub fn chips() -> Vec<ChipSeen> {
    let mut out = Vec::new();
    for path in gpiocdev::chip::chips().unwrap_or_default() {
        let Ok(info) = gpiocdev::chip::Chip::from_path(&path).and_then(|c| c.info()) else {
            continue;
        };
        // /sys/bus/gpio/devices/gpiochipN -> /sys/devices/platform/<device>/gpiochipN
        let device = std::fs::canonicalize(Path::new("/sys/bus/gpio/devices").join(&info.name))
            .ok()
            .and_then(|p| p.parent()?.file_name()?.to_str().map(str::to_string));
        out.push(ChipSeen {
            path,
            name: info.name,
            label: info.label,
            lines: info.num_lines,
            device,
        });
    }
    out
}

/// A Tegra194 controller by role: its label on kernels 5.10+ and its platform device (the same
/// on every kernel; NVIDIA's r32 pin data names chips by it).
const T194_ROLES: [(&str, &str); 2] = [
    ("tegra194-gpio", "2200000.gpio"),
    ("tegra194-gpio-aon", "c2f0000.gpio"),
];

/// The chip for `label` among `chips`: by label, else (for a Tegra194 role) by platform device.
pub fn chip_by_role<'a>(chips: &'a [ChipSeen], label: &str) -> Option<&'a ChipSeen> {
    chips.iter().find(|c| c.label == label).or_else(|| {
        let (_, device) = T194_ROLES.iter().find(|(l, _)| *l == label)?;
        chips.iter().find(|c| c.device.as_deref() == Some(*device))
    })
}

/// Why the numbering could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NumberingDetectError {
    /// No Tegra194 main GPIO chip visible.
    #[error("no Tegra194 main GPIO chip (label tegra194-gpio or device 2200000.gpio) among {found}; is this the right --board, and may this user read /dev/gpiochip*?")]
    NoMainChip {
        /// The chips seen.
        found: String,
    },
    /// Its line count is not one edgefuse knows.
    #[error("{0}")]
    Numbering(NumberingError),
}

/// The numbering of `board`'s header pins under the running kernel, from `chips` (see
/// [`chips`]): always [`Numbering::Current`] but on Tegra194, where the main chip's line count
/// decides.
pub fn numbering_of(board: Board, chips: &[ChipSeen]) -> Result<Numbering, NumberingDetectError> {
    if !board.is_tegra194() {
        return Ok(Numbering::Current);
    }
    let main =
        chip_by_role(chips, T194_ROLES[0].0).ok_or_else(|| NumberingDetectError::NoMainChip {
            found: if chips.is_empty() {
                "none".into()
            } else {
                chips
                    .iter()
                    .map(|c| format!("{} ({}, {} lines)", c.name, c.label, c.lines))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })?;
    Numbering::for_main_chip(board, main.lines).map_err(NumberingDetectError::Numbering)
}

/// Pad names compare without the `P` of the port (`PBB.00` and NVIDIA's `BB.00` are one pad).
fn same_pad(a: &str, b: &str) -> bool {
    a.trim_start_matches('P') == b.trim_start_matches('P')
}

/// Check that line `line` of the chip at `path` is the pad `pad` where the kernel names its lines
/// (kernels 5.10+ name Tegra lines by pad, e.g. `PQ.06`; r32 kernels leave names empty, and then
/// there is nothing to check). A mismatch means the table does not fit this kernel: refused
/// rather than driving another pin.
pub fn check_line_name(path: &Path, line: u32, pad: &str) -> Result<(), GpioError> {
    let name = gpiocdev::chip::Chip::from_path(path)
        .and_then(|c| c.line_info(line))
        .map(|i| i.name)
        .unwrap_or_default();
    if name.is_empty() || same_pad(&name, pad) {
        Ok(())
    } else {
        Err(GpioError::WrongLine {
            path: path.to_path_buf(),
            line,
            expected: pad.to_string(),
            found: name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chip(name: &str, label: &str, lines: u32, device: Option<&str>) -> ChipSeen {
        ChipSeen {
            path: Path::new("/dev").join(name),
            name: name.into(),
            label: label.into(),
            lines,
            device: device.map(str::to_string),
        }
    }

    #[test]
    fn numbering_from_fixture_chip_lists() {
        // JetPack 5 (r35): labelled chips, 169 + 30 lines.
        let r35 = [
            chip("gpiochip0", "tegra194-gpio", 169, Some("2200000.gpio")),
            chip("gpiochip1", "tegra194-gpio-aon", 30, Some("c2f0000.gpio")),
        ];
        // JetPack 4.6 (r32): 224 + 40 lines, found by platform device whatever their label.
        let r32 = [
            chip("gpiochip0", "tegra-gpio", 224, Some("2200000.gpio")),
            chip("gpiochip1", "tegra-gpio-aon", 40, Some("c2f0000.gpio")),
        ];
        let b = Board::AgxXavier;
        assert_eq!(numbering_of(b, &r35).unwrap(), Numbering::Current);
        assert_eq!(numbering_of(b, &r32).unwrap(), Numbering::L4tR32);
        assert_eq!(
            chip_by_role(&r32, "tegra194-gpio-aon").unwrap().name,
            "gpiochip1"
        );
        // Other boards never depend on it.
        assert_eq!(
            numbering_of(Board::AgxOrin, &[]).unwrap(),
            Numbering::Current
        );
        let e = numbering_of(b, &[chip("gpiochip0", "x", 8, None)]).unwrap_err();
        assert!(e.to_string().contains("gpiochip0 (x, 8 lines)"), "{e}");
        let odd = [chip("gpiochip0", "tegra194-gpio", 200, None)];
        assert!(numbering_of(b, &odd)
            .unwrap_err()
            .to_string()
            .contains("200 lines"));
    }

    #[test]
    fn pads_compare_with_or_without_the_port_p() {
        assert!(same_pad("PBB.00", "BB.00") && same_pad("PQ.06", "PQ.06"));
        assert!(!same_pad("PQ.05", "PQ.06"));
    }
}
