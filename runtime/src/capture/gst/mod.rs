//! GStreamer cameras (feature `gstreamer`): the cameras Jetson users have.
//!
//! | URI | pipeline |
//! |---|---|
//! | `csi://N?width=1920&height=1080&fps=30&flip=0` | `nvarguscamerasrc sensor-id=N` → NVMM NV12 through the ISP → `nvvidconv` → NV12 (Jetson only) |
//! | `rtsp://[user:password@]host[:port]/path?transport=tcp&latency=200` | `rtspsrc` → `decodebin` → (`nvvidconv` on a Jetson) → `videoconvert` |
//! | `gst://<pipeline ending in appsink>` | the pipeline as written, e.g. `gst://videotestsrc ! videoconvert ! appsink` |
//!
//! Every pipeline ends in an appsink whose caps allow only the formats edgefuse reads (NV12,
//! YUY2, GRAY8, RGB, BGR); the pipelines built here put `videoconvert` before it, so any
//! decoder's output fits. Each frame is copied row by row (honouring GStreamer's strides) from
//! the mapped buffer into the ring slot's [`Frame`]: no allocation in edgefuse's code per frame
//! (the buffers and samples themselves come from GStreamer's pools and GLib's allocator).
//!
//! RTSP credentials are percent-decoded (`pa%40ss` is `pa@ss`) and handed to rtspsrc as
//! `user-id`/`user-pw`; every URI shown (logs, errors, [`FrameSource::describe`]) has the
//! password replaced by `***`. Query parameters other than `transport` (`tcp`, the default;
//! `udp`; `auto`: rtspsrc's own order) and `latency` (milliseconds) stay in the URL rtspsrc
//! connects to, for cameras that take them (`?channel=1&subtype=0`).
//!
//! These are live sources: [`open`] wraps them in [`Reconnecting`], and a bus error, an end of
//! stream or no frame within the stall timeout ([`FrameSource::set_frame_timeout`]) is a
//! [`CaptureError::Device`] carrying the element's message, so the wrapper reopens the
//! pipeline (an RTSP server that restarts, a camera that comes back).

mod uris;

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use super::reconnect::{Opener, Reconnecting};
use super::{CaptureError, FrameSource, Interrupt, OpenOptions, Uri};
use crate::frame::{Frame, PixelFormat};

use super::redact;
pub use uris::{CsiTarget, RtspTarget, Transport};

/// The caps every appsink is restricted to: the formats a [`Frame`] holds.
const SINK_CAPS: &str = "video/x-raw,format=(string){NV12,YUY2,GRAY8,RGB,BGR}";

/// How long opening waits at least for the first frame (an RTSP server's first key frame, the
/// Argus daemon starting the sensor); a longer stall timeout lengthens it.
const MIN_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a wait for a frame looks at the bus (errors, end of stream) and the interrupt.
const POLL: Duration = Duration::from_millis(50);

/// Open a `csi://`, `rtsp://` or `gst://` URI, wrapped in [`Reconnecting`].
pub fn open(raw: &str, opts: &OpenOptions) -> Result<Box<dyn FrameSource>, CaptureError> {
    let open_timeout = opts.stall_timeout.max(MIN_OPEN_TIMEOUT);
    let scheme = raw
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    let (shown, recipe) = match scheme.as_str() {
        "csi" => {
            let uri = Uri::parse(raw)?;
            (raw.to_string(), Recipe::Csi(CsiTarget::parse(&uri)?))
        }
        "rtsp" | "rtsps" => {
            let t = RtspTarget::parse(raw)?;
            (t.shown.clone(), Recipe::Rtsp(t))
        }
        "gst" => (
            redact(raw),
            Recipe::Text(raw.split_once("://").map_or("", |(_, t)| t).to_string()),
        ),
        _ => return Err(CaptureError::UnknownScheme { uri: redact(raw) }),
    };
    let id = shown.clone();
    let opener: Opener = Box::new(move |interrupt: &Interrupt| {
        GstSource::open(&id, &recipe, open_timeout, Some(interrupt))
            .map(|s| Box::new(s) as Box<dyn FrameSource>)
    });
    Ok(Box::new(Reconnecting::open(
        &shown,
        opts.stall_timeout,
        opts.backoff,
        opener,
    )?))
}

