//! The int8 kernels and quantizers against their scalar definitions (split from `mod.rs`, which
//! holds the packing, the dispatch and the definitions).

use super::*;

/// A small deterministic generator (no dependency).
fn lcg(seed: &mut u64) -> u32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*seed >> 33) as u32
}

#[test]
fn row_blocks_are_even_and_cover_every_row() {
    for m in 0..60 {
        for max in [1, 4, 6, 12] {
            let b: Vec<_> = row_blocks(m, max).collect();
            let mut next = 0;
            for &(s, r) in &b {
                assert_eq!(s, next);
                assert!(r <= max);
                next += r;
            }
            assert_eq!(next, m, "m={m} max={max}");
            let (lo, hi) = (
                b.iter().map(|x| x.1).min().unwrap(),
                b.iter().map(|x| x.1).max().unwrap(),
            );
            assert!(hi - lo <= 1, "{b:?}");
        }
    }
    assert_eq!(row_blocks(50, 12).map(|b| b.1).collect::<Vec<_>>(), [10; 5]);
}

#[test]
fn every_kernel_matches_the_reference_exactly_on_odd_shapes() {
    let mut seed = 7u64;
    let shapes = [
        (1, 1, 1),
        (1, 4, 8),
        (3, 5, 7),
        (4, 64, 16),
        (5, 33, 17),
        (13, 12, 33),
        (17, 96, 288),
        (25, 20, 65),
        (50, 768, 40),
        (7, 130, 9),
        // Whole AMX tiles (K a multiple of 64), one and two 16-row blocks, with and without
        // leftover rows and columns.
        (16, 64, 32),
        (33, 128, 70),
        (64, 192, 96),
    ];
    let mut checked = Vec::new();
    for qmax in [WEIGHT_MAX_7BIT, WEIGHT_MAX_8BIT] {
        for (m, k, n) in shapes {
            // Extreme values included: activations 0 and 255 (±127 and −128 offset), the
            // largest weights of both signs.
            let qw: Vec<i8> = (0..k * n)
                .map(|i| {
                    if i % 11 == 0 {
                        qmax
                    } else if i % 13 == 0 {
                        -qmax
                    } else {
                        ((lcg(&mut seed) % (2 * qmax as u32 + 1)) as i32 - i32::from(qmax)) as i8
                    }
                })
                .collect();
            let w = PackedWeights::pack(k, n, qmax, |kk, nn| qw[kk * n + nn], vec![1.0; n]);
            let kp = w.kp;
            let mut a = vec![128u8; m * kp];
            for i in 0..m {
                for kk in 0..k {
                    a[i * kp + kk] = match (i + kk) % 9 {
                        0 => 255,
                        1 => 1,
                        _ => (lcg(&mut seed) % 255 + 1) as u8,
                    };
                }
            }
            // Definition, independent of the packing.
            let mut want = vec![0i32; m * n];
            for i in 0..m {
                for nn in 0..n {
                    want[i * n + nn] = (0..k)
                        .map(|kk| (i32::from(a[i * kp + kk]) - 128) * i32::from(qw[kk * n + nn]))
                        .sum();
                }
            }
            for kernel in Kernel::available() {
                if !w.fits(kernel) {
                    continue;
                }
                // Sentinels around the output catch writes past `m × n`.
                let mut got = vec![i32::MIN; m * n + 8];
                gemm(kernel, &a, m, &w, &mut got[..m * n]);
                assert_eq!(
                    &got[..m * n],
                    &want[..],
                    "{kernel:?} m={m} k={k} n={n} ±{qmax}"
                );
                assert!(got[m * n..].iter().all(|&v| v == i32::MIN));
                // Split by column panels (how threads divide a product): each part writes
                // its own columns only, and together they give the same result.
                let mut split = vec![i32::MIN; m * n];
                let cut = w.panels() / 2;
                gemm_panels(kernel, &a, m, &w, &mut split, 0..cut);
                for i in 0..m {
                    let first = (cut * PANEL).min(n);
                    assert!(split[i * n + first..(i + 1) * n]
                        .iter()
                        .all(|&v| v == i32::MIN));
                }
                gemm_panels(kernel, &a, m, &w, &mut split, cut..w.panels());
                assert_eq!(
                    split, want,
                    "{kernel:?} split at panel {cut}, m={m} k={k} n={n}"
                );
                if !checked.contains(&kernel) {
                    checked.push(kernel);
                }
            }
        }
    }
    println!(
        "int8 gemm kernels {checked:?} match the scalar reference exactly (7- and 8-bit weights)"
    );
    #[cfg(target_arch = "x86_64")]
    for (feature, kernel) in [
        ("avxvnni", Kernel::AvxVnni),
        ("avx512vnni", Kernel::Avx512Vnni),
        ("amx_int8 (with the OS's tile permission)", Kernel::Amx),
    ] {
        if !checked.contains(&kernel) {
            println!("{kernel:?} not checked: this CPU has no {feature}");
        }
    }
    #[cfg(target_arch = "aarch64")]
    if !checked.contains(&Kernel::Sdot) {
        println!("Sdot not checked: this CPU has no dotprod (run under qemu-aarch64 -cpu max)");
    }
}

