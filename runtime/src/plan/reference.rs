//! The plan executed on the CPU with plain loops: each step's loop is the definition its GPU
//! kernel must match, and running a whole plan checks the lowering without a GPU.

use tract_onnx::prelude::*;

use super::ir::{BinOp, Conv2d, Plan, RedOp, Step, UnOp, MAX_RANK};
use super::PlanError;
use edgefuse_models::quant::gemm;

/// Execute `plan` on the CPU with the reference loops; returns the output buffers. Checks the
/// lowering without a GPU; every step's loop is the definition the GPU kernel must match.
pub fn run_reference(plan: &Plan, input: &[f32]) -> Result<Vec<Vec<f32>>, PlanError> {
    let mut mem: Vec<Vec<f32>> = plan
        .buffers
        .iter()
        .map(|b| match &b.init {
            Some(d) => d.to_vec(),
            None => vec![0.0; b.len()],
        })
        .collect();
    if input.len() != mem[plan.input].len() {
        return Err(PlanError::Unsupported(format!(
            "input has {} values, the plan expects {}",
            input.len(),
            mem[plan.input].len()
        )));
    }
    mem[plan.input].copy_from_slice(input);
    for step in &plan.steps {
        exec_cpu(step, &mut mem)?;
    }
    Ok(plan.outputs.iter().map(|o| mem[*o].clone()).collect())
}

fn take(mem: &mut [Vec<f32>], out: usize) -> Vec<f32> {
    std::mem::take(&mut mem[out])
}

