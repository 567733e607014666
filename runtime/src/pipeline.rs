//! The frame pipeline: capture thread → ring → trigger → backend (preprocess → encoder →
//! Q-Former) → fusion → decision → caller's sink, with per-stage timing.
//!
//! The models run behind the [`Backend`] seam: a primary backend (the CPU, or the GPU from
//! `--device`) and, when the primary is not the CPU, the CPU backend as the fallback. Every
//! buffer is sized when the pipeline is built; after warm-up a frame causes no heap allocation
//! in this code (the engine's own allocations are counted separately).

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgefuse_models::Bundle;

use crate::alloc;
use crate::backend::{Backend, BackendError, CpuBackend, ModelTimes};
use crate::capture::reconnect::{HealthChange, HealthFeed};
use crate::capture::{CaptureError, FrameSource, SourceStats};
use crate::decision::{Decision, DecisionConfig, Events};
use crate::engine::{CpuConfig, EngineError};
use crate::frame::Frame;
use crate::fusion::{FusionHead, HeadTop1, TopK};
use crate::gpu::{self, DeviceChoice, GpuError};
use crate::preprocess::{Coord, Roi};
use crate::rerank::Reranker;
use crate::ring::{FrameRing, Next};
use crate::stats::Histogram;
use crate::trigger::Trigger;

/// Pipeline stages, in order, as reported in timings.
pub const STAGES: [&str; 7] = [
    "queue",
    "preprocess",
    "encoder",
    "qformer",
    "fusion",
    "decision",
    "end_to_end",
];

/// How often a run waiting for a frame looks at its stop flag.
pub const STOP_POLL: Duration = Duration::from_millis(20);

/// Per-stage latency of one frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes(pub [Duration; 7]);

impl StageTimes {
    /// Milliseconds of stage `i` (see [`STAGES`]).
    pub fn ms(&self, i: usize) -> f64 {
        self.0[i].as_secs_f64() * 1000.0
    }
}

/// What the sink receives for each classified frame.
#[derive(Debug)]
pub struct FrameResult<'a> {
    /// The frame (geometry, sequence number, source name).
    pub frame: &'a Frame,
    /// Best labels, best first: `(label index, probability)`.
    pub top: &'a TopK,
    /// Events this frame caused.
    pub events: &'a Events,
    /// Stage latencies.
    pub times: StageTimes,
    /// Top-1 label of each head before fusion.
    pub heads: HeadTop1,
    /// Times the run so far switched to the fallback backend after the primary failed (0 or
    /// 1: the CPU has no fallback).
    pub fallbacks: u32,
}

/// What [`Pipeline::run_with`] hands its results to, on the inference thread
/// ([`Pipeline::run`] takes a closure that sees frames only).
pub trait RunSink {
    /// One classified frame. An error stops the run.
    fn frame(&mut self, r: &FrameResult<'_>) -> std::io::Result<()>;

    /// The source went offline or came back (only sources that recover report this, see
    /// [`FrameSource::health`]). An error stops the run.
    fn source(&mut self, change: &HealthChange) -> std::io::Result<()> {
        let _ = change;
        Ok(())
    }

    /// Called before every frame and at least every [`STOP_POLL`] while no frame comes (a
    /// source offline or slow): periodic work such as a watchdog ping. `handled` counts the
    /// frames the run has finished with so far: classified, passed over by the trigger, or
    /// broken (so a caller can tell the pipeline is up even when the trigger selects nothing).
    /// New decision settings returned here apply from the next frame on. Must not allocate when
    /// it returns `None`.
    fn tick(&mut self, handled: u64) -> Option<DecisionSettings> {
        let _ = handled;
        None
    }
}

/// A closure as a [`RunSink`] that sees frames only.
struct Frames<F>(F);

impl<F> RunSink for Frames<F>
where
    F: FnMut(&FrameResult<'_>) -> std::io::Result<()>,
{
    fn frame(&mut self, r: &FrameResult<'_>) -> std::io::Result<()> {
        (self.0)(r)
    }
}

/// The settings a running pipeline can change between two frames (a configuration reload).
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionSettings {
    /// Thresholds and hysteresis.
    pub decision: DecisionConfig,
    /// Labels reported per frame (clamped to 1..=16).
    pub top_k: usize,
}

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Labels reported per frame (1..=16).
    pub top_k: usize,
    /// Thresholds and hysteresis.
    pub decision: DecisionConfig,
    /// Ring slots between capture and inference.
    pub ring_slots: usize,
    /// Where the tensor work runs ([`DeviceChoice::Cpu`] by default; the CLI defaults to
    /// `auto`).
    pub device: DeviceChoice,
    /// The CPU engine and its threads (also the fallback's when a GPU runs the models).
    pub cpu: CpuConfig,
    /// The region of each frame the models see (`None`: the whole frame).
    pub roi: Option<Roi>,
    /// Run the bundle's image-text-matching re-ranker when it has one (`[rerank]`). Off by
    /// default: on the default bundle it costs about 45 % of the models' time per frame for
    /// no measurable gain (`docs/FUSION.md`).
    pub rerank: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            top_k: 3,
            decision: DecisionConfig::default(),
            ring_slots: 4,
            device: DeviceChoice::Cpu,
            cpu: CpuConfig::default(),
            roi: None,
            rerank: false,
        }
    }
}

