//! int8 GEMM kernels (activation quantization + integer GEMM) on the linear-layer shapes of
//! CLIP ViT-B/32 (50 tokens, width 768) and of the default bundle; throughput in MAC/s. The
//! float comparison is end to end through tract (`edgefuse bench`, docs/BENCHMARKS.md).
//! `cargo bench -p edgefuse-models --bench int8_gemm`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgefuse_models::quant::gemm::{self, Kernel, PackedWeights};

fn shapes() -> Vec<(&'static str, usize, usize, usize)> {
    vec![
        ("vitb32-qkv", 50, 768, 2304),
        ("vitb32-fc1", 50, 768, 3072),
        ("vitb32-fc2", 50, 3072, 768),
        ("default-fc1", 17, 96, 384),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("int8_gemm");
    g.sample_size(20);
    for (name, m, k, n) in shapes() {
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0)
            .collect();
        g.throughput(Throughput::Elements((m * k * n) as u64));
        for kernel in Kernel::available() {
            if kernel == Kernel::Scalar && m * k * n > 10_000_000 {
                continue;
            }
            // Each kernel with the weights it runs on (7-bit for AVX2, 8-bit otherwise).
            let pw = PackedWeights::quantize_for(kernel, &w, k, n, false);
            let mut qa = vec![0u8; m * pw.kp];
            let mut acc = vec![0i32; m * n];
            g.bench_with_input(
                BenchmarkId::new(format!("{kernel:?}"), name),
                &(),
                |b, _| {
                    b.iter(|| {
                        gemm::quantize_activations(&x, m, k, pw.kp, 0.01, &mut qa);
                        gemm::gemm(kernel, &qa, m, &pw, &mut acc);
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