fn exec_cpu(step: &Step, mem: &mut [Vec<f32>]) -> Result<(), PlanError> {
    match step {
        Step::Binary {
            op,
            a,
            b,
            out,
            shape,
        } => {
            let mut y = take(mem, *out);
            let d = shape.dims.map(|v| v as usize);
            for (i, yv) in y.iter_mut().enumerate() {
                let (mut r, mut ia, mut ib) = (i, 0usize, 0usize);
                for ax in (0..MAX_RANK).rev() {
                    let c = r % d[ax];
                    r /= d[ax];
                    ia += c * shape.sa[ax] as usize;
                    ib += c * shape.sb[ax] as usize;
                }
                let (x1, x2) = (mem[*a][ia], mem[*b][ib]);
                *yv = match op {
                    BinOp::Add => x1 + x2,
                    BinOp::Sub => x1 - x2,
                    BinOp::Mul => x1 * x2,
                    BinOp::Div => x1 / x2,
                };
            }
            mem[*out] = y;
        }
        Step::Unary { op, x, out } => {
            let mut y = take(mem, *out);
            for (yv, v) in y.iter_mut().zip(&mem[*x]) {
                *yv = unary(*op, *v);
            }
            mem[*out] = y;
        }
        Step::Reduce { op, x, out, dims } => {
            let [o, l, n] = *dims;
            let mut y = take(mem, *out);
            for oi in 0..o {
                for ni in 0..n {
                    let it = (0..l).map(|li| mem[*x][(oi * l + li) * n + ni]);
                    y[oi * n + ni] = match op {
                        RedOp::Sum => it.sum(),
                        RedOp::Max => it.fold(f32::NEG_INFINITY, f32::max),
                        RedOp::Min => it.fold(f32::INFINITY, f32::min),
                    };
                }
            }
            mem[*out] = y;
        }
        Step::LayerNorm {
            x,
            out,
            dims: [o, l],
            scale,
            eps,
        } => {
            // The definition is the four steps it replaces, run here on scratch buffers.
            let (o, l) = (*o, *l);
            let mut tmp = vec![
                mem[*x].clone(),
                mem[*scale].clone(),
                vec![0.0; o],
                vec![0.0; o],
                vec![0.0; o * l],
                vec![0.0; o * l],
            ];
            let steps = Step::layer_norm_spelled([0, 1, 2, 3, 4, 5], o, l, *eps);
            for s in &steps {
                exec_cpu(s, &mut tmp)?;
            }
            mem[*out] = take(&mut tmp, 5);
        }
        Step::RmsNorm { x, out, dims, eps } => {
            let [o, l, n] = *dims;
            let mut y = take(mem, *out);
            for oi in 0..o {
                for ni in 0..n {
                    let at = |li: usize| (oi * l + li) * n + ni;
                    let ms = (0..l).map(|li| mem[*x][at(li)].powi(2)).sum::<f32>() / l as f32;
                    let inv = 1.0 / (ms + eps).sqrt();
                    for li in 0..l {
                        y[at(li)] = mem[*x][at(li)] * inv;
                    }
                }
            }
            mem[*out] = y;
        }
        Step::Softmax { x, out, dims } => {
            let [o, l, n] = *dims;
            let mut y = take(mem, *out);
            for oi in 0..o {
                for ni in 0..n {
                    let at = |li: usize| (oi * l + li) * n + ni;
                    let mx = (0..l)
                        .map(|li| mem[*x][at(li)])
                        .fold(f32::NEG_INFINITY, f32::max);
                    let mut s = 0.0;
                    for li in 0..l {
                        let e = (mem[*x][at(li)] - mx).exp();
                        y[at(li)] = e;
                        s += e;
                    }
                    for li in 0..l {
                        y[at(li)] /= s;
                    }
                }
            }
            mem[*out] = y;
        }
        Step::Permute { x, out, shape } => {
            let mut y = take(mem, *out);
            let d = shape.dims.map(|v| v as usize);
            for (i, yv) in y.iter_mut().enumerate() {
                let (mut r, mut src) = (i, 0usize);
                for ax in (0..MAX_RANK).rev() {
                    src += (r % d[ax]) * shape.src_strides[ax] as usize;
                    r /= d[ax];
                }
                *yv = mem[*x][src];
            }
            mem[*out] = y;
        }
        Step::Gather {
            x,
            out,
            dims,
            indices,
        } => {
            let [o, l, n] = *dims;
            let g = indices.len();
            let mut y = take(mem, *out);
            for oi in 0..o {
                for (gi, idx) in indices.iter().enumerate() {
                    let src = &mem[*x][(oi * l + *idx as usize) * n..][..n];
                    y[(oi * g + gi) * n..][..n].copy_from_slice(src);
                }
            }
            mem[*out] = y;
        }
        Step::ConcatPart {
            x,
            out,
            dims,
            total,
            offset,
        } => {
            let [o, l, n] = *dims;
            let mut y = take(mem, *out);
            for oi in 0..o {
                let src = &mem[*x][oi * l * n..][..l * n];
                y[(oi * total + offset) * n..][..l * n].copy_from_slice(src);
            }
            mem[*out] = y;
        }
        Step::MatMul { a, b, out, shape } => {
            let mut y = take(mem, *out);
            let s = shape;
            for b0 in 0..s.batch[0] as usize {
                for b1 in 0..s.batch[1] as usize {
                    for i in 0..s.m as usize {
                        for j in 0..s.n as usize {
                            let mut acc = 0f32;
                            for kk in 0..s.k as usize {
                                let ia = b0 * s.sa[0] as usize
                                    + b1 * s.sa[1] as usize
                                    + i * s.sa[2] as usize
                                    + kk * s.sa[3] as usize;
                                let ib = b0 * s.sb[0] as usize
                                    + b1 * s.sb[1] as usize
                                    + kk * s.sb[2] as usize
                                    + j * s.sb[3] as usize;
                                acc += mem[*a][ia] * mem[*b][ib];
                            }
                            y[b0 * s.sc[0] as usize
                                + b1 * s.sc[1] as usize
                                + i * s.sc[2] as usize
                                + j * s.sc[3] as usize] = acc;
                        }
                    }
                }
            }
            mem[*out] = y;
        }
        Step::Conv {
            x,
            w,
            bias,
            out,
            shape,
        } => {
            let mut y = take(mem, *out);
            conv_cpu(&mem[*x], &mem[*w], bias.map(|b| &mem[b][..]), &mut y, shape);
            mem[*out] = y;
        }
        Step::Int8Linear {
            x,
            out,
            m,
            weights: w,
            act_scale,
            epilogue,
            ..
        } => {
            // The definition: the scalar quantizer and scalar GEMM every int8 kernel matches.
            let mut qa = vec![0u8; m * w.kp];
            gemm::quantize_activations(&mem[*x], *m, w.k, w.kp, *act_scale, &mut qa);
            let mut acc = vec![0i32; m * w.n];
            gemm::gemm_scalar(&qa, *m, w, &mut acc);
            let mut y = take(mem, *out);
            for (i, a) in acc.iter().enumerate() {
                let j = i % w.n;
                // The epilogue, each operation as the step it replaces computes it.
                let mut v = *a as f32 * (act_scale * w.scales[j]);
                if let Some(b) = epilogue.bias {
                    v += mem[b][j];
                }
                if let Some(r) = epilogue.residual {
                    v += mem[r][i];
                }
                y[i] = v;
            }
            mem[*out] = y;
        }
        Step::Host {
            node,
            inputs,
            input_shapes,
            outputs,
        } => {
            let outs = eval_host(node, inputs, input_shapes, mem)?;
            for (o, t) in outputs.iter().zip(outs) {
                mem[*o] = t;
            }
        }
    }
    Ok(())
}

