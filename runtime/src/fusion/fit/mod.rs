//! Fitting the fusion on labelled frames, on the device, deterministically.
//!
//! The caller runs each frame through the pipeline once and hands the zero-shot heads' outputs
//! to a [`FitData`]. [`fit`] then:
//!
//! 1. checks every label has frames (a method that cannot be fitted is refused, naming the
//!    labels and their counts);
//! 2. splits the frames into `k` stratified folds (each label's frames cut into `k` consecutive
//!    runs, in order: no randomness, and near-identical neighbouring frames stay together);
//! 3. fits the **adapter** (a multinomial logistic regression on the normalised image
//!    embedding, initialised at and regularised toward the CLIP head, `W0 = scale * label
//!    embeddings`), choosing its L2 strength by k-fold cross-validation; its out-of-fold logits
//!    become the adapter head's column for step 4, so the fusion never learns to trust an
//!    adapter that has seen the frame;
//! 4. for each candidate method, chooses its L2 strength by k-fold cross-validation (accuracy,
//!    then log-loss), records the cross-validated accuracy and refits on every frame;
//! 5. keeps the simplest method within one standard error of the best cross-validated accuracy
//!    (fixed rules first); with several candidates, when the bundle's zero-shot rule on the
//!    zero-shot heads is itself within that error, keeps it (the adapter weighted 0): a fit
//!    that does not clearly help is not taken.

mod train;

use std::collections::BTreeMap;

use edgefuse_models::fitted::{gate_features, Adapter, FittedParams, Head};
use edgefuse_models::manifest::FusionMethod;

use super::{combine, FusionHead};
use train::{Model, Table};

/// The adapter's weight in the fixed rules of a fitted bundle.
pub const ADAPTER_WEIGHT: f32 = 1.0;
/// The adapter's L2 strengths (toward the CLIP head) that cross-validation chooses from.
const ADAPTER_L2: [f64; 9] = [1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4];

/// Why a fit cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// Labels with fewer labelled frames than the method needs.
    #[error("{what} needs at least {need} labelled frame(s) per label; too few for {}: label the frames of these labels in labels.csv, or remove the labels from the bundle (`edgefuse labels remove`)", list(.short))]
    TooFewFrames {
        /// The method, or "fitting".
        what: String,
        /// Frames needed per label.
        need: usize,
        /// `(label, frames)` of the labels short of frames.
        short: Vec<(String, usize)>,
    },
    /// A frame's head outputs are not finite.
    #[error("frame {0}: the model's outputs are not finite (NaN or infinity); check the frame and the bundle (`edgefuse calibrate` fidelity report for an int8 bundle)")]
    NotFinite(String),
    /// A fit ended with non-finite parameters.
    #[error(
        "fitting {0} gave non-finite parameters (a degenerate problem); choose another --method"
    )]
    Degenerate(String),
}

