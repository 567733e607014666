//! Preprocessing throughput: camera frame → normalised CHW tensor, one core unless named.
//!
//! `cargo bench -p edgefuse-runtime --bench preprocess`
//!
//! For each case: `read` (summing the bytes the crop covers once: the memory limit), the
//! preprocessor at every SIMD level this CPU runs, and at the best level on a pool of every core.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};

mod common;
use common::clip_spec;

use edgefuse_runtime::capture::synthetic::render;
use edgefuse_runtime::frame::{Frame, PixelFormat};
use edgefuse_runtime::plan::{available_threads, Pool};
use edgefuse_runtime::preprocess::{Preprocessor, Simd};

/// Sum of the bytes under the centre square crop (rows of the crop's columns): one read of what
/// preprocessing must read at least.
fn read_crop(frame: &Frame) -> u64 {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let side = w.min(h);
    let x0 = (w - side) / 2;
    let bpp = frame.data.len() / (w * h);
    let mut sum = 0u64;
    for y in 0..side.min(h) {
        let row = &frame.data[(y * w + x0) * bpp..(y * w + x0 + side) * bpp];
        sum += row.iter().map(|&b| b as u64).sum::<u64>();
    }
    sum
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("yuyv_1920x1080_to_224", 1920, 1080, PixelFormat::Yuyv, 224),
        ("yuyv_1920x1080_to_32", 1920, 1080, PixelFormat::Yuyv, 32),
        ("nv12_1280x720_to_224", 1280, 720, PixelFormat::Nv12, 224),
        ("yuyv_640x480_to_32", 640, 480, PixelFormat::Yuyv, 32),
        ("rgb_1920x1080_to_224", 1920, 1080, PixelFormat::Rgb, 224),
    ];
    let pool = Arc::new(Pool::new(0).expect("worker pool"));
    for (name, w, h, format, size) in cases {
        let frame = render(w, h, format, 1, "bench");
        let mut g = c.benchmark_group(name);
        g.bench_function("read", |b| {
            b.iter(|| read_crop(std::hint::black_box(&frame)))
        });
        let mut p = Preprocessor::new(&clip_spec(size));
        let mut out = vec![0.0f32; p.output_len()];
        for simd in [Simd::Baseline, Simd::Avx2, Simd::Avx512] {
            if p.set_simd(simd) {
                g.bench_function(simd.name(), |b| {
                    b.iter(|| p.run(std::hint::black_box(&frame), &mut out).unwrap())
                });
            }
        }
        p.set_simd(Simd::detect());
        p.set_pool(Some(pool.clone()));
        g.bench_function(
            format!("{} x{} threads", Simd::detect().name(), available_threads()),
            |b| b.iter(|| p.run(std::hint::black_box(&frame), &mut out).unwrap()),
        );
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