/// Evaluate a host node with tract, from and to f32 buffers.
pub fn eval_host(
    node: &TypedNode,
    inputs: &[usize],
    shapes: &[Vec<usize>],
    mem: &[Vec<f32>],
) -> Result<Vec<Vec<f32>>, PlanError> {
    let err = |e: TractError| PlanError::Unsupported(format!("host node `{}`: {e:#}", node.name));
    let mut tv = TVec::new();
    for (i, shape) in inputs.iter().zip(shapes) {
        let t = Tensor::from_shape(shape, &mem[*i]).map_err(err)?;
        tv.push(t.into_tvalue());
    }
    let outs =
        node.op.eval_out_of_plan(tv).map_err(err)?.ok_or_else(|| {
            PlanError::Unsupported(format!("host node `{}` needs a plan", node.name))
        })?;
    outs.into_iter()
        .map(|t| {
            let t = t.cast_to::<f32>().map_err(err)?;
            let v = t.try_as_plain_ram().map_err(err)?;
            Ok(v.as_slice::<f32>().map_err(err)?.to_vec())
        })
        .collect()
}

/// `ef_unary` on one value.
pub fn unary(op: UnOp, v: f32) -> f32 {
    match op {
        UnOp::Gelu => 0.5 * v * (1.0 + erf(v as f64 * std::f64::consts::FRAC_1_SQRT_2) as f32),
        UnOp::Exp => v.exp(),
        UnOp::Sqrt => v.sqrt(),
        UnOp::Rsqrt => 1.0 / v.sqrt(),
        UnOp::Recip => 1.0 / v,
        UnOp::Tanh => v.tanh(),
        UnOp::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        UnOp::Erf => erf(v as f64) as f32,
        UnOp::NanToZero => {
            if v.is_nan() {
                0.0
            } else {
                v
            }
        }
    }
}

/// Direct convolution (`ef_conv2d`'s definition).
pub fn conv_cpu(x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32], s: &Conv2d) {
    let [n, c, h, wd] = s.input.map(|v| v as usize);
    let [o, oh, ow] = s.output.map(|v| v as usize);
    let [kh, kw] = s.kernel.map(|v| v as usize);
    let g = s.group as usize;
    let (cg, og) = (c / g, o / g);
    for ni in 0..n {
        for oc in 0..o {
            let grp = oc / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[oc]);
                    for ic in 0..cg {
                        let ci = grp * cg + ic;
                        for ky in 0..kh {
                            let iy = (oy * s.stride[0] as usize + ky * s.dilation[0] as usize)
                                as isize
                                - s.pad[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * s.stride[1] as usize + kx * s.dilation[1] as usize)
                                    as isize
                                    - s.pad[1] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                acc += x[((ni * c + ci) * h + iy as usize) * wd + ix as usize]
                                    * w[((oc * cg + ic) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    y[((ni * o + oc) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
}

/// Error function (Abramowitz–Stegun 7.1.26 is too coarse here: this is the series / continued
/// fraction pair, accurate to ~1e-15).
pub fn erf(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 2.5 {
        // Maclaurin series.
        let mut term = ax;
        let mut sum = ax;
        let x2 = ax * ax;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc continued fraction (Lentz).
        let tiny = 1e-300;
        let mut f = ax;
        let mut c = ax;
        let mut d = 0.0;
        for i in 1..200 {
            let a = i as f64 / 2.0;
            d = ax + a * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = ax + a / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt())
    };
    r.copysign(x)
}
