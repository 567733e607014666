//! `edgefuse run`: classify frames from a source, print results, drive the GPIO wiring.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use edgefuse_runtime::actuate::Hardware;
use edgefuse_runtime::capture;
use edgefuse_runtime::capture::reconnect::{Health, HealthChange};
use edgefuse_runtime::pipeline::{DecisionSettings, FrameResult, Pipeline, RunLimits, RunSink};
use edgefuse_runtime::preprocess::split_uri;
use edgefuse_runtime::trigger::{EdgeTrigger, ExternalTrigger, Trigger};
use edgefuse_sinks::{RunInfo, Sinks, SourceState};

use crate::options::RunOptions;
use crate::output::{print_summary, write_json, write_text, StdoutError};
use crate::paths::{default_samples, open_bundle};
use crate::reload::{Mailbox, Reloader};
use crate::sd_notify::Notifier;

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
    let (file, text) = match &args.config {
        Some(p) => RunOptions::load_text(p)?,
        None => (RunOptions::default(), String::new()),
    };
    let cli = args.options.clone();
    let o = args.options.over(file);
    let bundle = open_bundle(o.model.as_deref())?;
    let given = match &o.source {
        Some(s) => s.clone(),
        None => default_samples()?,
    };
    // What logs, events, the status page and errors show: passwords (rtsp://user:pw@…) hidden.
    let uri = capture::redact(&given);
    let (open_uri, uri_roi) = split_uri(&given).with_context(|| format!("source {uri}"))?;
    let roi = match (o.roi, uri_roi) {
        (Some(a), Some(b)) if a != b => {
            anyhow::bail!("--roi {a} and roi={b} in the source URI disagree; give the region once")
        }
        (a, b) => a.or(b),
    };
    let mut source = capture::open_with(&open_uri, &o.open_options())?;
    log::info!("source {}", source.describe());
    let labels: Vec<String> = bundle.label_names().map(str::to_string).collect();
    let mut cfg = o.pipeline(&labels)?;
    cfg.roi = roi;
    if let Some(r) = roi {
        log::info!("region of interest {r}");
    }
    let mut pipeline = Pipeline::new(&bundle, cfg).context("cannot build the pipeline")?;
    let info = RunInfo {
        labels: labels.clone(),
        source: uri.clone(),
        model: format!("{} {}", bundle.manifest().name, bundle.manifest().version),
        backend: pipeline.device(),
        precision: if bundle.is_int8() { "int8" } else { "float" }.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        max_frame_bytes: source.max_frame_bytes(),
        roi: roi.map(|r| r.to_string()),
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
    let mailbox = reload_on_hup(&args.config, &text, cli, &labels, &pipeline);
    let stdout = std::io::stdout();
    let out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let json = o.json();
    let limits = RunLimits {
        max_frames: o.frames.map(|f| f.0),
        warmup: 0,
    };
    let mut outputs = Outputs {
        out,
        hw: hw.as_ref(),
        sinks: &mut sinks,
        labels: &labels,
        uri: &uri,
        json,
        stdout_failed: None,
        notifier: Notifier::from_env(),
        mailbox,
    };
    let (summary, result) =
        pipeline.run_with(source.as_mut(), &mut trigger, limits, stop, &mut outputs);
    if let Some(n) = &outputs.notifier {
        n.stopping();
    }
    // The write error that stopped the run, kept whole (the pipeline reports only its text).
    let stdout_failed = outputs.stdout_failed.take();
    // Whatever is left in the buffer after a failed write is dropped with it, unwritten.
    drop(outputs);
    let sinks_result = sinks.finish(&summary);
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
    crate::events::print_summaries(&sinks, json)?;
    result.with_context(|| format!("run on {uri} stopped"))?;
    sinks_result.context("a sink failed at the end of the run")
}

