//! Command-line interface.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand};

use edgefuse_board::jetson::Board;
use edgefuse_board::jetson_pins::Direction;
use edgefuse_board::linux::{detect_board, find_chip, EdgeWatcher, LineInput, LineOutput};
use edgefuse_models::text::LabelEmbedder;
use edgefuse_models::Bundle;
use edgefuse_runtime::capture::{self, CaptureError};
use edgefuse_runtime::config::RunConfig;
use edgefuse_runtime::decision::{DecisionConfig, EventKind};
use edgefuse_runtime::gpio::{ActuatorSpec, EdgeClock, EdgeTrigger, Io, LedSpec, Wiring};
use edgefuse_runtime::gpu::{self, DeviceChoice};
use edgefuse_runtime::pipeline::{
    FrameResult, Pipeline, PipelineConfig, RunLimits, RunSummary, STAGES,
};
use edgefuse_runtime::trigger::{Trigger, TriggerSpec};

/// A usage error (exit code 2): the command line asks for something that cannot work.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

#[derive(Parser, Debug)]
#[command(
    name = "edgefuse",
    version,
    about = "Camera-triggered vision-language classifier: CLIP image encoder + Q-Former + zero-shot fusion on tract",
    propagate_version = true
)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Classify frames from a source and emit results and events.
    Run(Box<RunArgs>),
    /// Measure per-stage latency, throughput and allocations; prints one JSON object.
    Bench(BenchArgs),
    /// Show the bundle, the backends and (with --camera) a camera's formats.
    Info(InfoArgs),
    /// List, add or remove labels of a bundle (runs the text tower on this machine).
    Labels(LabelsArgs),
    /// Jetson 40-pin header maps and board detection.
    Board(BoardArgs),
    /// Calibrate activation ranges on frames and write an int8 bundle.
    Calibrate(CalibrateArgs),
    /// Compile the CUDA kernels with NVRTC (no GPU needed) and optionally write their PTX.
    Kernels(KernelsArgs),
}

#[derive(Args, Debug)]
struct KernelsArgs {
    /// Target architectures, comma separated [default: the Jetsons' and the H100/H200's].
    #[arg(long, value_delimiter = ',', default_value = "sm_53,sm_72,sm_87,sm_90")]
    arch: Vec<String>,
    /// Write each kernel file's PTX as DIR/<file>.<arch>.ptx (for ptxas).
    #[arg(long, value_name = "DIR")]
    ptx_dir: Option<PathBuf>,
    /// Instead of compiling for --arch: time every kernel on this machine's GPU (ViT-B/32 and
    /// BLIP-2 Q-Former shapes at batch 1) against the device's peaks.
    #[arg(long)]
    bench: bool,
}

/// `--device` values.
fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

#[derive(Args, Debug)]
struct CalibrateArgs {
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
    #[arg(long, value_name = "N")]
    eval_frames: Option<u64>,
    /// The int8 bundle folder to create (must not exist).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct BoardArgs {
    #[command(subcommand)]
    action: BoardAction,
}

#[derive(Subcommand, Debug)]
enum BoardAction {
    /// Print the header's GPIO pins: BOARD number, chip label, line offset, SoC name.
    Pins {
        /// nano, xavier-nx, agx-xavier, orin-nano, orin-nx or agx-orin [default: detected].
        #[arg(long, value_name = "NAME")]
        board: Option<String>,
        /// A JSON array of {pin, chip, line, soc_name, pwm, direction} objects.
        #[arg(long)]
        json: bool,
    },
    /// Print the board this machine is, from the device tree.
    Detect,
}

#[derive(Args, Debug, Clone)]
struct ModelArg {
    /// Model bundle folder [default: $EDGEFUSE_MODEL, else the bundled default model].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Read options from this TOML file (keys = option names with `_`); the command line overrides it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArg,
    /// Frame source: v4l2:///dev/videoN, file://PATH (image or folder), synthetic:// [default: the bundled sample frames].
    #[arg(long, value_name = "URI")]
    source: Option<String>,
    /// continuous, interval:<ms>, motion[:threshold=T,area=A], gpio:pin=N[,edge=rising|falling|both][,debounce=20ms] [default: continuous].
    #[arg(long, value_parser = parse_trigger)]
    trigger: Option<TriggerSpec>,
    /// Labels reported per frame [default: 3].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=16))]
    top_k: Option<u16>,
    /// Minimum probability for a label to win a frame [default: 0.5].
    #[arg(long, value_parser = parse_unit)]
    threshold: Option<f32>,
    /// Per-label threshold, LABEL=X (repeatable).
    #[arg(long = "label-threshold", value_name = "LABEL=X")]
    label_thresholds: Vec<String>,
    /// A label fires after winning N of the last --window frames [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=32))]
    fire_wins: Option<u32>,
    /// Hysteresis window in frames [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=32))]
    window: Option<u32>,
    /// An active label is released after losing this many frames in a row [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    release: Option<u32>,
    /// Minimum milliseconds between two firings of the same label [default: 0].
    #[arg(long)]
    cooldown_ms: Option<u64>,
    /// Stop after N classified frames.
    #[arg(long)]
    frames: Option<u64>,
    /// One JSON object per classified frame on stdout (summary on stderr).
    #[arg(long)]
    json: bool,
    /// Board whose header numbering `pin:N` uses (nano, xavier-nx, agx-xavier, orin-nano, orin-nx, agx-orin) [default: detected].
    #[arg(long, value_name = "NAME")]
    board: Option<String>,
    /// Drive a pin when LABEL fires: LABEL=pin:N[,pulse=200ms|hold][,active-low] (repeatable).
    #[arg(long = "on", value_name = "LABEL=PIN", value_parser = parse_on)]
    on: Vec<ActuatorSpec>,
    /// Status LED (ready: on, classifying: fast blink, error: 3 blinks): pin:N[,active-low].
    #[arg(long, value_name = "PIN")]
    status_led: Option<LedSpec>,
    /// auto (GPU when usable, else CPU after a warning), cpu, or cuda (GPU or fail) [default: auto].
    #[arg(long, value_parser = parse_device)]
    device: Option<DeviceChoice>,
}

