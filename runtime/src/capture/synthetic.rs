//! `synthetic://?width=W&height=H&format=F&fps=N&frames=N&variants=N`: deterministic generated
//! frames for tests and benchmarks.
//!
//! `variants` distinct frames (a shifted colour gradient with a moving dark square, like ink on
//! paper) are rendered once when the source opens; replay copies them, so capture costs one
//! `memcpy` and never allocates. `frames=0` (the default) never ends.
//!
//! `format=mjpeg` stands in for an MJPEG camera: the frames (4 variants unless `variants` says
//! otherwise) are JPEG-encoded once at open, and every frame is decoded from its JPEG by an
//! [`MjpegDecoder`] into RGB, at the reduced scale [`FrameSource::set_min_size`] allows; the
//! decoder reuses its buffers, so this too never allocates per frame.
//!
//! `fail_every=N[&fail_for=K][&fail=error|stall]` makes it a simulated camera for testing
//! recovery without one: it is opened inside [`super::reconnect::Reconnecting`] like a camera,
//! fails after every N frames (an error like a vanished device, or with `fail=stall` no frame
//! until the stall timeout), and its next K reopen attempts fail (default 1) before one works.
//! The schedule counts frames and attempts, not time, so a test knows the sequence it gets.

use std::time::{Duration, Instant};

use super::mjpeg::{MjpegDecoder, Scale};
use super::reconnect::Opener;
use super::{CaptureError, FrameSource, Interrupt, Pacer, Uri};
use crate::frame::{Frame, PixelFormat};

/// JPEG quality of `format=mjpeg` frames (a typical camera setting).
const MJPEG_QUALITY: u8 = 85;

/// A `format=mjpeg` source's frames and decoder.
#[derive(Debug)]
struct Mjpeg {
    jpegs: Vec<Vec<u8>>,
    decoder: MjpegDecoder,
    scale: Scale,
    width: u32,
    height: u32,
}

/// Generated frames.
#[derive(Debug)]
pub struct SyntheticSource {
    uri: String,
    frames: Vec<Frame>,
    /// `format=mjpeg`: frames are decoded from these JPEGs instead of copied from `frames`.
    mjpeg: Option<Mjpeg>,
    limit: u64,
    seq: u64,
    live: bool,
    pacer: Pacer,
    /// Simulated camera: fail after this many frames since opening (0: never).
    fail_every: u64,
    /// Simulated camera: fail by stalling (no frame until `frame_timeout`) instead of an error.
    stall: bool,
    frame_timeout: Duration,
}

impl SyntheticSource {
    /// Open from a parsed `synthetic://` URI.
    pub fn open(uri: &Uri) -> Result<Self, CaptureError> {
        uri.check_known(&[
            "width",
            "height",
            "format",
            "fps",
            "frames",
            "variants",
            "fail_every",
            "fail_for",
            "fail",
        ])?;
        let width: u32 = uri.get("width", 640, "expected a width in pixels, 2..=8192")?;
        let height: u32 = uri.get("height", 480, "expected a height in pixels, 2..=8192")?;
        if !(2..=8192).contains(&width) {
            return Err(uri.bad("width", &width.to_string(), "expected 2..=8192"));
        }
        if !(2..=8192).contains(&height) {
            return Err(uri.bad("height", &height.to_string(), "expected 2..=8192"));
        }
        let fname: String = uri.get("format", "yuyv".to_string(), "")?;
        let is_mjpeg = fname.eq_ignore_ascii_case("mjpeg") || fname.eq_ignore_ascii_case("mjpg");
        let format = if is_mjpeg {
            PixelFormat::Rgb
        } else {
            PixelFormat::parse(&fname).ok_or_else(|| {
                uri.bad(
                    "format",
                    &fname,
                    "expected yuyv, nv12, grey, rgb, bgr or mjpeg",
                )
            })?
        };
        if format.frame_len(width, height).is_none() {
            return Err(uri.bad(
                "width",
                &width.to_string(),
                &format!("{} needs an even width and height", format.name()),
            ));
        }
        let limit: u64 = uri.get("frames", 0, "expected a frame count (0 = endless)")?;
        let variants: usize = uri.get(
            "variants",
            if is_mjpeg { 4 } else { 8 },
            "expected 1..=64 distinct frames",
        )?;
        if !(1..=64).contains(&variants) {
            return Err(uri.bad("variants", &variants.to_string(), "expected 1..=64"));
        }
        let fps = uri.fps()?;
        let fail_every: u64 = uri.get(
            "fail_every",
            0,
            "expected a frame count after which the simulated camera fails",
        )?;
        let stall = match uri.options.iter().rev().find(|(k, _)| k == "fail") {
            None => false,
            Some((_, v)) if v == "error" => false,
            Some((_, v)) if v == "stall" => true,
            Some((k, v)) => return Err(uri.bad(k, v, "expected error or stall")),
        };
        if fail_every > 0 && limit > 0 {
            return Err(uri.bad(
                "frames",
                &limit.to_string(),
                "a simulated camera (fail_every) runs until stopped: leave frames out and bound the run with --frames",
            ));
        }
        let frames: Vec<Frame> = (0..variants)
            .map(|i| render(width, height, format, i as u32, &uri.raw))
            .collect();
        let (frames, mjpeg) = if is_mjpeg {
            let jpegs = frames
                .iter()
                .map(|f| encode_jpeg(f, &uri.raw))
                .collect::<Result<_, _>>()?;
            // Keep one rendered frame: `describe` and `max_frame_bytes` read it.
            let first = frames.into_iter().take(1).collect();
            let m = Mjpeg {
                jpegs,
                decoder: MjpegDecoder::new(),
                scale: Scale::Full,
                width,
                height,
            };
            (first, Some(m))
        } else {
            (frames, None)
        };
        Ok(Self {
            uri: uri.raw.clone(),
            frames,
            mjpeg,
            limit,
            seq: 0,
            live: fps.is_some(),
            pacer: Pacer::new(fps),
            fail_every,
            stall,
            frame_timeout: super::DEFAULT_STALL_TIMEOUT,
        })
    }

