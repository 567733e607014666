//! The decoder against zune-jpeg (the oracle) on images encoded by the `image` crate (4:4:4,
//! grey) and by libjpeg-turbo's cjpeg (`testdata/`: 4:2:0, 4:2:2, 4:4:0, restart intervals,
//! progressive and arithmetic for the refusals), plus the repository's camera frames
//! (640×480 4:2:0); scaled decoding against the full decode box-averaged; hostile input.

use super::*;
use crate::frame::{Frame, PixelFormat};

/// A natural-looking test scene: gradients, a dark square, fine stripes and noise, so that
/// blocks carry AC energy at every frequency.
fn scene(w: usize, h: usize, seed: u32) -> Vec<u8> {
    let mut rng = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut out = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            let noise = (rng % 24) as i32 - 12;
            let stripes = if (x / 3 + y / 5) % 2 == 0 { 30 } else { -30 };
            let square = (w / 4..w / 2).contains(&x) && (h / 3..2 * h / 3).contains(&y);
            let base = [
                (x * 200 / w.max(1)) as i32 + 30,
                (y * 180 / h.max(1)) as i32 + 40,
                ((x + y) * 120 / (w + h).max(1)) as i32 + 90,
            ];
            for c in 0..3 {
                let v = if square {
                    20 + noise
                } else {
                    base[c] + noise + if c == 1 { stripes } else { stripes / 2 }
                };
                out[(y * w + x) * 3 + c] = v.clamp(0, 255) as u8;
            }
        }
    }
    out
}

fn encode(rgb: &[u8], w: u32, h: u32, quality: u8, grey: bool) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    if grey {
        let g: Vec<u8> = rgb.chunks_exact(3).map(|p| p[1]).collect();
        enc.write_image(&g, w, h, image::ExtendedColorType::L8)
            .unwrap();
    } else {
        enc.write_image(rgb, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
    }
    out
}

/// zune-jpeg's RGB decode: (width, height, pixels).
fn zune(jpeg: &[u8]) -> (u32, u32, Vec<u8>) {
    use zune_jpeg::zune_core::{colorspace::ColorSpace, options::DecoderOptions};
    let opts = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(jpeg, opts);
    let px = d.decode().expect("zune-jpeg decodes the test image");
    let (w, h) = d.dimensions().unwrap();
    // zune-jpeg keeps a grey image grey whatever output colour space is asked for.
    let px = if px.len() == w * h {
        px.iter().flat_map(|&v| [v, v, v]).collect()
    } else {
        px
    };
    (w as u32, h as u32, px)
}

fn ours(jpeg: &[u8], scale: Scale) -> Frame {
    let mut f = Frame::with_capacity(0);
    MjpegDecoder::new()
        .decode(jpeg, scale, &mut f)
        .expect("decodes");
    assert_eq!(f.format, PixelFormat::Rgb);
    f
}

/// (max, mean) absolute difference.
fn diff(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let mut max = 0;
    let mut sum = 0u64;
    for (&x, &y) in a.iter().zip(b) {
        let d = x.abs_diff(y);
        max = max.max(d);
        sum += d as u64;
    }
    (max, sum as f64 / a.len().max(1) as f64)
}

/// Compare with zune-jpeg at full scale; returns (max, mean).
fn vs_zune(jpeg: &[u8], what: &str) -> (u8, f64) {
    let (w, h, want) = zune(jpeg);
    let got = ours(jpeg, Scale::Full);
    assert_eq!((got.width, got.height), (w, h), "{what}");
    let d = diff(&got.data, &want);
    println!("{what}: max {} mean {:.3}", d.0, d.1);
    d
}

fn fixture(name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/capture/mjpeg/testdata");
    std::fs::read(dir.join(name)).unwrap()
}

fn camera_frames() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples/camera");
    ["frame_0000.jpg", "frame_0001.jpg", "frame_0010.jpg"]
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect()
}

