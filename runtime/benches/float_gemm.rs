//! f32 micro-kernels of the CPU plan on CLIP ViT-B/32's linear-layer shapes (50 tokens, width
//! 768), weights packed once as the plan does, the activations packed per call (as the plan
//! does per step); throughput in multiply-adds per second, one thread.
//! `cargo bench -p edgefuse-runtime --bench float_gemm`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgefuse_runtime::plan::float_gemm::{
    pack_lhs, pack_panel, packed_lhs_len, panel_product, Left, Lhs, Out, Rhs,
};
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
            // Hot: the same weights every call (in the caches). Cold: a different copy each call,
            // 512 MiB in all, more than any last-level cache, as a model's layers stream theirs.
            let copies = (512 << 20) / (packed.len() * 4);
            let cold: Vec<Vec<f32>> = (0..copies).map(|_| packed.clone()).collect();
            for (case, sets) in [("", std::slice::from_ref(&packed)), ("-cold", &cold[..])] {
                let mut next = 0;
                g.bench_with_input(
                    BenchmarkId::new(format!("{kernel:?}"), format!("{name}{case}")),
                    &(),
                    |b, _| {
                        let mut lhs = vec![0f32; packed_lhs_len(kernel, m, k)];
                        b.iter(|| {
                            let packed = &sets[next % sets.len()];
                            next += 1;
                            // SAFETY: x is [m, k]; lhs holds packed_lhs_len values.
                            unsafe {
                                let src = Lhs {
                                    ptr: x.as_ptr(),
                                    rs: k,
                                    ks: 1,
                                };
                                pack_lhs(kernel, src, m, k, &mut lhs);
                            }
                            for p in 0..panels {
                                let cols = (n - p * nr).min(nr);
                                // SAFETY: x is [m, k]; y is [m, n]; the panel holds k·nr values.
                                unsafe {
                                    panel_product(
                                        kernel,
                                        Left::Packed(&lhs),
                                        m,
                                        k,
                                        &packed[p * k * nr..(p + 1) * k * nr],
                                        Out {
                                            ptr: y.as_mut_ptr().add(p * nr),
                                            rs: n,
                                            cs: 1,
                                        },
                                        cols,
                                        packed.as_ptr().wrapping_add((p + 1) * k * nr),
                                    )
                                }
                            }
                        })
                    },
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
