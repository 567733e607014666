//! `edgefuse calibrate`: frames → activation ranges → a checked int8 bundle with its fidelity
//! report. The work is the calibration crate's; this file is arguments, progress and output.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use edgefuse_calibration::{self as cal, CalibrateError, CalibrationError};
use edgefuse_models::Bundle;
use edgefuse_runtime::capture;

use crate::output::{Out, StdoutError};
use crate::paths::{open_bundle, ModelArg};
use crate::UsageError;

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Calibration frames: any source `run` accepts (a camera, a folder of images, …).
    #[arg(long, value_name = "URI")]
    source: String,
    /// minmax, percentile[:P] (default P 99.99), entropy (TensorRT KL) or mse.
    #[arg(long, default_value = "entropy")]
    method: String,
    /// Frames to use.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    frames: u64,
    /// Keep this linear layer in float (repeatable; see the per-layer report for candidates).
    #[arg(long, value_name = "LAYER")]
    skip: Vec<String>,
    /// Frames for the fidelity report [default: --source again].
    #[arg(long, value_name = "URI")]
    eval: Option<String>,
    /// Frames of --eval to use [default: --frames].
    #[arg(long, value_name = "N", value_parser = at_least_one_frame)]
    eval_frames: Option<u64>,
    /// The int8 bundle folder to create (must not exist).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// `--eval-frames`: 0 would write a fidelity report of nothing (cosine mean 0, min 1).
fn at_least_one_frame(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("0 frames measure nothing; the fidelity report needs at least 1 frame".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "`{s}` is not a frame count; give a whole number >= 1"
        )),
    }
}

/// The calibration errors that are the user's to fix (exit code 2).
fn usage(e: CalibrateError) -> anyhow::Error {
    match e {
        CalibrateError::AlreadyQuantized(_)
        | CalibrateError::UnknownSkip(..)
        | CalibrateError::TooFewFrames { .. }
        | CalibrateError::Calibration(CalibrationError::UnknownMethod(_)) => {
            UsageError(e.to_string()).into()
        }
        e => e.into(),
    }
}

pub fn calibrate(a: CalibrateArgs) -> Result<()> {
    // The work cannot stop midway: a signal exits, removing the unfinished bundle (below).
    crate::signals::exit_on_signal();
    let bundle = open_bundle(a.model.model.as_deref())?;
    crate::paths::refuse_existing_out(&a.out)?;
    let staging = cal::staging_dir(&a.out).map_err(usage)?;
    for s in cal::remove_stale_staging(&a.out) {
        match s.removed {
            Ok(()) => eprintln!(
                "removed {}, the unfinished output of an interrupted calibration ({})",
                s.path.display(),
                s.why
            ),
            Err(e) => eprintln!(
                "cannot remove {}, the unfinished output of an interrupted calibration ({}): {e}",
                s.path.display(),
                s.why
            ),
        }
    }
    let mut source = capture::open(&a.source)?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let started = std::time::Instant::now();
    let total = a.frames;
    // A progress bar on a terminal; plain lines every 50 frames otherwise (logs, CI).
    let bar = tty.then(|| crate::progress::bar(total, "calibrating"));
    let c = cal::collect(
        &bundle,
        source.as_mut(),
        &a.method,
        a.frames,
        |n| match &bar {
            Some(b) => b.set_position(n),
            None if n % 50 == 0 => eprintln!("calibrating: {n}/{total} frames"),
            None => {}
        },
    )
    .map_err(usage)?;
    if let Some(b) = bar {
        b.finish();
    }
    c.check_skip(&a.skip).map_err(usage)?;
    eprintln!(
        "collected {} frames in {:.1} s; {} linear layers ({} kept in float)",
        c.frames,
        started.elapsed().as_secs_f64(),
        c.layers.len(),
        a.skip.len()
    );
    let cleanup = crate::signals::remove_on_signal(&staging);
    let staged = cal::stage_bundle(&bundle, &c, &a.skip, &a.out).map_err(usage)?;

    // Fidelity: float and int8 side by side on the evaluation frames.
    let int8 = Bundle::open(&staged.tmp)?;
    let eval_uri = a.eval.clone().unwrap_or_else(|| a.source.clone());
    let mut src = capture::open(&eval_uri)?;
    let eval_frames = a.eval_frames.unwrap_or(a.frames);
    let f = cal::evaluate(
        &bundle,
        &int8,
        src.as_mut(),
        &eval_uri,
        eval_frames,
        &c,
        &a.skip,
    )
    .context("fidelity evaluation")?;
    let mut report = serde_json::to_string(&f)?;
    report.push('\n');
    staged.add_file("fidelity.json", &report)?;
    let layers: Vec<(&str, &str, f64)> = f
        .layers
        .iter()
        .map(|l| (l.model, l.layer.as_str(), l.activation_rel_error))
        .collect();
    let chart = crate::plot::quantization_svg(
        &format!(
            "int8 quantization error per layer ({} calibration frames, {})",
            f.calibration_frames, f.method
        ),
        &layers,
    )?;
    staged.add_file("fidelity.svg", &chart)?;
    let out = cleanup.commit(|| staged.commit())?;
    report_calibration(&out, &f, &eval_uri).with_context(|| {
        format!(
            "the int8 bundle {} is complete, but its report could not be printed",
            out.display()
        )
    })
}

/// The summary `calibrate` prints once the bundle is committed.
fn report_calibration(
    dir: &std::path::Path,
    f: &cal::FidelityReport,
    eval_uri: &str,
) -> Result<(), StdoutError> {
    let mut out = Out::lock();
    writeln!(out, "int8 bundle: {}", dir.display())?;
    writeln!(out,
        "fidelity on {} frames of {eval_uri}: embedding cosine mean {:.6} (min {:.6}), q-former cosine {:.6}, top-1 agreement {:.2}%",
        f.eval_frames,
        f.embedding_cosine_mean,
        f.embedding_cosine_min,
        f.qformer_cosine_mean,
        100.0 * f.top1_agreement
    )?;
    if f.labelled_frames > 0 {
        writeln!(
            out,
            "accuracy on {} labelled frames: float {:.2}%, int8 {:.2}% ({:+.2} points)",
            f.labelled_frames,
            100.0 * f.accuracy_float,
            100.0 * f.accuracy_int8,
            100.0 * (f.accuracy_int8 - f.accuracy_float)
        )?;
    }
    writeln!(out, "most sensitive layers (relative activation quantization error; keep one in float with --skip LAYER):")?;
    for l in f.most_sensitive().into_iter().take(5) {
        writeln!(
            out,
            "  {:>8.4}  {} {} ({}x{})",
            l.activation_rel_error, l.model, l.layer, l.k, l.n
        )?;
    }
    writeln!(
        out,
        "wrote calibration.json, calibration.cache (TensorRT), fidelity.json, fidelity.svg (the per-layer chart)"
    )?;
    out.finish()
}
