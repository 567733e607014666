use super::*;
use edgefuse_models::fitted::{Adapter, Linear};
use edgefuse_models::manifest::HeadParams;

fn fusion(method: FusionMethod) -> Fusion {
    Fusion {
        method,
        clip: HeadParams {
            logit_scale: 10.0,
            weight: 0.5,
        },
        qformer: Some(HeadParams {
            logit_scale: 10.0,
            weight: 0.5,
        }),
    }
}

#[test]
fn top_k_orders_and_bounds() {
    let mut t = TopK::new();
    top_k(&[0.1, 0.5, 0.2, 0.15, 0.05], 3, &mut t);
    assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    top_k(&[0.3, 0.7], 10, &mut t);
    assert_eq!(t.len(), 2);
}

#[test]
fn clip_head_matches_naive_softmax() {
    let labels = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
    let mut h = FusionHead::new(&labels, 2, &fusion(FusionMethod::WeightedLogits), false);
    let mut t = TopK::new();
    let r = h.run(&[3.0, 4.0], None, 3, &mut t);
    // cosines 0.6, 0.8, 1.0 → logits 6, 8, 10
    let e: Vec<f32> = [6.0f32, 8.0, 10.0].iter().map(|x| x.exp()).collect();
    let s: f32 = e.iter().sum();
    assert_eq!(r.clip, 2);
    assert_eq!(t[0].0, 2);
    assert!((t[0].1 - e[2] / s).abs() < 1e-6);
}

#[test]
fn qformer_head_takes_max_over_queries_and_fuses() {
    let labels = [1.0, 0.0, 0.0, 1.0];
    for method in [
        FusionMethod::WeightedLogits,
        FusionMethod::WeightedProbabilities,
        FusionMethod::Max,
        FusionMethod::Voting,
    ] {
        let mut h = FusionHead::new(&labels, 2, &fusion(method), true);
        let mut t = TopK::new();
        // image embedding mildly label 0; one query strongly label 1.
        let r = h.run(&[1.0, 0.9], Some(&[0.0, 5.0, 1.0, 1.0]), 2, &mut t);
        assert_eq!(r.clip, 0);
        assert_eq!(r.qformer, Some(1));
        assert!(
            (h.qformer_logits()[1] - 10.0).abs() < 1e-5,
            "max over queries"
        );
        let s: f32 = h.probabilities().iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
        if method != FusionMethod::Voting {
            assert_eq!(t[0].0, 1, "{method:?}");
        }
        // The pooled queries: the normalised mean of the normalised queries.
        let m = [0.5f32.sqrt() / 2.0, (1.0 + 0.5f32.sqrt()) / 2.0];
        let n = (m[0] * m[0] + m[1] * m[1]).sqrt();
        assert!((h.pooled()[2] - m[0] / n).abs() < 1e-6);
        assert!((h.pooled()[3] - m[1] / n).abs() < 1e-6);
    }
}

/// A head with every fitted method: the adapter is the CLIP head's rows, scaled up; each fitted
/// method's output is checked against the combine function on the head outputs.
#[test]
fn fitted_methods_run_on_the_heads_outputs() {
    let labels = [1.0, 0.0, 0.0, 1.0];
    let lin = |rows: usize, cols: usize, seed: f32| Linear {
        rows,
        cols,
        weights: (0..rows * cols)
            .map(|i| ((i as f32 + seed) * 0.37).sin())
            .collect(),
        bias: (0..rows).map(|i| i as f32 * 0.1).collect(),
        l2: 0.0,
    };
    let params = FittedParams {
        heads: vec![Head::Clip, Head::Qformer, Head::Adapter],
        adapter: Some(Adapter {
            linear: Linear {
                rows: 2,
                cols: 2,
                weights: vec![20.0, 0.0, 0.0, 20.0],
                bias: vec![0.0, 1.0],
                l2: 0.0,
            },
            weight: 1.0,
        }),
        learned_weights: Some(vec![0.5, -0.5, 1.0]),
        stacking: Some(lin(2, 6, 1.0)),
        gated: Some(lin(3, gate_features(3, true), 2.0)),
        concat: Some(lin(2, 4, 3.0)),
    };
    params.check(2, 2, true).unwrap();
    let mut f = fusion(FusionMethod::Stacking);
    let mut h = FusionHead::build(&labels, 2, &f, true, Some(params.clone()));
    assert_eq!(h.heads(), [Head::Clip, Head::Qformer, Head::Adapter]);
    assert_eq!(h.methods(), FusionMethod::ALL.to_vec());
    h.heads_only(&[1.0, 0.9], Some(&[0.0, 5.0, 1.0, 1.0]));
    assert_eq!(argmax(h.head_logits(2)), 0);
    let inv = 1.0 / (1.0f32 + 0.81).sqrt();
    assert!((h.head_logits(2)[0] - 20.0 * inv).abs() < 1e-5);
    assert!((h.head_logits(2)[1] - (18.0 * inv + 1.0)).abs() < 1e-5);
    let logits = h.logits.clone();
    let mut want = [0f32; 2];
    for m in FusionMethod::ALL {
        assert!(h.combine(m));
        match m {
            FusionMethod::Stacking => {
                combine::logistic(params.stacking.as_ref().unwrap(), &logits, &mut want)
            }
            FusionMethod::Concat => {
                combine::logistic(params.concat.as_ref().unwrap(), h.pooled(), &mut want)
            }
            FusionMethod::LearnedWeights => {
                combine::learned_weights(&logits, &[0.5, -0.5, 1.0], &mut want)
            }
            FusionMethod::WeightedLogits => {
                combine::weighted_logits(&logits, &[0.5, 0.5, 1.0], &mut want)
            }
            _ => {
                let s: f32 = h.probabilities().iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{m:?}");
                continue;
            }
        }
        for (a, b) in h.probabilities().iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{m:?}");
        }
    }
    // A bundle whose method has no parameters here falls back to a fixed rule, saying so.
    f.method = FusionMethod::Gated;
    let h = FusionHead::new(&labels, 2, &f, true);
    assert_eq!(h.method(), FusionMethod::WeightedLogits);
    assert!(!h.clone().combine(FusionMethod::Gated));
}