// 4:4:4 and grey differ from zune-jpeg only by IDCT and colour-conversion rounding (ours is
// f32, zune's fixed point): ±1 typically, up to 3 where two roundings add up (measured: max 3,
// mean ≤ 0.37 in colour, max 1 mean ≤ 0.03 in grey).
const MAX_444: u8 = 3;
const MEAN_444: f64 = 0.5;

#[test]
fn matches_zune_on_444_and_grey_at_several_sizes_and_qualities() {
    for (w, h) in [(1, 1), (33, 17), (17, 33), (64, 64), (641, 479)] {
        let rgb = scene(w, h, w as u32 * 7 + h as u32);
        for q in [30, 80, 95] {
            for grey in [false, true] {
                let jpeg = encode(&rgb, w as u32, h as u32, q, grey);
                let (max, mean) = vs_zune(&jpeg, &format!("{w}x{h} q{q} grey={grey}"));
                assert!(
                    max <= MAX_444 && mean <= MEAN_444,
                    "{w}x{h} q{q} grey={grey}: max {max} mean {mean}"
                );
            }
        }
    }
}

// Subsampled chroma: both upsample with the triangle ("fancy") filter, but its rounding
// differs by one level, which R and B scale by 1.4..1.8 on top of the IDCT rounding (measured:
// max 4, mean ≤ 0.47 on the camera frames and fixtures).
const MAX_SUB: u8 = 5;
const MEAN_SUB: f64 = 0.6;

#[test]
fn matches_zune_on_subsampled_and_restart_fixtures_and_camera_frames() {
    let mut cases: Vec<(String, Vec<u8>)> = [
        "s420_97x61.jpg",
        "s422_64x48.jpg",
        "s440_35x19.jpg",
        "s420_restart3_80x40.jpg",
        "s444_restart_row_97x61.jpg",
        "grey_restart2_80x40.jpg",
    ]
    .iter()
    .map(|n| (n.to_string(), fixture(n)))
    .collect();
    for (i, f) in camera_frames().into_iter().enumerate() {
        cases.push((format!("camera frame {i}"), f));
    }
    for (name, jpeg) in cases {
        let (max, mean) = vs_zune(&jpeg, &name);
        assert!(
            max <= MAX_SUB && mean <= MEAN_SUB,
            "{name}: max {max} mean {mean}"
        );
    }
}

/// The frame with its DHT tables' numbers 0 and 1 swapped: luma decoded with the chroma
/// tables and the reverse (other pixels, or an error).
fn swap_dht_numbers(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let mut p = 2;
    while p + 4 <= out.len() && out[p + 1] != 0xda {
        let len = u16::from_be_bytes([out[p + 2], out[p + 3]]) as usize;
        if out[p + 1] == 0xc4 {
            let mut t = p + 4;
            while t + 17 <= p + 2 + len {
                out[t] ^= 1;
                t += 17
                    + out[t + 1..t + 17]
                        .iter()
                        .map(|&c| c as usize)
                        .sum::<usize>();
            }
        }
        p += 2 + len;
    }
    out
}

