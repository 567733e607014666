//! f32 micro-kernels of the CPU plan on CLIP ViT-B/32's linear-layer shapes (50 tokens, width
//! 768), weights packed once as the plan does; throughput in multiply-adds per second, one thread.
//! `cargo bench -p edgefuse-runtime --bench float_gemm`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgefuse_runtime::plan::float_gemm::{pack_panel, panel_product, Lhs, Out, Rhs};
use edgefuse_runtime::plan::FloatKernel;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("float_gemm");
    g.sample_size(20);
    for (name, m, k, n) in [
        ("vitb32-qkv", 50usize, 768usize, 2304usize),
        ("vitb32-fc1", 50, 768, 3072),
        ("vitb32-fc2", 50, 3072, 768),
    ] {
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0)
            .collect();
        g.throughput(Throughput::Elements((m * k * n) as u64));
        for kernel in FloatKernel::available() {
            if kernel == FloatKernel::Scalar {
                continue;
            }
            let nr = kernel.nr();
            let panels = n.div_ceil(nr);
            let mut packed = vec![0f32; panels * k * nr];
            for p in 0..panels {
                let cols = (n - p * nr).min(nr);
                let src = Rhs {
                    ptr: w.as_ptr(),
                    sk: n,
                    sn: 1,
                };
                // SAFETY: w is [k, n]; each panel slice holds k·nr values.
                unsafe {
                    pack_panel(
                        src,
                        k,
                        p * nr,
                        cols,
                        nr,
                        &mut packed[p * k * nr..(p + 1) * k * nr],
                    )
                };
            }
            let mut y = vec![0f32; m * n];
            g.bench_with_input(
                BenchmarkId::new(format!("{kernel:?}"), name),
                &(),
                |b, _| {
                    b.iter(|| {
                        for p in 0..panels {
                            let cols = (n - p * nr).min(nr);
                            // SAFETY: x is [m, k]; y is [m, n]; the panel holds k·nr values.
                            unsafe {
                                panel_product(
                                    kernel,
                                    Lhs {
                                        ptr: x.as_ptr(),
                                        rs: k,
                                        ks: 1,
                                    },
                                    m,
                                    k,
                                    &packed[p * k * nr..(p + 1) * k * nr],
                                    Out {
                                        ptr: y.as_mut_ptr().add(p * nr),
                                        rs: n,
                                        cs: 1,
                                    },
                                    cols,
                                )
                            }
                        }
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