/// What to build.
#[derive(Debug, Clone)]
pub enum Recipe {
    /// A Jetson CSI sensor through Argus.
    Csi(CsiTarget),
    /// An RTSP stream.
    Rtsp(RtspTarget),
    /// A pipeline in gst-launch syntax containing an appsink.
    Text(String),
}

/// Make sure GStreamer is initialised (idempotent).
pub fn init(uri: &str) -> Result<(), CaptureError> {
    gst::init().map_err(|e| CaptureError::Unsupported {
        uri: uri.to_string(),
        message: format!(
            "GStreamer could not be initialised ({e}); check the GStreamer installation (gst-inspect-1.0 --version)"
        ),
    })
}

/// One running GStreamer pipeline that ends in an appsink.
pub struct GstSource {
    /// The URI as shown (password hidden).
    uri: String,
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    bus: gst::Bus,
    /// The first sample, pulled while opening (to learn the frame size), delivered first.
    pending: Option<gst::Sample>,
    /// Caps of the last sample and what they mean.
    caps: Option<gst::Caps>,
    info: Option<gst_video::VideoInfo>,
    format: PixelFormat,
    width: u32,
    height: u32,
    max_bytes: usize,
    seq: u64,
    timeout: Duration,
    description: String,
}

impl std::fmt::Debug for GstSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GstSource")
            .field("uri", &self.uri)
            .field("format", &self.description)
            .finish()
    }
}

