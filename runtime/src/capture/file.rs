//! `file://PATH`: one image, or a folder of PNG/JPEG/PGM/PPM images replayed in name order.
//!
//! Options: `loop` (start again at the end), `fps=N` (pace the replay; a paced replay is a live
//! source and may drop frames when inference is slower). Images are decoded once when the source
//! opens (up to [`PRELOAD_BUDGET`] bytes of pixels) so replay does not allocate; larger sets are
//! decoded on the fly. A non-image file is skipped with a warning (except `labels.csv`, the ground
//! truth of a labelled folder); an image that cannot be decoded is reported by name and skipped.

use std::path::{Path, PathBuf};

use super::{CaptureError, FrameSource, Pacer, SourceStats, Uri};
use crate::frame::{Frame, PixelFormat};

/// Decoded pixels kept in memory at most; beyond this, images are decoded while replaying.
pub const PRELOAD_BUDGET: usize = 512 << 20;

/// The ground truth of a folder of labelled frames (`file,label` lines, read by
/// `edgefuse_calibration::truth`): expected in a folder, never taken for a stray file.
pub const LABELS_CSV: &str = "labels.csv";

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "pgm", "ppm", "pnm"];

struct Decoded {
    width: u32,
    height: u32,
    format: PixelFormat,
    data: Vec<u8>,
}

/// Replays image files.
pub struct FileSource {
    uri: String,
    files: Vec<PathBuf>,
    names: Vec<String>,
    preloaded: Option<Vec<Option<Decoded>>>,
    next: usize,
    seq: u64,
    looping: bool,
    live: bool,
    pacer: Pacer,
    stats: SourceStats,
    max_bytes: usize,
    max_pixels: u64,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("uri", &self.uri)
            .field("files", &self.files.len())
            .finish()
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Largest image (in pixels) a `file://` source decodes unless `max_pixels=N` says otherwise:
/// 4096 × 4096, 48 MiB of RGB. Larger images are refused by name before any pixel is decoded, so
/// one huge image cannot take a small board's memory (the model input is far smaller).
pub const DEFAULT_MAX_PIXELS: u64 = 4096 * 4096;

/// Largest image file read (compressed bytes).
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// Decode one image file into packed GREY (for single-channel images) or RGB; images of more
/// than `max_pixels` pixels are refused.
pub fn decode_image(
    path: &Path,
    max_pixels: u64,
) -> Result<(u32, u32, PixelFormat, Vec<u8>), String> {
    let bytes = edgefuse_models::files::read_limited(path, MAX_IMAGE_FILE_BYTES)
        .map_err(|e| format!("cannot read: {e}"))?;
    decode_image_bytes(&bytes, max_pixels)
}

/// [`decode_image`] on the bytes of an image file.
pub fn decode_image_bytes(
    bytes: &[u8],
    max_pixels: u64,
) -> Result<(u32, u32, PixelFormat, Vec<u8>), String> {
    let reader = || {
        let mut r = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read: {e}"))?;
        let mut limits = image::Limits::default();
        // Decoders' own buffers (16-bit, alpha) stay within a small multiple of the pixels.
        limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(1 << 20));
        r.limits(limits);
        Ok::<_, String>(r)
    };
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| format!("cannot decode: {e}"))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(format!(
            "{w}x{h} is {pixels} pixels, more than the {max_pixels} this source decodes; \
             shrink the image or raise the cap with max_pixels=N in the file:// URI"
        ));
    }
    let img = reader()?
        .decode()
        .map_err(|e| format!("cannot decode: {e}"))?;
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err("image has no pixels".into());
    }
    Ok(match img {
        image::DynamicImage::ImageLuma8(g) => (w, h, PixelFormat::Grey, g.into_raw()),
        image::DynamicImage::ImageLuma16(_) | image::DynamicImage::ImageLumaA8(_) => {
            (w, h, PixelFormat::Grey, img.to_luma8().into_raw())
        }
        other => (w, h, PixelFormat::Rgb, other.to_rgb8().into_raw()),
    })
}

