//! Preprocessing throughput: camera frame → normalised CHW tensor.
//!
//! `cargo bench -p edgefuse-runtime --bench preprocess`

use criterion::{criterion_group, criterion_main, Criterion};

use edgefuse_models::manifest::{ChannelOrder, Preprocess, ResizePolicy};
use edgefuse_runtime::capture::synthetic::render;
use edgefuse_runtime::frame::PixelFormat;
use edgefuse_runtime::preprocess::Preprocessor;

fn spec(size: u32) -> Preprocess {
    Preprocess {
        image_size: [size, size],
        resize: ResizePolicy::ShortestSideCenterCrop,
        mean: [0.48145466, 0.4578275, 0.40821073],
        std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        channel_order: ChannelOrder::Rgb,
    }
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("yuyv_1920x1080_to_224", 1920, 1080, PixelFormat::Yuyv, 224),
        ("nv12_1280x720_to_224", 1280, 720, PixelFormat::Nv12, 224),
        (
            "yuyv_640x480_to_32 (default bundle)",
            640,
            480,
            PixelFormat::Yuyv,
            32,
        ),
        (
            "yuyv_1920x1080_to_32 (default bundle)",
            1920,
            1080,
            PixelFormat::Yuyv,
            32,
        ),
    ];
    for (name, w, h, format, size) in cases {
        let frame = render(w, h, format, 1, "bench");
        let mut p = Preprocessor::new(&spec(size));
        let mut out = vec![0.0f32; p.output_len()];
        c.bench_function(name, |b| {
            b.iter(|| p.run(std::hint::black_box(&frame), &mut out).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