impl Drop for GstSource {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn device(uri: &str, message: String) -> CaptureError {
    CaptureError::Device {
        device: uri.to_string(),
        message,
    }
}

/// The text of a bus error: the element, GStreamer's message and its debug detail.
fn bus_error_text(err: &gst::message::Error) -> String {
    let element = err
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_else(|| "pipeline".into());
    match err.debug() {
        Some(d) => format!("{element}: {} ({d})", err.error()),
        None => format!("{element}: {}", err.error()),
    }
}

/// The pixel format of GStreamer's video format, if a [`Frame`] can hold it.
fn pixel_format(f: gst_video::VideoFormat) -> Option<PixelFormat> {
    use gst_video::VideoFormat as V;
    match f {
        V::Nv12 => Some(PixelFormat::Nv12),
        V::Yuy2 => Some(PixelFormat::Yuyv),
        V::Gray8 => Some(PixelFormat::Grey),
        V::Rgb => Some(PixelFormat::Rgb),
        V::Bgr => Some(PixelFormat::Bgr),
        _ => None,
    }
}

/// Bytes per row and rows of each plane of a tightly packed frame.
fn planes(format: PixelFormat, w: usize, h: usize) -> ([(usize, usize); 2], usize) {
    match format {
        PixelFormat::Yuyv => ([(w * 2, h), (0, 0)], 1),
        PixelFormat::Nv12 => ([(w, h), (w, h / 2)], 2),
        PixelFormat::Grey => ([(w, h), (0, 0)], 1),
        PixelFormat::Rgb | PixelFormat::Bgr => ([(w * 3, h), (0, 0)], 1),
    }
}

/// Build the pipeline of `recipe`: the pipeline and its appsink.
fn build(uri: &str, recipe: &Recipe) -> Result<(gst::Pipeline, gst_app::AppSink), CaptureError> {
    let unsupported = |message: String| CaptureError::Unsupported {
        uri: uri.to_string(),
        message,
    };
    let need = |element: &str, package: &str| {
        if gst::ElementFactory::find(element).is_none() {
            return Err(unsupported(format!(
                "the GStreamer element `{element}` is missing; install {package} (gst-inspect-1.0 {element} checks)"
            )));
        }
        Ok(())
    };
    let text = match recipe {
        Recipe::Csi(c) => {
            for element in ["nvarguscamerasrc", "nvvidconv"] {
                if gst::ElementFactory::find(element).is_none() {
                    return Err(unsupported(format!(
                        "the GStreamer element `{element}` is missing: csi:// cameras need a Jetson with JetPack's GStreamer plugins (nvarguscamerasrc, nvvidconv; package nvidia-l4t-gstreamer). \
                         Elsewhere use a V4L2 camera (v4l2:///dev/video0), rtsp:// or gst://"
                    )));
                }
            }
            c.pipeline()
        }
        Recipe::Rtsp(_) => {
            need("rtspsrc", "gstreamer1.0-plugins-good")?;
            need("decodebin", "gstreamer1.0-plugins-base")?;
            need("videoconvert", "gstreamer1.0-plugins-base")?;
            // On a Jetson, decodebin picks the hardware decoder, whose frames are in NVMM
            // memory: nvvidconv brings them to system memory (it passes system memory on).
            let nv = if gst::ElementFactory::find("nvvidconv").is_some() {
                "nvvidconv ! "
            } else {
                ""
            };
            format!("rtspsrc name=src ! decodebin ! {nv}videoconvert ! appsink name=sink")
        }
        Recipe::Text(t) => t.clone(),
    };
    if !matches!(recipe, Recipe::Text(_)) {
        log::debug!("{uri}: pipeline {text}");
    }
    let mut context = gst::ParseContext::new();
    let element = gst::parse::launch_full(
        &text,
        Some(&mut context),
        gst::ParseFlags::FATAL_ERRORS,
    )
    .map_err(|e| {
        let missing = context.missing_elements();
        let hint = if missing.is_empty() {
            "check the pipeline with gst-launch-1.0".to_string()
        } else {
            format!(
                "missing element(s) {}: install the GStreamer plugin package that has them (gst-inspect-1.0 NAME)",
                missing.join(", ")
            )
        };
        unsupported(format!("the GStreamer pipeline does not parse: {e}; {hint}"))
    })?;
    let no_sink = || {
        unsupported(
            "the pipeline has no appsink: end it with `! videoconvert ! appsink` (gst://SOURCE ! … ! videoconvert ! appsink)"
                .into(),
        )
    };
    let pipeline = element.downcast::<gst::Pipeline>().map_err(|_| no_sink())?;
    let sinks: Vec<gst_app::AppSink> = pipeline
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.downcast::<gst_app::AppSink>().ok())
        .collect();
    let sink = match sinks.len() {
        0 => return Err(no_sink()),
        1 => sinks.into_iter().next().ok_or_else(no_sink)?,
        n => sinks
            .into_iter()
            .find(|s| s.name() == "sink")
            .ok_or_else(|| {
                unsupported(format!(
                    "the pipeline has {n} appsinks: name the one edgefuse reads `sink` (appsink name=sink)"
                ))
            })?,
    };
    let ours: gst::Caps = SINK_CAPS.parse().map_err(|_| {
        unsupported("GStreamer refused edgefuse's appsink caps (video/x-raw)".into())
    })?;
    let caps = match sink.caps() {
        None => ours,
        Some(theirs) => {
            let both = theirs.intersect(&ours);
            if both.is_empty() {
                return Err(unsupported(format!(
                    "the appsink's caps `{theirs}` allow none of the formats edgefuse reads (NV12, YUY2, GRAY8, RGB, BGR): put `videoconvert !` before the appsink and drop its caps"
                )));
            }
            both
        }
    };
    sink.set_caps(Some(&caps));
    // A live source: the newest frames matter; a slow consumer drops the oldest.
    sink.set_max_buffers(2);
    sink.set_drop(true);
    if let Recipe::Rtsp(t) = recipe {
        let src = pipeline
            .by_name("src")
            .ok_or_else(|| unsupported("rtspsrc is missing from its pipeline".into()))?;
        src.set_property("location", &t.location);
        if let Some(user) = &t.user {
            src.set_property("user-id", user);
        }
        if let Some(password) = &t.password {
            src.set_property("user-pw", password);
        }
        src.set_property_from_str("protocols", t.transport.protocols());
        src.set_property("latency", t.latency_ms);
    }
    Ok((pipeline, sink))
}