fn list(short: &[(String, usize)]) -> String {
    short
        .iter()
        .map(|(l, c)| format!("`{l}` ({c} frame{})", if *c == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The zero-shot heads' outputs of the labelled frames.
#[derive(Debug, Clone)]
pub struct FitData {
    labels: usize,
    dim: usize,
    with_qformer: bool,
    /// `[frames, zero-shot heads * labels]`.
    logits: Vec<f32>,
    /// `[frames, pooled]` (see [`FusionHead::pooled`]).
    pooled: Vec<f32>,
    truth: Vec<u16>,
}

impl FitData {
    /// Empty, for `head`'s shape (a zero-shot [`FusionHead`]).
    pub fn new(head: &FusionHead) -> Self {
        Self {
            labels: head.labels(),
            dim: head.dim,
            with_qformer: head.qf_scale.is_some(),
            logits: Vec::new(),
            pooled: Vec::new(),
            truth: Vec::new(),
        }
    }

    /// Add the frame `head` last ran ([`FusionHead::heads_only`]) with its true label index.
    /// `name` names the frame in errors.
    pub fn push(&mut self, head: &FusionHead, truth: u16, name: &str) -> Result<(), FitError> {
        let zs = self.labels * (1 + usize::from(self.with_qformer));
        let logits = &head.logits[..zs];
        if !logits.iter().chain(head.pooled()).all(|v| v.is_finite()) || !head.complete {
            return Err(FitError::NotFinite(name.to_string()));
        }
        self.logits.extend_from_slice(logits);
        self.pooled.extend_from_slice(head.pooled());
        self.truth.push(truth);
        Ok(())
    }

    /// Frames added.
    pub fn frames(&self) -> usize {
        self.truth.len()
    }
}

/// What to fit.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Candidate methods (`--method auto`: all of them); the best by cross-validation is kept.
    pub methods: Vec<FusionMethod>,
    /// Fit the few-shot adapter head.
    pub adapter: bool,
    /// Most folds of the cross-validation.
    pub folds: usize,
    /// Label names (for messages).
    pub label_names: Vec<String>,
    /// The CLIP head's label embeddings `[labels, dim]` (rows L2-normalised) and logit scale:
    /// the adapter's starting point and prior.
    pub label_embeddings: Vec<f32>,
    /// The CLIP head's logit scale.
    pub clip_scale: f32,
    /// The zero-shot heads' weights in the fixed rules (`[fusion.clip]`, `[fusion.qformer]`).
    pub weights: Vec<f32>,
    /// The bundle's zero-shot method (kept by `auto` when fitting does not clearly help).
    pub zero_shot: FusionMethod,
}

/// What [`fit`] found.
#[derive(Debug, Clone)]
pub struct FitResult {
    /// Every fitted parameter.
    pub params: FittedParams,
    /// The method kept.
    pub method: FusionMethod,
    /// Cross-validated top-1 accuracy of each head (`clip`, `qformer`, `adapter`) and of each
    /// method evaluated (fixed rules: on every frame, with the adapter's out-of-fold logits).
    pub cv_accuracy: BTreeMap<String, f64>,
    /// Folds used.
    pub folds: usize,
    /// Candidates left out, and why.
    pub skipped: Vec<(FusionMethod, String)>,
}

/// Fit `opts.methods` (and the adapter) on `data`. Deterministic: the same frames in the same
/// order give the same parameters.
pub fn fit(data: &FitData, opts: &FitOptions) -> Result<FitResult, FitError> {
    let n = data.labels;
    let frames = data.frames();
    let mut counts = vec![0usize; n];
    data.truth.iter().for_each(|&y| counts[usize::from(y)] += 1);
    let short = |need: usize| -> Vec<(String, usize)> {
        counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c < need)
            .map(|(l, c)| (opts.label_names[l].clone(), *c))
            .collect()
    };
    let none = short(1);
    if !none.is_empty() {
        return Err(FitError::TooFewFrames {
            what: "fitting".into(),
            need: 1,
            short: none,
        });
    }
    let min = counts.iter().copied().min().unwrap_or(0);
    // Methods with a meta-classifier hold frames out in cross-validation: two per label.
    let mut methods = Vec::new();
    let mut skipped = Vec::new();
    for &m in &opts.methods {
        if m.needs_fit() && min < 2 {
            if opts.methods.len() == 1 {
                return Err(FitError::TooFewFrames {
                    what: m.name().into(),
                    need: 2,
                    short: short(2),
                });
            }
            skipped.push((
                m,
                format!("needs 2 labelled frames per label; {}", list(&short(2))),
            ));
        } else {
            methods.push(m);
        }
    }
    // At least two frames of each label in each fold where there are enough: neighbouring frames
    // (often the same object) then tend to share a fold instead of validating each other.
    let k = if min >= 2 {
        opts.folds.min(min / 2)
    } else {
        opts.folds.min(frames)
    }
    .max(2);
    let folds = assign_folds(&data.truth, n, k);
    let mut cv = BTreeMap::new();

    let zs_heads = 1 + usize::from(data.with_qformer);
    let mut heads = vec![Head::Clip];
    if data.with_qformer {
        heads.push(Head::Qformer);
    }
    let mut weights = opts.weights.clone();
    // Head logits per frame: the zero-shot ones, then the adapter's out-of-fold ones.
    let mut logits = data.logits.clone();
    let mut adapter = None;
    if opts.adapter {
        let (a, oof, acc) = fit_adapter(data, opts, &folds, k)?;
        let h = zs_heads + 1;
        let mut with = Vec::with_capacity(frames * h * n);
        for i in 0..frames {
            with.extend_from_slice(&data.logits[i * zs_heads * n..(i + 1) * zs_heads * n]);
            with.extend_from_slice(&oof[i * n..(i + 1) * n]);
        }
        logits = with;
        heads.push(Head::Adapter);
        weights.push(ADAPTER_WEIGHT);
        cv.insert("adapter".to_string(), acc);
        adapter = Some(Adapter {
            linear: a,
            weight: ADAPTER_WEIGHT,
        });
    }
    let table = build_table(data, heads.len(), logits, weights);
    for (h, name) in heads.iter().enumerate().take(zs_heads) {
        let right = (0..frames)
            .filter(|&i| {
                combine::argmax(&table.logits(i)[h * n..(h + 1) * n]) == usize::from(table.truth[i])
            })
            .count();
        cv.insert(name.name().to_string(), right as f64 / frames as f64);
    }

    let all: Vec<usize> = (0..frames).collect();
    let mut params = FittedParams {
        heads,
        adapter,
        learned_weights: None,
        stacking: None,
        gated: None,
        concat: None,
    };
    let mut scores: Vec<(FusionMethod, f64)> = Vec::new();
    for m in methods {
        let (acc, model) = if m.needs_fit() {
            let (l2, acc) = choose_l2(m, &table, &folds, k);
            let model = train::fit(m, &table, &all, l2)
                .ok_or_else(|| FitError::Degenerate(m.name().into()))?;
            (acc, model)
        } else {
            (score(m, &Model::Fixed, &table, &all).0, Model::Fixed)
        };
        log::info!("fit: {} cross-validated accuracy {:.4}", m.name(), acc);
        cv.insert(m.name().to_string(), acc);
        match (m, model) {
            (FusionMethod::LearnedWeights, Model::Weights(w)) => params.learned_weights = Some(w),
            (FusionMethod::Stacking, Model::Linear(l)) => params.stacking = Some(l),
            (FusionMethod::Gated, Model::Linear(l)) => params.gated = Some(l),
            (FusionMethod::Concat, Model::Linear(l)) => params.concat = Some(l),
            _ => {}
        }
        scores.push((m, acc));
    }
    let method = choose(&scores, frames, opts, &table, &mut params, &mut cv);
    Ok(FitResult {
        params,
        method,
        cv_accuracy: cv,
        folds: k,
        skipped,
    })
}

/// Fold of each frame: each label's frames, in order, cut into `k` consecutive runs. Frames next
/// to each other (a camera seeing the same object a few times) stay in one fold, so the
/// cross-validation never scores a frame against its near-twin.
fn assign_folds(truth: &[u16], labels: usize, k: usize) -> Vec<usize> {
    let mut folds = vec![0; truth.len()];
    for l in 0..labels {
        let idx: Vec<usize> = (0..truth.len())
            .filter(|&i| usize::from(truth[i]) == l)
            .collect();
        let c = idx.len();
        for (j, &i) in idx.iter().enumerate() {
            folds[i] = j * k / c.max(1);
        }
    }
    folds
}

/// The method to keep among the evaluated `scores` (in [`FusionMethod::ALL`] order, simplest
/// first): the first within one standard error of the best cross-validated accuracy. Then, with
/// `--method auto` and an adapter, when the bundle's zero-shot rule on the zero-shot heads alone
/// is also within that error, the fit is not worth its risk: that rule is kept and the adapter
/// gets weight 0 in it (`zero_shot` in the record).
fn choose(
    scores: &[(FusionMethod, f64)],
    frames: usize,
    opts: &FitOptions,
    table: &Table,
    params: &mut FittedParams,
    cv: &mut BTreeMap<String, f64>,
) -> FusionMethod {
    let Some(best) = scores.iter().map(|s| s.1).reduce(f64::max) else {
        return opts.zero_shot;
    };
    let se = (best * (1.0 - best) / frames.max(1) as f64).sqrt();
    let pick = scores
        .iter()
        .find(|s| s.1 >= best - se - 1e-12)
        .map_or(opts.zero_shot, |s| s.0);
    let weighted = matches!(
        opts.zero_shot,
        FusionMethod::WeightedLogits | FusionMethod::WeightedProbabilities
    );
    if scores.len() > 1 && weighted {
        if let Some(a) = params.adapter.as_mut() {
            let mut t = table.clone();
            *t.weights.last_mut().expect("the adapter's weight") = 0.0;
            let all: Vec<usize> = (0..frames).collect();
            let zs = score(opts.zero_shot, &Model::Fixed, &t, &all).0;
            cv.insert("zero_shot".into(), zs);
            if zs >= best - se - 1e-12 {
                log::info!(
                    "fit: the zero-shot heads ({zs:.4}) are within one standard error ({se:.4}) of the best ({best:.4}); keeping {}",
                    opts.zero_shot.name()
                );
                a.weight = 0.0;
                return opts.zero_shot;
            }
        }
    }
    pick
}

fn split(folds: &[usize], f: usize) -> (Vec<usize>, Vec<usize>) {
    (0..folds.len()).partition(|&i| folds[i] != f)
}

/// Top-1 accuracy and mean log-loss of `model` on the frames `idx`.
fn score(m: FusionMethod, model: &Model, t: &Table, idx: &[usize]) -> (f64, f64) {
    let mut out = vec![0.0; t.labels];
    let mut gates = vec![0.0; t.heads];
    let (mut right, mut loss) = (0usize, 0f64);
    for &i in idx {
        train::predict(m, model, t, i, &mut gates, &mut out);
        let y = usize::from(t.truth[i]);
        right += usize::from(combine::argmax(&out) == y);
        loss -= f64::from(out[y].max(1e-12)).ln();
    }
    let d = idx.len().max(1) as f64;
    (right as f64 / d, loss / d)
}

/// The L2 strength of `m` with the best k-fold accuracy (then log-loss), and that accuracy.
fn choose_l2(m: FusionMethod, t: &Table, folds: &[usize], k: usize) -> (f64, f64) {
    let mut best = (0.0, -1.0, f64::INFINITY);
    for &l2 in train::l2_grid(m) {
        let (mut right, mut loss, mut total) = (0.0, 0.0, 0usize);
        for f in 0..k {
            let (tr, te) = split(folds, f);
            if te.is_empty() {
                continue;
            }
            let (acc, ll) = match train::fit(m, t, &tr, l2) {
                Some(model) => score(m, &model, t, &te),
                None => (0.0, f64::INFINITY),
            };
            right += acc * te.len() as f64;
            loss += ll * te.len() as f64;
            total += te.len();
        }
        let (acc, ll) = (right / total.max(1) as f64, loss / total.max(1) as f64);
        if acc > best.1 || (acc == best.1 && ll < best.2) {
            best = (l2, acc, ll);
        }
    }
    (best.0, best.1)
}

/// The adapter on every frame, its out-of-fold logits `[frames, labels]` at the chosen L2, and
/// its cross-validated accuracy.
fn fit_adapter(
    data: &FitData,
    opts: &FitOptions,
    folds: &[usize],
    k: usize,
) -> Result<(edgefuse_models::fitted::Linear, Vec<f32>, f64), FitError> {
    let (n, dim) = (data.labels, data.dim);
    let pl = data.pooled.len() / data.frames().max(1);
    let x = |i: usize| &data.pooled[i * pl..i * pl + dim];
    let prior: Vec<f32> = opts
        .label_embeddings
        .iter()
        .map(|v| v * opts.clip_scale)
        .collect();
    let mut best: Option<(f64, f64, f64, Vec<f32>)> = None;
    let mut z = vec![0.0; n];
    for &l2 in &ADAPTER_L2 {
        let mut oof = vec![0.0; data.frames() * n];
        let (mut right, mut loss) = (0usize, 0f64);
        for f in 0..k {
            let (tr, te) = split(folds, f);
            if te.is_empty() {
                continue;
            }
            let lin = train::logreg(&x, &data.truth, &tr, n, dim, Some(&prior), l2)
                .ok_or_else(|| FitError::Degenerate("the adapter".into()))?;
            for &i in &te {
                combine::linear(&lin, x(i), &mut oof[i * n..(i + 1) * n]);
                z.copy_from_slice(&oof[i * n..(i + 1) * n]);
                combine::softmax(&mut z);
                let y = usize::from(data.truth[i]);
                right += usize::from(combine::argmax(&z) == y);
                loss -= f64::from(z[y].max(1e-12)).ln();
            }
        }
        let acc = right as f64 / data.frames() as f64;
        log::info!("fit: adapter l2 {l2}: cross-validated accuracy {acc:.4}, log-loss {loss:.3}");
        if best
            .as_ref()
            .is_none_or(|b| acc > b.1 || (acc == b.1 && loss < b.2))
        {
            best = Some((l2, acc, loss, oof));
        }
    }
    let (l2, acc, _, oof) = best.expect("the L2 grid is not empty");
    let all: Vec<usize> = (0..data.frames()).collect();
    let lin = train::logreg(&x, &data.truth, &all, n, dim, Some(&prior), l2)
        .ok_or_else(|| FitError::Degenerate("the adapter".into()))?;
    Ok((lin, oof, acc))
}

fn build_table(data: &FitData, heads: usize, logits: Vec<f32>, weights: Vec<f32>) -> Table {
    let n = data.labels;
    let frames = data.frames();
    let mut probs = logits.clone();
    probs.chunks_exact_mut(n).for_each(combine::softmax);
    let pooled_len = data.pooled.len() / frames.max(1);
    let fl = gate_features(heads, data.with_qformer);
    let mut features = vec![0.0; frames * fl];
    for i in 0..frames {
        let p = &data.pooled[i * pooled_len..(i + 1) * pooled_len];
        let cosine = data.with_qformer.then(|| {
            let (a, b) = p.split_at(data.dim);
            combine::dot(a, b)
        });
        combine::gate_features(
            &probs[i * heads * n..(i + 1) * heads * n],
            n,
            cosine,
            &mut features[i * fl..(i + 1) * fl],
        );
    }
    Table {
        labels: n,
        heads,
        logits,
        probs,
        features,
        feature_len: fl,
        pooled: data.pooled.clone(),
        pooled_len,
        truth: data.truth.clone(),
        weights,
    }
}

#[cfg(test)]
mod tests;
