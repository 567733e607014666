//! `edgefuse run`: classify frames from a source, print results, drive the GPIO wiring.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use edgefuse_runtime::actuate::Hardware;
use edgefuse_runtime::capture;
use edgefuse_runtime::pipeline::{Pipeline, RunLimits};
use edgefuse_runtime::trigger::{EdgeTrigger, ExternalTrigger, Trigger};
use edgefuse_sinks::{RunInfo, Sinks};

use crate::options::RunOptions;
use crate::output::{print_summary, write_json, write_text, StdoutError};
use crate::paths::{default_samples, open_bundle};

/// `run`'s command line: the options, and a file to read more of them from.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Read options from this TOML file (keys = option names with `_`); the command line overrides it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: RunOptions,
}

pub fn run(args: RunArgs) -> Result<()> {
    let file = match &args.config {
        Some(p) => RunOptions::load(p)?,
        None => RunOptions::default(),
    };
    let o = args.options.over(file);
    let bundle = open_bundle(o.model.as_deref())?;
    let uri = match &o.source {
        Some(s) => s.clone(),
        None => default_samples()?,
    };
    let mut source = capture::open(&uri)?;
    log::info!("source {}", source.describe());
    let labels: Vec<String> = bundle.label_names().map(str::to_string).collect();
    let cfg = o.pipeline(&labels)?;
    let mut pipeline = Pipeline::new(&bundle, cfg).context("cannot build the pipeline")?;
    let info = RunInfo {
        labels: labels.clone(),
        source: uri.clone(),
        model: format!("{} {}", bundle.manifest().name, bundle.manifest().version),
        backend: pipeline.device(),
    };
    let mut sinks = sinks(&o, &info)?;
    let wiring = o.wiring();
    let hw = if wiring.is_empty() {
        None
    } else {
        Some(Hardware::open(&wiring, o.board.map(|b| b.0), &labels)?)
    };
    let external = hw
        .as_ref()
        .and_then(Hardware::trigger_clock)
        .map(|clock| Box::new(EdgeTrigger(clock)) as Box<dyn ExternalTrigger>);
    let mut trigger = Trigger::new(&o.trigger(), external)?;
    let stop = crate::signals::install();
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let json = o.json();
    let limits = RunLimits {
        max_frames: o.frames.map(|f| f.0),
        warmup: 0,
    };
    // The write error that stopped the run, kept whole (the pipeline reports only its text).
    let mut stdout_failed: Option<std::io::Error> = None;
    let (summary, result) = pipeline.run(source.as_mut(), &mut trigger, limits, stop, |r| {
        let latency = hw.as_ref().and_then(|h| h.on_events(r.events));
        let written = if json {
            write_json(&mut out, r, &labels, &uri, latency)
        } else {
            write_text(&mut out, r, &labels, latency)
        };
        // Flush per frame so events reach consumers (pipes, the journal) without delay.
        written.and_then(|()| out.flush()).map_err(|e| {
            let kind = e.kind();
            stdout_failed = Some(e);
            std::io::Error::from(kind)
        })?;
        sinks.frame(r).map_err(std::io::Error::other)
    });
    let sinks_result = sinks.finish(&summary);
    // Whatever is left in the buffer after a failed write is dropped with it, unwritten.
    drop(out);
    drop(trigger);
    let gpio = hw.and_then(|hw| hw.finish(result.is_err()));
    if let Some(e) = stdout_failed {
        // The summary only where it still has a reader (stderr, with --json); a closed pipe
        // ends quietly (see main).
        if json {
            print_summary(&summary, gpio.as_ref(), json)?;
        }
        return Err(StdoutError(e).into());
    }
    print_summary(&summary, gpio.as_ref(), json)?;
    result.with_context(|| format!("run on {uri} stopped"))?;
    sinks_result.context("a sink failed at the end of the run")
}

/// The sinks `run`'s options ask for, in the order frames reach them.
fn sinks(o: &RunOptions, info: &RunInfo) -> Result<Sinks> {
    let _ = (o, info);
    Ok(Sinks::new())
}