/// How long to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunLimits {
    /// Stop after this many classified frames (after warm-up); `None` = until the source ends.
    pub max_frames: Option<u64>,
    /// Frames classified before statistics and allocation counts start.
    pub warmup: u64,
}

/// Why a pipeline cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The CPU engine cannot load the bundle's models.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The GPU was required (`--device cuda…`) and cannot be used.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// A region of interest was asked for and the chosen device cannot cut one.
    #[error(
        "{0} cannot preprocess a region of interest; drop --roi or run on the CPU (--device cpu)"
    )]
    Roi(String),
}

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The models failed (and no fallback was left).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The source failed (camera vanished, …).
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The sink failed (e.g. stdout closed).
    #[error("output failed: {0}")]
    Sink(String),
}

/// Summary of a run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Frames classified (after warm-up).
    pub frames: u64,
    /// Frames the trigger did not select.
    pub not_triggered: u64,
    /// Frames dropped by the ring because inference was slower than capture.
    pub dropped: u64,
    /// Frames that could not be preprocessed (broken), skipped.
    pub broken: u64,
    /// Fire events.
    pub events: u64,
    /// Per-stage latency histograms (see [`STAGES`]).
    pub stages: Vec<Histogram>,
    /// Allocations after warm-up: `(pipeline, engine)` (the engine's worker threads included).
    pub allocations: (u64, u64),
    /// Allocations after warm-up on every other thread of the process (a test harness, signal
    /// handlers, GPIO timers): with `allocations`, the whole process.
    pub other_allocations: u64,
    /// Wall time after warm-up.
    pub wall: Duration,
    /// Source counters.
    pub source: SourceStats,
}

/// A built pipeline for one bundle.
pub struct Pipeline {
    labels: Vec<String>,
    primary: Box<dyn Backend>,
    /// The CPU backend while the primary is another one.
    fallback: Option<Box<dyn Backend>>,
    has_qformer: bool,
    embedding: Vec<f32>,
    queries: Vec<f32>,
    head: FusionHead,
    rerank: Option<Reranker>,
    decision: Decision,
    top: TopK,
    events: Events,
    cfg: PipelineConfig,
    fallbacks: u32,
    /// The model input's width and height.
    input_size: [u32; 2],
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("labels", &self.labels.len())
            .field("device", &self.device())
            .field("fallback", &self.fallback.as_ref().map(|b| b.describe()))
            .finish()
    }
}

impl Pipeline {
    /// Load the bundle's models and size every buffer. With `cfg.device` other than `cpu` this
    /// also builds the GPU backend (see [`gpu::select`]); the CPU backend is always built, so a
    /// GPU failure mid-run can continue on the CPU.
    pub fn new(bundle: &Bundle, cfg: PipelineConfig) -> Result<Self, BuildError> {
        let mut device = gpu::select(cfg.device, bundle)?;
        let mut cpu = CpuBackend::with_config(bundle, cfg.cpu)?;
        cpu.set_roi(cfg.roi);
        if let Some(d) = &mut device {
            if !d.set_roi(cfg.roi) {
                return Err(BuildError::Roi(d.describe()));
            }
        }
        let engine = cpu.engine().models();
        let (embedding_dim, queries_len) = (engine.embedding_dim(), engine.queries_len());
        let has_qformer = engine.has_qformer();
        let head = FusionHead::from_bundle(bundle, has_qformer);
        // The re-ranker reads the Q-Former's outputs; it runs on the CPU plan's pool.
        let rerank = if cfg.rerank && has_qformer {
            Reranker::new(bundle, cpu.engine().pool())?
        } else {
            None
        };
        if cfg.rerank && rerank.is_none() {
            log::warn!(
                "re-ranking was asked for, but {}; classifying without it",
                if bundle.manifest().rerank.is_none() {
                    "the bundle has no [rerank] model"
                } else if !has_qformer {
                    "the re-ranker reads the Q-Former's outputs and no Q-Former runs"
                } else {
                    "the bundle has fewer than two labels"
                }
            );
        }
        let labels: Vec<String> = bundle.label_names().map(str::to_string).collect();
        let decision = Decision::new(cfg.decision.clone(), labels.len());
        let (primary, fallback): (Box<dyn Backend>, Option<Box<dyn Backend>>) = match device {
            Some(d) => (d, Some(Box::new(cpu))),
            None => (Box::new(cpu), None),
        };
        Ok(Self {
            input_size: bundle.manifest().preprocess.image_size,
            embedding: vec![0.0; embedding_dim],
            queries: vec![0.0; queries_len],
            labels,
            primary,
            fallback,
            has_qformer,
            head,
            rerank,
            decision,
            top: TopK::new(),
            events: Events::new(),
            cfg,
            fallbacks: 0,
        })
    }

