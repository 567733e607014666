//! The element-wise kernels against their definitions: approximations, vector tails, split
//! transpositions, merged broadcasts.

use super::*;
use crate::plan::{erf as erf_ref, unary as unary_ref};

#[test]
fn approximations_are_close_to_the_definitions() {
    let mut worst = [0f32; 3];
    for i in -4000..=4000 {
        let x = i as f32 / 400.0;
        let e = (exp::<true>(x) - x.exp()).abs() / x.exp();
        worst[0] = worst[0].max(e);
        worst[1] = worst[1].max((erf::<true>(x) - erf_ref(x as f64) as f32).abs());
        let g = unary_ref(UnOp::Gelu, x);
        worst[2] = worst[2].max((unary1::<true>(UnOp::Gelu, x) - g).abs());
    }
    assert!(worst[0] < 5e-7, "exp relative error {}", worst[0]);
    assert!(worst[1] < 6e-7, "erf absolute error {}", worst[1]);
    assert!(worst[2] < 2e-6, "gelu absolute error {}", worst[2]);
    assert!(exp::<true>(100.0).is_finite() && exp::<true>(100.0) > 1e38);
    assert!(exp::<true>(-100.0) > 0.0 && exp::<true>(-100.0) < 1e-37);
}

#[test]
fn vector_tails_match_one_value_at_a_time() {
    // Lengths around the 16-lane blocks: the padded tail must give each value's own result.
    let x: Vec<f32> = (0..83).map(|i| (i as f32 - 41.0) * 0.173).collect();
    for len in (1..=40).chain([47, 48, 49, 83]) {
        for op in [UnOp::Gelu, UnOp::Exp, UnOp::Tanh, UnOp::Erf, UnOp::Sigmoid] {
            let mut y = vec![f32::NAN; len];
            unary(op, &x[..len], &mut y);
            for (i, got) in y.iter().enumerate() {
                assert_eq!(
                    got.to_bits(),
                    unary1::<true>(op, x[i]).to_bits(),
                    "{op:?} {len} at {i}"
                );
            }
        }
        let mut y = vec![f32::NAN; len];
        softmax(&x[..len], &mut y, [1, len, 1]);
        let mx = x[..len].iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
        let s: f64 = x[..len]
            .iter()
            .map(|v| f64::from(exp::<true>(v - mx)))
            .sum();
        for (i, got) in y.iter().enumerate() {
            let want = f64::from(exp::<true>(x[i] - mx)) / s;
            assert!(
                (f64::from(*got) - want).abs() < 1e-6,
                "softmax {len} at {i}"
            );
        }
    }
}

#[test]
fn permutes_split_by_runs_match_the_whole() {
    // [2, 3, 4, 5] → [3, 5, 2, 4] (output dims and the input stride each reads).
    let g = PermGeo::new(&[1, 1, 3, 5, 2, 4], &[0, 0, 20, 1, 60, 5]);
    let x: Vec<f32> = (0..120).map(|i| i as f32).collect();
    let mut whole = vec![0f32; 120];
    permute_runs(&x, &mut whole, &g, 0..g.runs());
    for split in [1, 2, 7, g.runs()] {
        let mut parts = vec![f32::NAN; 120];
        let mut at = 0;
        while at < g.runs() {
            let end = (at + split).min(g.runs());
            permute_runs(&x, &mut parts[at * g.len..end * g.len], &g, at..end);
            at = end;
        }
        assert_eq!(parts, whole, "runs of {split}");
    }
    // The definition: output (a, d, b, c) reads input (b, a, c, d).
    for (a, d, b, c) in (0..3).flat_map(|a| {
        (0..5).flat_map(move |d| (0..2).flat_map(move |b| (0..4).map(move |c| (a, d, b, c))))
    }) {
        assert_eq!(
            whole[((a * 5 + d) * 2 + b) * 4 + c],
            x[((b * 3 + a) * 4 + c) * 5 + d]
        );
    }
}

#[test]
fn merged_broadcasts_match_the_definition() {
    // [2,3,4] + [1,3,1], [2,3,4] * [2,1,4], [2,3,4] / scalar, [4] - [2,3,4].
    let cases: [([i32; 6], [i32; 6], [i32; 6]); 4] = [
        ([1, 1, 1, 2, 3, 4], [0, 0, 0, 12, 4, 1], [0, 0, 0, 0, 1, 0]),
        ([1, 1, 1, 2, 3, 4], [0, 0, 0, 12, 4, 1], [0, 0, 0, 4, 0, 1]),
        ([1, 1, 1, 2, 3, 4], [0, 0, 0, 12, 4, 1], [0; 6]),
        ([1, 1, 1, 2, 3, 4], [0, 0, 0, 0, 0, 1], [0, 0, 0, 12, 4, 1]),
    ];
    let a: Vec<f32> = (0..24).map(|i| i as f32 + 1.0).collect();
    let b: Vec<f32> = (0..24).map(|i| (i as f32) * 0.5 - 3.0).collect();
    for (dims, sa, sb) in cases {
        let g = BinGeo::new(&dims, &sa, &sb);
        for op in [BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Div] {
            let mut y = vec![f32::NAN; 24];
            binary(op, &a, &b, &mut y, &g);
            for (i, got) in y.iter().enumerate() {
                let (mut r, mut ia, mut ib) = (i, 0, 0);
                for ax in (0..6).rev() {
                    let c = r % dims[ax] as usize;
                    r /= dims[ax] as usize;
                    ia += c * sa[ax] as usize;
                    ib += c * sb[ax] as usize;
                }
                assert_eq!(*got, bin1(op, a[ia], b[ib]), "{op:?} {dims:?} at {i}");
            }
        }
    }
}
