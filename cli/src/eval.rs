//! `edgefuse eval`: every head and every fusion method a bundle can run, measured on labelled
//! frames: top-1 accuracy and the cost per frame, as one table.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use edgefuse_runtime::fusion::{argmax, FusionHead};
use edgefuse_runtime::rerank::Reranker;

use crate::fit::{read_labelled, Selection};
use crate::output::Out;
use crate::paths::{open_bundle, ModelArg};
use crate::UsageError;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Labelled frames: file://FOLDER with a labels.csv (`file,label` lines, one header line).
    #[arg(long, value_name = "URI")]
    source: String,
    /// Skip the first N frames of each label (in file-name order): those `fit --per-label N`
    /// fitted on, so the measured frames are disjoint from them.
    #[arg(long, value_name = "N", default_value_t = 0)]
    skip_per_label: u64,
    /// Then measure at most N frames of each label.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    per_label: Option<u64>,
    /// Frames labelled LABEL are not measured (repeatable).
    #[arg(long, value_name = "LABEL")]
    ignore_label: Vec<String>,
}

/// One row of the table.
struct Row {
    kind: &'static str,
    name: String,
    right: usize,
    /// Time of this row's own step per frame (the heads together, or the combination).
    own: Duration,
    /// The models, the heads and (for a fusion) the combination, per frame.
    total: Duration,
    chosen: bool,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let bundle = open_bundle(a.model.model.as_deref())?;
    let sel = Selection {
        skip: a.skip_per_label,
        take: a.per_label,
        ignore: a.ignore_label.clone(),
        hash: false,
    };
    let frames = read_labelled(&bundle, &a.source, &sel)?;
    let n = frames.truth.len();
    if n == 0 {
        return Err(UsageError(format!(
            "{}: no labelled frames to measure{}",
            a.source,
            frames
                .left_out()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default()
        ))
        .into());
    }
    let mut head = FusionHead::from_bundle(&bundle, frames.has_qformer);
    let heads = head.heads().to_vec();
    let methods = head.methods();
    let mut head_right = vec![0usize; heads.len()];
    let mut method_right = vec![0usize; methods.len()];
    let mut heads_time = Duration::ZERO;
    let mut method_time = vec![Duration::ZERO; methods.len()];
    // The re-ranker after each method (one thread, like the rest of the table).
    let mut rerank = if frames.has_qformer {
        let pool = edgefuse_runtime::plan::Pool::new(1).context("cannot start the CPU pool")?;
        // An optional extra: a re-ranker that does not load leaves its rows out, not the table.
        match Reranker::new(&bundle, Some(std::sync::Arc::new(pool))) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("{e}; the table has no re-ranker rows");
                None
            }
        }
    } else {
        None
    };
    let mut rerank_right = vec![0usize; methods.len()];
    let mut rerank_time = vec![Duration::ZERO; methods.len()];
    for i in 0..n {
        let (e, q) = frames.frame(i);
        let t = Instant::now();
        head.heads_only(e, q);
        heads_time += t.elapsed();
        let y = usize::from(frames.truth[i]);
        for (h, r) in head_right.iter_mut().enumerate() {
            *r += usize::from(argmax(head.head_logits(h)) == y);
        }
        for (k, m) in methods.iter().enumerate() {
            let t = Instant::now();
            head.combine(*m);
            method_time[k] += t.elapsed();
            method_right[k] += usize::from(argmax(head.probabilities()) == y);
            if let (Some(r), Some(q)) = (rerank.as_mut(), q) {
                let t = Instant::now();
                r.run(&mut head, q).context("the re-ranker failed")?;
                rerank_time[k] += t.elapsed();
                rerank_right[k] += usize::from(argmax(head.probabilities()) == y);
            }
        }
    }
    let per = |d: Duration| d / n as u32;
    let models = frames.encoder + frames.qformer;
    let heads_per = per(heads_time);
    let mut rows = Vec::new();
    for (h, kind) in heads.iter().enumerate() {
        let model = match kind {
            edgefuse_models::fitted::Head::Qformer => models,
            _ => frames.encoder,
        };
        rows.push(Row {
            kind: "head",
            name: kind.name().to_string(),
            right: head_right[h],
            own: heads_per,
            total: model + heads_per,
            chosen: false,
        });
    }
    for (k, m) in methods.iter().enumerate() {
        rows.push(Row {
            kind: "fusion",
            name: m.name().to_string(),
            right: method_right[k],
            own: per(method_time[k]),
            total: models + heads_per + per(method_time[k]),
            chosen: *m == head.method(),
        });
    }
    if let Some(r) = &rerank {
        for (k, m) in methods.iter().enumerate() {
            rows.push(Row {
                kind: "rerank",
                name: format!("{} + itm top-{}", m.name(), r.candidates()),
                right: rerank_right[k],
                own: per(rerank_time[k]),
                total: models + heads_per + per(method_time[k]) + per(rerank_time[k]),
                chosen: false,
            });
        }
    }

    let mut o = Out::lock();
    let manifest = bundle.manifest();
    writeln!(
        o,
        "eval: {} {} ({}), {n} labelled frames of {}{}",
        manifest.name,
        bundle.dir().display(),
        if bundle.is_int8() { "int8" } else { "float" },
        a.source,
        if a.skip_per_label > 0 {
            format!(", skipping the first {} of each label", a.skip_per_label)
        } else {
            String::new()
        }
    )?;
    if let Some(f) = &manifest.fusion_fitted {
        writeln!(
            o,
            "fitted on {} frames of {} (sha256 {}…)",
            f.frames,
            f.source,
            &f.frames_sha256[..f.frames_sha256.len().min(12)]
        )?;
    }
    if let Some(l) = frames.left_out() {
        writeln!(o, "{l}")?;
    }
    writeln!(
        o,
        "models per frame on {}: encoder {:.1} µs, q-former {:.1} µs (means)",
        frames.device,
        micros(frames.encoder),
        micros(frames.qformer)
    )?;
    writeln!(
        o,
        "{:<7} {:<32} {:>8}  {:>10}  {:>10}",
        "kind", "name", "top-1", "own µs", "total µs"
    )?;
    for r in &rows {
        writeln!(
            o,
            "{:<7} {:<32} {:>7.2}%  {:>10.2}  {:>10.1}{}",
            r.kind,
            r.name,
            100.0 * r.right as f64 / n as f64,
            micros(r.own),
            micros(r.total),
            if r.chosen {
                "  * the bundle's method"
            } else {
                ""
            }
        )?;
    }
    writeln!(
        o,
        "own: a head row is every head together, a fusion row its combination alone, a rerank row the re-ranker alone (its model on the shortlist: what `run --rerank` adds); total: the models the row needs + heads + combination (+ re-ranker)"
    )?;
    Ok(o.finish()?)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
