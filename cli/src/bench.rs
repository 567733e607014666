//! `edgefuse bench`: per-stage latency, throughput, allocations and memory as one JSON object.

use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde::{Serialize, Serializer};

use edgefuse_runtime::capture;
use edgefuse_runtime::engine::{CpuConfig, EngineChoice};
use edgefuse_runtime::gpu::DeviceChoice;
use edgefuse_runtime::pipeline::{Pipeline, PipelineConfig, RunLimits, STAGES};
use edgefuse_runtime::stats::Histogram;
use edgefuse_runtime::trigger::Trigger;

use crate::output::Out;
use crate::paths::{open_bundle, ModelArg};
use crate::values::Ranged;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Frame source [default: synthetic 640x480 YUYV].
    #[arg(long, value_name = "URI")]
    source: Option<String>,
    /// Frames measured after warm-up.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    frames: u64,
    /// Frames run before measuring.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Accepted for symmetry with `run`; bench always prints JSON.
    #[arg(long)]
    json: bool,
    /// Where the models run (as `run --device`) [default: auto].
    #[arg(long, value_name = "DEVICE")]
    device: Option<DeviceChoice>,
    /// Threads for the models on the CPU (as `run --threads`) [default: 0, every core].
    #[arg(long, value_name = "N")]
    threads: Option<Ranged<0, 4096>>,
    /// CPU engine (as `run --cpu-engine`): plan, tract or auto [default: auto].
    #[arg(long, value_name = "ENGINE")]
    cpu_engine: Option<EngineChoice>,
    /// Run the bundle's re-ranker (as `run --rerank`) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    rerank: Option<bool>,
    /// Also draw the measured frames as an SVG chart: each stage's latency distribution and
    /// the timeline over the run.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

/// Median and 99th percentile of one stage, milliseconds.
#[derive(Debug, Serialize)]
struct Quantiles {
    p50_ms: f64,
    p99_ms: f64,
}

impl From<&Histogram> for Quantiles {
    fn from(h: &Histogram) -> Self {
        Self {
            p50_ms: h.quantile_ms(0.5),
            p99_ms: h.quantile_ms(0.99),
        }
    }
}

/// Stages as a JSON object in pipeline order.
#[derive(Debug)]
struct Stages(Vec<(&'static str, Quantiles)>);

impl Serialize for Stages {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[derive(Debug, Serialize)]
struct Allocations {
    pipeline: f64,
    engine: f64,
    /// Every other thread of the process (with the two above: the whole process).
    other: f64,
}

/// The bench report (documented in the README).
#[derive(Debug, Serialize)]
struct Report {
    source: String,
    device: String,
    /// The re-ranker in the fusion stage (`itm.onnx, top 3, plan`), if one ran.
    rerank: Option<String>,
    gpu_fallbacks: u32,
    frames: u64,
    stages: Stages,
    end_to_end: Quantiles,
    fps: f64,
    allocations_per_frame: Allocations,
    peak_rss_mb: f64,
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let bundle = open_bundle(a.model.model.as_deref())?;
    let uri = a
        .source
        .clone()
        .unwrap_or_else(|| "synthetic://?width=640&height=480&format=yuyv".to_string());
    let mut source = capture::open(&uri)?;
    let cfg = PipelineConfig {
        device: a.device.unwrap_or_default(),
        cpu: CpuConfig {
            engine: a.cpu_engine.unwrap_or_default(),
            threads: a.threads.map_or(0, |t| t.0 as usize),
        },
        rerank: a.rerank.unwrap_or(false),
        ..Default::default()
    };
    let mut pipeline = Pipeline::new(&bundle, cfg).context("cannot build the pipeline")?;
    let device = pipeline.device();
    let mut trigger = Trigger::Continuous;
    let stop = crate::signals::install();
    let limits = RunLimits {
        max_frames: Some(a.frames),
        warmup: a.warmup,
    };
    // Per-frame stage times for --plot, in storage sized before the run (no allocation per
    // frame); warm-up frames come first and are left out of the chart.
    let keep = if a.plot.is_some() {
        (a.frames + a.warmup) as usize
    } else {
        0
    };
    let mut times: Vec<[f32; 7]> = Vec::with_capacity(keep);
    let (s, result) = pipeline.run(source.as_mut(), &mut trigger, limits, stop, |r| {
        if times.len() < keep {
            let mut row = [0f32; 7];
            for (d, t) in row.iter_mut().zip(r.times.0) {
                *d = (t.as_secs_f64() * 1000.0) as f32;
            }
            times.push(row);
        }
        Ok(())
    });
    result.with_context(|| format!("bench on {uri} stopped"))?;
    if s.frames == 0 {
        return Err(anyhow!(
            "{uri} produced no frames after {} warm-up frames; give a longer source",
            a.warmup
        ));
    }
    let last = STAGES.len() - 1;
    let report = Report {
        source: uri,
        device,
        rerank: pipeline.reranker().map(|r| r.describe()),
        gpu_fallbacks: pipeline.fallbacks(),
        frames: s.frames,
        stages: Stages(
            STAGES[..last]
                .iter()
                .zip(&s.stages)
                .map(|(name, h)| (*name, h.into()))
                .collect(),
        ),
        end_to_end: (&s.stages[last]).into(),
        fps: s.frames as f64 / s.wall.as_secs_f64().max(1e-9),
        allocations_per_frame: Allocations {
            pipeline: s.allocations.0 as f64 / s.frames as f64,
            engine: s.allocations.1 as f64 / s.frames as f64,
            other: s.other_allocations as f64 / s.frames as f64,
        },
        peak_rss_mb: peak_rss_mb(),
    };
    if let Some(path) = &a.plot {
        let measured = &times[times.len().saturating_sub(s.frames as usize)..];
        let title = format!(
            "edgefuse bench: {} frames, {}, {} ({:.1} fps)",
            measured.len(),
            report.device,
            report.source,
            report.fps
        );
        let svg = crate::plot::bench_svg(&title, &STAGES, measured)?;
        std::fs::write(path, svg)
            .with_context(|| format!("--plot {}: cannot write the chart", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let mut out = Out::lock();
    writeln!(out, "{}", serde_json::to_string(&report)?)?;
    Ok(out.finish()?)
}
