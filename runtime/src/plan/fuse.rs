//! Epilogue fusion: the adds that follow an int8 layer (its bias, the skip connection) move
//! into the layer's output loop, where the values are still in registers, instead of passing
//! over the whole output again (a ViT-B/32 block's MLP writes 600 KiB, then reads and writes
//! it once more for the bias). GELU stays a step of its own: inside the output loop, 32
//! columns at a time, it measured slower than one long vector loop over the whole output
//! (50 × 768 → 3072 int8 + bias + GELU, 1 thread: 0.65 ms fused against 0.58 ms).
//!
//! A step is fused only when the result cannot change: the layer's output has that step as its
//! only reader and is not a model output, the step is the next stage in the fixed order
//! (bias, then residual), and a residual is computed before the layer runs. The fused
//! operations are the same f32 operations in the same order, so a fused plan gives the same
//! bits as the unfused one (`tests` below check it through [`run_reference`]).
//!
//! [`run_reference`]: super::run_reference

use super::ir::{BinOp, Broadcast, Plan, RedOp, Step, MAX_RANK};

/// `plan` with every fusable bias and residual add moved into the int8 layer before it.
pub fn fuse_epilogues(plan: &Plan) -> Plan {
    let mut plan = plan.clone();
    let mut i = 0;
    while i < plan.steps.len() {
        while let Some((j, out, stage)) = next_stage(&plan, i) {
            let Step::Int8Linear {
                out: o, epilogue, ..
            } = &mut plan.steps[i]
            else {
                unreachable!("next_stage only fuses into int8 layers")
            };
            match stage {
                Stage::Bias(b) => epilogue.bias = Some(b),
                Stage::Residual(r) => epilogue.residual = Some(r),
            }
            *o = out;
            plan.steps.remove(j);
        }
        i += 1;
    }
    plan
}

enum Stage {
    Bias(usize),
    Residual(usize),
}

/// The step that can fold into int8 layer `i` next: its index, its output and what it adds.
fn next_stage(plan: &Plan, i: usize) -> Option<(usize, usize, Stage)> {
    let Step::Int8Linear {
        out,
        m,
        weights,
        epilogue,
        ..
    } = &plan.steps[i]
    else {
        return None;
    };
    let (o, m, n) = (*out, *m, weights.n);
    if plan.outputs.contains(&o) || plan.buffers[o].len() != m * n {
        return None;
    }
    // The only other step touching `o` must read it (and nothing else may write it).
    let mut touching = plan
        .steps
        .iter()
        .enumerate()
        .filter(|(s, st)| *s != i && touches(st, o));
    let (j, step) = touching.next()?;
    if touching.next().is_some() || j < i {
        return None;
    }
    let done_residual = epilogue.residual.is_some();
    match step {
        Step::Binary {
            op: BinOp::Add,
            a,
            b,
            out,
            shape,
        } if *out != o && (*a == o) != (*b == o) => {
            let (other, so, sx) = if *a == o {
                (*b, &shape.sa, &shape.sb)
            } else {
                (*a, &shape.sb, &shape.sa)
            };
            if !contiguous(shape, so, m * n) || plan.buffers[*out].len() != m * n {
                return None;
            }
            let bias_free = epilogue.bias.is_none() && !done_residual;
            if bias_free && plan.buffers[other].init.is_some() && row_vector(shape, sx, n) {
                return Some((j, *out, Stage::Bias(other)));
            }
            let ready = written_before(plan, other, i);
            if !done_residual && ready && contiguous(shape, sx, m * n) {
                return Some((j, *out, Stage::Residual(other)));
            }
            None
        }
        _ => None,
    }
}

