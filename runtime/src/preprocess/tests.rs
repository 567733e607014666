//! Tests of the CPU preprocessor against the 2-D reference.

use super::*;
use crate::capture::synthetic::render;

fn spec(w: u32, h: u32, resize: ResizePolicy, order: ChannelOrder) -> Preprocess {
    Preprocess {
        image_size: [w, h],
        resize,
        mean: [0.48145466, 0.4578275, 0.40821073],
        std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        channel_order: order,
    }
}

/// Pixels scaled to 0..=1 only (mean 0, std 1), shortest side + centre crop.
fn unit_spec(size: u32) -> Preprocess {
    Preprocess {
        image_size: [size, size],
        resize: ResizePolicy::ShortestSideCenterCrop,
        mean: [0.0; 3],
        std: [1.0; 3],
        channel_order: ChannelOrder::Rgb,
    }
}

fn mean_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every SIMD level this CPU runs (printed, so a log shows which were checked).
fn levels() -> Vec<Simd> {
    let all = [Simd::Baseline, Simd::Avx2, Simd::Avx512];
    let (run, skip): (Vec<Simd>, Vec<Simd>) = all.into_iter().partition(|s| s.supported());
    if !skip.is_empty() {
        println!(
            "preprocess: SIMD levels {:?} not checked: this CPU lacks them",
            skip.iter().map(|s| s.name()).collect::<Vec<_>>()
        );
    }
    run
}

/// A frame of `format` whose RGB content is `rgb(x, y)`, through the same colour conversion a
/// camera would apply (YUV formats: BT.601 limited range, chroma subsampled).
fn frame_from(w: u32, h: u32, format: PixelFormat, rgb: impl Fn(usize, usize) -> [u8; 3]) -> Frame {
    let mut f = Frame::with_capacity(0);
    assert!(f.reshape(w, h, format));
    let (w, h) = (w as usize, h as usize);
    let yuv = |p: [u8; 3]| {
        let [r, g, b] = p.map(|v| v as f32);
        let y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b;
        let u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b;
        let v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b;
        [y, u, v].map(|c| c.round().clamp(0.0, 255.0) as u8)
    };
    for y in 0..h {
        for x in 0..w {
            let p = rgb(x, y);
            match format {
                PixelFormat::Rgb => f.data[(y * w + x) * 3..][..3].copy_from_slice(&p),
                PixelFormat::Bgr => {
                    f.data[(y * w + x) * 3..][..3].copy_from_slice(&[p[2], p[1], p[0]])
                }
                PixelFormat::Grey => f.data[y * w + x] = yuv(p)[0],
                PixelFormat::Yuyv => {
                    let [yy, u, v] = yuv(p);
                    f.data[(y * w + x) * 2] = yy;
                    if x % 2 == 0 {
                        f.data[(y * w + x) * 2 + 1] = u;
                        f.data[(y * w + x) * 2 + 3] = v;
                    }
                }
                PixelFormat::Nv12 => {
                    let [yy, u, v] = yuv(p);
                    f.data[y * w + x] = yy;
                    if x % 2 == 0 && y % 2 == 0 {
                        f.data[w * h + (y / 2) * w + x] = u;
                        f.data[w * h + (y / 2) * w + x + 1] = v;
                    }
                }
            }
        }
    }
    f
}

/// A photo-like frame: smooth shading, edges of several orientations, fine texture and thin
/// lines (what a camera sees), deterministic.
fn scene(w: u32, h: u32, format: PixelFormat) -> Frame {
    frame_from(w, h, format, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let disc = ((fx - 0.4).powi(2) + (fy - 0.55).powi(2)).sqrt() < 0.22;
        let stripes = ((x / 3 + y / 5) % 4) as f32 * 12.0;
        let line = x % 97 < 2 || y % 61 == 0;
        let r = if disc { 200.0 } else { 60.0 + 120.0 * fx } + stripes;
        let g = if line { 20.0 } else { 90.0 + 100.0 * fy };
        let b = 128.0 + 100.0 * ((fx * 17.0).sin() * (fy * 11.0).cos());
        [r, g, b].map(|c| c.clamp(0.0, 255.0) as u8)
    })
}

fn run_at(p: &mut Preprocessor, frame: &Frame, simd: Simd) -> Vec<f32> {
    assert!(p.set_simd(simd));
    let mut out = vec![0.0; p.output_len()];
    p.run(frame, &mut out).unwrap();
    out
}

