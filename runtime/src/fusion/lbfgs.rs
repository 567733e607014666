//! A small, deterministic L-BFGS minimiser (two-loop recursion, backtracking Armijo line
//! search) for the fits of [`super::fit`]: no randomness, a fixed iteration budget, f64.

/// History pairs kept.
const MEMORY: usize = 8;

/// Minimise `f` from `x` (updated in place) for at most `iters` iterations. `f(x, grad)` returns
/// the loss and writes its gradient. Stops early when the gradient's norm falls below `tol` or
/// the line search cannot decrease the loss. Returns the final loss (NaN when `f` produced one).
pub fn minimize(
    x: &mut [f64],
    iters: usize,
    tol: f64,
    mut f: impl FnMut(&[f64], &mut [f64]) -> f64,
) -> f64 {
    let n = x.len();
    let mut g = vec![0.0; n];
    let mut loss = f(x, &mut g);
    if !loss.is_finite() {
        return f64::NAN;
    }
    let mut s_hist: Vec<Vec<f64>> = Vec::with_capacity(MEMORY);
    let mut y_hist: Vec<Vec<f64>> = Vec::with_capacity(MEMORY);
    let mut rho: Vec<f64> = Vec::with_capacity(MEMORY);
    let mut d = vec![0.0; n];
    let mut alpha = [0.0; MEMORY];
    let mut x_new = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    for it in 0..iters {
        let gnorm = dot(&g, &g).sqrt();
        if gnorm < tol {
            break;
        }
        // Two-loop recursion: d = -H g.
        d.iter_mut().zip(&g).for_each(|(d, g)| *d = -g);
        let k = s_hist.len();
        for i in (0..k).rev() {
            alpha[i] = rho[i] * dot(&s_hist[i], &d);
            d.iter_mut()
                .zip(&y_hist[i])
                .for_each(|(d, y)| *d -= alpha[i] * y);
        }
        if k > 0 {
            let gamma = dot(&s_hist[k - 1], &y_hist[k - 1]) / dot(&y_hist[k - 1], &y_hist[k - 1]);
            d.iter_mut().for_each(|d| *d *= gamma);
        } else {
            d.iter_mut().for_each(|d| *d /= gnorm.max(1.0));
        }
        for i in 0..k {
            let beta = rho[i] * dot(&y_hist[i], &d);
            d.iter_mut()
                .zip(&s_hist[i])
                .for_each(|(d, s)| *d += (alpha[i] - beta) * s);
        }
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction (curvature went bad): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            d.iter_mut()
                .zip(&g)
                .for_each(|(d, g)| *d = -g / gnorm.max(1.0));
            slope = dot(&g, &d);
        }
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..40 {
            x_new
                .iter_mut()
                .zip(x.iter().zip(&d))
                .for_each(|(o, (x, d))| *o = x + step * d);
            let l = f(&x_new, &mut g_new);
            if l.is_finite() && l <= loss + 1e-4 * step * slope {
                accepted = Some(l);
                break;
            }
            step *= 0.5;
        }
        let Some(l) = accepted else {
            log::debug!("l-bfgs: line search stalled at iteration {it}, loss {loss}");
            break;
        };
        let s: Vec<f64> = x_new.iter().zip(x.iter()).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        x.copy_from_slice(&x_new);
        g.copy_from_slice(&g_new);
        let improved = loss - l;
        loss = l;
        if sy > 1e-12 {
            if s_hist.len() == MEMORY {
                s_hist.remove(0);
                y_hist.remove(0);
                rho.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
            rho.push(1.0 / sy);
        }
        if improved.abs() <= 1e-12 * loss.abs().max(1.0) {
            break;
        }
    }
    loss
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_minimum_of_a_rosenbrock_valley() {
        let mut x = [-1.2, 1.0];
        let loss = minimize(&mut x, 500, 1e-10, |x, g| {
            let (a, b) = (x[0], x[1]);
            g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            g[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        });
        assert!(loss < 1e-10, "{loss}");
        assert!(
            (x[0] - 1.0).abs() < 1e-4 && (x[1] - 1.0).abs() < 1e-4,
            "{x:?}"
        );
    }

    #[test]
    fn a_nan_loss_is_reported() {
        let mut x = [1.0];
        assert!(minimize(&mut x, 10, 1e-9, |_, _| f64::NAN).is_nan());
    }
}
