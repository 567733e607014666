//! The models behind each fitted method: their losses and gradients (minimised with
//! [`crate::fusion::lbfgs`]) and their predictions, which call the same combine functions the
//! runtime does.

use edgefuse_models::fitted::Linear;
use edgefuse_models::manifest::FusionMethod;

use crate::fusion::combine;
use crate::fusion::lbfgs::minimize;

/// Iterations of a multinomial logistic regression fit.
const LOGREG_ITERS: usize = 300;
/// Iterations of the learned-weights and gate fits.
const SMALL_ITERS: usize = 100;

/// What the fits read, one row per frame.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub labels: usize,
    pub heads: usize,
    /// `[frames, heads * labels]`.
    pub logits: Vec<f32>,
    /// `[frames, heads * labels]`, softmax per head.
    pub probs: Vec<f32>,
    /// `[frames, features]` gate inputs.
    pub features: Vec<f32>,
    pub feature_len: usize,
    /// `[frames, pooled_len]` concatenation inputs.
    pub pooled: Vec<f32>,
    pub pooled_len: usize,
    pub truth: Vec<u16>,
    /// Fixed-rule weight of each head.
    pub weights: Vec<f32>,
}

impl Table {
    pub fn row<'a>(&self, v: &'a [f32], len: usize, i: usize) -> &'a [f32] {
        &v[i * len..(i + 1) * len]
    }
    pub fn logits(&self, i: usize) -> &[f32] {
        let l = self.heads * self.labels;
        self.row(&self.logits, l, i)
    }
    pub fn probs(&self, i: usize) -> &[f32] {
        let l = self.heads * self.labels;
        self.row(&self.probs, l, i)
    }
    pub fn features(&self, i: usize) -> &[f32] {
        self.row(&self.features, self.feature_len, i)
    }
    pub fn pooled(&self, i: usize) -> &[f32] {
        self.row(&self.pooled, self.pooled_len, i)
    }
}

/// Fitted parameters of one method.
#[derive(Debug, Clone)]
pub(crate) enum Model {
    /// A fixed rule: nothing fitted.
    Fixed,
    /// Learned weights (raw, before the sigmoid).
    Weights(Vec<f32>),
    /// Stacking, concatenation or the gate.
    Linear(Linear),
}

/// The L2 strengths cross-validation chooses from for `method`.
pub(crate) fn l2_grid(method: FusionMethod) -> &'static [f64] {
    match method {
        FusionMethod::LearnedWeights => &[1e-3],
        FusionMethod::Gated => &[1e-1, 1e-2, 1e-3],
        FusionMethod::Stacking | FusionMethod::Concat => &[1.0, 1e-1, 1e-2, 1e-3, 1e-4],
        _ => &[0.0],
    }
}

/// Probabilities of frame `i` under `model` into `out` (`gates`: one per head, scratch).
pub(crate) fn predict(
    method: FusionMethod,
    model: &Model,
    t: &Table,
    i: usize,
    gates: &mut [f32],
    out: &mut [f32],
) {
    if t.heads == 1 && !method.needs_fit() {
        out.copy_from_slice(t.probs(i));
        return;
    }
    match (method, model) {
        (FusionMethod::WeightedLogits, _) => combine::weighted_logits(t.logits(i), &t.weights, out),
        (FusionMethod::WeightedProbabilities, _) => {
            combine::weighted_probabilities(t.probs(i), &t.weights, out)
        }
        (FusionMethod::Max, _) => combine::max(t.probs(i), out),
        (FusionMethod::Voting, _) => combine::voting(t.probs(i), out),
        (FusionMethod::LearnedWeights, Model::Weights(w)) => {
            combine::learned_weights(t.logits(i), w, out)
        }
        (FusionMethod::Stacking, Model::Linear(l)) => combine::logistic(l, t.logits(i), out),
        (FusionMethod::Concat, Model::Linear(l)) => combine::logistic(l, t.pooled(i), out),
        (FusionMethod::Gated, Model::Linear(g)) => {
            combine::gated(g, t.features(i), t.logits(i), gates, out)
        }
        _ => out.fill(1.0 / out.len() as f32),
    }
}