    /// A source straight from parameters (for benchmarks and tests).
    pub fn new(width: u32, height: u32, format: PixelFormat) -> Result<Self, CaptureError> {
        let uri = format!(
            "synthetic://?width={width}&height={height}&format={}",
            format.name()
        );
        Self::open(&Uri::parse(&uri)?)
    }
}

/// JPEG-encode a rendered RGB frame (baseline, 4:4:4, standard Huffman tables).
fn encode_jpeg(f: &Frame, uri: &str) -> Result<Vec<u8>, CaptureError> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, MJPEG_QUALITY)
        .write_image(&f.data, f.width, f.height, image::ExtendedColorType::Rgb8)
        .map_err(|e| CaptureError::Unsupported {
            uri: uri.to_string(),
            message: format!("cannot JPEG-encode the synthetic frames: {e}"),
        })?;
    Ok(out)
}

/// The opener of a simulated camera (`fail_every=N`, see the module documentation): every
/// opening after the first fails `fail_for` times before it works.
pub fn simulated_camera(uri: Uri) -> Result<Opener, CaptureError> {
    let fail_for: u32 = uri.get(
        "fail_for",
        1,
        "expected how many reopen attempts fail after each failure, 0..=1000",
    )?;
    if fail_for > 1000 {
        return Err(uri.bad("fail_for", &fail_for.to_string(), "expected 0..=1000"));
    }
    let mut failing = 0u32;
    Ok(Box::new(move |interrupt: &Interrupt| {
        if failing > 0 {
            failing -= 1;
            return Err(CaptureError::Device {
                device: uri.raw.clone(),
                message: "cannot open: no such device (simulated: fail_for)".into(),
            });
        }
        let mut s = SyntheticSource::open(&uri)?;
        s.pacer.set_interrupt(interrupt.clone());
        failing = fail_for;
        Ok(Box::new(s) as Box<dyn FrameSource>)
    }))
}

/// Render variant `i`: light tinted paper with a vertical gradient and a dark square that
/// moves with `i`, then pack it in `format`.
pub fn render(width: u32, height: u32, format: PixelFormat, i: u32, uri: &str) -> Frame {
    let (w, h) = (width as usize, height as usize);
    let mut rgb = vec![0u8; w * h * 3];
    let side = (w.min(h) / 4).max(1);
    let x0 = (i as usize * w / 9 + w / 8) % (w - side).max(1);
    let y0 = (i as usize * h / 7 + h / 6) % (h - side).max(1);
    for y in 0..h {
        for x in 0..w {
            let p = &mut rgb[(y * w + x) * 3..][..3];
            let g = (160 + (y * 80 / h) as u32 + (x * 15 / w) as u32 + i * 3).min(255) as u8;
            p.copy_from_slice(&[g, g.saturating_sub(10), g.saturating_sub(30)]);
            if (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y) {
                p.copy_from_slice(&[30, 30, 40]);
            }
        }
    }
    let mut f = Frame::with_capacity(format.frame_len(width, height).unwrap_or(0));
    f.reshape(width, height, format);
    pack_rgb(&rgb, w, h, format, &mut f.data);
    f.set_source(uri);
    f
}