#[test]
fn matches_reference_for_every_format_policy_and_simd_level() {
    let levels = levels();
    let mut worst = [0.0f32; 2];
    let mut worst_mean = 0.0f32;
    let mut cases = Vec::new();
    for (sw, sh) in [(64, 48), (40, 60), (32, 32), (20, 14), (130, 98), (66, 250)] {
        cases.push((sw, sh, 32, 24, false));
    }
    // Large downscales of photo-like frames (the bench's shapes, smaller).
    for (sw, sh, o) in [
        (640, 480, 32),
        (1280, 720, 224),
        (962, 540, 96),
        (334, 252, 24),
    ] {
        cases.push((sw, sh, o, o, true));
    }
    for format in PixelFormat::ALL {
        for &(sw, sh, ow, oh, photo) in &cases {
            for (resize, order) in [
                (ResizePolicy::ShortestSideCenterCrop, ChannelOrder::Rgb),
                (ResizePolicy::Stretch, ChannelOrder::Bgr),
            ] {
                let frame = if photo {
                    scene(sw, sh, format)
                } else {
                    render(sw, sh, format, 3, "synthetic://")
                };
                let s = spec(ow, oh, resize, order);
                let r = reference(&frame, &s);
                let mut p = Preprocessor::new(&s);
                let base = run_at(&mut p, &frame, Simd::Baseline);
                let d = max_diff(&base, &r);
                worst[yuv(format) as usize] = worst[yuv(format) as usize].max(d);
                let m = mean_diff(&base, &r);
                worst_mean = worst_mean.max(m);
                assert!(
                    m < YUV_MEAN_TOLERANCE,
                    "{format:?} {sw}x{sh}: mean diff {m}"
                );
                assert!(
                    d < tolerance(format),
                    "{format:?} {sw}x{sh} -> {ow}x{oh} {resize:?}: max diff {d}"
                );
                for &simd in &levels {
                    let out = run_at(&mut p, &frame, simd);
                    assert!(
                        out == base,
                        "{format:?} {sw}x{sh} {resize:?}: {} differs from baseline",
                        simd.name()
                    );
                }
            }
        }
    }
    println!(
        "largest difference from the reference: RGB/BGR/grey {:.2e}, YUYV/NV12 {:.4} (tolerance {YUV_TOLERANCE}); largest mean difference {worst_mean:.2e} (tolerance {YUV_MEAN_TOLERANCE})",
        worst[0], worst[1]
    );
}

fn yuv(format: PixelFormat) -> bool {
    matches!(format, PixelFormat::Yuyv | PixelFormat::Nv12)
}

/// RGB, BGR and grey are exact to float rounding; YUV within [`YUV_TOLERANCE`].
fn tolerance(format: PixelFormat) -> f32 {
    if yuv(format) {
        YUV_TOLERANCE
    } else {
        1e-4
    }
}

#[test]
fn colours_outside_the_gamut_clamp_after_filtering() {
    // Random bytes: RGB and grey are still exact; random YUV triples are mostly outside the RGB
    // gamut, where the reference clamps each pixel before filtering and the fast path clamps
    // the filtered value. Both stay in range; the difference is reported, not hidden.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let s = spec(
        24,
        24,
        ResizePolicy::ShortestSideCenterCrop,
        ChannelOrder::Rgb,
    );
    let lo: Vec<f32> = (0..3).map(|c| -s.mean[c] / s.std[c]).collect();
    let hi: Vec<f32> = (0..3).map(|c| (1.0 - s.mean[c]) / s.std[c]).collect();
    for format in PixelFormat::ALL {
        let mut frame = Frame::with_capacity(0);
        assert!(frame.reshape(96, 64, format));
        for b in frame.data.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = (state >> 24) as u8;
        }
        let mut p = Preprocessor::new(&s);
        let mut out = vec![0.0; p.output_len()];
        p.run(&frame, &mut out).unwrap();
        let d = max_diff(&out, &reference(&frame, &s));
        println!("random {format:?}: max difference from the reference {d:.4}");
        if matches!(
            format,
            PixelFormat::Rgb | PixelFormat::Bgr | PixelFormat::Grey
        ) {
            assert!(d < 1e-4, "{format:?}: {d}");
        }
        for (c, plane) in out.chunks(24 * 24).enumerate() {
            assert!(
                plane
                    .iter()
                    .all(|v| *v >= lo[c] - 1e-4 && *v <= hi[c] + 1e-4),
                "{format:?} channel {c} out of range"
            );
        }
    }
}