/// Fit `method` on the frames `idx` with L2 strength `l2`; `None` when the fit produced
/// non-finite parameters.
pub(crate) fn fit(method: FusionMethod, t: &Table, idx: &[usize], l2: f64) -> Option<Model> {
    let n = t.labels;
    match method {
        FusionMethod::LearnedWeights => fit_weights(t, idx, l2).map(Model::Weights),
        FusionMethod::Stacking => {
            let cols = t.heads * n;
            logreg(&|i| t.logits(i), &t.truth, idx, n, cols, None, l2).map(Model::Linear)
        }
        FusionMethod::Concat => {
            logreg(&|i| t.pooled(i), &t.truth, idx, n, t.pooled_len, None, l2).map(Model::Linear)
        }
        FusionMethod::Gated => fit_gate(t, idx, l2).map(Model::Linear),
        _ => Some(Model::Fixed),
    }
}

fn finite_f32(v: &[f64]) -> Option<Vec<f32>> {
    let out: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    out.iter().all(|x| x.is_finite()).then_some(out)
}

/// Softmax of `z` in place (f64); returns `ln(sum exp)` relative to the max for the loss.
fn softmax64(z: &mut [f64]) -> f64 {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut s = 0.0;
    for v in z.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    z.iter_mut().for_each(|v| *v /= s);
    m + s.ln()
}

/// Multinomial logistic regression `softmax(W x + b)` with `W` `[n, cols]`: mean cross-entropy
/// plus `l2/2 (|W - W0|^2 + |b|^2)`, `W0` = `prior` (zeros without one), starting from `W0`.
pub(crate) fn logreg<'a>(
    x: &dyn Fn(usize) -> &'a [f32],
    truth: &[u16],
    idx: &[usize],
    n: usize,
    cols: usize,
    prior: Option<&[f32]>,
    l2: f64,
) -> Option<Linear> {
    let nw = n * cols;
    let w0: Vec<f64> = match prior {
        Some(p) => p.iter().map(|v| f64::from(*v)).collect(),
        None => vec![0.0; nw],
    };
    let mut params = vec![0.0; nw + n];
    params[..nw].copy_from_slice(&w0);
    let m = idx.len().max(1) as f64;
    let mut z = vec![0.0; n];
    minimize(&mut params, LOGREG_ITERS, 1e-7, |p, g| {
        let (w, b) = p.split_at(nw);
        g.fill(0.0);
        let (gw, gb) = g.split_at_mut(nw);
        let mut loss = 0.0;
        for &i in idx {
            let xi = x(i);
            for (r, zr) in z.iter_mut().enumerate() {
                let row = &w[r * cols..(r + 1) * cols];
                *zr = b[r]
                    + row
                        .iter()
                        .zip(xi)
                        .map(|(a, v)| a * f64::from(*v))
                        .sum::<f64>();
            }
            let y = usize::from(truth[i]);
            let zy = z[y];
            loss += softmax64(&mut z) - zy;
            z[y] -= 1.0;
            for (r, d) in z.iter().enumerate() {
                let d = d / m;
                gb[r] += d;
                gw[r * cols..(r + 1) * cols]
                    .iter_mut()
                    .zip(xi)
                    .for_each(|(gv, v)| *gv += d * f64::from(*v));
            }
        }
        let mut reg = 0.0;
        for ((gv, wv), w0v) in gw.iter_mut().zip(w).zip(&w0) {
            let dw = wv - w0v;
            reg += dw * dw;
            *gv += l2 * dw;
        }
        for (gv, bv) in gb.iter_mut().zip(b) {
            reg += bv * bv;
            *gv += l2 * bv;
        }
        loss / m + 0.5 * l2 * reg
    });
    let weights = finite_f32(&params[..nw])?;
    let bias = finite_f32(&params[nw..])?;
    Some(Linear {
        rows: n,
        cols,
        weights,
        bias,
        l2,
    })
}

/// Learned weighted average: `softmax(sum_h sigmoid(a_h) z_h)`, `l2/2 |a|^2`, from `a = 0`.
fn fit_weights(t: &Table, idx: &[usize], l2: f64) -> Option<Vec<f32>> {
    let (n, h) = (t.labels, t.heads);
    let mut a = vec![0.0; h];
    let m = idx.len().max(1) as f64;
    let mut z = vec![0.0; n];
    let mut s = vec![0.0; h];
    minimize(&mut a, SMALL_ITERS, 1e-7, |a, g| {
        s.iter_mut()
            .zip(a)
            .for_each(|(s, a)| *s = 1.0 / (1.0 + (-a).exp()));
        g.fill(0.0);
        let mut loss = 0.0;
        for &i in idx {
            let l = t.logits(i);
            for (c, zc) in z.iter_mut().enumerate() {
                *zc = (0..h).map(|k| s[k] * f64::from(l[k * n + c])).sum();
            }
            let y = usize::from(t.truth[i]);
            let zy = z[y];
            loss += softmax64(&mut z) - zy;
            z[y] -= 1.0;
            for k in 0..h {
                let d: f64 = (0..n).map(|c| z[c] * f64::from(l[k * n + c])).sum();
                g[k] += s[k] * (1.0 - s[k]) * d / m;
            }
        }
        let mut reg = 0.0;
        for (gk, ak) in g.iter_mut().zip(a) {
            reg += ak * ak;
            *gk += l2 * ak;
        }
        loss / m + 0.5 * l2 * reg
    });
    finite_f32(&a)
}