fn parse_on(s: &str) -> Result<ActuatorSpec, String> {
    ActuatorSpec::parse_flag(s)
}

/// `run` options after merging the config file (if any) under the command line.
#[derive(Debug)]
struct RunOptions {
    model: ModelArg,
    source: Option<String>,
    trigger: TriggerSpec,
    top_k: u16,
    threshold: f32,
    /// (label, threshold, where it was set) in order; later entries override earlier ones.
    label_thresholds: Vec<(String, f32, String)>,
    fire_wins: u32,
    window: u32,
    release: u32,
    cooldown_ms: u64,
    frames: Option<u64>,
    json: bool,
    board: Option<Board>,
    wiring: Wiring,
    device: DeviceChoice,
}

fn parse_board(name: &str, origin: &str) -> Result<Board> {
    Board::from_name(name).ok_or_else(|| {
        anyhow!(UsageError(format!(
            "{origin}: unknown board `{name}`; supported: {}",
            Board::ALL.map(Board::name).join(", ")
        )))
    })
}

impl RunArgs {
    fn resolve(self) -> Result<RunOptions> {
        let file = match &self.config {
            Some(p) => RunConfig::load(p).map_err(|e| anyhow!(UsageError(e.to_string())))?,
            None => RunConfig::default(),
        };
        let cfg_name = self
            .config
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let board = match (&self.board, &file.board) {
            (Some(b), _) => Some(parse_board(b, "--board")?),
            (None, Some(b)) => Some(parse_board(b, &format!("{cfg_name}: key `board`"))?),
            (None, None) => None,
        };
        // Actuators: the file's, then the command line's; a label given on the command line
        // replaces the file's actuator for that label.
        let mut actuators = Vec::new();
        for (label, spec) in &file.on {
            actuators.push(
                ActuatorSpec::parse(label, spec)
                    .map_err(|e| anyhow!(UsageError(format!("{cfg_name} [on]: {e}"))))?,
            );
        }
        for a in &self.on {
            actuators.retain(|x: &ActuatorSpec| x.label != a.label);
            actuators.push(a.clone());
        }
        let status_led =
            match (&self.status_led, &file.status_led) {
                (Some(l), _) => Some(l.clone()),
                (None, Some(s)) => Some(s.parse::<LedSpec>().map_err(|e| {
                    anyhow!(UsageError(format!("{cfg_name}: key `status_led`: {e}")))
                })?),
                (None, None) => None,
            };
        let mut label_thresholds: Vec<(String, f32, String)> = file
            .label_thresholds
            .iter()
            .map(|(k, v)| (k.clone(), v.0, format!("{cfg_name} [label_thresholds]")))
            .collect();
        for spec in &self.label_thresholds {
            let (name, v) = spec.rsplit_once('=').ok_or_else(|| {
                anyhow!(UsageError(format!(
                    "--label-threshold `{spec}`: expected LABEL=X"
                )))
            })?;
            let v = parse_unit(v)
                .map_err(|e| anyhow!(UsageError(format!("--label-threshold `{spec}`: {e}"))))?;
            label_thresholds.push((name.to_string(), v, format!("--label-threshold `{spec}`")));
        }
        Ok(RunOptions {
            model: ModelArg {
                model: self.model.model.or(file.model),
            },
            source: self.source.or(file.source),
            trigger: self
                .trigger
                .or(file.trigger)
                .unwrap_or(TriggerSpec::Continuous),
            top_k: self.top_k.or(file.top_k.map(|v| v.0 as u16)).unwrap_or(3),
            threshold: self
                .threshold
                .or(file.threshold.map(|v| v.0))
                .unwrap_or(0.5),
            label_thresholds,
            fire_wins: self
                .fire_wins
                .or(file.fire_wins.map(|v| v.0 as u32))
                .unwrap_or(1),
            window: self.window.or(file.window.map(|v| v.0 as u32)).unwrap_or(1),
            release: self
                .release
                .or(file.release.map(|v| v.0 as u32))
                .unwrap_or(1),
            cooldown_ms: self
                .cooldown_ms
                .or(file.cooldown_ms.map(|v| v.0))
                .unwrap_or(0),
            frames: self.frames.or(file.frames.map(|v| v.0)),
            json: self.json || file.json.unwrap_or(false),
            board,
            wiring: Wiring {
                trigger: None,
                actuators,
                status_led,
            },
            device: self.device.or(file.device).unwrap_or_default(),
        })
    }
}

#[derive(Args, Debug)]
struct BenchArgs {
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
    /// auto, cpu or cuda [default: auto].
    #[arg(long, value_parser = parse_device, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args, Debug)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArg,
    /// A camera device to list the formats of, e.g. /dev/video0.
    #[arg(long, value_name = "DEVICE")]
    camera: Option<String>,
}

#[derive(Args, Debug)]
struct LabelsArgs {
    #[command(subcommand)]
    action: LabelsAction,
}

#[derive(Subcommand, Debug)]
enum LabelsAction {
    /// Print the labels and their prompts.
    List {
        #[command(flatten)]
        model: ModelArg,
    },
    /// Embed PROMPT(s) with the text tower and add them to label NAME (created if new).
    Add {
        #[command(flatten)]
        model: ModelArg,
        /// Prompts describing the label, e.g. "a photo of a cat".
        #[arg(required = true)]
        prompts: Vec<String>,
        /// The label's name.
        #[arg(long)]
        label: String,
    },
    /// Remove label NAME.
    Remove {
        #[command(flatten)]
        model: ModelArg,
        /// The label's name.
        #[arg(long)]
        label: String,
    },
}

fn parse_trigger(s: &str) -> Result<TriggerSpec, String> {
    s.parse()
}