/// `plan` with every layer normalization that the lowering spelled as four steps (sum over a
/// row, times a constant 1/len, subtracted from the row, RMS norm) replaced by one
/// [`Step::LayerNorm`], which computes the same operations in the same order per row (same
/// bits) in one pass over the row instead of four over the whole tensor. Only four adjacent
/// steps whose intermediate results have no other reader are replaced.
pub fn fuse_layer_norms(plan: &Plan) -> Plan {
    let mut plan = plan.clone();
    let mut i = 0;
    while i + 3 < plan.steps.len() {
        if let Some(ln) = layer_norm_at(&plan, i) {
            plan.steps.splice(i..i + 4, [ln]);
        }
        i += 1;
    }
    plan
}

/// The layer norm spelled by steps `i..i + 4`, if they spell one.
fn layer_norm_at(plan: &Plan, i: usize) -> Option<Step> {
    let [Step::Reduce {
        op: RedOp::Sum,
        x,
        out: sum,
        dims: [o, l, 1],
    }, Step::Binary {
        op: BinOp::Mul,
        a,
        b,
        out: mean,
        shape: scaled,
    }, Step::Binary {
        op: BinOp::Sub,
        a: sub_a,
        b: sub_b,
        out: centred,
        shape: centring,
    }, Step::RmsNorm {
        x: rms_x,
        out,
        dims: [o2, l2, 1],
        eps,
    }] = &plan.steps[i..i + 4]
    else {
        return None;
    };
    let (x, sum, mean, centred, out, o, l) = (*x, *sum, *mean, *centred, *out, *o, *l);
    let scale = if *a == sum { *b } else { *a };
    let one_value = plan.buffers[scale]
        .init
        .as_ref()
        .is_some_and(|c| c.len() == 1);
    let chained = (*a == sum || *b == sum) && *sub_a == x && *sub_b == mean && *rms_x == centred;
    let shapes = (*o2, *l2) == (o, l)
        && [sum, mean].iter().all(|b| plan.buffers[*b].len() == o)
        && [x, centred, out]
            .iter()
            .all(|b| plan.buffers[*b].len() == o * l);
    if !(one_value && chained && shapes && scale != sum) {
        return None;
    }
    // The scale reads the sums in order and the one constant; the subtraction reads row r of
    // x and mean r for output row r.
    let (sum_s, scale_s) = if *a == sum {
        (&scaled.sa, &scaled.sb)
    } else {
        (&scaled.sb, &scaled.sa)
    };
    let reads_in_order =
        maps(scaled, sum_s, 1, o, |_, j| j) && maps(scaled, scale_s, 1, o, |_, _| 0);
    let centres_rows = maps(centring, &centring.sa, o, l, |r, j| r * l + j)
        && maps(centring, &centring.sb, o, l, |r, _| r);
    // The intermediates are read by these steps only, and are not model outputs.
    let private = [sum, mean, centred].iter().all(|b| {
        !plan.outputs.contains(b)
            && plan
                .steps
                .iter()
                .enumerate()
                .all(|(s, st)| (i..i + 4).contains(&s) || !touches(st, *b))
    });
    (reads_in_order && centres_rows && private).then_some(Step::LayerNorm {
        x,
        out,
        dims: [o, l],
        scale,
        eps: *eps,
    })
}

/// Whether a binary step's operand with strides `s` reads element `at(r, j)` for output
/// element `(r, j)` of an `[rows, cols]` output (the step's whole output, in order).
fn maps(
    shape: &Broadcast,
    s: &[i32; MAX_RANK],
    rows: usize,
    cols: usize,
    at: impl Fn(usize, usize) -> usize,
) -> bool {
    if shape.dims.iter().map(|d| *d as usize).product::<usize>() != rows * cols {
        return false;
    }
    (0..rows * cols).all(|flat| {
        let (mut rest, mut off) = (flat, 0usize);
        for ax in (0..MAX_RANK).rev() {
            let d = shape.dims[ax] as usize;
            off += (rest % d) * s[ax] as usize;
            rest /= d;
        }
        off == at(flat / cols, flat % cols)
    })
}