/// The gate `softmax(V f + c)` over heads weighting the heads' logits: `l2/2 |V|^2`, from zero
/// (equal gates).
fn fit_gate(t: &Table, idx: &[usize], l2: f64) -> Option<Linear> {
    let (n, h, fl) = (t.labels, t.heads, t.feature_len);
    let nv = h * fl;
    let mut p = vec![0.0; nv + h];
    let m = idx.len().max(1) as f64;
    let (mut z, mut u, mut dg) = (vec![0.0; n], vec![0.0; h], vec![0.0; h]);
    minimize(&mut p, SMALL_ITERS, 1e-7, |p, g| {
        let (v, c) = p.split_at(nv);
        g.fill(0.0);
        let mut loss = 0.0;
        for &i in idx {
            let (f, l) = (t.features(i), t.logits(i));
            for k in 0..h {
                u[k] = c[k]
                    + v[k * fl..(k + 1) * fl]
                        .iter()
                        .zip(f)
                        .map(|(a, x)| a * f64::from(*x))
                        .sum::<f64>();
            }
            softmax64(&mut u);
            for (cl, zc) in z.iter_mut().enumerate() {
                *zc = (0..h).map(|k| u[k] * f64::from(l[k * n + cl])).sum();
            }
            let y = usize::from(t.truth[i]);
            let zy = z[y];
            loss += softmax64(&mut z) - zy;
            z[y] -= 1.0;
            for k in 0..h {
                dg[k] = (0..n).map(|cl| z[cl] * f64::from(l[k * n + cl])).sum();
            }
            let mean: f64 = (0..h).map(|k| u[k] * dg[k]).sum();
            let (gv, gc) = g.split_at_mut(nv);
            for k in 0..h {
                let du = u[k] * (dg[k] - mean) / m;
                gc[k] += du;
                gv[k * fl..(k + 1) * fl]
                    .iter_mut()
                    .zip(f)
                    .for_each(|(gx, x)| *gx += du * f64::from(*x));
            }
        }
        let mut reg = 0.0;
        for (gx, vx) in g[..nv].iter_mut().zip(v) {
            reg += vx * vx;
            *gx += l2 * vx;
        }
        loss / m + 0.5 * l2 * reg
    });
    Some(Linear {
        rows: h,
        cols: fl,
        weights: finite_f32(&p[..nv])?,
        bias: finite_f32(&p[nv..])?,
        l2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A separable toy problem is fitted to 100 %; a very strong L2 toward a prior keeps the
    /// weights at the prior.
    #[test]
    fn logreg_separates_a_separable_toy_problem() {
        // Three clusters in 2-D.
        let pts: Vec<[f32; 2]> = (0..30)
            .map(|i| {
                let c = i % 3;
                let j = (i / 3) as f32 * 0.05;
                match c {
                    0 => [1.0 + j, 0.1 - j],
                    1 => [-1.0 + j, 1.0 + j],
                    _ => [-0.5 - j, -1.0 + j],
                }
            })
            .collect();
        let truth: Vec<u16> = (0..30).map(|i| (i % 3) as u16).collect();
        let idx: Vec<usize> = (0..30).collect();
        let l = logreg(&|i| &pts[i][..], &truth, &idx, 3, 2, None, 1e-4).unwrap();
        let mut out = [0f32; 3];
        for i in 0..30 {
            combine::logistic(&l, &pts[i], &mut out);
            assert_eq!(combine::argmax(&out), usize::from(truth[i]), "point {i}");
        }
        // Strong L2 toward a prior keeps the weights at the prior.
        let prior = [1.0f32, 0.0, 0.0, 1.0, -1.0, -1.0];
        let l = logreg(&|i| &pts[i][..], &truth, &idx, 3, 2, Some(&prior), 1e6).unwrap();
        for (a, b) in l.weights.iter().zip(&prior) {
            assert!((a - b).abs() < 1e-3, "{:?}", l.weights);
        }
    }
}