/// SIGHUP reloads the decision settings of `--config`'s file from now on (without a file there
/// is nothing to reload: SIGHUP is ignored, with a warning).
fn reload_on_hup(
    config: &Option<PathBuf>,
    text: &str,
    cli: RunOptions,
    labels: &[String],
    pipeline: &Pipeline,
) -> Option<std::sync::Arc<Mailbox>> {
    let Some(path) = config else {
        crate::signals::reload_on_hup(|| {
            log::warn!("SIGHUP: no --config file to reload; ignored (SIGTERM or SIGINT stop)")
        });
        return None;
    };
    let (mut reloader, mailbox) = Reloader::new(
        path.clone(),
        text,
        cli,
        labels.to_vec(),
        pipeline.decision_settings(),
    );
    crate::signals::reload_on_hup(move || reloader.reload());
    Some(mailbox)
}

/// Where `run` sends what the pipeline produces, on the inference thread: stdout, GPIO, the
/// sinks, systemd (readiness, watchdog, status); and where reloaded settings come in.
struct Outputs<'a, W: Write> {
    out: W,
    hw: Option<&'a Hardware>,
    sinks: &'a mut Sinks,
    labels: &'a [String],
    uri: &'a str,
    json: bool,
    /// The write error that stopped the run.
    stdout_failed: Option<std::io::Error>,
    notifier: Option<Notifier>,
    mailbox: Option<std::sync::Arc<Mailbox>>,
}

impl<W: Write> RunSink for &mut Outputs<'_, W> {
    fn frame(&mut self, r: &FrameResult<'_>) -> std::io::Result<()> {
        let latency = self.hw.and_then(|h| h.on_events(r.events));
        let written = if self.json {
            write_json(&mut self.out, r, self.labels, self.uri, latency)
        } else {
            write_text(&mut self.out, r, self.labels, latency)
        };
        // Flush per frame so events reach consumers (pipes, the journal) without delay.
        written.and_then(|()| self.out.flush()).map_err(|e| {
            let kind = e.kind();
            self.stdout_failed = Some(e);
            std::io::Error::from(kind)
        })?;
        self.sinks.frame(r).map_err(std::io::Error::other)?;
        if let Some(n) = self.notifier.as_mut().filter(|n| !n.is_ready()) {
            n.ready(&format!("classifying frames from {}", self.uri));
        }
        Ok(())
    }

    fn source(&mut self, change: &HealthChange) -> std::io::Result<()> {
        let state = match change.state {
            Health::Offline => {
                log::warn!(
                    "source {} offline: {}; reopening it",
                    self.uri,
                    change.reason
                );
                SourceState::Offline
            }
            Health::Online => {
                log::warn!("source {} online again: {}", self.uri, change.reason);
                SourceState::Online
            }
        };
        if let Some(n) = &self.notifier {
            n.status(&match state {
                SourceState::Offline => format!("camera offline: {}", change.reason),
                SourceState::Online => format!("classifying frames from {}", self.uri),
            });
        }
        self.sinks
            .source(state, &change.reason)
            .map_err(std::io::Error::other)
    }

    fn tick(&mut self, handled: u64) -> Option<DecisionSettings> {
        if let Some(n) = self.notifier.as_mut() {
            n.watchdog();
            // Ready also when the trigger passes over every frame so far (a GPIO trigger whose
            // button nobody pressed yet): the models are loaded and the camera streams; systemd
            // must not wait for the first classification (TimeoutStartSec would kill a healthy
            // service).
            if handled > 0 && !n.is_ready() {
                n.ready(&format!("watching {} (no frame triggered yet)", self.uri));
            }
        }
        self.mailbox.as_ref().and_then(|m| m.take())
    }
}

/// The sinks `run`'s options ask for, in the order frames reach them.
fn sinks(o: &RunOptions, info: &RunInfo) -> Result<Sinks> {
    let mut sinks = Sinks::new();
    // Events out: MQTT, webhook, snapshots, through the journal (issue 15 part A).
    let events = crate::events::event_sink(o, info)?;
    // Its live figures (journal depth, broker state) for the status server's /metrics.
    let stats = events.as_ref().map(|e| e.stats());
    if let Some(events) = events {
        sinks.push(Box::new(events));
    }
    // The status page (issue 16).
    if let Some(http) = crate::status::sink(o, info, stats)? {
        sinks.push(http);
    }
    Ok(sinks)
}