#[test]
fn matches_rescale_the_shortlist_and_keep_the_rest() {
    // Three labels on the CLIP head alone: logits 6, 8, 10 (see clip_head_matches_naive_softmax).
    let labels = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
    let mut h = FusionHead::new(&labels, 2, &fusion(FusionMethod::WeightedLogits), false);
    let mut t = TopK::new();
    h.run(&[3.0, 4.0], None, 3, &mut t);
    let before = h.probabilities().to_vec();
    let mut short = TopK::new();
    top_k(&before, 2, &mut short); // labels 2 then 1
    let (m, w) = ([0.0f32, 3.0], 1.5f32);
    assert!(h.apply_matches(&short, &m, w));
    let p = h.probabilities();
    // Reference: p_i * exp(w m_i), renormalised to the shortlist's mass.
    let (a, b) = (before[2] * (w * m[0]).exp(), before[1] * (w * m[1]).exp());
    let mass = before[1] + before[2];
    assert!((p[2] - a / (a + b) * mass).abs() < 1e-6, "{p:?}");
    assert!((p[1] - b / (a + b) * mass).abs() < 1e-6, "{p:?}");
    assert_eq!(p[0], before[0], "outside the shortlist: unchanged");
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    h.top(3, &mut t);
    assert_eq!(t[0].0, 1, "the match moved label 1 ahead: {p:?}");

    // Non-finite match logits change nothing.
    let kept = h.probabilities().to_vec();
    assert!(!h.apply_matches(&short, &[f32::NAN, 1.0], w));
    assert!(!h.apply_matches(&short, &[f32::INFINITY, 1.0], w));
    assert_eq!(h.probabilities(), &kept[..]);

    // A candidate without probability (max or voting fusion give exact zeros) whose match is
    // far ahead of the others: the others' weights underflow, nothing overflows or turns NaN.
    let mut v = FusionHead::new(&labels, 2, &fusion(FusionMethod::Voting), false);
    v.run(&[3.0, 4.0], None, 3, &mut t);
    let mut short = TopK::new();
    for (l, p) in [(2u16, 0.7f32), (1, 0.3), (0, 0.0)] {
        short.push((l, p)).unwrap();
    }
    v.probs.copy_from_slice(&[0.0, 0.3, 0.7]);
    assert!(v.apply_matches(&short, &[-45.0, -45.0, 45.0], 1.0));
    let p = v.probabilities();
    assert!(p.iter().all(|x| x.is_finite()), "{p:?}");
    assert_eq!(p[0], 0.0, "a label without probability stays at 0");
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{p:?}");
    // Every candidate without probability: nothing to rescale.
    v.probs.copy_from_slice(&[0.0, 0.0, 1.0]);
    let mut zero = TopK::new();
    zero.push((0, 0.0)).unwrap();
    zero.push((1, 0.0)).unwrap();
    assert!(!v.apply_matches(&zero, &[1.0, 2.0], 1.0));
}