#[test]
fn avx2_refuses_8bit_weights() {
    let w = PackedWeights::pack(4, 1, 127, |_, _| 127, vec![1.0]);
    assert!(!w.fits(Kernel::Avx2) && w.fits(Kernel::Scalar));
    let r = std::panic::catch_unwind(|| {
        let mut acc = [0i32; 1];
        gemm(Kernel::Avx2, &[128; 4], 1, &w, &mut acc);
    });
    assert!(r.is_err());
}

#[test]
fn quantization_round_trips_within_half_a_step() {
    let (k, n) = (6, 3);
    let w: Vec<f32> = (0..k * n).map(|i| (i as f32 - 8.0) * 0.25).collect();
    for kernel in [Kernel::Scalar, Kernel::Avx2] {
        let p = PackedWeights::quantize_for(kernel, &w, k, n, false);
        assert_eq!(p.qmax, kernel.weight_max());
        for kk in 0..k {
            for nn in 0..n {
                let back = f32::from(p.get(kk, nn)) * p.scales[nn];
                assert!((back - w[kk * n + nn]).abs() <= p.scales[nn] * 0.5 + 1e-6);
            }
        }
        // Transposed input gives the same packing.
        let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        let pt = PackedWeights::quantize_for(kernel, &wt, k, n, true);
        assert_eq!(pt.data, p.data);
    }
    let mut out = vec![0u8; 2 * 8];
    let clipped = quantize_activations(
        &[0.0, 1.0, -1.0, 300.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],
        2,
        5,
        8,
        1.0,
        &mut out,
    );
    assert_eq!(clipped, 1);
    assert_eq!(&out[..8], &[128, 129, 127, 255, 129, 128, 128, 128]);
}

/// Every x86-64 activation quantizer: its name, whether this CPU runs it, the function.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::type_complexity)]
fn x86_quantizers() -> [(
    &'static str,
    bool,
    unsafe fn(&[f32], f32, &mut [u8]) -> usize,
); 2] {
    [
        (
            "AVX2",
            std::arch::is_x86_feature_detected!("avx2"),
            x86::quantize_row_avx2,
        ),
        (
            "AVX-512F",
            std::arch::is_x86_feature_detected!("avx512f"),
            x86::quantize_row_avx512,
        ),
    ]
}

#[test]
fn vector_quantization_matches_the_scalar_definition() {
    // Ties (x.5), values just below ties, clipping on both sides, NaN, infinities, zeros,
    // and every row length around the vector width.
    let mut seed = 3u64;
    let mut x: Vec<f32> = vec![
        0.5,
        -0.5,
        1.5,
        -1.5,
        2.5,
        126.5,
        -126.5,
        127.5,
        -127.5,
        0.49999997,
        -0.49999997,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e30,
        -1e30,
    ];
    x.extend((0..300).map(|_| (lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5) * 400.0));
    for len in 0..40 {
        for inv in [1.0f32, 0.37, 3.1] {
            let row = &x[..len];
            let mut want = vec![0u8; len];
            let mut got = vec![0u8; len];
            let cw = quantize_row_scalar(row, inv, &mut want);
            let cg = quantize_row(row, inv, &mut got);
            assert_eq!((&got, cg), (&want, cw), "len {len} inv {inv}");
            #[cfg(target_arch = "x86_64")]
            for (isa, present, f) in x86_quantizers() {
                if !present {
                    continue;
                }
                let mut got = vec![0u8; len];
                // SAFETY: the CPU has the quantizer's features; equal lengths.
                let cg = unsafe { f(row, inv, &mut got) };
                assert_eq!((&got, cg), (&want, cw), "{isa}: len {len} inv {inv}");
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    for (isa, present, _) in x86_quantizers() {
        if !present {
            println!("{isa} quantizer not checked: this CPU lacks it");
        }
    }
    let mut want = vec![0u8; x.len()];
    let mut got = vec![0u8; x.len()];
    assert_eq!(
        quantize_row(&x, 1.0, &mut got),
        quantize_row_scalar(&x, 1.0, &mut want)
    );
    assert_eq!(got, want);
}
