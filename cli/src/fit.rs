//! `edgefuse fit`: labelled frames of the user's own source → the adapter head and the fusion
//! methods' parameters (fitted in `edgefuse_runtime::fusion::fit`) → a new bundle, staged next
//! to `--out` and renamed into place like `calibrate`'s. Also the labelled-frame reader that
//! `eval` shares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use edgefuse_calibration as cal;
use edgefuse_models::bundle::FitRecord;
use edgefuse_models::files::{rename, sync_dir};
use edgefuse_models::manifest::FusionMethod;
use edgefuse_models::{sha256_hex, Bundle};
use edgefuse_runtime::capture::{self, Uri};
use edgefuse_runtime::frame::Frame;
use edgefuse_runtime::fusion::fit::{self as fitting, FitData, FitOptions};
use edgefuse_runtime::fusion::FusionHead;
use edgefuse_runtime::pipeline::{Pipeline, PipelineConfig};

use crate::output::{Escaped, Out};
use crate::paths::{open_bundle, ModelArg};
use crate::UsageError;

#[derive(Args, Debug)]
pub struct FitArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Labelled frames: file://FOLDER with a labels.csv (`file,label` lines, one header line).
    #[arg(long, value_name = "URI")]
    source: String,
    /// auto (fit every method, keep the best by cross-validation), or one of weighted_logits,
    /// weighted_probabilities, max, voting, learned_weights, stacking, gated, concat.
    #[arg(long, default_value = "auto")]
    method: String,
    /// Use only the first N frames of each label (in file-name order); `eval --skip-per-label N`
    /// then measures on the others.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    per_label: Option<u64>,
    /// Do not fit the few-shot adapter head (fuse the zero-shot heads only).
    #[arg(long)]
    no_adapter: bool,
    /// Most folds of the cross-validation.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=20))]
    folds: u64,
    /// Frames labelled LABEL are not used (repeatable), e.g. `none` for empty frames of a
    /// bundle without such a label.
    #[arg(long, value_name = "LABEL")]
    ignore_label: Vec<String>,
    /// The bundle folder to create (must not exist).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Which labelled frames to read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    /// Skip the first N frames of each label.
    pub skip: u64,
    /// Then take at most N frames of each label.
    pub take: Option<u64>,
    /// Labels whose frames are not used.
    pub ignore: Vec<String>,
    /// Hash the frames' bytes (for the fit's record).
    pub hash: bool,
}

/// The labelled frames' model outputs.
pub(crate) struct Labelled {
    /// `[frames, dim]` pooled image embeddings.
    pub embeddings: Vec<f32>,
    /// `[frames, queries * dim]` Q-Former outputs (empty without one).
    pub queries: Vec<f32>,
    /// True label index per frame.
    pub truth: Vec<u16>,
    /// File name per frame.
    pub names: Vec<String>,
    /// Frames of the folder without a line in labels.csv, ignored labels, or outside the
    /// selection; broken frames.
    pub unlabelled: u64,
    pub ignored: u64,
    pub outside: u64,
    pub broken: u64,
    /// Mean encoder and Q-Former time per frame.
    pub encoder: Duration,
    pub qformer: Duration,
    /// sha256 over the frames' names, labels and file hashes (with `Selection::hash`).
    pub sha256: String,
    /// Whether the pipeline ran a Q-Former.
    pub has_qformer: bool,
    pub device: String,
}

/// The folder of a `file://` URI that has a labels.csv, or a usage error saying what is needed.
fn labelled_folder(uri: &str) -> Result<PathBuf> {
    let u = Uri::parse(uri)?;
    if u.scheme != "file" || !Path::new(&u.path).is_dir() {
        return Err(UsageError(format!(
            "--source {uri}: fit and eval read a folder of labelled frames: file://FOLDER with a labels.csv"
        ))
        .into());
    }
    let dir = PathBuf::from(&u.path);
    if !dir.join(cal::truth::LABELS_CSV).exists() {
        return Err(UsageError(format!(
            "{} has no labels.csv: fit and eval need each frame's true label, as a file `labels.csv` in the folder with a header line and one `file,label` line per frame",
            dir.display()
        ))
        .into());
    }
    Ok(dir)
}

