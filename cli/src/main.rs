//! `edgefuse`: the command-line front end. Parses, dispatches to one file per subcommand, maps
//! errors to exit codes (0 success, 1 runtime error, 2 usage or configuration error; a closed
//! stdout pipe ends quietly with 0, any other stdout write error is 1; a second signal, or the
//! first one in `calibrate`, exits with 128 + its number: see `signals`).

mod bench;
mod board;
mod calibrate;
mod eval;
mod events;
mod fit;
mod info;
mod kernels;
mod labels;
mod models;
mod options;
mod output;
mod paths;
mod plot;
mod progress;
mod reload;
mod run;
mod sd_notify;
mod signals;
mod status;
mod values;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use edgefuse_runtime::actuate::{HardwareError, WiringError};
use edgefuse_runtime::alloc::CountingAllocator;
use edgefuse_runtime::capture::CaptureError;
use edgefuse_runtime::trigger::TriggerError;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// Runs before `main` (and before the first allocation, whose counter may use LSE atomics):
/// a binary tuned for a newer CPU says so and exits 2 instead of dying with SIGILL.
extern "C" fn check_cpu() {
    let features = edgefuse_runtime::cpu::compiled_features();
    let mut err = std::io::stderr().lock();
    if let Ok(true) | Err(_) = edgefuse_runtime::cpu::write_mismatch(&features, &mut err) {
        // Exit 2 (configuration error): the service unit does not restart on it.
        std::process::exit(2);
    }
}

// SAFETY: `.init_array` entries are plain `extern "C" fn()` pointers that the C runtime calls
// once, single-threaded, before `main`; `check_cpu` touches no Rust runtime state that needs
// `main` to have started (it reads CPU feature flags and may print and exit).
#[used]
#[cfg_attr(target_os = "linux", link_section = ".init_array")]
static CHECK_CPU: extern "C" fn() = check_cpu;

/// A usage error (exit code 2): the command line or the configuration asks for something that
/// cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

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
    Run(Box<run::RunArgs>),
    /// Measure per-stage latency, throughput and allocations; prints one JSON object.
    Bench(bench::BenchArgs),
    /// Show the bundle, the backends and (with --camera) a camera's formats.
    Info(info::InfoArgs),
    /// List, add or remove labels of a bundle (runs the text tower on this machine).
    Labels(labels::LabelsArgs),
    /// Jetson 40-pin header maps and board detection.
    Board(board::BoardArgs),
    /// Install, list, activate and roll back model bundles (atomic switch, validated first).
    Models(models::ModelsArgs),
    /// Calibrate activation ranges on frames and write an int8 bundle.
    Calibrate(calibrate::CalibrateArgs),
    /// Compile the CUDA kernels with NVRTC (no GPU needed) and optionally write their PTX.
    Kernels(kernels::KernelsArgs),
    /// Fit the few-shot adapter and the fusion methods on labelled frames; writes a new bundle.
    Fit(fit::FitArgs),
    /// Top-1 accuracy and cost per frame of every head and fusion method on labelled frames.
    Eval(eval::EvalArgs),
}

fn main() {
    std::process::exit(try_main());
}

/// Parse, set up logging, dispatch; returns the exit code.
fn try_main() -> i32 {
    let matches = options::help_with_defaults(Cli::command()).try_get_matches();
    let cli = match matches.and_then(|m| Cli::from_arg_matches(&m)) {
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
    let result = match cli.command {
        Command::Run(a) => run::run(*a),
        Command::Bench(a) => bench::bench(a),
        Command::Info(a) => info::info(a),
        Command::Labels(a) => labels::labels(a),
        Command::Board(a) => board::board(a),
        Command::Models(a) => models::models(a),
        Command::Calibrate(a) => calibrate::calibrate(a),
        Command::Kernels(a) => kernels::kernels(a),
        Command::Fit(a) => fit::fit(a),
        Command::Eval(a) => eval::eval(a),
    };
    match result {
        Ok(()) => 0,
        // The reader of stdout went away (`edgefuse info | head`): nothing is wrong with the
        // command; end quietly, as other tools do.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<output::StdoutError>()
                    .is_some_and(output::StdoutError::is_closed_pipe)
            }) =>
        {
            0
        }
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "edgefuse: {e:#}");
            if is_usage(&e) {
                2
            } else {
                1
            }
        }
    }
}

/// Whether the error is the user's to fix in the command line or the configuration.
fn is_usage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<UsageError>()
            || c.is::<WiringError>()
            || c.is::<TriggerError>()
            || c.is::<options::ConfigError>()
            || c.downcast_ref::<HardwareError>()
                .is_some_and(HardwareError::is_usage)
            || matches!(
                c.downcast_ref::<CaptureError>(),
                Some(CaptureError::UnknownScheme { .. } | CaptureError::BadOption { .. })
            )
    })
}