// One decoder over frames whose Huffman tables differ (the frame's, the same swapped between
// luma and chroma, the standard ones after a frame without DHT), in turn and repeated: a table
// kept from the previous frame (an identical DHT is not rebuilt) must decode as a freshly
// built one, at every scale.
#[test]
fn a_decoder_reused_across_different_tables_matches_fresh_decoders() {
    let cams = camera_frames();
    let s420 = fixture("s420_97x61.jpg");
    let frames = [
        cams[0].clone(),
        swap_dht_numbers(&cams[0]),
        cams[0].clone(),
        s420.clone(),
        swap_dht_numbers(&s420),
        strip_dht(&cams[1]),
        cams[1].clone(),
        swap_dht_numbers(&cams[1]),
        fixture("grey_restart2_80x40.jpg"),
        cams[0].clone(),
    ];
    for scale in Scale::ALL {
        let mut dec = MjpegDecoder::new();
        let mut f = Frame::with_capacity(0);
        for (i, jpeg) in frames.iter().enumerate() {
            let reused = dec.decode(jpeg, scale, &mut f).map(|()| f.data.clone());
            let mut g = Frame::with_capacity(0);
            let fresh = MjpegDecoder::new()
                .decode(jpeg, scale, &mut g)
                .map(|()| g.data);
            assert!(
                reused == fresh,
                "frame {i} at 1/{}: a reused decoder differs from a fresh one",
                scale.divisor()
            );
        }
    }
    // The swap changes the decode (else this test would not test the tables).
    assert!(
        ours(&cams[0], Scale::Quarter).data != {
            let mut g = Frame::with_capacity(0);
            let r = MjpegDecoder::new().decode(&swap_dht_numbers(&cams[0]), Scale::Quarter, &mut g);
            r.map(|()| g.data).unwrap_or_default()
        }
    );
}

/// Remove every DHT segment (the frame then relies on the standard tables, like UVC MJPEG).
fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut p = 2;
    while p + 4 <= jpeg.len() {
        let m = jpeg[p + 1];
        let len = u16::from_be_bytes([jpeg[p + 2], jpeg[p + 3]]) as usize;
        if m == 0xda {
            out.extend_from_slice(&jpeg[p..]);
            return out;
        }
        if m != 0xc4 {
            out.extend_from_slice(&jpeg[p..p + 2 + len]);
        }
        p += 2 + len;
    }
    panic!("no SOS");
}

#[test]
fn frames_without_dht_use_the_standard_tables() {
    // Both encoders used here write the standard tables, so stripping them changes nothing.
    let rgb = scene(96, 40, 3);
    for jpeg in [
        encode(&rgb, 96, 40, 75, false),
        fixture("s420_97x61.jpg"),
        fixture("s422_64x48.jpg"),
    ] {
        let stripped = strip_dht(&jpeg);
        assert!(stripped.len() < jpeg.len() - 100, "DHT segments removed");
        assert!(!stripped.windows(2).any(|w| w == [0xff, 0xc4]));
        let mut dec = MjpegDecoder::new();
        let (mut a, mut b) = (Frame::with_capacity(0), Frame::with_capacity(0));
        dec.decode(&stripped, Scale::Full, &mut a).unwrap();
        // A frame with DHT after one without, and back: tables do not leak between frames.
        dec.decode(&jpeg, Scale::Full, &mut b).unwrap();
        assert_eq!(a.data, b.data);
        dec.decode(&stripped, Scale::Full, &mut b).unwrap();
        assert_eq!(a.data, b.data);
        let (_, _, want) = zune(&jpeg);
        assert!(diff(&a.data, &want).0 <= MAX_SUB);
    }
}

/// Average `s × s` boxes of an RGB image (partial boxes at the right and bottom edges average
/// the pixels they have).
fn box_average(px: &[u8], w: usize, h: usize, s: usize) -> Vec<u8> {
    let (ow, oh) = (w.div_ceil(s), h.div_ceil(s));
    let mut out = vec![0u8; ow * oh * 3];
    for oy in 0..oh {
        for ox in 0..ow {
            for c in 0..3 {
                let (mut sum, mut n) = (0u32, 0u32);
                for y in oy * s..((oy + 1) * s).min(h) {
                    for x in ox * s..((ox + 1) * s).min(w) {
                        sum += px[(y * w + x) * 3 + c] as u32;
                        n += 1;
                    }
                }
                out[(oy * ow + ox) * 3 + c] = ((sum + n / 2) / n) as u8;
            }
        }
    }
    out
}