/// A file's path as frames name it: UTF-8 as it is, any other byte as `\xNN` (not U+FFFD, so
/// that names that differ only there stay apart and can be found).
pub fn path_name(p: &std::path::Path) -> String {
    use std::fmt::Write as _;
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in p.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

impl FileSource {
    /// Open `file://PATH[?loop][&fps=N]`.
    pub fn open(uri: &Uri) -> Result<Self, CaptureError> {
        uri.check_known(&["loop", "fps", "max_pixels"])?;
        let looping = uri.flag("loop")?;
        let max_pixels: u64 = uri.get(
            "max_pixels",
            DEFAULT_MAX_PIXELS,
            "expected the largest image to decode, in pixels (width × height), at least 1",
        )?;
        if max_pixels == 0 {
            return Err(uri.bad("max_pixels", "0", "expected at least 1"));
        }
        let fps = uri.fps()?;
        let root = PathBuf::from(&uri.path);
        let meta = std::fs::metadata(&root).map_err(|e| CaptureError::Path {
            path: root.clone(),
            message: format!(
                "cannot open ({e}); give an image file or a folder of PNG/JPEG/PGM/PPM images"
            ),
        })?;
        let mut stats = SourceStats::default();
        let files = if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&root)
                .map_err(|e| CaptureError::Path {
                    path: root.clone(),
                    message: format!("cannot list folder ({e})"),
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            // A folder of labelled frames carries its ground truth in `labels.csv` (`eval`,
            // `fit`, `run --truth`): expected there, so not reported as a stray file.
            entries.retain(|p| p.file_name().is_none_or(|n| n != LABELS_CSV));
            let (images, others): (Vec<_>, Vec<_>) = entries.into_iter().partition(|p| is_image(p));
            for o in &others {
                log::warn!("{}: not a PNG/JPEG/PGM/PPM image, skipped", o.display());
            }
            stats.skipped_non_images = others.len() as u64;
            images
        } else {
            vec![root.clone()]
        };
        if files.is_empty() {
            return Err(CaptureError::Path {
                path: root,
                message: "the folder holds no PNG/JPEG/PGM/PPM images".into(),
            });
        }
        let names = files.iter().map(|p| path_name(p)).collect();
        let mut src = Self {
            uri: uri.raw.clone(),
            files,
            names,
            preloaded: None,
            next: 0,
            seq: 0,
            looping,
            live: fps.is_some(),
            pacer: Pacer::new(fps),
            stats,
            max_bytes: 0,
            max_pixels,
        };
        src.preload()?;
        Ok(src)
    }

    /// Decode every image up front while the total stays within [`PRELOAD_BUDGET`].
    fn preload(&mut self) -> Result<(), CaptureError> {
        let mut decoded = Vec::with_capacity(self.files.len());
        let mut total = 0usize;
        for path in &self.files {
            match decode_image(path, self.max_pixels) {
                Ok((width, height, format, data)) => {
                    total += data.len();
                    self.max_bytes = self.max_bytes.max(data.len());
                    decoded.push(Some(Decoded {
                        width,
                        height,
                        format,
                        data,
                    }));
                }
                Err(msg) => {
                    log::warn!("{}: {msg}; skipped", path.display());
                    self.stats.skipped_broken += 1;
                    decoded.push(None);
                }
            }
            if total > PRELOAD_BUDGET {
                log::info!(
                    "{}: images exceed {} MiB, decoding while replaying",
                    self.uri,
                    PRELOAD_BUDGET >> 20
                );
                self.stats.skipped_broken = 0;
                // Decoding happens again on replay: the ring's slots take the largest image
                // the cap lets through, so no later image outgrows them.
                self.max_bytes = self
                    .max_bytes
                    .max(usize::try_from(self.max_pixels.saturating_mul(3)).unwrap_or(usize::MAX));
                return Ok(());
            }
        }
        if decoded.iter().all(Option::is_none) {
            return Err(CaptureError::Unsupported {
                uri: self.uri.clone(),
                message: format!(
                    "none of the {} image(s) could be decoded (see the warnings above)",
                    self.files.len()
                ),
            });
        }
        self.preloaded = Some(decoded);
        Ok(())
    }

    /// Number of image files (including ones that failed to decode).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// `true` when there are no image files (never after a successful `open`).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl FrameSource for FileSource {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn is_live(&self) -> bool {
        self.live
    }

    fn max_frame_bytes(&self) -> usize {
        self.max_bytes
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        let mut attempts = 0;
        loop {
            if self.next >= self.files.len() {
                if !self.looping {
                    return Ok(false);
                }
                self.next = 0;
            }
            attempts += 1;
            if attempts > self.files.len() + 1 {
                return Err(CaptureError::Unsupported {
                    uri: self.uri.clone(),
                    message: "no image could be decoded any more (files changed or became unreadable while replaying); check the folder and restart".into(),
                });
            }
            let i = self.next;
            self.next += 1;
            let ok = match &self.preloaded {
                Some(pre) => match &pre[i] {
                    Some(d) => {
                        frame.reshape(d.width, d.height, d.format);
                        frame.data.copy_from_slice(&d.data);
                        true
                    }
                    None => false,
                },
                None => match decode_image(&self.files[i], self.max_pixels) {
                    Ok((w, h, format, data)) => {
                        frame.reshape(w, h, format);
                        frame.data.copy_from_slice(&data);
                        true
                    }
                    Err(msg) => {
                        log::warn!("{}: {msg}; skipped", self.files[i].display());
                        self.stats.skipped_broken += 1;
                        false
                    }
                },
            };
            if !ok {
                continue;
            }
            if !self.pacer.wait() {
                return Ok(false);
            }
            frame.seq = self.seq;
            self.seq += 1;
            frame.captured_at = std::time::Instant::now();
            frame.set_source(&self.names[i]);
            return Ok(true);
        }
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }

    fn max_source_len(&self) -> usize {
        self.names.iter().map(String::len).max().unwrap_or(0)
    }

    fn interrupt(&self) -> Option<super::Interrupt> {
        Some(self.pacer.interrupt())
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} image(s){}{})",
            self.uri,
            self.files.len(),
            if self.looping { ", looping" } else { "" },
            if self.preloaded.is_some() {
                ", preloaded"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A PNG that declares `w × h` RGB pixels and holds none (reading the dimensions stops at
    /// the first IDAT).
    fn png_header(w: u32, h: u32) -> Vec<u8> {
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        for chunk in [b"IDAT", b"IEND"] {
            png.extend_from_slice(&0u32.to_be_bytes());
            png.extend_from_slice(chunk);
            png.extend_from_slice(&crc32(chunk).to_be_bytes());
        }
        png
    }

    #[test]
    fn images_over_the_pixel_cap_are_refused_before_decoding() {
        let e = decode_image_bytes(&png_header(13000, 13000), DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(e.contains("13000x13000") && e.contains("max_pixels"), "{e}");
        // A small real image decodes, and is refused under a smaller cap.
        let mut png = Vec::new();
        image::RgbImage::new(100, 80)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let (w, h, format, data) = decode_image_bytes(&png, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(
            (w, h, format, data.len()),
            (100, 80, PixelFormat::Rgb, 100 * 80 * 3)
        );
        let e = decode_image_bytes(&png, 5000).unwrap_err();
        assert!(e.contains("8000 pixels") && e.contains("5000"), "{e}");
    }

    #[test]
    fn max_pixels_is_a_checked_uri_option() {
        for bad in ["0", "-1", "many"] {
            let uri = Uri::parse(&format!("file:///nonexistent?max_pixels={bad}")).unwrap();
            let e = FileSource::open(&uri).err().unwrap().to_string();
            assert!(e.contains("max_pixels"), "{e}");
        }
    }

    #[test]
    fn labels_csv_is_expected_and_other_files_are_counted_as_skipped() {
        let dir = tempfile::tempdir().unwrap();
        image::RgbImage::new(8, 8)
            .save(dir.path().join("a.png"))
            .unwrap();
        std::fs::write(dir.path().join(LABELS_CSV), "file,label\na.png,zero\n").unwrap();
        let uri = Uri::parse(&format!("file://{}", dir.path().display())).unwrap();
        let src = FileSource::open(&uri).unwrap();
        assert_eq!(src.stats.skipped_non_images, 0);
        std::fs::write(dir.path().join("notes.txt"), "stray").unwrap();
        let src = FileSource::open(&uri).unwrap();
        assert_eq!(src.stats.skipped_non_images, 1);
    }
}