fn parse_unit(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} must be between 0 and 1"))
    }
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
    match dispatch(cli.command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("edgefuse: {e:#}");
            let usage = e.chain().any(|c| {
                c.downcast_ref::<UsageError>().is_some()
                    || matches!(
                        c.downcast_ref::<CaptureError>(),
                        Some(CaptureError::UnknownScheme { .. } | CaptureError::BadOption { .. })
                    )
            });
            if usage {
                2
            } else {
                1
            }
        }
    }
}

fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
        Command::Run(a) => run(*a),
        Command::Bench(a) => bench(a),
        Command::Info(a) => info(a),
        Command::Labels(a) => labels(a),
        Command::Board(a) => board(a),
        Command::Calibrate(a) => calibrate(a),
        Command::Kernels(a) => kernels(a),
    }
}

fn kernels(a: KernelsArgs) -> Result<()> {
    let mut archs = Vec::new();
    for s in &a.arch {
        let t = s.trim();
        let sm = t
            .strip_prefix("sm_")
            .or_else(|| t.strip_prefix("compute_"))
            .unwrap_or(t)
            .parse::<u32>()
            .ok()
            .filter(|v| (gpu::MIN_SM..200).contains(v))
            .ok_or_else(|| {
                anyhow!(UsageError(format!(
                    "--arch `{s}`: expected sm_XY with XY between {} and 199, e.g. sm_87",
                    gpu::MIN_SM
                )))
            })?;
        archs.push(sm);
    }
    if a.bench {
        let (device, timings) = gpu::bench_kernels()?;
        println!("{device}");
        for t in &timings {
            let peak = t
                .peak
                .map(|p| format!("  {:5.1}% of {p:.0} {}", 100.0 * t.rate / p, t.unit))
                .unwrap_or_default();
            println!(
                "{:<52} {:>9.2} us  {:>9.1} {}{peak}",
                t.name, t.median_us, t.rate, t.unit
            );
        }
        return Ok(());
    }
    let builds = gpu::build_all(&archs, a.ptx_dir.as_deref())?;
    for b in &builds {
        println!(
            "ok  {:<14} sm_{}  ptx {:>7} B  cubin {:>7} B{}",
            b.file,
            b.sm,
            b.ptx_bytes,
            b.cubin_bytes,
            b.ptx_path
                .as_ref()
                .map(|p| format!("  -> {}", p.display()))
                .unwrap_or_default()
        );
    }
    println!(
        "{} kernel files x {} architectures compiled clean with NVRTC",
        builds.len() / archs.len().max(1),
        archs.len()
    );
    Ok(())
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        ab += f64::from(*x) * f64::from(*y);
        aa += f64::from(*x) * f64::from(*x);
        bb += f64::from(*y) * f64::from(*y);
    }
    if aa == 0.0 || bb == 0.0 {
        return if aa == bb { 1.0 } else { 0.0 };
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// Ground truth for a frame read from a folder with a `labels.csv` (`file,label`).
struct Truth(std::collections::HashMap<PathBuf, std::collections::HashMap<String, String>>);

impl Truth {
    fn label(&mut self, source: &str) -> Option<String> {
        let p = Path::new(source);
        let dir = p.parent()?.to_path_buf();
        let map = self.0.entry(dir.clone()).or_insert_with(|| {
            std::fs::read_to_string(dir.join("labels.csv"))
                .map(|t| {
                    t.lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(','))
                        .map(|(f, l)| (f.to_string(), l.trim().to_string()))
                        .collect()
                })
                .unwrap_or_default()
        });
        map.get(p.file_name()?.to_str()?).cloned()
    }
}

