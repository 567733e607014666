#!/usr/bin/env python3
"""Fit the two polynomials of the CPU plan's `erf` (runtime/src/plan/exec/ops.rs) and check the
whole approximation in float32 with fused multiply-adds, as the Rust code evaluates it.

    erf x = x · P(x²)            for |x| < SPLIT
    erf x = 1 − e^{Q(|x| − MID)}  for SPLIT ≤ |x| < TOP   (Q fits ln erfc)
    erf x = 1                    beyond (erfc(3.92) = 1.2e-8, below half an ulp of 1)

Each fit is a weighted least-squares fit on Chebyshev nodes whose weights are raised where the
error is large (Lawson's iteration toward the minimax polynomial). Needs numpy only; prints the
Rust constants and the measured maximum error. Run: python3 scripts/fit-erf.py
"""
import math

import numpy as np

SPLIT, TOP, DEG_P, DEG_Q = 1.0, 3.92, 6, 8
MID = (SPLIT + TOP) / 2
F = np.float32


def fit(f, lo, hi, deg, var):
    n = 4000
    k = np.arange(n)
    xs = (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (k + 0.5) / n)
    y = np.array([f(x) for x in xs])
    v = np.vander(var(xs), deg + 1, increasing=True)
    w = np.ones(n)
    for _ in range(80):
        c, *_ = np.linalg.lstsq(v * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)
        e = np.abs(v @ c - y)
        w = w * (e / e.max() + 1e-3)
        w /= w.sum()
    return c.astype(F), float(np.abs(v @ c - y).max())


def fma(a, b, c):
    # An f32 product is exact in f64; one rounding of the sum, then to f32 (a double rounding
    # that differs from a true fused multiply-add in rare ties only).
    return F(np.float64(a) * np.float64(b) + np.float64(c))


def horner(c, v):
    p = F(c[-1])
    for ci in c[-2::-1]:
        p = fma(p, v, ci)
    return p


def exp32(x):
    """ops.rs `exp`, step for step."""
    shift = F(12582912.0)
    x = np.clip(x, F(-87.3), F(88.3)).astype(F)
    t = fma(x, F(math.log2(math.e)), shift)
    n = (t - shift).astype(F)
    r = fma(n, F(-0.6933594), x)
    r = fma(n, F(2.1219444e-4), r)
    p = F(1.9875691e-4)
    for c in (1.3982e-3, 8.333452e-3, 4.1665796e-2, 0.16666665, 0.5):
        p = fma(p, r, F(c))
    y = (fma((p * r).astype(F), r, r) + F(1.0)).astype(F)
    e = ((t.view(np.int32) - 0x4B400000 + 127) << 23).astype(np.int32).view(F)
    return (y * e).astype(F)


def main():
    p, ep = fit(lambda x: math.erf(x) / x, 1e-6, SPLIT, DEG_P, lambda x: x * x)
    q, eq = fit(lambda x: math.log(math.erfc(x)), SPLIT, TOP, DEG_Q, lambda x: x - MID)
    xs = np.linspace(-6, 6, 2_000_001).astype(F)
    a = np.abs(xs)
    small = (a * horner(p, (a * a).astype(F))).astype(F)
    big = (F(1) - exp32(horner(q, (np.minimum(a, F(TOP)) - F(MID)).astype(F)))).astype(F)
    erf = np.copysign(np.where(a < F(SPLIT), small, np.where(a < F(TOP), big, F(1))), xs)
    ref = np.array([math.erf(float(x)) for x in xs])
    err = np.abs(erf - ref)
    print(f"// fits: P {ep:.1e}, Q {eq:.1e} (ln erfc); float32 erf max |error| "
          f"{err.max():.2e} at x = {xs[err.argmax()]:.4f}")
    print(f"const ERF_SPLIT: f32 = {SPLIT};\nconst ERF_TOP: f32 = {TOP};\nconst ERF_MID: f32 = {MID};")
    for name, c in (("ERF_P", p), ("ERF_Q", q)):
        body = ", ".join(np.format_float_scientific(v, unique=True) for v in c)
        print(f"const {name}: [f32; {len(c)}] = [{body}];")


if __name__ == "__main__":
    main()