/// Whether `step` reads or writes buffer `b`.
fn touches(step: &Step, b: usize) -> bool {
    let (reads, write) = step.io();
    reads.contains(&b) || write == Some(b)
}

/// Whether buffer `b` holds its value before step `i` runs: a constant, the input, or written
/// only by earlier steps.
fn written_before(plan: &Plan, b: usize, i: usize) -> bool {
    plan.buffers[b].init.is_some()
        || b == plan.input
        || plan
            .steps
            .iter()
            .enumerate()
            .all(|(s, st)| s < i || st.io().1 != Some(b))
}

/// Whether an operand with strides `s` over `shape.dims` reads `len` values in row-major order.
fn contiguous(shape: &Broadcast, s: &[i32; MAX_RANK], len: usize) -> bool {
    let mut want = 1i64;
    for ax in (0..MAX_RANK).rev() {
        let d = shape.dims[ax];
        if d != 1 && i64::from(s[ax]) != want {
            return false;
        }
        want *= i64::from(d);
    }
    want == len as i64
}

/// Whether an operand with strides `s` is one `[n]` row broadcast over the others.
fn row_vector(shape: &Broadcast, s: &[i32; MAX_RANK], n: usize) -> bool {
    let last = MAX_RANK - 1;
    shape.dims[last] as usize == n
        && (s[last] == 1 || n == 1)
        && (0..last).all(|ax| s[ax] == 0 || shape.dims[ax] == 1)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use edgefuse_models::quant::gemm::{Kernel, PackedWeights};

    use super::*;
    use crate::plan::ir::{Buffer, Epilogue, UnOp};
    use crate::plan::run_reference;

    const M: usize = 5;
    const K: usize = 24;
    const N: usize = 40;

    fn buf(shape: &[usize], init: Option<Vec<f32>>) -> Buffer {
        Buffer {
            shape: shape.to_vec(),
            init: init.map(Into::into),
        }
    }

    fn wave(len: usize, f: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32) * f).sin() * 1.7).collect()
    }

    fn add(a: usize, b: usize, out: usize, sb: [i32; MAX_RANK]) -> Step {
        Step::Binary {
            op: BinOp::Add,
            a,
            b,
            out,
            shape: Broadcast {
                dims: [1, 1, 1, 1, M as i32, N as i32],
                sa: [0, 0, 0, 0, N as i32, 1],
                sb,
            },
        }
    }

    const FULL: [i32; MAX_RANK] = [0, 0, 0, 0, N as i32, 1];
    const ROW: [i32; MAX_RANK] = [0, 0, 0, 0, 0, 1];

    /// x(0) → skip = x·A (1) ; h = x·B (2) + bias(3) → (4) → GELU (5) → + skip (6).
    fn plan(steps_after: Vec<Step>, outputs: Vec<usize>) -> Plan {
        let lin = |x, out, f| Step::Int8Linear {
            x,
            out,
            m: M,
            weights: Arc::new(PackedWeights::quantize(&wave(K * N, f), K, N, false)),
            kernel: Kernel::best(),
            act_scale: 0.02,
            epilogue: Epilogue::default(),
        };
        let mut steps = vec![lin(0, 1, 0.37), lin(0, 2, 0.11)];
        steps.extend(steps_after);
        Plan {
            buffers: vec![
                buf(&[M, K], None),
                buf(&[M, N], None),
                buf(&[M, N], None),
                buf(&[N], Some(wave(N, 0.7))),
                buf(&[M, N], None),
                buf(&[M, N], None),
                buf(&[M, N], None),
            ],
            steps,
            input: 0,
            outputs,
            host_nodes: vec![],
        }
    }

    /// Layer 2's bias and a skip connection from layer 1: both fold into layer 2.
    fn block() -> Vec<Step> {
        vec![add(2, 3, 4, ROW), add(4, 1, 6, FULL)]
    }

    /// The same with GELU between them: only the bias folds.
    fn mlp() -> Vec<Step> {
        vec![
            add(2, 3, 4, ROW),
            Step::Unary {
                op: UnOp::Gelu,
                x: 4,
                out: 5,
            },
            add(5, 1, 6, FULL),
        ]
    }

    fn epilogue(p: &Plan, s: usize) -> (usize, Epilogue) {
        match &p.steps[s] {
            Step::Int8Linear { out, epilogue, .. } => (*out, *epilogue),
            other => panic!("step {s} is {other:?}"),
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn bias_and_residual_fold_into_the_layer_with_the_same_bits() {
        let x = wave(M * K, 0.29);
        let p = plan(block(), vec![6]);
        let f = fuse_epilogues(&p);
        assert_eq!(f.steps.len(), 2, "{:?}", f.steps);
        let both = Epilogue {
            bias: Some(3),
            residual: Some(1),
        };
        assert_eq!(epilogue(&f, 1), (6, both));
        let (want, got) = (
            run_reference(&p, &x).unwrap(),
            run_reference(&f, &x).unwrap(),
        );
        assert_eq!(bits(&got[0]), bits(&want[0]));
        // GELU is not fused: the bias folds, GELU and the residual add stay steps (the add's
        // other operand, GELU's output, is computed after both layers).
        let p = plan(mlp(), vec![6]);
        let f = fuse_epilogues(&p);
        assert_eq!(f.steps.len(), 4, "{:?}", f.steps);
        let bias = Epilogue {
            bias: Some(3),
            residual: None,
        };
        assert_eq!(epilogue(&f, 1), (4, bias));
        let (want, got) = (
            run_reference(&p, &x).unwrap(),
            run_reference(&f, &x).unwrap(),
        );
        assert_eq!(bits(&got[0]), bits(&want[0]));
    }

    #[test]
    fn the_cpu_plan_runs_fused_layers_alike_on_any_thread_count() {
        use crate::plan::{CpuPlan, Pool};
        for steps in [block(), mlp()] {
            let p = plan(steps, vec![6]);
            let x = wave(M * K, 0.29);
            let want = run_reference(&p, &x).unwrap();
            let runs = [1, 3].map(|t| {
                let mut c = CpuPlan::new(&p, Arc::new(Pool::new(t).unwrap())).unwrap();
                c.run(&x).unwrap();
                c.output(0).to_vec()
            });
            assert_eq!(runs[0], runs[1], "1 vs 3 threads");
            // The products are exact and the adds identical; only GELU's approximation differs.
            for (g, w) in runs[0].iter().zip(&want[0]) {
                assert!((*g - w).abs() < 1e-5, "{g} vs {w}");
            }
        }
    }

    #[test]
    fn nothing_fuses_that_could_change_a_result() {
        // The layer's output is also a model output: it must stay as it is.
        let f = fuse_epilogues(&plan(block(), vec![2, 6]));
        assert_eq!(f.steps.len(), 4);
        // A second reader of the biased value stops the fusion after the bias.
        let mut steps = block();
        steps.push(add(4, 1, 5, FULL));
        let f = fuse_epilogues(&plan(steps, vec![5, 6]));
        assert_eq!(
            epilogue(&f, 1),
            (
                4,
                Epilogue {
                    bias: Some(3),
                    residual: None
                }
            )
        );
        // A residual computed after the layer cannot be read by it. With the layers swapped,
        // the add folds into the later one instead (an add's operands commute)...
        let mut p = plan(vec![add(2, 1, 6, FULL)], vec![6]);
        p.steps.swap(0, 1);
        let f = fuse_epilogues(&p);
        assert_eq!(f.steps.len(), 2);
        let res = Epilogue {
            residual: Some(2),
            ..Default::default()
        };
        assert_eq!(
            (epilogue(&f, 0), epilogue(&f, 1)),
            ((2, Epilogue::default()), (6, res))
        );
        // ...unless that one's output is a model output: then nothing fuses.
        p.outputs = vec![1, 6];
        assert_eq!(fuse_epilogues(&p).steps.len(), 3);
    }

    /// x (0, `[rows, len]`) → Σ (1) → · 1/len (2, constant 3) → x − mean (4) → RMS norm (5).
    fn norm_plan(rows: usize, len: usize, outputs: Vec<usize>) -> Plan {
        let mut steps = Step::layer_norm_spelled([0, 3, 1, 2, 4, 5], rows, len, 1e-5).to_vec();
        // The scale first: an add's and a product's operands may come in either order.
        if let Step::Binary { a, b, shape, .. } = &mut steps[1] {
            (*a, *b) = (*b, *a);
            (shape.sa, shape.sb) = (shape.sb, shape.sa);
        }
        Plan {
            buffers: vec![
                buf(&[rows, len], None),
                buf(&[rows], None),
                buf(&[rows], None),
                buf(&[1], Some(vec![1.0 / len as f32])),
                buf(&[rows, len], None),
                buf(&[rows, len], None),
            ],
            steps,
            input: 0,
            outputs,
            host_nodes: vec![],
        }
    }

    #[test]
    fn layer_norms_become_one_step_with_the_same_bits() {
        use crate::plan::{fuse_layer_norms, CpuPlan, Pool};
        let (rows, len) = (50, 770);
        let p = norm_plan(rows, len, vec![5]);
        let f = fuse_layer_norms(&p);
        assert!(
            matches!(
                f.steps[..],
                [Step::LayerNorm {
                    x: 0,
                    out: 5,
                    dims: [50, 770],
                    scale: 3,
                    ..
                }]
            ),
            "{:?}",
            f.steps
        );
        let x: Vec<f32> = wave(rows * len, 0.013)
            .iter()
            .map(|v| v * 3.0 + 0.7)
            .collect();
        let (want, got) = (
            run_reference(&p, &x).unwrap(),
            run_reference(&f, &x).unwrap(),
        );
        assert_eq!(bits(&got[0]), bits(&want[0]));
        // The CPU plan's fused step against its four separate steps (kept apart by making the
        // mean an output too), on 1 and 3 threads.
        let apart = norm_plan(rows, len, vec![5, 2]);
        assert_eq!(fuse_layer_norms(&apart).steps.len(), 4);
        let run = |p: &Plan, t: usize| {
            let mut c = CpuPlan::new(p, Arc::new(Pool::new(t).unwrap())).unwrap();
            c.run(&x).unwrap();
            bits(c.output(0))
        };
        let one = run(&apart, 1);
        assert_eq!(run(&p, 1), one);
        assert_eq!(run(&p, 3), one);
        for (g, w) in run(&p, 3).iter().zip(&want[0]) {
            assert!((f32::from_bits(*g) - w).abs() < 1e-4);
        }
    }

    #[test]
    fn only_the_exact_layer_norm_pattern_fuses() {
        use crate::plan::fuse_layer_norms;
        // mean − x is not x − mean.
        let mut p = norm_plan(4, 40, vec![5]);
        if let Step::Binary { a, b, shape, .. } = &mut p.steps[2] {
            (*a, *b) = (2, 0);
            (shape.sa, shape.sb) = (shape.sb, shape.sa);
        }
        assert_eq!(fuse_layer_norms(&p).steps.len(), 4);
        // A scale computed per frame is not a constant.
        let mut p = norm_plan(4, 40, vec![5]);
        p.buffers[3].init = None;
        assert_eq!(fuse_layer_norms(&p).steps.len(), 4);
        // A second reader of the centred values.
        let mut p = norm_plan(4, 40, vec![5]);
        p.steps.push(Step::Unary {
            op: UnOp::Exp,
            x: 4,
            out: 1,
        });
        assert_eq!(fuse_layer_norms(&p).steps.len(), 5);
    }
}
