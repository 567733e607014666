//! Einsums as strided batched matrix products: which axes are batch, rows, columns and
//! contraction, merged into at most two batch axes.

use tract_onnx::tract_core::ops::einsum::EinSum;

use super::ir::{strides, MatMul};

/// Map a two-input einsum with operand shapes `sa`, `sb` and output shape `sc` onto a strided
/// batched matrix product, `None` when its axes do not fit (an axis summed within one input, more
/// than two batch axes, unmergeable groups).
pub(super) fn einsum_matmul(
    e: &EinSum,
    sa: &[usize],
    sb: &[usize],
    sc: &[usize],
) -> Option<MatMul> {
    let (ta, tb, tc) = (strides(sa), strides(sb), strides(sc));
    // Per role: (size, stride in A, in B, in C), 0 stride where absent.
    let mut batch = Vec::new();
    let (mut m, mut n, mut k) = (Vec::new(), Vec::new(), Vec::new());
    for ax in e.axes.iter_all_axes() {
        let pa = ax.inputs.first().and_then(|p| p.first()).copied();
        let pb = ax.inputs.get(1).and_then(|p| p.first()).copied();
        let pc = ax.outputs.first().and_then(|p| p.first()).copied();
        if ax.inputs.iter().any(|p| p.len() > 1) || ax.outputs.iter().any(|p| p.len() > 1) {
            return None;
        }
        let sizes = [pa.map(|p| sa[p]), pb.map(|p| sb[p]), pc.map(|p| sc[p])];
        let size = sizes.iter().flatten().copied().max().unwrap_or(1);
        // einsum broadcasts a size-1 axis against a longer one: not a plain product.
        if sizes.iter().flatten().any(|s| *s != size) {
            return None;
        }
        if size == 1 {
            continue;
        }
        let entry = (
            size,
            pa.map_or(0, |p| ta[p]),
            pb.map_or(0, |p| tb[p]),
            pc.map_or(0, |p| tc[p]),
        );
        match (pa.is_some(), pb.is_some(), pc.is_some()) {
            (true, true, true) => batch.push(entry),
            (true, false, true) => m.push(entry),
            (false, true, true) => n.push(entry),
            (true, true, false) => k.push(entry),
            _ => return None,
        }
    }
    let k = merge(k)?;
    let m = rows_or_batch(m, &mut batch)?;
    let n = rows_or_batch(n, &mut batch)?;
    let batch = match batch.len() {
        0 => vec![(1, 0, 0, 0), (1, 0, 0, 0)],
        1 => vec![(1, 0, 0, 0), batch[0]],
        2 => batch,
        _ => match merge(batch.clone()) {
            Some(b) => vec![(1, 0, 0, 0), b],
            None => return None,
        },
    };
    let i = |v: usize| v as i32;
    Some(MatMul {
        batch: [i(batch[0].0), i(batch[1].0)],
        m: i(m.0),
        n: i(n.0),
        k: i(k.0),
        sa: [i(batch[0].1), i(batch[1].1), i(m.1), i(k.1)],
        sb: [i(batch[0].2), i(batch[1].2), i(k.2), i(n.2)],
        sc: [i(batch[0].3), i(batch[1].3), i(m.3), i(n.3)],
    })
}

/// The row (or column) axis of a product: the role's axes merged, or, when they do not merge
/// (e.g. `[candidates, tokens]` rows stored in another order in the output than in the input:
/// a batched model's linear layer after tract folded a transpose into it), the largest axis
/// alone with the others merged into one more batch axis (absent from the other operand: stride
/// 0 there).
fn rows_or_batch(axes: Vec<Axis>, batch: &mut Vec<Axis>) -> Option<Axis> {
    if let Some(r) = merge(axes.clone()) {
        return Some(r);
    }
    let mut order: Vec<usize> = (0..axes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(axes[i].0));
    for keep in order {
        let rest: Vec<Axis> = (0..axes.len())
            .filter(|&i| i != keep)
            .map(|i| axes[i])
            .collect();
        if let Some(b) = merge(rest) {
            batch.push(b);
            return Some(axes[keep]);
        }
    }
    None
}

/// One axis of a product: (size, stride in A, in B, in C), 0 where absent.
type Axis = (usize, usize, usize, usize);

/// Merge the axes of one role into a single (size, strides) when they are contiguous in every
/// operand that has them; an empty role is a size-1 axis.
fn merge(mut axes: Vec<Axis>) -> Option<Axis> {
    if axes.is_empty() {
        return Some((1, 0, 0, 0));
    }
    // Innermost first, by the largest stride among operands ascending.
    axes.sort_by_key(|a| a.1.max(a.2).max(a.3));
    let mut acc = axes[0];
    for a in &axes[1..] {
        let ok = |outer: usize, inner: usize| outer == 0 || outer == inner * acc.0;
        if !(ok(a.1, acc.1) && ok(a.2, acc.2) && ok(a.3, acc.3)) {
            return None;
        }
        // Both present or both absent in each operand.
        if (a.1 == 0) != (acc.1 == 0) || (a.2 == 0) != (acc.2 == 0) || (a.3 == 0) != (acc.3 == 0) {
            return None;
        }
        acc.0 *= a.0;
    }
    Some(acc)
}
