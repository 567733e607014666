//! The latest frame as a JPEG, encoded on the server's thread when someone asks: pixel
//! formats to RGB (BT.601 limited range for the YUV ones), then the `image` crate's encoder.

use edgefuse_runtime::frame::PixelFormat;

/// JPEG quality of `/snapshot.jpg`.
pub const QUALITY: u8 = 80;

fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (y as i32 - 16).max(0) * 298;
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clamp(c + 409 * e),
        clamp(c - 100 * d - 208 * e),
        clamp(c + 516 * d),
    ]
}

/// Convert `data` (`format`, `width × height`, tightly packed) to packed RGB into `rgb`.
/// `None` when `data` is shorter than the format needs.
pub fn to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    format: PixelFormat,
    rgb: &mut Vec<u8>,
) -> Option<()> {
    let (w, h) = (width as usize, height as usize);
    if data.len() < format.frame_len(width, height)? {
        return None;
    }
    rgb.clear();
    rgb.reserve(w * h * 3);
    match format {
        PixelFormat::Rgb => rgb.extend_from_slice(&data[..w * h * 3]),
        PixelFormat::Bgr => {
            for p in data[..w * h * 3].chunks_exact(3) {
                rgb.extend_from_slice(&[p[2], p[1], p[0]]);
            }
        }
        PixelFormat::Grey => {
            for &g in &data[..w * h] {
                rgb.extend_from_slice(&[g, g, g]);
            }
        }
        PixelFormat::Yuyv => {
            for p in data[..w * h * 2].chunks_exact(4) {
                rgb.extend_from_slice(&yuv_to_rgb(p[0], p[1], p[3]));
                rgb.extend_from_slice(&yuv_to_rgb(p[2], p[1], p[3]));
            }
        }
        PixelFormat::Nv12 => {
            let (luma, chroma) = data.split_at(w * h);
            for row in 0..h {
                for col in 0..w {
                    let c = (row / 2) * w + (col / 2) * 2;
                    rgb.extend_from_slice(&yuv_to_rgb(
                        luma[row * w + col],
                        chroma[c],
                        chroma[c + 1],
                    ));
                }
            }
        }
    }
    Some(())
}

/// Encode packed RGB as a JPEG.
pub fn jpeg(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::with_capacity(rgb.len() / 8 + 1024);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, QUALITY).encode(
        rgb,
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_converts_and_encodes() {
        let mut rgb = Vec::new();
        // Mid-grey in each layout gives mid-grey RGB.
        let cases: [(PixelFormat, Vec<u8>); 5] = [
            (PixelFormat::Rgb, vec![120; 4 * 2 * 3]),
            (PixelFormat::Bgr, vec![120; 4 * 2 * 3]),
            (PixelFormat::Grey, vec![120; 4 * 2]),
            (PixelFormat::Yuyv, [119u8, 128].repeat(4 * 2)),
            (PixelFormat::Nv12, [vec![119u8; 8], vec![128u8; 4]].concat()),
        ];
        for (f, data) in cases {
            to_rgb(&data, 4, 2, f, &mut rgb).unwrap();
            assert_eq!(rgb.len(), 4 * 2 * 3, "{f:?}");
            assert!(
                rgb.iter().all(|&v| (118..=122).contains(&v)),
                "{f:?}: {rgb:?}"
            );
            let j = jpeg(&rgb, 4, 2).unwrap();
            assert_eq!(&j[..2], &[0xff, 0xd8], "JPEG start of image");
        }
        assert!(to_rgb(&[0; 3], 4, 2, PixelFormat::Rgb, &mut rgb).is_none());
    }
}
