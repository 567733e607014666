//! `v4l2:///dev/videoN?width=640&height=480&fps=30&format=yuyv`: a V4L2 camera with mmap
//! streaming buffers (reused by the kernel and by us: one copy per frame into the ring slot).
//!
//! Negotiation tries the requested `format` (or YUYV, NV12, GREY, MJPEG in that order) at the
//! requested size; when the device offers none of them, the error names the device and lists the
//! formats it offers. MJPEG frames are decoded to RGB by the source's own [`MjpegDecoder`] (no
//! allocation per frame), at the reduced scale [`FrameSource::set_min_size`] allows.

use std::io::ErrorKind;
use std::time::Duration;

use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::mjpeg::{MjpegDecoder, Scale};
use super::{CaptureError, FrameSource, Uri};
use crate::frame::{Frame, PixelFormat};

const BUFFERS: u32 = 4;
/// How long `next_frame` waits for the camera before reporting it as stalled, until
/// [`FrameSource::set_frame_timeout`] says otherwise (`--stall-timeout`).
const FRAME_TIMEOUT: Duration = super::DEFAULT_STALL_TIMEOUT;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Raw(PixelFormat),
    Mjpeg,
}

fn fourcc_of(w: Wire) -> FourCC {
    FourCC::new(match w {
        Wire::Raw(PixelFormat::Yuyv) => b"YUYV",
        Wire::Raw(PixelFormat::Nv12) => b"NV12",
        Wire::Raw(PixelFormat::Grey) => b"GREY",
        Wire::Raw(PixelFormat::Rgb) => b"RGB3",
        Wire::Raw(PixelFormat::Bgr) => b"BGR3",
        Wire::Mjpeg => b"MJPG",
    })
}

/// A V4L2 capture device.
pub struct V4l2Source {
    uri: String,
    device: String,
    // Field order matters: the stream must be dropped before the device.
    stream: Stream<'static>,
    _dev: Device,
    wire: Wire,
    width: u32,
    height: u32,
    stride: usize,
    seq: u64,
    description: String,
    timeout: Duration,
    /// MJPEG: the decoder (its buffers reused frame after frame) and the scale it decodes at.
    decoder: MjpegDecoder,
    scale: Scale,
}

impl std::fmt::Debug for V4l2Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Source")
            .field("uri", &self.uri)
            .field("format", &self.description)
            .finish()
    }
}

fn device_error(device: &str, e: &std::io::Error, what: &str) -> CaptureError {
    let hint = match e.kind() {
        ErrorKind::NotFound => "no such device: check the camera is plugged in and the path (ls /dev/video*)".to_string(),
        ErrorKind::PermissionDenied => {
            "permission denied: add your user to the `video` group (sudo usermod -aG video $USER) and log in again".to_string()
        }
        _ if e.raw_os_error() == Some(16) => "device busy: another program is using the camera; stop it and retry".to_string(),
        _ if e.raw_os_error() == Some(19) => "the camera vanished (ENODEV): reconnect it".to_string(),
        _ if e.raw_os_error() == Some(25) => format!(
            "not a V4L2 camera ({e}); give a video capture device, e.g. /dev/video0 (ls /dev/video*)"
        ),
        _ => format!("{e}"),
    };
    CaptureError::Device {
        device: device.to_string(),
        message: format!("{what}: {hint}"),
    }
}

/// Open `device` and check that it is a V4L2 video capture device (a file, `/dev/null` or a
/// metadata node is refused here instead of being described as a camera without formats).
fn open_camera(device: &str) -> Result<Device, CaptureError> {
    let dev = Device::with_path(device).map_err(|e| device_error(device, &e, "cannot open"))?;
    let caps = dev
        .query_caps()
        .map_err(|e| device_error(device, &e, "cannot query its capabilities"))?;
    if !caps
        .capabilities
        .contains(v4l::capability::Flags::VIDEO_CAPTURE)
    {
        return Err(CaptureError::Device {
            device: device.to_string(),
            message: format!(
                "{} ({}) is a V4L2 device but cannot capture video (a metadata or output node?); try another /dev/videoN",
                caps.card, caps.driver
            ),
        });
    }
    Ok(dev)
}

