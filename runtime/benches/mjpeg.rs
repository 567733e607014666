//! MJPEG decoding: a 1920×1080 camera-like frame (quality 80) decoded by zune-jpeg (full size,
//! RGB, allocating its output) and by our [`MjpegDecoder`] at 1/1, 1/2, 1/4 and 1/8 into a
//! reused frame. The frame is encoded at start by the `image` crate (4:4:4, what
//! `synthetic://?format=mjpeg` produces) and, when libjpeg-turbo's `cjpeg` is installed, also
//! 4:2:0 (what most UVC cameras send; skipped with a note otherwise).
//!
//! Two dense cases, where the entropy decoding dominates at reduced scales: a 1920×1080 frame
//! with fine texture and sensor-like noise at quality 90 (about 1.5 bit/px, the density of a
//! real UVC camera's 1080p MJPEG; 4:2:0 by `cjpeg`, else the `image` crate's 4:4:4), and the
//! repository's real camera frame `models/samples/camera/frame_0001.jpg` (640×480 4:2:0,
//! 1.8 bit/px).
//!
//! `cargo bench -p edgefuse-runtime --bench mjpeg`

use criterion::{criterion_group, criterion_main, Criterion};

mod common;
use common::clip_spec;

use edgefuse_runtime::capture::mjpeg::{MjpegDecoder, Scale};
use edgefuse_runtime::capture::synthetic::render;
use edgefuse_runtime::frame::{Frame, PixelFormat};
use edgefuse_runtime::preprocess::Preprocessor;

const W: u32 = 1920;
const H: u32 = 1080;

/// A natural-looking frame: the synthetic scene with texture and sensor-like noise, so that
/// blocks carry AC coefficients like a real camera's (a flat frame would flatter a decoder).
/// `fine` adds high-frequency texture and `noise` is the noise's peak-to-peak amplitude.
fn camera_like(fine: f32, noise: u32) -> Vec<u8> {
    let mut rgb = render(W, H, PixelFormat::Rgb, 3, "bench").data;
    let mut rng = 0x9e37_79b9u32;
    for (i, p) in rgb.iter_mut().enumerate() {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let (x, y) = ((i / 3) as u32 % W, (i / 3) as u32 / W);
        let (xf, yf) = (x as f32, y as f32);
        let texture = ((xf * 0.07).sin() + (yf * 0.05).cos()) * 18.0
            + ((xf * 0.9 + yf * 0.3).sin() * (yf * 0.45).cos() + (xf * 0.21).sin()) * fine;
        let n = (rng % (noise + 1)) as i32 - (noise / 2) as i32;
        *p = (*p as i32 + texture as i32 + n).clamp(0, 255) as u8;
    }
    rgb
}

fn encode(rgb: &[u8], quality: u8) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(rgb, W, H, image::ExtendedColorType::Rgb8)
        .expect("encode");
    out
}

/// The frame encoded 4:2:0 by `cjpeg`, when it is installed.
fn encode_420(rgb: &[u8], quality: u8) -> Option<Vec<u8>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("cjpeg")
        .args(["-quality", &quality.to_string(), "-sample", "2x2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let mut ppm = format!("P6\n{W} {H}\n255\n").into_bytes();
    ppm.extend_from_slice(rgb);
    let writer = std::thread::spawn(move || stdin.write_all(&ppm));
    let out = child.wait_with_output().ok()?;
    writer.join().ok()?.ok()?;
    out.status.success().then_some(out.stdout)
}

fn describe(what: &str, jpeg: &[u8], w: u32, h: u32) {
    eprintln!(
        "{what}: {} bytes ({:.2} bits/pixel)",
        jpeg.len(),
        jpeg.len() as f64 * 8.0 / (w * h) as f64
    );
}

fn bench(c: &mut Criterion) {
    let rgb = camera_like(0.0, 8);
    let mut cases = vec![("444", encode(&rgb, 80))];
    match encode_420(&rgb, 80) {
        Some(j) => cases.push(("420", j)),
        None => eprintln!("cjpeg not installed: the 4:2:0 case is skipped"),
    }
    for (name, jpeg) in cases {
        describe(&format!("1920x1080 q80 {name}"), &jpeg, W, H);
        group(
            c,
            &format!("mjpeg_1920x1080_q80_{name}"),
            &jpeg,
            &Scale::ALL,
        );
    }

    let dense = camera_like(8.0, 12);
    let (name, jpeg) = match encode_420(&dense, 90) {
        Some(j) => ("420", j),
        None => {
            eprintln!("cjpeg not installed: the dense frame is the image crate's 4:4:4");
            ("444", encode(&dense, 90))
        }
    };
    describe(&format!("1920x1080 dense q90 {name}"), &jpeg, W, H);
    group(
        c,
        &format!("mjpeg_1920x1080_dense_q90_{name}"),
        &jpeg,
        &[Scale::Full, Scale::Quarter],
    );

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/samples/camera/frame_0001.jpg"
    );
    match std::fs::read(path) {
        Ok(jpeg) => {
            describe("camera frame_0001.jpg 640x480", &jpeg, 640, 480);
            group(
                c,
                "mjpeg_camera_frame_0001_640x480",
                &jpeg,
                &[Scale::Full, Scale::Quarter],
            );
        }
        Err(e) => eprintln!("{path}: {e}: the camera-frame case is skipped"),
    }
}

fn group(c: &mut Criterion, name: &str, jpeg: &[u8], scales: &[Scale]) {
    let mut g = c.benchmark_group(name);
    g.bench_function("zune-jpeg 1/1", |b| {
        b.iter(|| {
            use zune_jpeg::zune_core::{colorspace::ColorSpace, options::DecoderOptions};
            let opts = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
            let mut d = zune_jpeg::JpegDecoder::new_with_options(jpeg, opts);
            d.decode().expect("zune decodes")
        })
    });
    let mut dec = MjpegDecoder::new();
    let mut frame = Frame::with_capacity(0);
    for &scale in scales {
        g.bench_function(format!("ours 1/{}", scale.divisor()), |b| {
            b.iter(|| dec.decode(jpeg, scale, &mut frame).expect("decodes"))
        });
    }
    // What the pipeline does with a 1920x1080 camera frame for a 224x224 model (issue 18's
    // target, ≤ 4 ms on one core): decode at 1/4 (the largest scale still ≥ 224 on the short
    // side) and preprocess the 480x270 frame, one core.
    if scales.contains(&Scale::Quarter) {
        let mut pre = Preprocessor::new(&clip_spec(224));
        let mut out = vec![0.0f32; pre.output_len()];
        g.bench_function("ours 1/4 + preprocess to 224x224", |b| {
            b.iter(|| {
                dec.decode(jpeg, Scale::Quarter, &mut frame)
                    .expect("decodes");
                pre.run(&frame, &mut out).expect("preprocesses");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