/// Pack tightly packed RGB into `format` (BT.601 limited range for YUV formats).
pub fn pack_rgb(rgb: &[u8], w: usize, h: usize, format: PixelFormat, out: &mut [u8]) {
    let yuv = |p: &[u8]| {
        let (r, g, b) = (p[0] as f32, p[1] as f32, p[2] as f32);
        let y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b;
        let u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b;
        let v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b;
        (
            y.round().clamp(0.0, 255.0) as u8,
            u.round().clamp(0.0, 255.0) as u8,
            v.round().clamp(0.0, 255.0) as u8,
        )
    };
    match format {
        PixelFormat::Rgb => out.copy_from_slice(rgb),
        PixelFormat::Bgr => {
            for (o, p) in out.chunks_exact_mut(3).zip(rgb.chunks_exact(3)) {
                o.copy_from_slice(&[p[2], p[1], p[0]]);
            }
        }
        PixelFormat::Grey => {
            for (o, p) in out.iter_mut().zip(rgb.chunks_exact(3)) {
                *o = ((77 * p[0] as u32 + 150 * p[1] as u32 + 29 * p[2] as u32) >> 8) as u8;
            }
        }
        PixelFormat::Yuyv => {
            for (o, p) in out.chunks_exact_mut(4).zip(rgb.chunks_exact(6)) {
                let (y0, u0, v0) = yuv(&p[..3]);
                let (y1, u1, v1) = yuv(&p[3..]);
                o.copy_from_slice(&[
                    y0,
                    ((u0 as u16 + u1 as u16) / 2) as u8,
                    y1,
                    ((v0 as u16 + v1 as u16) / 2) as u8,
                ]);
            }
        }
        PixelFormat::Nv12 => {
            let (yp, uv) = out.split_at_mut(w * h);
            for (o, p) in yp.iter_mut().zip(rgb.chunks_exact(3)) {
                *o = yuv(p).0;
            }
            for cy in 0..h / 2 {
                for cx in 0..w / 2 {
                    let mut su = 0u32;
                    let mut sv = 0u32;
                    for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let (_, u, v) = yuv(&rgb[((2 * cy + dy) * w + 2 * cx + dx) * 3..][..3]);
                        su += u as u32;
                        sv += v as u32;
                    }
                    uv[(cy * (w / 2) + cx) * 2] = (su / 4) as u8;
                    uv[(cy * (w / 2) + cx) * 2 + 1] = (sv / 4) as u8;
                }
            }
        }
    }
}

impl FrameSource for SyntheticSource {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn is_live(&self) -> bool {
        self.live
    }

    fn max_frame_bytes(&self) -> usize {
        self.frames[0].data.len()
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        if self.limit != 0 && self.seq >= self.limit {
            return Ok(false);
        }
        if self.fail_every != 0 && self.seq >= self.fail_every {
            if !self.stall {
                return Err(CaptureError::Device {
                    device: self.uri.clone(),
                    message: format!(
                        "capture failed after {} frames: the device vanished (simulated: fail_every)",
                        self.seq
                    ),
                });
            }
            if self
                .pacer
                .interrupt()
                .sleep_until(Instant::now() + self.frame_timeout)
            {
                return Ok(false);
            }
            return Err(CaptureError::Device {
                device: self.uri.clone(),
                message: format!(
                    "no frame for {:?}: the stream stalled (simulated: fail=stall)",
                    self.frame_timeout
                ),
            });
        }
        if !self.pacer.wait() {
            return Ok(false);
        }
        if let Some(m) = self.mjpeg.as_mut() {
            let jpeg = &m.jpegs[(self.seq % m.jpegs.len() as u64) as usize];
            m.decoder
                .decode(jpeg, m.scale, frame)
                .map_err(|e| CaptureError::Unsupported {
                    uri: self.uri.clone(),
                    message: format!("cannot decode its own MJPEG frame: {e}"),
                })?;
            frame.set_source(&self.uri);
        } else {
            let src = &self.frames[(self.seq % self.frames.len() as u64) as usize];
            frame.copy_from(src);
        }
        frame.seq = self.seq;
        frame.captured_at = std::time::Instant::now();
        self.seq += 1;
        Ok(true)
    }