/// The formats a device offers, as `FOURCC (description)` strings.
pub fn list_formats(device: &str) -> Result<Vec<String>, CaptureError> {
    let dev = open_camera(device)?;
    let formats = dev
        .enum_formats()
        .map_err(|e| device_error(device, &e, "cannot list formats"))?;
    let mut out = Vec::new();
    for f in formats {
        let sizes = dev
            .enum_framesizes(f.fourcc)
            .map(|s| {
                s.into_iter()
                    .flat_map(|fs| fs.size.to_discrete())
                    .map(|d| format!("{}x{}", d.width, d.height))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(format!("{} ({}) {}", f.fourcc, f.description, sizes));
    }
    Ok(out)
}

impl V4l2Source {
    /// Open and negotiate.
    pub fn open(uri: &Uri) -> Result<Self, CaptureError> {
        uri.check_known(&["width", "height", "fps", "format"])?;
        let device = if uri.path.is_empty() {
            "/dev/video0".to_string()
        } else {
            uri.path.clone()
        };
        let width: u32 = uri.get("width", 640, "expected a width in pixels")?;
        let height: u32 = uri.get("height", 480, "expected a height in pixels")?;
        let fps = uri.fps()?;
        let wanted: Vec<Wire> = match uri.options.iter().rev().find(|(k, _)| k == "format") {
            Some((_, v)) if v.eq_ignore_ascii_case("mjpeg") || v.eq_ignore_ascii_case("mjpg") => {
                vec![Wire::Mjpeg]
            }
            Some((k, v)) => vec![Wire::Raw(PixelFormat::parse(v).ok_or_else(|| {
                uri.bad(k, v, "expected yuyv, nv12, grey, rgb, bgr or mjpeg")
            })?)],
            None => vec![
                Wire::Raw(PixelFormat::Yuyv),
                Wire::Raw(PixelFormat::Nv12),
                Wire::Raw(PixelFormat::Grey),
                Wire::Mjpeg,
            ],
        };
        let dev = open_camera(&device)?;
        let offered = dev
            .enum_formats()
            .map_err(|e| device_error(&device, &e, "cannot list formats"))?;
        let offered_cc: Vec<FourCC> = offered.iter().map(|f| f.fourcc).collect();
        let Some(&wire) = wanted.iter().find(|w| offered_cc.contains(&fourcc_of(**w))) else {
            let list = offered
                .iter()
                .map(|f| format!("{} ({})", f.fourcc, f.description))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(CaptureError::Device {
                device,
                message: format!(
                    "offers none of the formats edgefuse reads (YUYV, NV12, GREY, MJPG); it offers: {}. \
                     MIPI CSI sensors deliver raw Bayer: use a USB UVC camera or a GStreamer/Argus bridge",
                    if list.is_empty() { "nothing".into() } else { list }
                ),
            });
        };
        let fmt = dev
            .set_format(&v4l::Format::new(width, height, fourcc_of(wire)))
            .map_err(|e| device_error(&device, &e, "cannot set format"))?;
        if fmt.fourcc != fourcc_of(wire) {
            return Err(CaptureError::Device {
                device,
                message: format!(
                    "asked for {} but the driver chose {}",
                    fourcc_of(wire),
                    fmt.fourcc
                ),
            });
        }
        if (fmt.width, fmt.height) != (width, height) {
            log::warn!(
                "{device}: asked for {width}x{height}, the driver chose {}x{}",
                fmt.width,
                fmt.height
            );
        }
        if let Some(fps) = fps {
            if let Err(e) = dev.set_params(&v4l::video::capture::Parameters::with_fps(
                fps.round() as u32
            )) {
                log::warn!("{device}: cannot set {fps} fps ({e}); using the driver's rate");
            }
        }
        let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, BUFFERS)
            .map_err(|e| device_error(&device, &e, "cannot start streaming"))?;
        stream.set_timeout(FRAME_TIMEOUT);
        let description = format!(
            "{device} {} {}x{} stride {}",
            fmt.fourcc, fmt.width, fmt.height, fmt.stride
        );
        log::info!("camera {description}");
        let stride = fmt.stride as usize;
        Ok(Self {
            uri: uri.raw.clone(),
            device,
            stream,
            _dev: dev,
            wire,
            width: fmt.width,
            height: fmt.height,
            stride,
            seq: 0,
            description,
            timeout: FRAME_TIMEOUT,
            decoder: MjpegDecoder::new(),
            scale: Scale::Full,
        })
    }
}

/// Copy a strided raw frame into a tightly packed one.
fn copy_packed(
    src: &[u8],
    stride: usize,
    format: PixelFormat,
    w: u32,
    h: u32,
    out: &mut [u8],
) -> bool {
    let (row, rows) = match format {
        PixelFormat::Yuyv => (w as usize * 2, h as usize),
        PixelFormat::Grey => (w as usize, h as usize),
        PixelFormat::Rgb | PixelFormat::Bgr => (w as usize * 3, h as usize),
        PixelFormat::Nv12 => (w as usize, h as usize * 3 / 2),
    };
    let stride = if stride == 0 { row } else { stride };
    if src.len() < stride * (rows - 1) + row || out.len() != row * rows {
        return false;
    }
    for (r, o) in out.chunks_exact_mut(row).enumerate() {
        o.copy_from_slice(&src[r * stride..r * stride + row]);
    }
    true
}

impl FrameSource for V4l2Source {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn is_live(&self) -> bool {
        true
    }

    fn max_frame_bytes(&self) -> usize {
        (self.width as usize) * (self.height as usize) * 3
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        loop {
            let (buf, _meta) = self.stream.next().map_err(|e| {
                if e.kind() == ErrorKind::TimedOut {
                    CaptureError::Device {
                        device: self.device.clone(),
                        message: format!(
                            "no frame for {:?}: the camera stalled or was unplugged",
                            self.timeout
                        ),
                    }
                } else {
                    device_error(&self.device, &e, "capture failed")
                }
            })?;
            let ok = match self.wire {
                Wire::Raw(format) => {
                    frame.reshape(self.width, self.height, format)
                        && copy_packed(
                            buf,
                            self.stride,
                            format,
                            self.width,
                            self.height,
                            &mut frame.data,
                        )
                }
                Wire::Mjpeg => match self.decoder.decode(buf, self.scale, frame) {
                    Ok(()) => true,
                    Err(e) => {
                        log::warn!("{}: broken MJPEG frame skipped: {e}", self.device);
                        false
                    }
                },
            };
            if !ok {
                log::warn!("{}: short frame ({} bytes) skipped", self.device, buf.len());
                continue;
            }
            frame.seq = self.seq;
            self.seq += 1;
            frame.captured_at = std::time::Instant::now();
            frame.set_source(&self.uri);
            return Ok(true);
        }
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn set_frame_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.stream.set_timeout(timeout);
    }

    fn set_min_size(&mut self, min_width: u32, min_height: u32) {
        if self.wire == Wire::Mjpeg {
            self.scale = Scale::for_min_size(self.width, self.height, min_width, min_height);
            log::info!(
                "{}: MJPEG decoded at 1/{} ({}x{} is enough)",
                self.device,
                self.scale.divisor(),
                min_width,
                min_height
            );
        }
    }
}
