//! Linux: the GPIO character device (through `gpiocdev`), board detection from the device tree,
//! and board health (thermal zones, power mode).
//!
//! Pins are requested by GPIO chip *label* (stable across kernels, unlike `gpiochipN` numbers)
//! and line offset. [`LineOutput`] and [`LineInput`] implement the embedded-hal traits, so the
//! `no_std` drivers of this crate run on them unchanged. [`EdgeWatcher`] waits on the kernel's
//! edge events in a thread (no polling) and timestamps each accepted edge.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gpiocdev::line::{EdgeDetection, Value};
use gpiocdev::Request;

use crate::jetson::Board;
use crate::Edge;

/// Errors of the Linux GPIO layer; each names the device and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// No chip with that label or name.
    #[error("no GPIO chip `{chip}` on this machine (chips: {found}); is this the right --board?")]
    NoChip {
        /// The label or name asked for.
        chip: String,
        /// The chips present, as `name (label)`.
        found: String,
    },
    /// The chip device exists but this user may not open it.
    #[error(
        "permission denied on {path}: run as a member of the `gpio` group (`sudo usermod -aG gpio $USER`, \
         then log in again) and make sure a udev rule gives that group the device \
         (the package installs /usr/lib/udev/rules.d/60-edgefuse.rules; JetPack ships 99-gpio.rules)"
    )]
    PermissionDenied {
        /// The chip device.
        path: PathBuf,
    },
    /// The line is requested by another process or driver.
    #[error("{path} line {line} is busy (held by `{consumer}`); stop that user of the pin or pick another pin")]
    Busy {
        /// The chip device.
        path: PathBuf,
        /// The line offset.
        line: u32,
        /// Who holds it, as the kernel reports.
        consumer: String,
    },
    /// Any other failure of the character device.
    #[error("{path} line {line}: {message}")]
    Device {
        /// The chip device.
        path: PathBuf,
        /// The line offset.
        line: u32,
        /// The kernel's or gpiocdev's message.
        message: String,
    },
    /// Reading the device tree failed or named no supported board.
    #[error("{0}")]
    Board(String),
}

/// Find the character device of the chip labelled `chip` (e.g. `tegra234-gpio`); `gpiochipN`
/// and `/dev/gpiochipN` are accepted as they are.
pub fn find_chip(chip: &str) -> Result<PathBuf, GpioError> {
    if chip.starts_with('/') {
        return Ok(PathBuf::from(chip));
    }
    if chip.starts_with("gpiochip") && chip[8..].bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Path::new("/dev").join(chip));
    }
    let paths = gpiocdev::chip::chips().unwrap_or_default();
    let mut found = Vec::new();
    for p in paths {
        match gpiocdev::chip::Chip::from_path(&p).and_then(|c| c.info()) {
            Ok(info) => {
                if info.label == chip {
                    return Ok(p);
                }
                found.push(format!("{} ({})", info.name, info.label));
            }
            Err(_) => {
                if let Err(e) = std::fs::File::open(&p) {
                    if e.kind() == std::io::ErrorKind::PermissionDenied {
                        return Err(GpioError::PermissionDenied { path: p });
                    }
                }
                found.push(format!("{} (unreadable)", p.display()));
            }
        }
    }
    Err(GpioError::NoChip {
        chip: chip.to_string(),
        found: if found.is_empty() {
            "none".into()
        } else {
            found.join(", ")
        },
    })
}