fn calibrate(a: CalibrateArgs) -> Result<()> {
    use edgefuse_runtime::calibrate::{self as cal, CalibrateError};
    let bundle = open_bundle(&a.model)?;
    let usage = |e: CalibrateError| -> anyhow::Error {
        match e {
            CalibrateError::AlreadyQuantized(_)
            | CalibrateError::UnknownSkip(..)
            | CalibrateError::TooFewFrames { .. }
            | CalibrateError::Calibration(edgefuse_calibration::CalibrationError::UnknownMethod(
                _,
            )) => {
                anyhow!(UsageError(e.to_string()))
            }
            e => anyhow!(e),
        }
    };
    if a.out.exists() {
        return Err(anyhow!(UsageError(format!(
            "--out {}: already exists; remove it or choose another folder",
            a.out.display()
        ))));
    }
    let mut source = capture::open(&a.source)?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let started = std::time::Instant::now();
    let total = a.frames;
    let c = cal::collect(&bundle, source.as_mut(), &a.method, a.frames, |n| {
        if tty {
            eprint!("\rcalibrating: {n}/{total} frames");
        } else if n % 50 == 0 {
            eprintln!("calibrating: {n}/{total} frames");
        }
    })
    .map_err(usage)?;
    if tty {
        eprintln!();
    }
    c.check_skip(&a.skip).map_err(usage)?;
    eprintln!(
        "collected {} frames in {:.1} s; {} linear layers ({} kept in float)",
        c.frames,
        started.elapsed().as_secs_f64(),
        c.layers.len(),
        a.skip.len()
    );
    let staged = cal::stage_bundle(&bundle, &c, &a.skip, &a.out).map_err(usage)?;

    // Fidelity: float and int8 side by side on the evaluation frames.
    let int8 = Bundle::open(&staged.tmp)?;
    let cfg = PipelineConfig::default();
    let mut pf = Pipeline::new(&bundle, cfg.clone()).context("float pipeline")?;
    let mut pq = Pipeline::new(&int8, cfg).context("int8 pipeline")?;
    let eval_uri = a.eval.clone().unwrap_or_else(|| a.source.clone());
    let mut src = capture::open(&eval_uri)?;
    let mut frame = edgefuse_runtime::frame::Frame::with_capacity(src.max_frame_bytes());
    let mut truth = Truth(Default::default());
    let (mut n, mut agree, mut labelled, mut right_f, mut right_q) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut cos_e, mut cos_q, mut min_e) = (0f64, 0f64, 1f64);
    let labels = pf.labels().to_vec();
    let eval_frames = a.eval_frames.unwrap_or(a.frames);
    while n < eval_frames && src.next_frame(&mut frame)? {
        let Some(rf) = pf.process(&frame)? else {
            continue;
        };
        let top_f = rf.top.iter().next().map(|t| t.0);
        let Some(rq) = pq.process(&frame)? else {
            continue;
        };
        let top_q = rq.top.iter().next().map(|t| t.0);
        let ce = cosine(pf.embedding(), pq.embedding());
        cos_e += ce;
        min_e = min_e.min(ce);
        cos_q += cosine(pf.queries(), pq.queries());
        n += 1;
        agree += u64::from(top_f == top_q);
        if let Some(t) = truth
            .label(&frame.source)
            .filter(|t| labels.iter().any(|l| l == t))
        {
            labelled += 1;
            let name = |x: Option<u16>| x.map(|i| labels[i as usize].as_str());
            right_f += u64::from(name(top_f) == Some(t.as_str()));
            right_q += u64::from(name(top_q) == Some(t.as_str()));
        }
    }
    let pct = |x: u64, d: u64| {
        if d == 0 {
            0.0
        } else {
            100.0 * x as f64 / d as f64
        }
    };
    let mut layers: Vec<(f64, &cal::LayerStats)> = c
        .layers
        .iter()
        .map(|s| (s.hist.quantization_error(f64::from(s.amax), 127.0), s))
        .collect();
    let mut report = format!(
        "{{\"method\":\"{}\",\"calibration_frames\":{},\"eval_source\":{},\"eval_frames\":{n},\"embedding_cosine_mean\":{:.6},\"embedding_cosine_min\":{:.6},\"qformer_cosine_mean\":{:.6},\"top1_agreement\":{:.4},\"labelled_frames\":{labelled},\"accuracy_float\":{:.4},\"accuracy_int8\":{:.4},\"layers\":[",
        c.method_name,
        c.frames,
        serde_json::to_string(&eval_uri)?,
        cos_e / n.max(1) as f64,
        min_e,
        if pf.queries().is_empty() { 1.0 } else { cos_q / n.max(1) as f64 },
        pct(agree, n) / 100.0,
        pct(right_f, labelled) / 100.0,
        pct(right_q, labelled) / 100.0,
    );
    for (i, (err, s)) in layers.iter().enumerate() {
        if i > 0 {
            report.push(',');
        }
        report.push_str(&format!(
            "{{\"model\":\"{}\",\"layer\":{},\"tensor\":{},\"k\":{},\"n\":{},\"amax\":{:e},\"observed_max\":{:e},\"activation_rel_error\":{:.5},\"int8\":{}}}",
            s.model,
            serde_json::to_string(&s.layer.name)?,
            serde_json::to_string(&s.layer.input_tensor)?,
            s.layer.k,
            s.layer.n,
            s.amax,
            s.hist.max(),
            err,
            !a.skip.contains(&s.layer.name)
        ));
    }
    report.push_str("]}\n");
    staged.add_file("fidelity.json", &report)?;
    let out = staged.commit()?;
    println!("int8 bundle: {}", out.display());
    println!(
        "fidelity on {n} frames of {eval_uri}: embedding cosine mean {:.6} (min {:.6}), q-former cosine {:.6}, top-1 agreement {:.2}%",
        cos_e / n.max(1) as f64,
        min_e,
        if pf.queries().is_empty() { 1.0 } else { cos_q / n.max(1) as f64 },
        pct(agree, n)
    );
    if labelled > 0 {
        println!(
            "accuracy on {labelled} labelled frames: float {:.2}%, int8 {:.2}% ({:+.2} points)",
            pct(right_f, labelled),
            pct(right_q, labelled),
            pct(right_q, labelled) - pct(right_f, labelled)
        );
    }
    layers.sort_by(|x, y| y.0.total_cmp(&x.0));
    println!("most sensitive layers (relative activation quantization error; keep one in float with --skip LAYER):");
    for (err, s) in layers.iter().take(5) {
        println!(
            "  {:>8.4}  {} {} ({}x{})",
            err, s.model, s.layer.name, s.layer.k, s.layer.n
        );
    }
    println!("wrote calibration.json, calibration.cache (TensorRT), fidelity.json");
    Ok(())
}

fn board(a: BoardArgs) -> Result<()> {
    let root = Path::new("/");
    match a.action {
        BoardAction::Detect => {
            let (b, model) = detect_board(root).map_err(|e| anyhow!(UsageError(e.to_string())))?;
            println!("{}\t{}\t{model}", b.name(), b.title());
            Ok(())
        }
        BoardAction::Pins { board, json } => {
            let b = match board {
                Some(n) => parse_board(&n, "--board")?,
                None => {
                    detect_board(root)
                        .map_err(|e| anyhow!(UsageError(e.to_string())))?
                        .0
                }
            };
            // Pinmux state is only readable by root with debugfs; report it when it is.
            let muxed = edgefuse_board::linux::non_gpio_pins(root, b);
            let mux_of = |pin: u8| -> Option<&str> {
                muxed
                    .as_ref()
                    .and_then(|m| m.iter().find(|(p, _)| *p == pin).map(|(_, f)| f.as_str()))
            };
            let dir = |d: Direction| match d {
                Direction::Both => "both",
                Direction::InputOnly => "input-only",
                Direction::OutputOnly => "output-only",
            };
            if json {
                let mut out = String::from("[");
                for (i, p) in b.pins().iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&format!(
                        "{{\"pin\":{},\"chip\":\"{}\",\"line\":{},\"soc_name\":\"{}\",\"pwm\":{},\"direction\":\"{}\"",
                        p.board, p.chip, p.line, p.soc_name, p.pwm, dir(p.direction)
                    ));
                    if let Some(f) = mux_of(p.board) {
                        out.push_str(&format!(",\"pinmux\":\"{f}\""));
                    }
                    out.push('}');
                }
                out.push(']');
                println!("{out}");
            } else {
                println!(
                    "{} ({}), 40-pin header, BOARD numbering",
                    b.title(),
                    b.name()
                );
                println!(
                    "{:>4}  {:<18} {:>5}  {:<10} {:<4} direction",
                    "pin", "chip", "line", "soc", "pwm"
                );
                for p in b.pins() {
                    let note = match mux_of(p.board) {
                        Some(f) => {
                            format!("  pinmux: {f} (not GPIO; set the pinmux with jetson-io)")
                        }
                        None => String::new(),
                    };
                    println!(
                        "{:>4}  {:<18} {:>5}  {:<10} {:<4} {}{note}",
                        p.board,
                        p.chip,
                        p.line,
                        p.soc_name,
                        if p.pwm { "yes" } else { "" },
                        dir(p.direction)
                    );
                }
                if muxed.is_none() && b.is_orin() {
                    println!("(pinmux state not readable: run as root with debugfs mounted to see pins muxed away from GPIO)");
                }
            }
            Ok(())
        }
    }
}

