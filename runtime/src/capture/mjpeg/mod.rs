//! A baseline JPEG (camera MJPEG) decoder that owns every buffer and decodes straight to a
//! reduced size.
//!
//! [`MjpegDecoder::decode`] turns one JPEG frame into packed RGB ([`PixelFormat::Rgb`], JFIF
//! full-range BT.601) in a caller's [`Frame`], at 1/1, 1/2, 1/4 or 1/8 of the frame's size
//! ([`Scale`]). A reduced scale runs a smaller inverse DCT on each block's lowest frequencies
//! (4×4, 2×2, the DC alone), so the full-size image is never built: a 1920×1080 camera frame
//! for a 224×224 model decodes at 1/4 (480×270) for a fraction of the full cost. Once its
//! buffers have grown for a frame geometry the decoder does not allocate.
//!
//! Supported: SOF0/SOF1 8-bit Huffman, 1 (grey) or 3 (YCbCr) components, sampling factors 1
//! or 2 (4:4:4, 4:2:2, 4:2:0, 4:4:0), interleaved or one scan per component, DQT (8- and
//! 16-bit), DHT, DRI/RSTn; APPn and COM are skipped. Frames without DHT (UVC cameras omit it)
//! use the standard tables of the JPEG specification, Annex K.3. Progressive, lossless,
//! hierarchical, arithmetic-coded, 12-bit and 4-component (CMYK) JPEGs are refused with
//! [`MjpegError::Unsupported`].

mod color;
mod decoder;
mod huffman;
mod idct;
mod tables;
#[cfg(test)]
mod tests;

pub use decoder::MjpegDecoder;

/// Longest side accepted, in pixels.
pub const MAX_SIDE: u32 = 16_384;
/// Default pixel budget of a frame (width × height before scaling): 64 Mpx, well above 8K.
pub const DEFAULT_MAX_PIXELS: u64 = 64 << 20;

/// How much smaller than the JPEG frame the decoded image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scale {
    /// Full size (8×8 inverse DCT).
    Full = 1,
    /// Half the width and height (4×4 inverse DCT).
    Half = 2,
    /// A quarter (2×2 inverse DCT).
    Quarter = 4,
    /// An eighth (each block's DC term).
    Eighth = 8,
}

impl Scale {
    /// Every scale, largest output first.
    pub const ALL: [Scale; 4] = [Scale::Full, Scale::Half, Scale::Quarter, Scale::Eighth];

    /// The divisor: 1, 2, 4 or 8.
    pub fn divisor(self) -> u32 {
        self as u32
    }

    /// The scale with this divisor.
    pub fn from_divisor(d: u32) -> Option<Scale> {
        Self::ALL.into_iter().find(|s| s.divisor() == d)
    }

    /// Output size of a `width × height` frame at this scale: `ceil(width / s) × ceil(height / s)`.
    pub fn output_size(self, width: u32, height: u32) -> (u32, u32) {
        let s = self.divisor();
        (width.div_ceil(s), height.div_ceil(s))
    }

    /// The smallest output that is still at least `min_width × min_height`: the largest
    /// divisor `s` with `ceil(width / s) >= min_width` and `ceil(height / s) >= min_height`;
    /// [`Scale::Full`] when even the full frame is smaller than that (a minimum of 0 × 0 gives
    /// [`Scale::Eighth`]).
    pub fn for_min_size(width: u32, height: u32, min_width: u32, min_height: u32) -> Scale {
        Self::ALL
            .into_iter()
            .rev()
            .find(|s| {
                let (w, h) = s.output_size(width, height);
                w >= min_width && h >= min_height
            })
            .unwrap_or(Scale::Full)
    }

    /// Pixels per block side at this scale (8, 4, 2, 1).
    fn block(self) -> usize {
        8 / self.divisor() as usize
    }
}

/// Why a frame could not be decoded. The frame is not a usable JPEG; the camera or file should
/// deliver baseline JPEG (the MJPEG every UVC camera sends).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MjpegError {
    /// The data does not start with a JPEG start-of-image marker.
    #[error("not a JPEG frame (no start-of-image marker FF D8)")]
    NotJpeg,
    /// The data ends before the frame does.
    #[error("truncated JPEG frame: the data ends inside the {0}")]
    Truncated(&'static str),
    /// The data is inconsistent.
    #[error("corrupt JPEG frame: {0}")]
    Corrupt(&'static str),
    /// A valid JPEG this decoder does not handle.
    #[error("unsupported JPEG: {0}; cameras' MJPEG is baseline 8-bit YCbCr: set the camera or encoder to that")]
    Unsupported(&'static str),
    /// The frame is larger than the decoder accepts.
    #[error("JPEG frame {width}x{height} is larger than the {max_side}-pixel side or {max_pixels}-pixel limit")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Longest side accepted.
        max_side: u32,
        /// Pixel budget.
        max_pixels: u64,
    },
}