// A reduced IDCT samples the block's cosine series at the centres of the coarse pixels; the
// box average integrates it. They agree on the DC exactly and differ where a block has strong
// high-frequency content inside a box (edges), where the full decode clamps to 0..255, and by
// chroma upsampling, which runs after the reduction. Measured: natural frames (the camera
// samples, the fixtures) stay within 1.3 levels on average, 38 at the worst pixel; `scene`,
// whose 3-pixel stripes and per-pixel noise put most of its energy at the highest
// frequencies, within 4 on average, 40 at worst.
const SCALED_MEAN_NATURAL: f64 = 2.0;
const SCALED_MEAN_SCENE: f64 = 5.0;
const SCALED_MAX: u8 = 64;

#[test]
fn scaled_decode_is_close_to_the_full_decode_box_averaged() {
    let mut cases: Vec<(String, Vec<u8>)> = camera_frames()
        .into_iter()
        .enumerate()
        .map(|(i, f)| (format!("camera frame {i}"), f))
        .collect();
    cases.push(("s422_64x48.jpg".into(), fixture("s422_64x48.jpg")));
    cases.push((
        "grey_restart2_80x40.jpg".into(),
        fixture("grey_restart2_80x40.jpg"),
    ));
    let rgb = scene(641, 479, 9);
    cases.push((
        "scene 641x479 q80".into(),
        encode(&rgb, 641, 479, 80, false),
    ));
    for (name, jpeg) in cases {
        let full = ours(&jpeg, Scale::Full);
        for scale in [Scale::Half, Scale::Quarter, Scale::Eighth] {
            let s = scale.divisor() as usize;
            let got = ours(&jpeg, scale);
            assert_eq!(
                (got.width, got.height),
                scale.output_size(full.width, full.height)
            );
            let want = box_average(&full.data, full.width as usize, full.height as usize, s);
            let (max, mean) = diff(&got.data, &want);
            println!("{name} 1/{s}: max {max} mean {mean:.3}");
            let mean_cap = if name.starts_with("scene") {
                SCALED_MEAN_SCENE
            } else {
                SCALED_MEAN_NATURAL
            };
            assert!(
                mean <= mean_cap && max <= SCALED_MAX,
                "{name} 1/{s}: max {max} mean {mean}"
            );
        }
    }
}

#[test]
fn output_size_and_scale_choice() {
    assert_eq!(Scale::Quarter.output_size(1920, 1080), (480, 270));
    assert_eq!(Scale::Eighth.output_size(641, 479), (81, 60));
    assert_eq!(Scale::for_min_size(1920, 1080, 224, 224), Scale::Quarter);
    assert_eq!(Scale::for_min_size(1920, 1080, 240, 135), Scale::Eighth);
    assert_eq!(Scale::for_min_size(1920, 1080, 241, 100), Scale::Quarter);
    assert_eq!(Scale::for_min_size(640, 480, 224, 224), Scale::Half);
    assert_eq!(Scale::for_min_size(640, 480, 1000, 1000), Scale::Full);
    let jpeg = fixture("s420_97x61.jpg");
    for scale in Scale::ALL {
        let f = ours(&jpeg, scale);
        assert_eq!((f.width, f.height), scale.output_size(97, 61));
        assert_eq!(f.data.len(), f.width as usize * f.height as usize * 3);
    }
}

#[test]
fn truncated_frames_are_errors() {
    for jpeg in [
        fixture("s420_restart3_80x40.jpg"),
        fixture("s422_64x48.jpg"),
        encode(&scene(40, 24, 1), 40, 24, 90, false),
    ] {
        assert!(jpeg.ends_with(&[0xff, 0xd9]));
        let mut dec = MjpegDecoder::new();
        let mut f = Frame::with_capacity(0);
        // Every cut that loses data (all but the EOI marker) is an error.
        for cut in 0..jpeg.len() - 2 {
            let r = dec.decode(&jpeg[..cut], Scale::Full, &mut f);
            assert!(r.is_err(), "cut at {cut} of {} decoded", jpeg.len());
        }
        dec.decode(&jpeg[..jpeg.len() - 2], Scale::Full, &mut f)
            .unwrap();
    }
}