/// Where data files live: next to an installed binary (`../share/edgefuse`), the Debian
/// location, or the source tree this binary was built from.
fn data_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            dirs.push(prefix.join("share/edgefuse"));
        }
    }
    dirs.push(PathBuf::from("/usr/share/edgefuse"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"));
    dirs
}

fn find_data(rel: &str) -> Option<PathBuf> {
    data_dirs()
        .into_iter()
        .map(|d| d.join(rel))
        .find(|p| p.exists())
}

fn model_dir(arg: &ModelArg) -> Result<PathBuf> {
    if let Some(m) = &arg.model {
        return Ok(m.clone());
    }
    if let Some(m) = std::env::var_os("EDGEFUSE_MODEL") {
        return Ok(PathBuf::from(m));
    }
    find_data("default").ok_or_else(|| {
        anyhow!(UsageError(
            "no default model bundle found (looked in ../share/edgefuse, /usr/share/edgefuse and the source tree); pass --model DIR".into()
        ))
    })
}

fn open_bundle(arg: &ModelArg) -> Result<Bundle> {
    let dir = model_dir(arg)?;
    Bundle::open(&dir).with_context(|| format!("cannot use model bundle {}", dir.display()))
}

fn default_samples() -> Result<String> {
    let dir = find_data("samples/mnist").ok_or_else(|| {
        anyhow!(UsageError(
            "no bundled sample frames found; pass --source URI".into()
        ))
    })?;
    Ok(format!("file://{}", dir.display()))
}

fn install_ctrlc(stop: &Arc<AtomicBool>) {
    let s = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || s.store(true, Ordering::Relaxed)) {
        log::warn!("cannot install the Ctrl-C handler ({e}); stop with SIGKILL");
    }
}

fn decision_config(a: &RunOptions, labels: &[String]) -> Result<DecisionConfig> {
    let mut label_thresholds: Vec<(u16, f32)> = Vec::new();
    for (name, v, origin) in &a.label_thresholds {
        let idx = labels.iter().position(|l| l == name).ok_or_else(|| {
            anyhow!(UsageError(format!(
                "{origin}: no label `{name}`; labels are {labels:?}"
            )))
        })? as u16;
        label_thresholds.retain(|(i, _)| *i != idx);
        label_thresholds.push((idx, *v));
    }
    if a.fire_wins > a.window {
        return Err(anyhow!(UsageError(format!(
            "--fire-wins (fire_wins) {} is larger than --window (window) {}: a label can win at most `window` frames of the window",
            a.fire_wins, a.window
        ))));
    }
    Ok(DecisionConfig {
        threshold: a.threshold,
        label_thresholds,
        fire_wins: a.fire_wins,
        window: a.window,
        release_losses: a.release,
        cooldown: Duration::from_millis(a.cooldown_ms),
    })
}

fn run(args: RunArgs) -> Result<()> {
    let mut a = args.resolve()?;
    if let TriggerSpec::Gpio(g) = &a.trigger {
        a.wiring.trigger = Some(g.clone());
    }
    let bundle = open_bundle(&a.model)?;
    let uri = match &a.source {
        Some(s) => s.clone(),
        None => default_samples()?,
    };
    let mut source = capture::open(&uri)?;
    log::info!("source {}", source.describe());
    let labels: Vec<String> = bundle.label_names().map(str::to_string).collect();
    let cfg = PipelineConfig {
        top_k: a.top_k as usize,
        decision: decision_config(&a, &labels)?,
        device: a.device,
        ..Default::default()
    };
    let mut pipeline = Pipeline::new(&bundle, cfg).context("cannot build the pipeline")?;
    let hw = if a.wiring.is_empty() {
        None
    } else {
        Some(Hardware::open(&a, &labels)?)
    };
    let external = hw.as_ref().and_then(Hardware::external_trigger);
    let mut trigger = Trigger::new(&a.trigger, external).map_err(|e| anyhow!(UsageError(e)))?;
    let stop = Arc::new(AtomicBool::new(false));
    install_ctrlc(&stop);
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let json = a.json;
    let limits = RunLimits {
        max_frames: a.frames,
        warmup: 0,
    };
    let (summary, result) = pipeline.run(source.as_mut(), &mut trigger, limits, &stop, |r| {
        let latency = hw.as_ref().and_then(|h| h.on_result(r));
        if json {
            write_json(&mut out, r, &labels, &uri, latency)?;
        } else {
            write_text(&mut out, r, &labels, latency)?;
        }
        // Flush per frame so events reach consumers (pipes, the journal) without delay.
        out.flush()
    });
    drop(out);
    drop(trigger);
    print_summary(&summary, json);
    if let Some(hw) = hw {
        hw.finish(result.is_err(), json);
    }
    result.with_context(|| format!("run on {uri} stopped"))
}