impl GstSource {
    /// Build and start the pipeline of `recipe`, and wait (up to `open_timeout`, less when
    /// `interrupt` fires) for its first frame, which sets the frame size. `uri` is the URI as
    /// shown in errors and logs (password hidden).
    pub fn open(
        uri: &str,
        recipe: &Recipe,
        open_timeout: Duration,
        interrupt: Option<&Interrupt>,
    ) -> Result<Self, CaptureError> {
        init(uri)?;
        let (pipeline, sink) = build(uri, recipe)?;
        let bus = pipeline
            .bus()
            .ok_or_else(|| device(uri, "the pipeline has no bus".into()))?;
        // Only errors and the end of stream are read (when a frame is late); every other
        // message is dropped where it is posted, so the bus does not fill up while frames flow.
        let shown = uri.to_string();
        bus.set_sync_handler(move |_, msg| {
            use gst::MessageView;
            match msg.view() {
                MessageView::Error(_) | MessageView::Eos(_) => gst::BusSyncReply::Pass,
                MessageView::Warning(w) => {
                    let element = w
                        .src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default();
                    log::debug!("{shown}: GStreamer warning from {element}: {}", w.error());
                    gst::BusSyncReply::Drop
                }
                _ => gst::BusSyncReply::Drop,
            }
        });
        let mut source = Self {
            uri: uri.to_string(),
            pipeline,
            sink,
            bus,
            pending: None,
            caps: None,
            info: None,
            format: PixelFormat::Rgb,
            width: 0,
            height: 0,
            max_bytes: 0,
            seq: 0,
            timeout: super::DEFAULT_STALL_TIMEOUT,
            description: String::new(),
        };
        if source.pipeline.set_state(gst::State::Playing).is_err() {
            let why = source
                .bus_problem()
                .unwrap_or_else(|| "the pipeline refused to start".into());
            return Err(device(uri, format!("cannot start: {why}")));
        }
        let sample = source.pull(open_timeout, interrupt, "the first frame")?;
        let caps = sample
            .caps()
            .ok_or_else(|| device(uri, "the first frame has no caps".into()))?;
        source.learn(caps)?;
        source.max_bytes = source
            .format
            .frame_len(source.width, source.height)
            .unwrap_or(0);
        source.description = format!(
            "{} {}x{} via GStreamer",
            source.format.name(),
            source.width,
            source.height
        );
        source.pending = Some(sample);
        log::debug!("{uri}: {}", source.description);
        Ok(source)
    }