fn request_error(path: &Path, line: u32, e: gpiocdev::Error) -> GpioError {
    if let Err(io) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        if io.kind() == std::io::ErrorKind::PermissionDenied {
            return GpioError::PermissionDenied {
                path: path.to_path_buf(),
            };
        }
    }
    let message = e.to_string();
    if message.contains("busy") || message.contains("EBUSY") {
        let consumer = gpiocdev::chip::Chip::from_path(path)
            .and_then(|c| c.line_info(line))
            .map(|i| i.consumer)
            .unwrap_or_default();
        return GpioError::Busy {
            path: path.to_path_buf(),
            line,
            consumer: if consumer.is_empty() {
                "unknown".into()
            } else {
                consumer
            },
        };
    }
    GpioError::Device {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// The error type of [`LineOutput`] and [`LineInput`].
#[derive(Debug)]
pub struct LineError(pub String);

impl embedded_hal::digital::Error for LineError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An output line; drives the physical level it is told (active-low is handled by the drivers).
#[derive(Debug)]
pub struct LineOutput {
    req: Request,
    line: u32,
}

impl LineOutput {
    /// Request `line` of the chip at `path` as an output at the given level (pass the
    /// *inactive* level so an active-low relay does not click on start).
    pub fn request(
        path: &Path,
        line: u32,
        consumer: &str,
        initial_high: bool,
    ) -> Result<Self, GpioError> {
        let level = if initial_high {
            Value::Active
        } else {
            Value::Inactive
        };
        let req = Request::builder()
            .on_chip(path)
            .with_consumer(consumer)
            .with_line(line)
            .as_output(level)
            .request()
            .map_err(|e| request_error(path, line, e))?;
        Ok(Self { req, line })
    }
}

impl embedded_hal::digital::ErrorType for LineOutput {
    type Error = LineError;
}

impl embedded_hal::digital::OutputPin for LineOutput {
    fn set_low(&mut self) -> Result<(), LineError> {
        self.req
            .set_value(self.line, Value::Inactive)
            .map_err(|e| LineError(e.to_string()))
            .map(|_| ())
    }
    fn set_high(&mut self) -> Result<(), LineError> {
        self.req
            .set_value(self.line, Value::Active)
            .map_err(|e| LineError(e.to_string()))
            .map(|_| ())
    }
}

/// An input line, read on demand.
#[derive(Debug)]
pub struct LineInput {
    req: Request,
    line: u32,
}

impl LineInput {
    /// Request `line` of the chip at `path` as an input.
    pub fn request(path: &Path, line: u32, consumer: &str) -> Result<Self, GpioError> {
        let req = Request::builder()
            .on_chip(path)
            .with_consumer(consumer)
            .with_line(line)
            .as_input()
            .request()
            .map_err(|e| request_error(path, line, e))?;
        Ok(Self { req, line })
    }
}

impl embedded_hal::digital::ErrorType for LineInput {
    type Error = LineError;
}

impl embedded_hal::digital::InputPin for LineInput {
    fn is_high(&mut self) -> Result<bool, LineError> {
        self.req
            .value(self.line)
            .map(|v| v == Value::Active)
            .map_err(|e| LineError(e.to_string()))
    }
    fn is_low(&mut self) -> Result<bool, LineError> {
        self.is_high().map(|h| !h)
    }
}

/// Waits on a line's kernel edge events in a thread and calls `on_edge` with the time of each
/// accepted edge. Debounce is leading-edge: the first edge is accepted at once (no added
/// latency), edges within `debounce` after it are bounces and dropped.
pub struct EdgeWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EdgeWatcher {
    /// Request `line` on the chip at `path` with edge detection and start watching.
    pub fn start(
        path: &Path,
        line: u32,
        edge: Edge,
        debounce: Duration,
        consumer: &str,
        mut on_edge: impl FnMut(Instant) + Send + 'static,
    ) -> Result<Self, GpioError> {
        let detection = match edge {
            Edge::Rising => EdgeDetection::RisingEdge,
            Edge::Falling => EdgeDetection::FallingEdge,
            Edge::Both => EdgeDetection::BothEdges,
        };
        let req = Request::builder()
            .on_chip(path)
            .with_consumer(consumer)
            .with_line(line)
            .as_input()
            .with_edge_detection(detection)
            .request()
            .map_err(|e| request_error(path, line, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let name = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("edgefuse-gpio-edge".into())
            .spawn(move || {
                let mut last: Option<Instant> = None;
                while !s.load(Ordering::Relaxed) {
                    match req.wait_edge_event(Duration::from_millis(100)) {
                        Ok(false) => continue,
                        Ok(true) => {}
                        Err(e) => {
                            log::error!("{name} line {line}: waiting for edges failed: {e}");
                            return;
                        }
                    }
                    if let Err(e) = req.read_edge_event() {
                        log::error!("{name} line {line}: reading an edge failed: {e}");
                        return;
                    }
                    let now = Instant::now();
                    if last.is_some_and(|l| now.duration_since(l) < debounce) {
                        log::debug!("{name} line {line}: bounce dropped");
                        continue;
                    }
                    last = Some(now);
                    on_edge(now);
                }
            })
            .map_err(|e| GpioError::Device {
                path: path.to_path_buf(),
                line,
                message: format!("cannot start the edge thread: {e}"),
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EdgeWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The board this machine is, from `<root>/proc/device-tree/compatible` (`root` is `/` except
/// in tests). Returns the board and the device tree's model string.
pub fn detect_board(root: &Path) -> Result<(Board, String), GpioError> {
    let candidates = [
        "proc/device-tree/compatible",
        "sys/firmware/devicetree/base/compatible",
    ];
    let Some((path, raw)) = candidates
        .iter()
        .map(|c| root.join(c))
        .find_map(|p| std::fs::read(&p).ok().map(|r| (p, r)))
    else {
        return Err(GpioError::Board(format!(
            "cannot read the device tree ({}): not a Jetson, or not Linux on a device-tree board. \
             Supported boards: {}; give --board NAME, or raw lines as line:CHIP:OFFSET",
            root.join(candidates[0]).display(),
            supported()
        )));
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
        .ok_or_else(|| {
            GpioError::Board(format!(
                "unknown board `{}` (compatible: {}). Supported boards: {}; for a custom carrier \
             give raw lines as line:CHIP:OFFSET (e.g. line:tegra234-gpio:144)",
                if model.is_empty() { "?" } else { &model },
                compat.join(", "),
                supported()
            ))
        })
}

/// The supported board names, comma-separated.
pub fn supported() -> String {
    Board::ALL.map(Board::name).join(", ")
}

/// One thermal zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// The zone's type, e.g. `cpu-thermal`.
    pub name: String,
    /// Temperature in °C.
    pub celsius: f32,
    /// The lowest passive or hot trip point (where the kernel starts throttling), in °C.
    pub throttle_at: Option<f32>,
}

/// Board health as readable without root.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Thermal zones with a valid temperature.
    pub zones: Vec<Zone>,
    /// The nvpmodel power mode (`id NAME`) when readable.
    pub power_mode: Option<String>,
}

impl Health {
    /// Read from `root` (`/` on the device).
    pub fn read(root: &Path) -> Self {
        let mut zones = Vec::new();
        if let Ok(dir) = std::fs::read_dir(root.join("sys/class/thermal")) {
            let mut entries: Vec<PathBuf> = dir
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("thermal_zone"))
                })
                .collect();
            entries.sort();
            for z in entries {
                let read = |f: &str| std::fs::read_to_string(z.join(f)).ok();
                let Some(milli) = read("temp").and_then(|t| t.trim().parse::<i64>().ok()) else {
                    continue;
                };
                // Some zones report a sentinel (-40 °C or less, or > 200 °C) when offline.
                if !(-40_000..=200_000).contains(&milli) || milli == -40_000 {
                    continue;
                }
                let mut throttle_at: Option<f32> = None;
                for i in 0..16 {
                    let (Some(kind), Some(t)) = (
                        read(&format!("trip_point_{i}_type")),
                        read(&format!("trip_point_{i}_temp")),
                    ) else {
                        continue;
                    };
                    let kind = kind.trim();
                    if kind == "passive" || kind == "hot" {
                        if let Ok(t) = t.trim().parse::<i64>() {
                            let c = t as f32 / 1000.0;
                            throttle_at = Some(throttle_at.map_or(c, |x: f32| x.min(c)));
                        }
                    }
                }
                zones.push(Zone {
                    name: read("type")
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default(),
                    celsius: milli as f32 / 1000.0,
                    throttle_at,
                });
            }
        }
        Health {
            zones,
            power_mode: power_mode(root),
        }
    }

    /// Zones at or above their throttling trip point.
    pub fn throttling(&self) -> impl Iterator<Item = &Zone> {
        self.zones
            .iter()
            .filter(|z| z.throttle_at.is_some_and(|t| z.celsius >= t))
    }
}

/// `id NAME` of the active nvpmodel mode: `/var/lib/nvpmodel/status` holds `pmode:0002 …`,
/// `/etc/nvpmodel.conf` names the modes (`< POWER_MODEL ID=2 NAME=15W >`).
fn power_mode(root: &Path) -> Option<String> {
    let status = std::fs::read_to_string(root.join("var/lib/nvpmodel/status")).ok()?;
    let id: u32 = status
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pmode:"))?
        .parse()
        .ok()?;
    let name = std::fs::read_to_string(root.join("etc/nvpmodel.conf"))
        .ok()
        .and_then(|conf| {
            conf.lines().find_map(|l| {
                let l = l.trim();
                if !l.starts_with("< POWER_MODEL") {
                    return None;
                }
                let field = |k: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .map(str::to_string)
                };
                (field("ID=")?.parse::<u32>().ok()? == id)
                    .then(|| field("NAME="))
                    .flatten()
            })
        });
    Some(match name {
        Some(n) => format!("{id} {n}"),
        None => id.to_string(),
    })
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

    fn write(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn health_reads_zones_trip_points_and_power_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        write(r, "sys/class/thermal/thermal_zone0/type", b"cpu-thermal\n");
        write(r, "sys/class/thermal/thermal_zone0/temp", b"97500\n");
        write(
            r,
            "sys/class/thermal/thermal_zone0/trip_point_0_type",
            b"passive\n",
        );
        write(
            r,
            "sys/class/thermal/thermal_zone0/trip_point_0_temp",
            b"99000\n",
        );
        write(
            r,
            "sys/class/thermal/thermal_zone0/trip_point_1_type",
            b"hot\n",
        );
        write(
            r,
            "sys/class/thermal/thermal_zone0/trip_point_1_temp",
            b"95000\n",
        );
        write(r, "sys/class/thermal/thermal_zone1/type", b"gpu-thermal\n");
        write(r, "sys/class/thermal/thermal_zone1/temp", b"41000\n");
        write(r, "sys/class/thermal/thermal_zone2/type", b"offline\n");
        write(r, "sys/class/thermal/thermal_zone2/temp", b"-40000\n");
        write(r, "var/lib/nvpmodel/status", b"pmode:0001 fmode:quiet\n");
        write(
            r,
            "etc/nvpmodel.conf",
            b"< POWER_MODEL ID=0 NAME=MAXN >\nCPU_ONLINE CORE_0 1\n< POWER_MODEL ID=1 NAME=10W >\n",
        );
        let h = Health::read(r);
        assert_eq!(h.zones.len(), 2, "{h:?}");
        assert_eq!(h.zones[0].name, "cpu-thermal");
        assert_eq!(h.zones[0].celsius, 97.5);
        assert_eq!(h.zones[0].throttle_at, Some(95.0));
        assert_eq!(h.zones[1].throttle_at, None);
        let hot: Vec<_> = h.throttling().map(|z| z.name.as_str()).collect();
        assert_eq!(hot, ["cpu-thermal"]);
        assert_eq!(h.power_mode.as_deref(), Some("1 10W"));
        // Nothing readable: empty, no error.
        assert_eq!(Health::read(&r.join("nope")), Health::default());
    }

    #[test]
    fn detection_on_fixture_device_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let e = detect_board(r).unwrap_err().to_string();
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
        let e = detect_board(r).unwrap_err().to_string();
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