/// GPIO on the board: the trigger's edge thread, actuators and status LED on character-device
/// lines, and a thread that ends pulses and blinks the LED.
struct Hardware {
    io: Arc<std::sync::Mutex<Io<LineOutput>>>,
    clock: Arc<EdgeClock>,
    watcher: Option<EdgeWatcher>,
    ticker_stop: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Hardware {
    fn open(a: &RunOptions, labels: &[String]) -> Result<Self> {
        let board = match a.board {
            Some(b) => Some(b),
            None if a.wiring.needs_board() => {
                let (b, model) =
                    detect_board(Path::new("/")).map_err(|e| anyhow!(UsageError(e.to_string())))?;
                log::info!("board: {} ({model})", b.title());
                Some(b)
            }
            None => None,
        };
        let w = a
            .wiring
            .resolve(board, labels)
            .map_err(|e| anyhow!(UsageError(e)))?;
        // Pre-flight: every line can be opened and is free, before any is driven.
        let mut paths = std::collections::HashMap::new();
        let pins = w
            .trigger
            .iter()
            .map(|(p, _)| p)
            .chain(w.actuators.iter().map(|(_, p, _)| p))
            .chain(w.status_led.iter().map(|(p, _)| p));
        for p in pins {
            let path = find_chip(&p.chip).with_context(|| format!("cannot use {}", p.name))?;
            LineInput::request(&path, p.line, "edgefuse-check")
                .with_context(|| format!("cannot use {}", p.name))?;
            paths.insert((p.chip.clone(), p.line), path);
        }
        let path_of =
            |p: &edgefuse_runtime::gpio::ResolvedPin| paths[&(p.chip.clone(), p.line)].clone();
        let mut outputs = Vec::new();
        for (label, p, spec) in &w.actuators {
            let pin =
                LineOutput::request(&path_of(p), p.line, "edgefuse-actuator", spec.active_low)
                    .with_context(|| format!("cannot drive {}", p.name))?;
            log::info!("actuator for `{}` on {}", spec.label, p.name);
            outputs.push((*label, pin, spec.mode, spec.active_low));
        }
        let led = match &w.status_led {
            Some((p, spec)) => {
                let pin =
                    LineOutput::request(&path_of(p), p.line, "edgefuse-status", spec.active_low)
                        .with_context(|| format!("cannot drive {}", p.name))?;
                log::info!("status LED on {}", p.name);
                Some((pin, spec.active_low))
            }
            None => None,
        };
        let clock = EdgeClock::new();
        let io = Io::new(outputs, led, clock.clone()).map_err(|e| anyhow!(e))?;
        let watcher = match &w.trigger {
            Some((p, spec)) => {
                let c = clock.clone();
                let watcher = EdgeWatcher::start(
                    &path_of(p),
                    p.line,
                    spec.edge,
                    spec.debounce,
                    "edgefuse-trigger",
                    move |t| c.edge(t),
                )
                .with_context(|| format!("cannot watch {}", p.name))?;
                log::info!(
                    "trigger on {} ({:?} edge, debounce {:?})",
                    p.name,
                    spec.edge,
                    spec.debounce
                );
                Some(watcher)
            }
            None => None,
        };
        let io = Arc::new(std::sync::Mutex::new(io));
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (i, s) = (io.clone(), ticker_stop.clone());
        let ticker = std::thread::Builder::new()
            .name("edgefuse-gpio-tick".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if let Ok(mut io) = i.lock() {
                        io.tick(std::time::Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .context("cannot start the GPIO timer thread")?;
        Ok(Self {
            io,
            clock,
            watcher,
            ticker_stop,
            ticker: Some(ticker),
        })
    }

    fn external_trigger(&self) -> Option<Box<dyn edgefuse_runtime::trigger::ExternalTrigger>> {
        self.watcher
            .as_ref()
            .map(|_| Box::new(EdgeTrigger(self.clock.clone())) as Box<_>)
    }

    fn on_result(&self, r: &FrameResult<'_>) -> Option<Duration> {
        self.io.lock().ok().and_then(|mut io| io.on_result(r))
    }

    /// Stop the threads, show the error code for 3 s after a failed run, drive everything
    /// inactive, and print the trigger → actuator latency.
    fn finish(mut self, failed: bool, to_stderr: bool) {
        drop(self.watcher.take());
        // Only a status LED has an error code to show; without one, exit at once.
        let shows_error = failed
            && self
                .io
                .lock()
                .is_ok_and(|mut io| io.error(std::time::Instant::now()));
        if shows_error {
            std::thread::sleep(Duration::from_secs(3));
        }
        self.ticker_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        let Ok(io) =
            Arc::try_unwrap(self.io).map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        else {
            return;
        };
        let line = format!(
            "  trigger→actuator: {} events, p50 {:.3} ms, p99 {:.3} ms; {} pin errors",
            io.latency.count(),
            io.latency.quantile_ms(0.5),
            io.latency.quantile_ms(0.99),
            io.errors()
        );
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        io.release();
    }
}

fn write_json_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(b"\"")?;
    for c in s.chars() {
        match c {
            '"' => w.write_all(b"\\\"")?,
            '\\' => w.write_all(b"\\\\")?,
            '\n' => w.write_all(b"\\n")?,
            '\r' => w.write_all(b"\\r")?,
            '\t' => w.write_all(b"\\t")?,
            c if (c as u32) < 0x20 => write!(w, "\\u{:04x}", c as u32)?,
            c => write!(w, "{c}")?,
        }
    }
    w.write_all(b"\"")
}

fn write_json(
    w: &mut impl Write,
    r: &FrameResult<'_>,
    labels: &[String],
    uri: &str,
    latency: Option<Duration>,
) -> std::io::Result<()> {
    write!(w, "{{\"frame\":{},\"source\":", r.frame.seq)?;
    let source = if r.frame.source.is_empty() {
        uri
    } else {
        r.frame.source.as_str()
    };
    write_json_str(w, source)?;
    w.write_all(b",\"top\":[")?;
    for (i, (l, p)) in r.top.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        w.write_all(b"[")?;
        write_json_str(w, &labels[*l as usize])?;
        write!(w, ",{p:.6}]")?;
    }
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    write!(w, "],\"time_unix_ms\":{unix_ms},\"event\":")?;
    match r.events.iter().find(|e| e.kind == EventKind::Fire) {
        Some(e) => {
            w.write_all(b"{\"label\":")?;
            write_json_str(w, &labels[e.label as usize])?;
            write!(w, ",\"score\":{:.6}", e.score)?;
            if let Some(l) = latency {
                write!(
                    w,
                    ",\"trigger_to_actuator_ms\":{:.3}",
                    l.as_secs_f64() * 1000.0
                )?;
            }
            w.write_all(b"}")?;
        }
        None => w.write_all(b"null")?,
    }
    w.write_all(b",\"released\":[")?;
    for (i, e) in r
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Release)
        .enumerate()
    {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_json_str(w, &labels[e.label as usize])?;
    }
    w.write_all(b"],\"heads\":{\"clip\":")?;
    write_json_str(w, &labels[r.heads.clip as usize])?;
    w.write_all(b",\"qformer\":")?;
    match r.heads.qformer {
        Some(q) => write_json_str(w, &labels[q as usize])?,
        None => w.write_all(b"null")?,
    }
    w.write_all(b"},\"latency_ms\":{")?;
    for (i, name) in STAGES.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write!(w, "\"{name}\":{:.3}", r.times.ms(i))?;
    }
    w.write_all(b"}}\n")
}