/// Run the labelled frames of `uri` through `bundle`'s pipeline once, keeping each frame's
/// embedding and queries.
pub(crate) fn read_labelled(bundle: &Bundle, uri: &str, sel: &Selection) -> Result<Labelled> {
    let dir = labelled_folder(uri)?;
    let truth_map = cal::truth::read_labels_csv(&dir)
        .with_context(|| format!("cannot read {}", dir.join(cal::truth::LABELS_CSV).display()))?;
    let names: Vec<String> = bundle.label_names().map(str::to_string).collect();
    let mut unknown: BTreeMap<&str, usize> = BTreeMap::new();
    for l in truth_map.values() {
        if !names.contains(l) && !sel.ignore.contains(l) {
            *unknown.entry(l.as_str()).or_default() += 1;
        }
    }
    if !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|(l, c)| format!("`{}` ({c} frames)", Escaped(l)))
            .collect();
        return Err(UsageError(format!(
            "{}: labels the bundle does not have: {}; the bundle's labels are {:?}. Add them (`edgefuse labels add`) or leave those frames out with --ignore-label LABEL",
            dir.join(cal::truth::LABELS_CSV).display(),
            list.join(", "),
            names
        ))
        .into());
    }
    let mut source = capture::open(uri)?;
    // Only the models' outputs are kept: the re-ranker runs where they are used (eval).
    let cfg = PipelineConfig {
        rerank: false,
        ..Default::default()
    };
    let mut pipeline = Pipeline::new(bundle, cfg).context("cannot build the pipeline")?;
    let mut frame = Frame::with_capacity(source.max_frame_bytes());
    let mut seen = vec![0u64; names.len()];
    let mut out = Labelled {
        embeddings: Vec::new(),
        queries: Vec::new(),
        truth: Vec::new(),
        names: Vec::new(),
        unlabelled: 0,
        ignored: 0,
        outside: 0,
        broken: 0,
        encoder: Duration::ZERO,
        qformer: Duration::ZERO,
        sha256: String::new(),
        has_qformer: false,
        device: pipeline.device(),
    };
    let mut hash = String::new();
    while source.next_frame(&mut frame)? {
        let path = Path::new(&frame.source);
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(label) = truth_map.get(&file) else {
            out.unlabelled += 1;
            continue;
        };
        let Some(idx) = names.iter().position(|n| n == label) else {
            out.ignored += 1;
            continue;
        };
        seen[idx] += 1;
        let k = seen[idx];
        if k <= sel.skip || sel.take.is_some_and(|t| k > sel.skip + t) {
            out.outside += 1;
            continue;
        }
        let Some(r) = pipeline.process(&frame)? else {
            out.broken += 1;
            continue;
        };
        out.encoder += r.times.0[2];
        out.qformer += r.times.0[3];
        out.embeddings.extend_from_slice(pipeline.embedding());
        out.queries.extend_from_slice(pipeline.queries());
        out.truth.push(idx as u16);
        if sel.hash {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            hash.push_str(&format!("{file}\t{label}\t{}\n", sha256_hex(&bytes)));
        }
        out.names.push(file);
    }
    out.has_qformer = !pipeline.queries().is_empty() || bundle.manifest().qformer.is_some();
    let n = out.truth.len().max(1) as u32;
    out.encoder /= n;
    out.qformer /= n;
    out.sha256 = sha256_hex(hash.as_bytes());
    Ok(out)
}

impl Labelled {
    /// The embedding and queries of frame `i`.
    pub fn frame(&self, i: usize) -> (&[f32], Option<&[f32]>) {
        let d = self.embeddings.len() / self.truth.len().max(1);
        let q = self.queries.len() / self.truth.len().max(1);
        let e = &self.embeddings[i * d..(i + 1) * d];
        let qs = (q > 0).then(|| &self.queries[i * q..(i + 1) * q]);
        (e, qs)
    }

