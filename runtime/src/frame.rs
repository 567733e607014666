//! Frames: pixel formats and the reusable frame buffer every source fills.

use std::time::Instant;

/// Pixel layouts a frame can arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Packed 4:2:2, bytes `Y0 U Y1 V` per pixel pair (V4L2 `YUYV`), BT.601 limited range.
    Yuyv,
    /// Planar 4:2:0: a Y plane then interleaved `U V` at half resolution (V4L2 `NV12`).
    Nv12,
    /// 8-bit luma only (V4L2 `GREY`, PGM).
    Grey,
    /// Packed 8-bit `R G B`.
    Rgb,
    /// Packed 8-bit `B G R`.
    Bgr,
}

impl PixelFormat {
    /// Every format, in the order V4L2 negotiation prefers them (then RGB, BGR).
    pub const ALL: [PixelFormat; 5] = [Self::Yuyv, Self::Nv12, Self::Grey, Self::Rgb, Self::Bgr];

    /// Bytes needed for a tightly packed `width × height` frame, `None` when the geometry is
    /// invalid for the format (odd width for YUYV, odd sides for NV12) or overflows.
    pub fn frame_len(self, width: u32, height: u32) -> Option<usize> {
        let (w, h) = (width as usize, height as usize);
        let px = w.checked_mul(h)?;
        match self {
            PixelFormat::Yuyv if w % 2 == 0 => px.checked_mul(2),
            PixelFormat::Nv12 if w % 2 == 0 && h % 2 == 0 => px.checked_add(px / 2),
            PixelFormat::Grey => Some(px),
            PixelFormat::Rgb | PixelFormat::Bgr => px.checked_mul(3),
            _ => None,
        }
    }

    /// Parse a format name as used in `synthetic://` URIs and V4L2 fourccs.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "yuyv" | "yuy2" => Some(Self::Yuyv),
            "nv12" => Some(Self::Nv12),
            "grey" | "gray" | "y8" => Some(Self::Grey),
            "rgb" | "rgb24" | "rgb3" => Some(Self::Rgb),
            "bgr" | "bgr24" | "bgr3" => Some(Self::Bgr),
            _ => None,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Yuyv => "yuyv",
            Self::Nv12 => "nv12",
            Self::Grey => "grey",
            Self::Rgb => "rgb",
            Self::Bgr => "bgr",
        }
    }
}

/// Capacity reserved for a frame's source name by [`Frame::with_capacity`]; the pipeline's
/// ring reserves the longest name its source reports ([`crate::capture::FrameSource::max_source_len`])
/// when that is more, so that setting a name never allocates there.
pub const SOURCE_NAME_CAPACITY: usize = 1024;

/// One frame in a reusable buffer. Sources overwrite it in place; its `data` keeps its capacity.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Pixel bytes, tightly packed, `format.frame_len(width, height)` long.
    pub data: Vec<u8>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixel layout of `data`.
    pub format: PixelFormat,
    /// Sequence number assigned by the source, from 0.
    pub seq: u64,
    /// When the frame was captured (or read).
    pub captured_at: Instant,
    /// Where it came from: the image path for file sources, else the URI.
    pub source: String,
}

impl Frame {
    /// An empty frame with `capacity` bytes reserved.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_capacities(capacity, SOURCE_NAME_CAPACITY)
    }

    /// An empty frame with `capacity` bytes and a source name of `source_len` bytes reserved.
    pub fn with_capacities(capacity: usize, source_len: usize) -> Self {
        Self {
            data: Vec::with_capacity(capacity),
            width: 0,
            height: 0,
            format: PixelFormat::Rgb,
            seq: 0,
            captured_at: Instant::now(),
            source: String::with_capacity(source_len),
        }
    }

    /// Size `data` for `width × height` in `format` (reusing capacity) and set the geometry.
    /// Returns `false` when the geometry is invalid for the format.
    pub fn reshape(&mut self, width: u32, height: u32, format: PixelFormat) -> bool {
        let Some(len) = format.frame_len(width, height) else {
            return false;
        };
        self.data.resize(len, 0);
        self.width = width;
        self.height = height;
        self.format = format;
        true
    }

    /// Set the source name, whole: without allocating when it fits the reserved capacity (it
    /// always does in the pipeline's ring), growing it otherwise. Never cut.
    pub fn set_source(&mut self, name: &str) {
        self.source.clear();
        self.source.push_str(name);
    }

    /// Copy another frame's content into this one, reusing capacity.
    pub fn copy_from(&mut self, other: &Frame) {
        self.data.clear();
        self.data.extend_from_slice(&other.data);
        self.width = other.width;
        self.height = other.height;
        self.format = other.format;
        self.seq = other.seq;
        self.captured_at = other.captured_at;
        self.set_source(&other.source);
    }
}