fn write_text(
    w: &mut impl Write,
    r: &FrameResult<'_>,
    labels: &[String],
    latency: Option<Duration>,
) -> std::io::Result<()> {
    write!(w, "frame {:>6}  {}  ", r.frame.seq, r.frame.source)?;
    for (i, (l, p)) in r.top.iter().enumerate() {
        if i > 0 {
            w.write_all(b", ")?;
        }
        write!(w, "{} {:.3}", labels[*l as usize], p)?;
    }
    for e in r.events.iter() {
        match e.kind {
            EventKind::Fire => write!(w, "  FIRE {} ({:.3})", labels[e.label as usize], e.score)?,
            EventKind::Release => write!(w, "  release {}", labels[e.label as usize])?,
        }
    }
    if let Some(l) = latency {
        write!(w, "  (edge→actuator {:.1} ms)", l.as_secs_f64() * 1000.0)?;
    }
    writeln!(w, "  [{:.1} ms]", r.times.ms(6))
}

fn print_summary(s: &RunSummary, to_stderr: bool) {
    let mut text = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        text,
        "summary: {} frames classified, {} not triggered, {} dropped (inference behind capture), {} broken frames, \
         {} files skipped as non-images, {} images undecodable, {} events",
        s.frames,
        s.not_triggered,
        s.dropped,
        s.broken,
        s.source.skipped_non_images,
        s.source.skipped_broken,
        s.events
    );
    for (name, h) in STAGES.iter().zip(&s.stages) {
        let _ = writeln!(
            text,
            "  {name:<11} p50 {:>8.3} ms   p99 {:>8.3} ms",
            h.quantile_ms(0.5),
            h.quantile_ms(0.99)
        );
    }
    if to_stderr {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
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

fn bench(a: BenchArgs) -> Result<()> {
    let bundle = open_bundle(&a.model)?;
    let uri = a
        .source
        .clone()
        .unwrap_or_else(|| "synthetic://?width=640&height=480&format=yuyv".to_string());
    let mut source = capture::open(&uri)?;
    let cfg = PipelineConfig {
        device: a.device,
        ..Default::default()
    };
    let mut pipeline = Pipeline::new(&bundle, cfg).context("cannot build the pipeline")?;
    let device = pipeline.device();
    let mut trigger = Trigger::Continuous;
    let stop = Arc::new(AtomicBool::new(false));
    install_ctrlc(&stop);
    let limits = RunLimits {
        max_frames: Some(a.frames),
        warmup: a.warmup,
    };
    let (s, result) = pipeline.run(source.as_mut(), &mut trigger, limits, &stop, |_| Ok(()));
    result.with_context(|| format!("bench on {uri} stopped"))?;
    if s.frames == 0 {
        return Err(anyhow!(
            "{uri} produced no frames after {} warm-up frames; give a longer source",
            a.warmup
        ));
    }
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = write!(out, "{{\"source\":");
    let mut buf = Vec::new();
    write_json_str(&mut buf, &uri)?;
    out.push_str(&String::from_utf8_lossy(&buf));
    let _ = write!(out, ",\"device\":");
    buf.clear();
    write_json_str(&mut buf, &device)?;
    out.push_str(&String::from_utf8_lossy(&buf));
    let _ = write!(
        out,
        ",\"gpu_fallbacks\":{},\"frames\":{},\"stages\":{{",
        pipeline.fallbacks(),
        s.frames
    );
    for (i, (name, h)) in STAGES
        .iter()
        .zip(&s.stages)
        .enumerate()
        .take(STAGES.len() - 1)
    {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "\"{name}\":{{\"p50_ms\":{:.4},\"p99_ms\":{:.4}}}",
            h.quantile_ms(0.5),
            h.quantile_ms(0.99)
        );
    }
    let e2e = &s.stages[STAGES.len() - 1];
    let _ = write!(
        out,
        "}},\"end_to_end\":{{\"p50_ms\":{:.4},\"p99_ms\":{:.4}}},\"fps\":{:.2},\"allocations_per_frame\":{{\"pipeline\":{},\"engine\":{}}},\"peak_rss_mb\":{:.1}}}",
        e2e.quantile_ms(0.5),
        e2e.quantile_ms(0.99),
        s.frames as f64 / s.wall.as_secs_f64().max(1e-9),
        s.allocations.0 as f64 / s.frames as f64,
        s.allocations.1 as f64 / s.frames as f64,
        peak_rss_mb()
    );
    println!("{out}");
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let bundle = open_bundle(&a.model)?;
    let m = bundle.manifest();
    println!(
        "bundle      {} {} ({})",
        m.name,
        m.version,
        bundle.dir().display()
    );
    if !m.description.is_empty() {
        println!("            {}", m.description);
    }
    println!(
        "input       {}x{} {:?}, mean {:?}, std {:?}, {:?}",
        m.preprocess.image_size[0],
        m.preprocess.image_size[1],
        m.preprocess.resize,
        m.preprocess.mean,
        m.preprocess.std,
        m.preprocess.channel_order
    );
    println!(
        "encoder     {} → embedding {}",
        m.encoder.model.file, m.encoder.embedding_dim
    );
    match &m.qformer {
        Some(q) => println!("q-former    {} ({} queries)", q.model.file, q.queries),
        None => println!("q-former    none"),
    }
    println!("fusion      {:?}", m.fusion.method);
    println!(
        "labels      {}: {}",
        m.labels.len(),
        bundle.label_names().collect::<Vec<_>>().join(", ")
    );
    for (k, v) in &m.accuracy {
        println!("accuracy    {k}: {:.2}%", v * 100.0);
    }
    match &m.quantization {
        Some(q) => println!(
            "precision   int8 linear layers ({} calibration, {} frames, {} kept in float; kernel {:?}), the rest float32",
            q.method,
            q.frames,
            q.skip.len(),
            edgefuse_models::quant::gemm::Kernel::best()
        ),
        None => println!("precision   float32"),
    }
    println!("backends    cpu: tract-onnx (available)");
    println!("build       {}", gpu::build_variant());
    match gpu::probe() {
        Ok(d) => println!("gpu         {d}"),
        Err(e) => println!("gpu         not used: {e}"),
    }
    if !m.license.is_empty() {
        println!("license     {}", m.license);
    }
    board_health(Path::new("/"));
    if let Some(cam) = a.camera {
        camera_info(&cam)?;
    }
    Ok(())
}