#[test]
fn corrupt_frames_never_panic() {
    let originals = [
        fixture("s420_restart3_80x40.jpg"),
        fixture("s422_64x48.jpg"),
    ];
    let mut rng = 0x1234_5678u32;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng
    };
    let mut dec = MjpegDecoder::with_max_pixels(1 << 20);
    let mut f = Frame::with_capacity(0);
    let (mut ok, mut err) = (0, 0);
    for i in 0..3000 {
        let mut j = originals[i % 2].clone();
        for _ in 0..1 + next() % 4 {
            let p = next() as usize % j.len();
            j[p] = next() as u8;
        }
        for scale in [Scale::Full, Scale::Eighth] {
            match dec.decode(&j, scale, &mut f) {
                Ok(()) => ok += 1,
                Err(_) => err += 1,
            }
        }
    }
    println!("corrupt: {ok} decoded, {err} refused");
    assert!(err > 0 && ok > 0);
    // Random bytes after a start-of-image marker.
    for _ in 0..500 {
        let mut j = vec![0xff, 0xd8];
        j.extend((0..next() % 600).map(|_| next() as u8));
        let _ = dec.decode(&j, Scale::Full, &mut f);
    }
    assert_eq!(
        dec.decode(b"", Scale::Full, &mut f),
        Err(MjpegError::NotJpeg)
    );
    assert_eq!(
        dec.decode(b"\x89PNG", Scale::Full, &mut f),
        Err(MjpegError::NotJpeg)
    );
}

/// A frame header for `w × h` with components `comps` (id, sampling, table), a precision.
fn patch_sof(jpeg: &[u8], f: impl Fn(&mut [u8])) -> Vec<u8> {
    let mut j = jpeg.to_vec();
    let p = j.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    f(&mut j[p + 4..]);
    j
}

#[test]
fn unsupported_and_oversized_frames_are_named() {
    let e = MjpegDecoder::new()
        .decode(
            &fixture("progressive_35x19.jpg"),
            Scale::Full,
            &mut Frame::with_capacity(0),
        )
        .unwrap_err();
    assert!(
        matches!(e, MjpegError::Unsupported(_)) && e.to_string().contains("progressive"),
        "{e}"
    );
    let e = MjpegDecoder::new()
        .decode(
            &fixture("arithmetic_35x19.jpg"),
            Scale::Full,
            &mut Frame::with_capacity(0),
        )
        .unwrap_err();
    assert!(e.to_string().contains("arithmetic"), "{e}");
    let base = fixture("s420_97x61.jpg");
    let twelve = patch_sof(&base, |s| s[0] = 12);
    let e = ours_err(&twelve);
    assert!(e.to_string().contains("12-bit"), "{e}");
    let cmyk = patch_sof(&base, |s| s[5] = 4);
    assert!(ours_err(&cmyk).to_string().contains("CMYK"));
    let huge = patch_sof(&base, |s| {
        s[1..5].copy_from_slice(&[0xff, 0xff, 0xff, 0xff])
    });
    assert!(matches!(ours_err(&huge), MjpegError::TooLarge { .. }));
    // Within the limits but far more blocks than the data can hold: refused before any
    // buffer grows for it.
    let big = patch_sof(&base, |s| {
        s[1..5].copy_from_slice(&[0x1f, 0x40, 0x1f, 0x40])
    });
    assert!(
        matches!(ours_err(&big), MjpegError::Truncated(_)),
        "{:?}",
        ours_err(&big)
    );
    let e = MjpegDecoder::with_max_pixels(1000)
        .decode(&base, Scale::Full, &mut Frame::with_capacity(0))
        .unwrap_err();
    assert!(e.to_string().contains("97x61"), "{e}");
}

fn ours_err(jpeg: &[u8]) -> MjpegError {
    MjpegDecoder::new()
        .decode(jpeg, Scale::Full, &mut Frame::with_capacity(0))
        .unwrap_err()
}