    /// The first error or end of stream waiting on the bus, as text.
    fn bus_problem(&self) -> Option<String> {
        use gst::MessageView;
        let msg = self
            .bus
            .pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos])?;
        match msg.view() {
            MessageView::Error(err) => Some(bus_error_text(err)),
            MessageView::Eos(_) => Some("the stream ended (end of stream)".into()),
            _ => None,
        }
    }

    /// Wait up to `timeout` for the next sample, watching the bus and the interrupt.
    fn pull(
        &self,
        timeout: Duration,
        interrupt: Option<&Interrupt>,
        what: &str,
    ) -> Result<gst::Sample, CaptureError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            let slice = POLL.min(deadline.saturating_duration_since(now));
            let wait = gst::ClockTime::from_nseconds(slice.as_nanos() as u64);
            if let Some(sample) = self.sink.try_pull_sample(wait) {
                return Ok(sample);
            }
            if let Some(why) = self.bus_problem() {
                return Err(device(&self.uri, why));
            }
            if self.sink.is_eos() {
                return Err(device(&self.uri, "the stream ended (end of stream)".into()));
            }
            if interrupt.is_some_and(Interrupt::is_fired) {
                return Err(device(
                    &self.uri,
                    "stopped while waiting for a frame".into(),
                ));
            }
            if Instant::now() >= deadline {
                return Err(device(
                    &self.uri,
                    format!(
                        "no frame within {:.1} s while waiting for {what}: the stream stalled or never started (check the address, the camera and the pipeline with gst-launch-1.0)",
                        timeout.as_secs_f64()
                    ),
                ));
            }
        }
    }

    /// Take new caps: format and size.
    fn learn(&mut self, caps: &gst::CapsRef) -> Result<(), CaptureError> {
        let info = gst_video::VideoInfo::from_caps(caps)
            .map_err(|_| device(&self.uri, format!("cannot read the caps `{caps}`")))?;
        let format = pixel_format(info.format()).ok_or_else(|| {
            device(
                &self.uri,
                format!(
                    "delivers {:?}, which edgefuse does not read (NV12, YUY2, GRAY8, RGB, BGR)",
                    info.format()
                ),
            )
        })?;
        if format.frame_len(info.width(), info.height()).is_none() {
            return Err(device(
                &self.uri,
                format!(
                    "{}x{} is not a valid {} size (NV12 needs even sides, YUY2 an even width); scale it in the pipeline",
                    info.width(),
                    info.height(),
                    format.name()
                ),
            ));
        }
        self.format = format;
        self.width = info.width();
        self.height = info.height();
        self.info = Some(info);
        self.caps = Some(caps.to_owned());
        Ok(())
    }

    /// Copy `sample` into `frame` (rows of each plane, honouring strides).
    fn copy(&mut self, sample: &gst::Sample, frame: &mut Frame) -> Result<(), CaptureError> {
        let caps = sample
            .caps()
            .ok_or_else(|| device(&self.uri, "a frame came without caps".into()))?;
        let same = self
            .caps
            .as_ref()
            .is_some_and(|c| c.as_ptr() == caps.as_ptr() || c.as_ref() == caps);
        if !same {
            self.learn(caps)?;
            let len = self.format.frame_len(self.width, self.height).unwrap_or(0);
            if len > self.max_bytes {
                return Err(device(
                    &self.uri,
                    format!(
                        "the stream changed to {}x{} {} ({len} bytes), larger than at start ({}); reopening",
                        self.width,
                        self.height,
                        self.format.name(),
                        self.description
                    ),
                ));
            }
        }
        let info = self
            .info
            .as_ref()
            .ok_or_else(|| device(&self.uri, "no caps yet".into()))?;
        let buffer = sample
            .buffer()
            .ok_or_else(|| device(&self.uri, "a frame came without a buffer".into()))?;
        let vframe = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
            .map_err(|e| device(&self.uri, format!("cannot map a frame: {e}")))?;
        if !frame.reshape(self.width, self.height, self.format) {
            return Err(device(&self.uri, "invalid frame geometry".into()));
        }
        let (layout, n) = planes(self.format, self.width as usize, self.height as usize);
        let mut at = 0;
        for (p, &(row, rows)) in layout.iter().enumerate().take(n) {
            let stride = vframe.plane_stride().get(p).copied().unwrap_or(0);
            let data = vframe
                .plane_data(p as u32)
                .map_err(|e| device(&self.uri, format!("cannot read plane {p}: {e}")))?;
            let stride = usize::try_from(stride).unwrap_or(0);
            if stride < row || rows.saturating_sub(1) * stride + row > data.len() {
                return Err(device(
                    &self.uri,
                    format!(
                        "plane {p} is too small ({} bytes, stride {stride}) for {rows} rows of {row} bytes",
                        data.len()
                    ),
                ));
            }
            for r in 0..rows {
                frame.data[at..at + row].copy_from_slice(&data[r * stride..r * stride + row]);
                at += row;
            }
        }
        frame.seq = self.seq;
        self.seq += 1;
        frame.captured_at = Instant::now();
        frame.set_source(&self.uri);
        Ok(())
    }
}

impl FrameSource for GstSource {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn is_live(&self) -> bool {
        true
    }

    fn max_frame_bytes(&self) -> usize {
        self.max_bytes
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        let sample = match self.pending.take() {
            Some(s) => s,
            None => self.pull(self.timeout, None, "the next frame")?,
        };
        self.copy(&sample, frame)?;
        Ok(true)
    }

    fn describe(&self) -> String {
        format!("{} ({})", self.uri, self.description)
    }

    fn set_frame_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}