    /// Run the models through `backend` (a custom backend, or a test double). The CPU backend
    /// stays as the fallback: the previous primary becomes the fallback when it was the CPU, and
    /// is dropped otherwise.
    pub fn with_backend(mut self, backend: Box<dyn Backend>) -> Self {
        let previous = std::mem::replace(&mut self.primary, backend);
        if self.fallback.is_none() {
            self.fallback = Some(previous);
        }
        self
    }

    /// Where frames are processed now: the primary backend's description (`cpu (plan, 6 threads)`, or
    /// the GPU's).
    pub fn device(&self) -> String {
        self.primary.describe()
    }

    /// The smallest frames that still fill the model's input (what an MJPEG source may decode
    /// down to): the input size, divided by the region's fractions when a region of interest is
    /// given in fractions. `None` (full frames) when the region is in pixels, which refer to
    /// the camera's full resolution.
    pub fn min_source_size(&self) -> Option<(u32, u32)> {
        min_source_size(self.input_size, self.cfg.roi.as_ref())
    }

    /// How many times the primary backend failed and the run moved to the CPU (0 or 1).
    pub fn fallbacks(&self) -> u32 {
        self.fallbacks
    }

    /// Label names in index order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Image embedding of the last classified frame.
    pub fn embedding(&self) -> &[f32] {
        &self.embedding
    }

    /// Q-Former outputs (`[queries, dim]`) of the last classified frame; empty without one.
    pub fn queries(&self) -> &[f32] {
        &self.queries
    }

    /// The re-ranker, when the bundle has one and it runs.
    pub fn reranker(&self) -> Option<&Reranker> {
        self.rerank.as_ref()
    }

    /// Fused (and re-ranked) probabilities of the last classified frame.
    pub fn probabilities(&self) -> &[f32] {
        self.head.probabilities()
    }

    /// The decision settings in use.
    pub fn decision_settings(&self) -> DecisionSettings {
        DecisionSettings {
            decision: self.cfg.decision.clone(),
            top_k: self.cfg.top_k,
        }
    }

    /// Change the decision settings between two frames (see [`Decision::reconfigure`] for
    /// what happens to labels that are active or cooling down).
    pub fn set_decision(&mut self, settings: DecisionSettings) {
        self.decision.reconfigure(settings.decision.clone());
        self.cfg.decision = settings.decision;
        self.cfg.top_k = settings.top_k.clamp(1, crate::fusion::MAX_TOP_K);
    }