    fn interrupt(&self) -> Option<super::Interrupt> {
        Some(self.pacer.interrupt())
    }

    fn set_frame_timeout(&mut self, timeout: Duration) {
        self.frame_timeout = timeout;
    }

    fn set_min_size(&mut self, min_width: u32, min_height: u32) {
        if let Some(m) = self.mjpeg.as_mut() {
            m.scale = Scale::for_min_size(m.width, m.height, min_width, min_height);
        }
    }

    fn describe(&self) -> String {
        let f = &self.frames[0];
        match &self.mjpeg {
            Some(m) => {
                let (w, h) = m.scale.output_size(m.width, m.height);
                format!(
                    "{} ({}x{} mjpeg, decoded at 1/{}: {w}x{h} rgb)",
                    self.uri,
                    m.width,
                    m.height,
                    m.scale.divisor()
                )
            }
            None => format!(
                "{} ({}x{} {})",
                self.uri,
                f.width,
                f.height,
                f.format.name()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_bounded() {
        let mut a =
            SyntheticSource::open(&Uri::parse("synthetic://?width=64&height=48&frames=3").unwrap())
                .unwrap();
        let mut b =
            SyntheticSource::open(&Uri::parse("synthetic://?width=64&height=48&frames=3").unwrap())
                .unwrap();
        let mut fa = Frame::with_capacity(0);
        let mut fb = Frame::with_capacity(0);
        for _ in 0..3 {
            assert!(a.next_frame(&mut fa).unwrap());
            assert!(b.next_frame(&mut fb).unwrap());
            assert_eq!(fa.data, fb.data);
            assert_eq!(fa.data.len(), 64 * 48 * 2);
        }
        assert!(!a.next_frame(&mut fa).unwrap());
    }

    #[test]
    fn mjpeg_frames_decode_at_the_scale_the_minimum_size_allows() {
        let uri = "synthetic://?width=161&height=97&format=mjpeg&frames=6";
        let mut s = SyntheticSource::open(&Uri::parse(uri).unwrap()).unwrap();
        let mut f = Frame::with_capacity(0);
        let raw = render(161, 97, PixelFormat::Rgb, 0, uri);
        assert!(s.next_frame(&mut f).unwrap());
        assert_eq!((f.width, f.height, f.format), (161, 97, PixelFormat::Rgb));
        assert_eq!(f.source, uri);
        // Close to the rendered frame (JPEG at quality 85: a few levels on average).
        let mean = f
            .data
            .iter()
            .zip(&raw.data)
            .map(|(a, b)| a.abs_diff(*b) as f64)
            .sum::<f64>()
            / f.data.len() as f64;
        assert!(mean < 4.0, "{mean}");
        s.set_min_size(40, 24);
        assert!(s.next_frame(&mut f).unwrap());
        assert_eq!((f.width, f.height), (41, 25), "1/4 of 161x97, rounded up");
        assert!(s.describe().contains("1/4"), "{}", s.describe());
        s.set_min_size(41, 25);
        assert!(s.next_frame(&mut f).unwrap());
        assert_eq!((f.width, f.height), (41, 25));
        s.set_min_size(42, 25);
        assert!(s.next_frame(&mut f).unwrap());
        assert_eq!((f.width, f.height), (81, 49));
        assert_eq!(f.seq, 3);
    }

    #[test]
    fn a_reopened_mjpeg_camera_keeps_the_minimum_size() {
        let opts = super::super::OpenOptions {
            stall_timeout: Duration::from_secs(5),
            backoff: super::super::reconnect::Backoff {
                first: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
        };
        let uri = "synthetic://?width=160&height=96&format=mjpeg&fail_every=2";
        let mut s = super::super::open_with(uri, &opts).unwrap();
        s.set_min_size(20, 12);
        let mut f = Frame::with_capacity(160 * 96 * 3);
        for seq in 0..7 {
            assert!(s.next_frame(&mut f).unwrap());
            assert_eq!(
                (f.seq, f.width, f.height),
                (seq, 20, 12),
                "1/8 after reopening too"
            );
        }
        assert!(s.stats().outages >= 2);
    }

    #[test]
    fn odd_width_refused_for_yuyv() {
        let e = SyntheticSource::open(&Uri::parse("synthetic://?width=63&format=yuyv").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("even"), "{e}");
    }
}
