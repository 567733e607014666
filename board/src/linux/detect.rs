//! Which board this is, from the device tree, and which of its header pins are muxed to
//! something other than GPIO.

use std::path::{Path, PathBuf};

use crate::jetson::Board;

/// Why the board could not be detected; each says what to give instead.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// No readable device tree: not Linux on a device-tree board.
    #[error(
        "cannot read the device tree ({}): not a Jetson, or not Linux on a device-tree board. \
         Supported boards: {}; give --board NAME, or raw lines as line:CHIP:OFFSET",
        path.display(),
        supported()
    )]
    NoDeviceTree {
        /// The `compatible` file looked for first.
        path: PathBuf,
    },
    /// The device tree names a board without a header map here.
    #[error(
        "unknown board `{model}` (compatible: {}). Supported boards: {}; for a custom carrier \
         give raw lines as line:CHIP:OFFSET (e.g. line:tegra234-gpio:144)",
        compatible.join(", "),
        supported()
    )]
    Unknown {
        /// The device tree's model string (`?` when it has none).
        model: String,
        /// The device tree's `compatible` strings.
        compatible: Vec<String>,
    },
}

/// The board this machine is, from `<root>/proc/device-tree/compatible` (`root` is `/` except
/// in tests). Returns the board and the device tree's model string.
pub fn read_board(root: &Path) -> Result<(Board, String), BoardError> {
    let candidates = [
        "proc/device-tree/compatible",
        "sys/firmware/devicetree/base/compatible",
    ];
    let Some((path, raw)) = candidates
        .iter()
        .map(|c| root.join(c))
        .find_map(|p| std::fs::read(&p).ok().map(|r| (p, r)))
    else {
        return Err(BoardError::NoDeviceTree {
            path: root.join(candidates[0]),
        });
    };
    let model = std::fs::read(path.with_file_name("model"))
        .map(|m| {
            String::from_utf8_lossy(&m)
                .trim_end_matches('\0')
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    let compat: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    Board::detect(&raw)
        .map(|b| (b, model.clone()))
        .ok_or_else(|| BoardError::Unknown {
            model: if model.is_empty() { "?".into() } else { model },
            compatible: compat,
        })
}

/// The supported board names, comma-separated.
pub fn supported() -> String {
    Board::ALL.map(Board::name).join(", ")
}

/// Header pins whose pad is muxed to something other than GPIO, from the pinctrl debugfs
/// (`/sys/kernel/debug/pinctrl/*/pinmux-pins`, readable by root with debugfs mounted).
/// `None` when that cannot be read; otherwise `(BOARD pin, function)` for each non-GPIO pad.
pub fn non_gpio_pins(root: &Path, board: Board) -> Option<Vec<(u8, String)>> {
    let dir = std::fs::read_dir(root.join("sys/kernel/debug/pinctrl")).ok()?;
    let mut text = String::new();
    for d in dir.flatten() {
        if let Ok(t) = std::fs::read_to_string(d.path().join("pinmux-pins")) {
            text.push_str(&t);
        }
    }
    if text.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for p in board.pins() {
        // SoC names like "PQ.06" appear in pad names as "…_pq6".
        let Some((port, bit)) = p.soc_name.split_once('.') else {
            continue;
        };
        let Ok(bit) = bit.parse::<u32>() else {
            continue;
        };
        let suffix = format!("_{}{}", port.to_ascii_lowercase(), bit);
        let Some(line) = text.lines().find(|l| {
            l.split(['(', ')'])
                .nth(1)
                .is_some_and(|pad| pad.ends_with(&suffix))
        }) else {
            continue;
        };
        if let Some(f) = line.split("function ").nth(1) {
            let f = f.split_whitespace().next().unwrap_or("");
            if !f.is_empty() && !f.starts_with("gp") && f != "rsvd0" {
                out.push((p.board, f.to_string()));
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::tests::write;

    #[test]
    fn detection_on_fixture_device_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let e = read_board(r).unwrap_err().to_string();
        assert!(
            e.contains("cannot read the device tree") && e.contains("orin-nano"),
            "{e}"
        );
        write(
            r,
            "proc/device-tree/compatible",
            b"raspberrypi,4-model-b\0brcm,bcm2711\0",
        );
        write(
            r,
            "proc/device-tree/model",
            b"Raspberry Pi 4 Model B Rev 1.4\0",
        );
        let e = read_board(r).unwrap_err().to_string();
        assert!(
            e.contains("unknown board `Raspberry Pi 4 Model B Rev 1.4`"),
            "{e}"
        );
        assert!(
            e.contains("brcm,bcm2711") && e.contains("line:CHIP:OFFSET"),
            "{e}"
        );
    }

    #[test]
    fn pinmux_report_parses_debugfs() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        assert_eq!(non_gpio_pins(r, Board::OrinNano), None);
        let pin = Board::OrinNano
            .pins()
            .iter()
            .find(|p| p.soc_name.contains('.'))
            .expect("Orin Nano pins carry SoC names");
        let (port, bit) = pin.soc_name.split_once('.').unwrap();
        let pad = format!(
            "soc_gpio99_{}{}",
            port.to_ascii_lowercase(),
            bit.parse::<u32>().unwrap()
        );
        write(
            r,
            "sys/kernel/debug/pinctrl/2430000.pinmux/pinmux-pins",
            format!(
                "Pinmux settings per pin\nFormat: pin (name): mux_owner gpio_owner hog?\n\
                 pin 0 (dap1_sclk_ps0): (MUX UNCLAIMED) (GPIO UNCLAIMED)\n\
                 pin 12 ({pad}): device 3280000.i2c function i2c8 group {pad}\n"
            )
            .as_bytes(),
        );
        assert_eq!(
            non_gpio_pins(r, Board::OrinNano),
            Some(vec![(pin.board, "i2c8".to_string())])
        );
    }
}