    /// One line on what was left out, when anything was.
    pub fn left_out(&self) -> Option<String> {
        let parts: Vec<String> = [
            (self.unlabelled, "without a line in labels.csv"),
            (self.ignored, "with an ignored label"),
            (self.outside, "outside the per-label selection"),
            (self.broken, "broken (not decodable)"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        (!parts.is_empty()).then(|| format!("frames left out: {}", parts.join(", ")))
    }
}

fn parse_methods(s: &str) -> Result<Vec<FusionMethod>> {
    if s == "auto" {
        return Ok(FusionMethod::ALL.to_vec());
    }
    FusionMethod::from_name(s).map(|m| vec![m]).ok_or_else(|| {
        UsageError(format!(
            "--method {s}: unknown; use auto or one of {}",
            FusionMethod::ALL.map(|m| m.name()).join(", ")
        ))
        .into()
    })
}

pub fn fit(a: FitArgs) -> Result<()> {
    crate::signals::exit_on_signal();
    let methods = parse_methods(&a.method)?;
    let bundle = open_bundle(a.model.model.as_deref())?;
    crate::paths::refuse_existing_out(&a.out)?;
    let started = Instant::now();
    let sel = Selection {
        skip: 0,
        take: a.per_label,
        ignore: a.ignore_label.clone(),
        hash: true,
    };
    let frames = read_labelled(&bundle, &a.source, &sel)?;
    if let Some(l) = frames.left_out() {
        eprintln!("{l}");
    }
    let read = started.elapsed();
    let m = bundle.manifest();
    let mut fusion = m.fusion.clone();
    fusion.method = FusionMethod::WeightedLogits;
    let mut head = FusionHead::new(
        bundle.label_embeddings(),
        m.encoder.embedding_dim,
        &fusion,
        frames.has_qformer,
    );
    let mut data = FitData::new(&head);
    for i in 0..frames.truth.len() {
        let (e, q) = frames.frame(i);
        head.heads_only(e, q);
        data.push(&head, frames.truth[i], &frames.names[i])
            .map_err(|e| UsageError(e.to_string()))?;
    }
    let mut weights = vec![m.fusion.clip.weight];
    weights.extend(m.fusion.qformer.as_ref().map(|h| h.weight));
    let opts = FitOptions {
        methods,
        adapter: !a.no_adapter,
        folds: a.folds as usize,
        label_names: bundle.label_names().map(str::to_string).collect(),
        label_embeddings: bundle.label_embeddings().to_vec(),
        clip_scale: m.fusion.clip.logit_scale,
        weights,
        zero_shot: match &m.fusion_fitted {
            Some(f) => f.zero_shot_method,
            None if m.fusion.method.needs_fit() => FusionMethod::WeightedLogits,
            None => m.fusion.method,
        },
    };
    let fit_started = Instant::now();
    let r = fitting::fit(&data, &opts).map_err(|e| match e {
        fitting::FitError::Degenerate(_) => anyhow::Error::new(e),
        e => UsageError(e.to_string()).into(),
    })?;
    let fit_time = fit_started.elapsed();

    let staging = cal::staging_dir(&a.out)?;
    for s in cal::remove_stale_staging(&a.out) {
        eprintln!(
            "removed {}, the unfinished output of an interrupted run ({})",
            s.path.display(),
            s.why
        );
    }
    let cleanup = crate::signals::remove_on_signal(&staging);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let record = FitRecord {
        method: r.method,
        frames: frames.truth.len() as u64,
        frames_sha256: frames.sha256.clone(),
        source: a.source.clone(),
        folds: r.folds as u32,
        cv_accuracy: r.cv_accuracy.clone(),
    };
    let written = bundle
        .write_fitted(&staging, &r.params, &record)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            Bundle::open(&staging)
                .map(|_| ())
                .context("the fitted bundle does not open")
        });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let out = a.out.clone();
    cleanup.commit(|| -> Result<()> {
        sync_dir(&staging).with_context(|| format!("cannot sync {}", staging.display()))?;
        rename(&staging, &out).with_context(|| format!("cannot create {}", out.display()))?;
        if let Some(p) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(p).with_context(|| format!("cannot sync {}", p.display()))?;
        }
        Ok(())
    })?;

    let mut o = Out::lock();
    writeln!(
        o,
        "fitted bundle: {} (method {}; {} frames of {} labels, {}-fold cross-validation)",
        a.out.display(),
        r.method.name(),
        frames.truth.len(),
        m.labels.len(),
        r.folds
    )?;
    writeln!(
        o,
        "read the frames in {:.2} s, fitted in {:.2} s",
        read.as_secs_f64(),
        fit_time.as_secs_f64()
    )?;
    writeln!(o, "cross-validated top-1 accuracy:")?;
    if r.params.adapter.as_ref().is_some_and(|a| a.weight == 0.0) {
        writeln!(
            o,
            "kept the zero-shot rule {}: no fitted method beat the zero-shot heads by more than one standard error (the adapter is kept with weight 0; eval shows what the others would do)",
            r.method.name()
        )?;
    }
    let heads = ["zero_shot", "clip", "qformer", "adapter"];
    for h in heads {
        if let Some(acc) = r.cv_accuracy.get(h) {
            writeln!(o, "  head   {h:<24} {:>7.2} %", 100.0 * acc)?;
        }
    }
    for mth in FusionMethod::ALL {
        if let Some(acc) = r.cv_accuracy.get(mth.name()) {
            let mark = if mth == r.method { " *" } else { "" };
            writeln!(
                o,
                "  fusion {:<24} {:>7.2} %{mark}",
                mth.name(),
                100.0 * acc
            )?;
        }
    }
    for (mth, why) in &r.skipped {
        writeln!(o, "  fusion {:<24} not fitted: {why}", mth.name())?;
    }
    Ok(o.finish()?)
}
