//! The GPIO character device: chips found by label, output and input lines implementing the
//! embedded-hal traits, and a thread that waits on a line's edge events.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gpiocdev::line::{EdgeDetection, Value};
use gpiocdev::Request;

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
    /// The line is not the pad the header table names (the table does not fit this kernel).
    #[error("{path} line {line} is named `{found}` by the kernel, not `{expected}`: the pin table does not fit this kernel's numbering; address the pin as line:CHIP:OFFSET and report the board and L4T release")]
    WrongLine {
        /// The chip device.
        path: PathBuf,
        /// The line offset.
        line: u32,
        /// The pad the table names.
        expected: String,
        /// The kernel's name of the line.
        found: String,
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
    // A Tegra194 controller on a kernel that labels it otherwise (L4T r32): by its device.
    if let Some(c) = super::numbering::chip_by_role(&super::numbering::chips(), chip) {
        return Ok(c.path.clone());
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
