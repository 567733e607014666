//! The float micro-kernels against the definition, on every kernel this CPU runs (split from
//! `gemm.rs`, which holds the packing and the kernels).

use super::*;

#[test]
fn every_kernel_matches_the_definition_on_odd_shapes() {
    let mut checked = Vec::new();
    for kernel in FloatKernel::available() {
        let nr = kernel.nr();
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (13, 17, 33),
            (50, 64, 50),
            (7, 130, 40),
            // Deeper than one contraction pass (KC): the later passes continue from C.
            (5, 257, 33),
            (13, 530, 45),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) / 8.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 19) as f32 - 9.0) / 4.0)
                .collect();
            // Output with a column stride of 2 for odd n (the strided store path); sentinels
            // everywhere else.
            let cs = if n % 2 == 1 { 2 } else { 1 };
            let mut c = vec![f32::NAN; m * n * cs + 3];
            let mut panel = vec![0f32; k * nr];
            let mut packed = vec![f32::NAN; packed_lhs_len(kernel, m, k)];
            // SAFETY: a is [m, k]; packed holds packed_lhs_len values.
            unsafe {
                let lhs = Lhs {
                    ptr: a.as_ptr(),
                    rs: k,
                    ks: 1,
                };
                pack_lhs(kernel, lhs, m, k, &mut packed);
            }
            // The same operand stored transposed (a strided A, as attention reads Kᵀ)
            // packs to the same bits.
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let mut packed_t = vec![f32::NAN; packed.len()];
            // SAFETY: at is [k, m]: element (i, kk) at i + kk·m.
            unsafe {
                let lhs = Lhs {
                    ptr: at.as_ptr(),
                    rs: 1,
                    ks: m,
                };
                pack_lhs(kernel, lhs, m, k, &mut packed_t);
            }
            assert!(
                packed
                    .iter()
                    .zip(&packed_t)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{kernel:?} ({m},{k}): strided packing differs"
            );
            for (way, left) in [
                ("packed", Left::Packed(&packed)),
                (
                    "strided",
                    Left::Strided(Lhs {
                        ptr: a.as_ptr(),
                        rs: k,
                        ks: 1,
                    }),
                ),
            ] {
                c.fill(f32::NAN);
                for p in 0..n.div_ceil(nr) {
                    let cols = (n - p * nr).min(nr);
                    // SAFETY: b is [k, n]; panel holds k·nr; c holds m·n·cs.
                    unsafe {
                        let src = Rhs {
                            ptr: b.as_ptr(),
                            sk: n,
                            sn: 1,
                        };
                        pack_panel(src, k, p * nr, cols, nr, &mut panel);
                        panel_product(
                            kernel,
                            left,
                            m,
                            k,
                            &panel,
                            Out {
                                ptr: c.as_mut_ptr().add(p * nr * cs),
                                rs: n * cs,
                                cs,
                            },
                            cols,
                            std::ptr::null(),
                        );
                    }
                }
                for i in 0..m {
                    for j in 0..n {
                        let want = (0..k).fold(0f32, |s, kk| {
                            let (x, y) = (a[i * k + kk], b[kk * n + j]);
                            if kernel == FloatKernel::Scalar {
                                s + x * y
                            } else {
                                x.mul_add(y, s)
                            }
                        });
                        let got = c[i * n * cs + j * cs];
                        assert_eq!(got, want, "{kernel:?} {way} ({m},{k},{n}) at ({i},{j})");
                    }
                }
                let written = m * n;
                assert_eq!(
                    c.iter().filter(|v| !v.is_nan()).count(),
                    written,
                    "{kernel:?} {way}: writes outside C"
                );
            }
        }
        checked.push(kernel);
    }
    println!("float kernels {checked:?} match the fused multiply-add definition exactly");
}