    /// Classify one frame synchronously. `Ok(None)` when the frame is broken (logged, skipped).
    /// When the primary backend fails and a fallback is left, the failure is logged once and
    /// this frame, like every later one, runs on the fallback.
    pub fn process<'a>(
        &'a mut self,
        frame: &'a Frame,
    ) -> Result<Option<FrameResult<'a>>, BackendError> {
        let t0 = Instant::now();
        let mut times = StageTimes::default();
        times.0[0] = t0.saturating_duration_since(frame.captured_at);
        let mut mt = ModelTimes::default();
        let mut ran = self.run_models(frame, &mut mt);
        if let Err(e) = &ran {
            if !matches!(e, BackendError::BrokenFrame(_) | BackendError::Roi(_)) {
                if let Some(fallback) = self.fallback.take() {
                    log::error!(
                        "{} failed on frame {}: {e}; continuing on {} for the rest of the run",
                        self.primary.describe(),
                        frame.seq,
                        fallback.describe()
                    );
                    self.primary = fallback;
                    self.fallbacks += 1;
                    ran = self.run_models(frame, &mut mt);
                }
            }
        }
        match ran {
            Ok(()) => times.0[1..4].copy_from_slice(&mt),
            Err(BackendError::BrokenFrame(e)) => {
                log::warn!("{e}; frame skipped");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let queries = self.has_qformer.then_some(self.queries.as_slice());
        let t3 = Instant::now();
        let heads = self
            .head
            .run(&self.embedding, queries, self.cfg.top_k, &mut self.top);
        if let (Some(r), Some(q)) = (self.rerank.as_mut(), queries) {
            match r.run(&mut self.head, q) {
                Ok(()) => self.head.top(self.cfg.top_k, &mut self.top),
                // An opt-in refinement: its failure costs the refinement, not the run.
                Err(e) => {
                    log::error!(
                        "{e}; the re-ranker is off for the rest of the run (fused results from frame {})",
                        frame.seq
                    );
                    // It failed before touching the probabilities: `top` is the fusion's.
                    self.rerank = None;
                }
            }
        }
        let t4 = Instant::now();
        self.decision.update(
            frame.seq,
            &self.top,
            self.head.probabilities(),
            t4,
            &mut self.events,
        );
        let t5 = Instant::now();
        times.0[4] = t4 - t3;
        times.0[5] = t5 - t4;
        times.0[6] = t5.saturating_duration_since(frame.captured_at);
        log::trace!("frame {} top {:?}", frame.seq, self.top.first());
        Ok(Some(FrameResult {
            frame,
            top: &self.top,
            events: &self.events,
            times,
            heads,
            fallbacks: self.fallbacks,
        }))
    }

    fn run_models(&mut self, frame: &Frame, times: &mut ModelTimes) -> Result<(), BackendError> {
        self.primary
            .run(frame, &mut self.embedding, &mut self.queries, times)
    }

    /// Tell `sink` of the source's health changes, and give it its tick.
    fn between_frames<S: RunSink>(
        &mut self,
        sink: &mut S,
        health: Option<&HealthFeed>,
        handled: u64,
    ) -> Result<(), PipelineError> {
        if let Some(h) = health {
            while let Some(c) = h.take() {
                sink.source(&c)
                    .map_err(|e| PipelineError::Sink(e.to_string()))?;
            }
        }
        if let Some(settings) = sink.tick(handled) {
            self.set_decision(settings);
        }
        Ok(())
    }

    /// Run `source` to the end (or `limits`, or until `stop` is set), capturing on a second
    /// thread into the ring and handing each classified frame to `sink`. The summary covers
    /// what ran even when the run stops on an error (a camera that cannot come back, a closed
    /// stdout).
    pub fn run<F>(
        &mut self,
        source: &mut dyn FrameSource,
        trigger: &mut Trigger,
        limits: RunLimits,
        stop: &AtomicBool,
        sink: F,
    ) -> (RunSummary, Result<(), PipelineError>)
    where
        F: FnMut(&FrameResult<'_>) -> std::io::Result<()>,
    {
        self.run_with(source, trigger, limits, stop, Frames(sink))
    }

    /// [`Pipeline::run`] handing `sink` (see [`RunSink`]) also the source's health changes, and
    /// a tick before each frame and while no frame comes, which may return new decision
    /// settings.
    pub fn run_with<S: RunSink>(
        &mut self,
        source: &mut dyn FrameSource,
        trigger: &mut Trigger,
        limits: RunLimits,
        stop: &AtomicBool,
        mut sink: S,
    ) -> (RunSummary, Result<(), PipelineError>) {
        if let Some((w, h)) = self.min_source_size() {
            source.set_min_size(w, h);
        }
        let ring = FrameRing::with_source_len(
            self.cfg.ring_slots,
            source.max_frame_bytes(),
            source
                .max_source_len()
                .max(crate::frame::SOURCE_NAME_CAPACITY),
        );
        let live = source.is_live();
        // Wakes a paced source sleeping until its next frame when the run ends early.
        let interrupt = source.interrupt();
        let health = source.health();
        let capture_error: Mutex<Option<CaptureError>> = Mutex::new(None);
        let mut summary = RunSummary {
            stages: vec![Histogram::default(); STAGES.len()],
            ..Default::default()
        };
        let mut seen = 0u64;
        let mut started = Instant::now();
        // This thread and the capture thread are the pipeline's: their allocations count.
        let _scope = alloc::scope(alloc::Scope::Pipeline);
        let mut alloc0 = alloc::counts_all();
        let result = std::thread::scope(|s| {
            let ring_ref = &ring;
            let err_ref = &capture_error;
            let capture = s.spawn(move || {
                let _scope = alloc::scope(alloc::Scope::Pipeline);
                loop {
                    let Some(mut slot) = ring_ref.begin_write(live) else {
                        break;
                    };
                    match source.next_frame(&mut slot) {
                        Ok(true) => slot.commit(),
                        Ok(false) => break,
                        Err(e) => {
                            *err_ref.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            break;
                        }
                    }
                }
                ring_ref.close();
                source.stats()
            });
            let out = (|| -> Result<(), PipelineError> {
                // `stop` is seen within STOP_POLL even while no frame comes (a source paced at
                // one frame a minute must not delay a SIGTERM by a minute).
                loop {
                    let frame = match ring.wait_next(stop, STOP_POLL) {
                        Next::Frame(f) => f,
                        Next::Idle => {
                            let handled = seen + summary.not_triggered + summary.broken;
                            self.between_frames(&mut sink, health.as_ref(), handled)?;
                            continue;
                        }
                        Next::Done => break,
                    };
                    let handled = seen + summary.not_triggered + summary.broken;
                    self.between_frames(&mut sink, health.as_ref(), handled)?;
                    if !trigger.accept(&frame) {
                        summary.not_triggered += 1;
                        continue;
                    }
                    let Some(r) = self.process(&frame)? else {
                        summary.broken += 1;
                        continue;
                    };
                    seen += 1;
                    if seen == limits.warmup {
                        started = Instant::now();
                        alloc0 = alloc::counts_all();
                    }
                    if seen > limits.warmup {
                        summary.frames += 1;
                        for (h, d) in summary.stages.iter_mut().zip(r.times.0) {
                            h.record(d);
                        }
                        summary.events += r
                            .events
                            .iter()
                            .filter(|e| e.kind == crate::decision::EventKind::Fire)
                            .count() as u64;
                    }
                    sink.frame(&r)
                        .map_err(|e| PipelineError::Sink(e.to_string()))?;
                    if limits.max_frames.is_some_and(|m| summary.frames >= m) {
                        break;
                    }
                }
                Ok(())
            })();
            let alloc1 = alloc::counts_all();
            summary.allocations = (alloc1[0] - alloc0[0], alloc1[1] - alloc0[1]);
            summary.other_allocations = alloc1[2] - alloc0[2];
            summary.wall = started.elapsed();
            ring.close();
            if let Some(i) = &interrupt {
                i.fire();
            }
            summary.source = capture.join().unwrap_or_else(|_| {
                log::error!("the capture thread panicked; input after that point was not read");
                SourceStats::default()
            });
            out
        });
        if let Some(i) = &interrupt {
            i.reset();
        }
        summary.dropped = ring.dropped();
        let result = result.and_then(|()| {
            match capture_error
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
            {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        });
        (summary, result)
    }
}

/// See [`Pipeline::min_source_size`].
fn min_source_size([w, h]: [u32; 2], roi: Option<&Roi>) -> Option<(u32, u32)> {
    // 0 is 0 at any resolution; other pixel counts refer to the camera's.
    let any_scale = |c: &Coord| matches!(c, Coord::Frac(_) | Coord::Px(0));
    match roi {
        None => Some((w, h)),
        Some(Roi {
            w: Coord::Frac(fw),
            h: Coord::Frac(fh),
            x,
            y,
        }) if *fw > 0.0 && *fh > 0.0 && any_scale(x) && any_scale(y) => Some((
            (w as f64 / fw).ceil().min(u32::MAX as f64) as u32,
            (h as f64 / fh).ceil().min(u32::MAX as f64) as u32,
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod min_size_tests {
    use super::*;

    #[test]
    fn sources_may_shrink_frames_to_what_the_region_still_fills() {
        let roi = |s: &str| s.parse::<Roi>().unwrap();
        assert_eq!(min_source_size([224, 224], None), Some((224, 224)));
        assert_eq!(
            min_source_size([224, 224], Some(&roi("0.25,0,0.5,0.25"))),
            Some((448, 896))
        );
        // Pixel coordinates refer to the camera's full resolution: no shrinking.
        assert_eq!(
            min_source_size([224, 224], Some(&roi("100,0,0.5,0.5"))),
            None
        );
        assert_eq!(min_source_size([224, 224], Some(&roi("0,0,640,480"))), None);
    }
}