#[test]
fn region_of_interest_matches_the_reference_on_that_region() {
    for format in PixelFormat::ALL {
        for roi in [
            "13,7,101,77",
            "0.25,0.1,0.5,0.8",
            "1,1,33,19",
            "0,0,640,480",
            "5,3,1,1",
        ] {
            let frame = scene(640, 480, format);
            let s = spec(
                24,
                24,
                ResizePolicy::ShortestSideCenterCrop,
                ChannelOrder::Rgb,
            );
            let roi: Roi = roi.parse().unwrap();
            let rect = roi.resolve(640, 480).unwrap();
            let mut p = Preprocessor::new(&s);
            p.set_roi(Some(roi));
            let mut out = vec![0.0; p.output_len()];
            p.run(&frame, &mut out).unwrap();
            let d = max_diff(&out, &reference_in(&frame, &s, rect));
            assert!(d < tolerance(format), "{format:?} roi {roi}: max diff {d}");
        }
    }
    // A region that does not fit this frame is an error naming it, not a panic.
    let s = spec(24, 24, ResizePolicy::Stretch, ChannelOrder::Rgb);
    let mut p = Preprocessor::new(&s);
    p.set_roi(Some("600,400,100,100".parse().unwrap()));
    let mut out = vec![0.0; p.output_len()];
    let e = p
        .run(&scene(640, 480, PixelFormat::Yuyv), &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("600,400,100,100") && e.contains("640x480"),
        "{e}"
    );
    // The same preprocessor accepts the region once frames are large enough.
    p.run(&scene(800, 600, PixelFormat::Yuyv), &mut out)
        .unwrap();
}

#[test]
fn a_worker_pool_gives_the_same_tensor() {
    let pool = Arc::new(Pool::new(3).unwrap());
    for format in [PixelFormat::Yuyv, PixelFormat::Nv12, PixelFormat::Rgb] {
        for (w, h, out) in [(1280, 720, 224), (640, 480, 32), (98, 62, 24)] {
            let frame = scene(w, h, format);
            let s = spec(
                out,
                out,
                ResizePolicy::ShortestSideCenterCrop,
                ChannelOrder::Rgb,
            );
            let mut p = Preprocessor::new(&s);
            let mut one = vec![0.0; p.output_len()];
            p.run(&frame, &mut one).unwrap();
            p.set_pool(Some(pool.clone()));
            let mut many = vec![1.0; p.output_len()];
            p.run(&frame, &mut many).unwrap();
            assert!(
                one == many,
                "{format:?} {w}x{h} -> {out}: threads changed the result"
            );
        }
    }
}

#[test]
fn identity_when_sizes_match() {
    let frame = render(16, 16, PixelFormat::Rgb, 1, "x");
    let s = unit_spec(16);
    let mut p = Preprocessor::new(&s);
    let mut out = vec![0.0; p.output_len()];
    p.run(&frame, &mut out).unwrap();
    for y in 0..16 {
        for x in 0..16 {
            for c in 0..3 {
                let want = frame.data[(y * 16 + x) * 3 + c] as f32 / 255.0;
                assert!((out[c * 256 + y * 16 + x] - want).abs() < 1e-6);
            }
        }
    }
}

#[test]
fn centre_crop_geometry_matches_clip() {
    // 640x480 -> shortest side 224 -> 299x224 -> crop offset 38 (torchvision rounding).
    assert_eq!(
        geometry(640, 480, 224, 224, ResizePolicy::ShortestSideCenterCrop),
        (299, 224, 38, 0)
    );
    assert_eq!(
        geometry(28, 28, 32, 32, ResizePolicy::ShortestSideCenterCrop),
        (32, 32, 0, 0)
    );
}

#[test]
fn broken_frame_is_an_error_not_a_panic() {
    let mut frame = render(16, 16, PixelFormat::Yuyv, 0, "cam");
    frame.data.truncate(100);
    let s = spec(
        8,
        8,
        ResizePolicy::ShortestSideCenterCrop,
        ChannelOrder::Rgb,
    );
    let mut p = Preprocessor::new(&s);
    let mut out = vec![0.0; p.output_len()];
    let e = p.run(&frame, &mut out).unwrap_err();
    assert!(e.to_string().contains("100 bytes"), "{e}");
    frame.width = 15; // odd width is invalid for YUYV
    assert!(p.run(&frame, &mut out).is_err());
}

#[test]
fn thin_stroke_survives_large_downscale() {
    // A 2-pixel dark line on white at 640x480 must still darken the 32x32 output.
    let mut frame = Frame::with_capacity(0);
    frame.reshape(640, 480, PixelFormat::Grey);
    frame.data.fill(255);
    for y in 0..480 {
        frame.data[y * 640 + 320] = 0;
        frame.data[y * 640 + 321] = 0;
    }
    let s = unit_spec(32);
    let mut p = Preprocessor::new(&s);
    let mut out = vec![0.0; p.output_len()];
    p.run(&frame, &mut out).unwrap();
    let min = out[..1024].iter().cloned().fold(1.0, f32::min);
    assert!(min < 0.95, "line vanished: min {min}");
}
