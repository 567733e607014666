//! int8 GEMM kernels vs an f32 matmul (tract-linalg through a one-node tract model) on the
//! linear-layer shapes of CLIP ViT-B/32 (50 tokens, width 768) and of the default bundle.
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
        let pw = PackedWeights::quantize(&w, k, n, false);
        let mut qa = vec![0u8; m * pw.kp];
        let mut acc = vec![0i32; m * n];
        g.throughput(Throughput::Elements((m * k * n) as u64));
        for kernel in Kernel::available() {
            if kernel == Kernel::Scalar && m * k * n > 10_000_000 {
                continue;
            }
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
        // f32 reference point: a straightforward blocked loop the compiler vectorises.
        let mut y = vec![0f32; m * n];
        g.bench_with_input(BenchmarkId::new("f32-naive", name), &(), |b, _| {
            b.iter(|| {
                y.fill(0.0);
                for i in 0..m {
                    for kk in 0..k {
                        let a = x[i * k + kk];
                        let row = &w[kk * n..(kk + 1) * n];
                        for (o, wv) in y[i * n..(i + 1) * n].iter_mut().zip(row) {
                            *o += a * wv;
                        }
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
