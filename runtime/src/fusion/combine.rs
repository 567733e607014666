//! The per-frame combination of the heads' outputs, one function per method, on slices the
//! caller sized: nothing here allocates. The fitting code calls the same functions, so a method
//! is evaluated during `edgefuse fit` exactly as it runs on frames.
//!
//! Layouts: `logits` and `probs` are `[heads, labels]` row-major (head order `clip`, `qformer`,
//! `adapter`); every method writes probabilities summing to 1 into `out`.

use edgefuse_models::fitted::{Linear, GATE_FEATURES_PER_HEAD};

#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Index of the largest value (the first of equal ones).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Numerically stable in-place softmax.
pub fn softmax(v: &mut [f32]) {
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for x in v.iter_mut() {
        *x = (*x - m).exp();
        s += *x;
    }
    v.iter_mut().for_each(|x| *x /= s);
}

fn normalise(out: &mut [f32]) {
    let s: f32 = out.iter().sum();
    if s > 0.0 && s.is_finite() {
        out.iter_mut().for_each(|p| *p /= s);
    }
}

/// `out = softmax(sum_h w_h * logits_h)`.
pub fn weighted_logits(logits: &[f32], weights: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for (row, w) in logits.chunks_exact(out.len()).zip(weights) {
        out.iter_mut().zip(row).for_each(|(o, z)| *o += w * z);
    }
    softmax(out);
}

/// `out = sum_h w_h * probs_h / sum_h w_h`.
pub fn weighted_probabilities(probs: &[f32], weights: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for (row, w) in probs.chunks_exact(out.len()).zip(weights) {
        out.iter_mut().zip(row).for_each(|(o, p)| *o += w * p);
    }
    normalise(out);
}

/// `out = max_h probs_h`, renormalised.
pub fn max(probs: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for row in probs.chunks_exact(out.len()) {
        out.iter_mut().zip(row).for_each(|(o, p)| *o = o.max(*p));
    }
    normalise(out);
}

/// Voting: each head gives one vote to its best label; a label scores `votes + mean_h p_h`, so
/// the most votes win and equal votes are decided by the heads' summed probability (the mean is
/// below 1 unless every head is certain of that label). Scores are normalised to sum to 1.
pub fn voting(probs: &[f32], out: &mut [f32]) {
    let n = out.len();
    let heads = (probs.len() / n).max(1) as f32;
    out.fill(0.0);
    for row in probs.chunks_exact(n) {
        out[argmax(row)] += 1.0;
        out.iter_mut().zip(row).for_each(|(o, p)| *o += p / heads);
    }
    normalise(out);
}

/// `sigmoid(x)`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Learned weighted average: `out = softmax(sum_h sigmoid(w_h) * logits_h)`.
pub fn learned_weights(logits: &[f32], raw: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for (row, w) in logits.chunks_exact(out.len()).zip(raw) {
        let s = sigmoid(*w);
        out.iter_mut().zip(row).for_each(|(o, z)| *o += s * z);
    }
    softmax(out);
}

/// `out = W x + b` (no softmax).
pub fn linear(l: &Linear, x: &[f32], out: &mut [f32]) {
    for ((o, row), b) in out
        .iter_mut()
        .zip(l.weights.chunks_exact(l.cols))
        .zip(&l.bias)
    {
        *o = dot(row, x) + b;
    }
}

/// Stacking or concatenation: `out = softmax(W x + b)`, `x` the concatenated logits or the
/// pooled embeddings.
pub fn logistic(l: &Linear, x: &[f32], out: &mut [f32]) {
    linear(l, x, out);
    softmax(out);
}

/// The gate's inputs for one frame: per head its top probability, its entropy over `ln(labels)`
/// and the margin between its two best probabilities; then, with a Q-Former, the cosine between
/// the pooled image embedding and the pooled queries. `out` has
/// [`edgefuse_models::fitted::gate_features`] entries.
pub fn gate_features(probs: &[f32], labels: usize, cosine: Option<f32>, out: &mut [f32]) {
    let ln = (labels as f32).ln();
    for (row, f) in probs
        .chunks_exact(labels)
        .zip(out.chunks_exact_mut(GATE_FEATURES_PER_HEAD))
    {
        let (mut p1, mut p2, mut h) = (0f32, 0f32, 0f32);
        for &p in row {
            if p > p1 {
                p2 = p1;
                p1 = p;
            } else if p > p2 {
                p2 = p;
            }
            if p > 0.0 {
                h -= p * p.ln();
            }
        }
        f[0] = p1;
        f[1] = if ln > 0.0 { h / ln } else { 0.0 };
        f[2] = p1 - p2;
    }
    if let Some(c) = cosine {
        let heads = probs.len() / labels;
        out[GATE_FEATURES_PER_HEAD * heads] = c;
    }
}