/// The board, its temperatures and power mode; a warning when it throttles.
fn board_health(root: &Path) {
    match detect_board(root) {
        Ok((b, model)) => println!("board       {} ({}) {model}", b.title(), b.name()),
        Err(_) => println!(
            "board       not a supported Jetson (GPIO pins need --board or line:CHIP:OFFSET)"
        ),
    }
    let h = edgefuse_board::linux::Health::read(root);
    if !h.zones.is_empty() {
        let temps: Vec<String> = h
            .zones
            .iter()
            .map(|z| format!("{} {:.1} °C", z.name, z.celsius))
            .collect();
        println!("thermal     {}", temps.join(", "));
    }
    if let Some(m) = &h.power_mode {
        println!("power mode  {m} (nvpmodel)");
    }
    for z in h.throttling() {
        let msg = format!(
            "{} is at {:.1} °C, at or above its {:.1} °C trip point: the SoC is throttling and inference slows down; improve cooling or pick a lower nvpmodel mode",
            z.name,
            z.celsius,
            z.throttle_at.unwrap_or(0.0)
        );
        log::warn!("{msg}");
        println!("WARNING     {msg}");
    }
}

#[cfg(feature = "v4l")]
fn camera_info(cam: &str) -> Result<()> {
    let formats = edgefuse_runtime::capture::v4l2::list_formats(cam)?;
    println!("camera      {cam}");
    for f in formats {
        println!("            {f}");
    }
    Ok(())
}

#[cfg(not(feature = "v4l"))]
fn camera_info(cam: &str) -> Result<()> {
    Err(anyhow!(
        "cannot list {cam}: this edgefuse was built without V4L2 support (feature `v4l`)"
    ))
}

fn labels(a: LabelsArgs) -> Result<()> {
    match a.action {
        LabelsAction::List { model } => {
            let b = open_bundle(&model)?;
            for l in &b.manifest().labels {
                println!("{}\t{}", l.name, l.prompts.join(" | "));
            }
            Ok(())
        }
        LabelsAction::Add {
            model,
            prompts,
            label,
        } => {
            if label.trim().is_empty() {
                return Err(anyhow!(UsageError("--label must not be empty".into())));
            }
            let mut b = open_bundle(&model)?;
            let embedder = LabelEmbedder::new(&b)?;
            let mut labels = b.manifest().labels.clone();
            let mut rows = b.label_embeddings().to_vec();
            let dim = b.manifest().encoder.embedding_dim;
            let idx = match labels.iter().position(|l| l.name == label) {
                Some(i) => i,
                None => {
                    labels.push(edgefuse_models::manifest::Label {
                        name: label.clone(),
                        prompts: Vec::new(),
                    });
                    rows.extend(std::iter::repeat_n(0.0, dim));
                    labels.len() - 1
                }
            };
            labels[idx].prompts.extend(prompts);
            let row = embedder.embed_label(&labels[idx].prompts)?;
            rows[idx * dim..(idx + 1) * dim].copy_from_slice(&row);
            b.write_labels(labels, &rows)?;
            println!(
                "label `{label}` now has {} prompt(s); the bundle has {} labels",
                b.manifest().labels[idx].prompts.len(),
                b.manifest().labels.len()
            );
            Ok(())
        }
        LabelsAction::Remove { model, label } => {
            let mut b = open_bundle(&model)?;
            let dim = b.manifest().encoder.embedding_dim;
            let mut labels = b.manifest().labels.clone();
            let idx = labels.iter().position(|l| l.name == label).ok_or_else(|| {
                anyhow!(UsageError(format!(
                    "no label `{label}`; labels are {:?}",
                    labels.iter().map(|l| &l.name).collect::<Vec<_>>()
                )))
            })?;
            if labels.len() == 1 {
                return Err(anyhow!(UsageError(format!(
                    "`{label}` is the last label; a bundle needs at least one"
                ))));
            }
            labels.remove(idx);
            let mut rows = b.label_embeddings().to_vec();
            rows.drain(idx * dim..(idx + 1) * dim);
            b.write_labels(labels, &rows)?;
            println!(
                "removed `{label}`; {} labels remain",
                b.manifest().labels.len()
            );
            Ok(())
        }
    }
}
