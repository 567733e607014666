//! MJPEG decoding: a 1920×1080 camera-like frame (quality 80) decoded by zune-jpeg (full size,
//! RGB, allocating its output) and by our [`MjpegDecoder`] at 1/1, 1/2, 1/4 and 1/8 into a
//! reused frame. The frame is encoded at start by the `image` crate (4:4:4, what
//! `synthetic://?format=mjpeg` produces) and, when libjpeg-turbo's `cjpeg` is installed, also
//! 4:2:0 (what most UVC cameras send; skipped with a note otherwise).
//!
//! `cargo bench -p edgefuse-runtime --bench mjpeg`

use criterion::{criterion_group, criterion_main, Criterion};

use edgefuse_runtime::capture::mjpeg::{MjpegDecoder, Scale};
use edgefuse_runtime::capture::synthetic::render;
use edgefuse_runtime::frame::{Frame, PixelFormat};

const W: u32 = 1920;
const H: u32 = 1080;

/// A natural-looking frame: the synthetic scene with texture and sensor-like noise, so that
/// blocks carry AC coefficients like a real camera's (a flat frame would flatter a decoder).
fn camera_like() -> Vec<u8> {
    let mut rgb = render(W, H, PixelFormat::Rgb, 3, "bench").data;
    let mut rng = 0x9e37_79b9u32;
    for (i, p) in rgb.iter_mut().enumerate() {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let (x, y) = ((i / 3) as u32 % W, (i / 3) as u32 / W);
        let texture = (((x as f32 * 0.07).sin() + (y as f32 * 0.05).cos()) * 18.0) as i32;
        let noise = (rng % 9) as i32 - 4;
        *p = (*p as i32 + texture + noise).clamp(0, 255) as u8;
    }
    rgb
}

fn encode(rgb: &[u8]) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .write_image(rgb, W, H, image::ExtendedColorType::Rgb8)
        .expect("encode");
    out
}

/// The frame encoded 4:2:0 by `cjpeg`, when it is installed.
fn encode_420(rgb: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("cjpeg")
        .args(["-quality", "80", "-sample", "2x2"])
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

fn bench(c: &mut Criterion) {
    let rgb = camera_like();
    let mut cases = vec![("444", encode(&rgb))];
    match encode_420(&rgb) {
        Some(j) => cases.push(("420", j)),
        None => eprintln!("cjpeg not installed: the 4:2:0 case is skipped"),
    }
    for (name, jpeg) in cases {
        eprintln!(
            "1920x1080 q80 {name}: {} bytes ({:.2} bits/pixel)",
            jpeg.len(),
            jpeg.len() as f64 * 8.0 / (W * H) as f64
        );
        group(c, name, &jpeg);
    }
}

fn group(c: &mut Criterion, name: &str, jpeg: &[u8]) {
    let mut g = c.benchmark_group(format!("mjpeg_1920x1080_q80_{name}"));
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
    for scale in Scale::ALL {
        g.bench_function(format!("ours 1/{}", scale.divisor()), |b| {
            b.iter(|| dec.decode(jpeg, scale, &mut frame).expect("decodes"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