/// Gated fusion: `gates = softmax(V f + c)` over heads, `out = softmax(sum_h gate_h * logits_h)`.
/// `gates` has one entry per head.
pub fn gated(gate: &Linear, features: &[f32], logits: &[f32], gates: &mut [f32], out: &mut [f32]) {
    linear(gate, features, gates);
    softmax(gates);
    weighted_logits(logits, gates, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_softmax(z: &[f64]) -> Vec<f64> {
        let e: Vec<f64> = z.iter().map(|x| x.exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((f64::from(*x) - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    const LOGITS: [f32; 6] = [1.0, 2.0, 0.5, 3.0, -1.0, 0.0];

    fn probs() -> Vec<f32> {
        let mut p = LOGITS.to_vec();
        softmax(&mut p[..3]);
        softmax(&mut p[3..]);
        p
    }

    #[test]
    fn fixed_rules_match_a_direct_computation() {
        let mut out = [0f32; 3];
        weighted_logits(&LOGITS, &[0.25, 0.75], &mut out);
        close(&out, &naive_softmax(&[2.5, -0.25, 0.125]));
        let p = probs();
        let a = naive_softmax(&[1.0, 2.0, 0.5]);
        let b = naive_softmax(&[3.0, -1.0, 0.0]);
        weighted_probabilities(&p, &[1.0, 3.0], &mut out);
        let w: Vec<f64> = (0..3).map(|i| (a[i] + 3.0 * b[i]) / 4.0).collect();
        close(&out, &w);
        max(&p, &mut out);
        let m: Vec<f64> = (0..3).map(|i| a[i].max(b[i])).collect();
        let s: f64 = m.iter().sum();
        close(&out, &m.iter().map(|x| x / s).collect::<Vec<_>>());
    }

    #[test]
    fn voting_counts_votes_and_breaks_ties_by_summed_confidence() {
        // Two heads disagree (label 1 vs label 0): one vote each; head 1 is surer of its
        // label than head 0, so label 0 wins the tie on summed probability.
        let p = probs();
        let mut out = [0f32; 3];
        voting(&p, &mut out);
        assert_eq!(argmax(&out), 0);
        let a = naive_softmax(&[1.0, 2.0, 0.5]);
        let b = naive_softmax(&[3.0, -1.0, 0.0]);
        let s: Vec<f64> = (0..3)
            .map(|i| f64::from(u8::from(i == 0) + u8::from(i == 1)) + (a[i] + b[i]) / 2.0)
            .collect();
        let t: f64 = s.iter().sum();
        close(&out, &s.iter().map(|x| x / t).collect::<Vec<_>>());
        // Three heads, two vote label 2 with low confidence, one votes label 0 with certainty:
        // votes win over confidence.
        let p3 = [0.3, 0.3, 0.4, 0.3, 0.3, 0.4, 1.0, 0.0, 0.0];
        voting(&p3, &mut out);
        assert_eq!(argmax(&out), 2);
    }

    #[test]
    fn learned_weights_are_sigmoids() {
        let mut out = [0f32; 3];
        learned_weights(&LOGITS, &[0.0, 2.0], &mut out);
        let (s0, s1) = (0.5, 1.0 / (1.0 + (-2f64).exp()));
        let z: Vec<f64> = (0..3)
            .map(|i| s0 * f64::from(LOGITS[i]) + s1 * f64::from(LOGITS[3 + i]))
            .collect();
        close(&out, &naive_softmax(&z));
    }

    #[test]
    fn stacking_and_gate_match_a_direct_computation() {
        let l = Linear {
            rows: 3,
            cols: 6,
            weights: (0..18).map(|i| (i as f32 - 9.0) / 10.0).collect(),
            bias: vec![0.1, -0.2, 0.3],
            l2: 0.0,
        };
        let mut out = [0f32; 3];
        logistic(&l, &LOGITS, &mut out);
        let z: Vec<f64> = (0..3)
            .map(|r| {
                f64::from(l.bias[r])
                    + (0..6)
                        .map(|c| f64::from(l.weights[r * 6 + c]) * f64::from(LOGITS[c]))
                        .sum::<f64>()
            })
            .collect();
        close(&out, &naive_softmax(&z));

        let p = probs();
        let mut f = [0f32; 7];
        gate_features(&p, 3, Some(0.5), &mut f);
        let a = naive_softmax(&[1.0, 2.0, 0.5]);
        let h: f64 = -a.iter().map(|x| x * x.ln()).sum::<f64>() / 3f64.ln();
        close(&f[..3], &[a[1], h, a[1] - a[0]]);
        assert_eq!(f[6], 0.5);
        // A gate that only looks at head 1's top probability, strongly.
        let mut w = vec![0.0; 14];
        w[7 + 3] = 50.0;
        let g = Linear {
            rows: 2,
            cols: 7,
            weights: w,
            bias: vec![0.0, 0.0],
            l2: 0.0,
        };
        let mut gates = [0f32; 2];
        gated(&g, &f, &LOGITS, &mut gates, &mut out);
        let g1 = 1.0 / (1.0 + (-50.0 * f64::from(f[3])).exp());
        assert!((f64::from(gates[1]) - g1).abs() < 1e-5);
        let z: Vec<f64> = (0..3)
            .map(|i| (1.0 - g1) * f64::from(LOGITS[i]) + g1 * f64::from(LOGITS[3 + i]))
            .collect();
        close(&out, &naive_softmax(&z));
    }
}
