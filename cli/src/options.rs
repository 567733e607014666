//! `run`'s options, one type for both ways of giving them: [`RunOptions`] is filled by the
//! command line (clap) and by the configuration file (serde/TOML,
//! `/etc/edgefuse/edgefuse.toml` in the package) alike; [`RunOptions::over`] lays the command
//! line over the file. Every key of the file is an option name with `_` for `-`. Each value
//! type checks its range once, for both; each default lives in the runtime type it configures
//! (`DecisionConfig`, `PipelineConfig`, `DeviceChoice`), and `--help` shows it from there.
//!
//! Unknown keys and bad values are rejected when the file is read, with the file, line and key,
//! so a service with a broken configuration stops at start instead of running with something
//! it did not ask for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use edgefuse_models::files::read_text_limited;

use edgefuse_runtime::actuate::{ActuatorSpec, LedSpec, Wiring};
use edgefuse_runtime::decision::DecisionConfig;
use edgefuse_runtime::engine::{CpuConfig, EngineChoice};
use edgefuse_runtime::gpu::DeviceChoice;
use edgefuse_runtime::pipeline::PipelineConfig;
use edgefuse_runtime::trigger::TriggerSpec;

use crate::values::{de_actuators, de_from_str, de_label_thresholds};
pub use crate::values::{BoardName, LabelThreshold, Ranged, StallTimeout, Unit};
use crate::UsageError;

/// Most bytes of a `--config` file (the documented example is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {error}; check the path given to --config (the service uses /etc/edgefuse/edgefuse.toml)")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read (in the message, so not a `source`: printed once).
        error: edgefuse_models::files::ReadError,
    },
    /// The file is not valid TOML, has an unknown key or a bad value.
    #[error("{path}:{line}:{column}: {key}{message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value (0 when unknown).
        line: usize,
        /// 1-based column.
        column: usize,
        /// "key `name`: " when the offending key is known, else empty.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// `run`'s options; `None` (or empty) = not given here.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// Model bundle folder [default: $EDGEFUSE_MODEL, else the bundled default model].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Frame source: v4l2:///dev/videoN, file://PATH (image or folder), synthetic:// [default: the bundled sample frames].
    #[arg(long, value_name = "URI")]
    pub source: Option<String>,
    /// Region of interest x,y,w,h cut from every frame before the resize: pixels (320,180,1280,720), fractions (0.25,0,0.5,1.0) or percentages (25%,0%,50%,100%); also `roi=` in the source URI [default: the whole frame].
    #[arg(long, value_name = "X,Y,W,H")]
    #[serde(default, deserialize_with = "de_from_str")]
    pub roi: Option<edgefuse_runtime::preprocess::Roi>,
    /// continuous, interval:<period>, motion[:threshold=T,area=A], gpio:pin=N[,edge=rising|falling|both][,debounce=20ms] [default: continuous]. Periods: 200, 200ms or 2s.
    #[arg(long, value_name = "SPEC")]
    #[serde(default, deserialize_with = "de_from_str")]
    pub trigger: Option<TriggerSpec>,
    /// Labels reported per frame (1..=16).
    #[arg(long, value_name = "N")]
    pub top_k: Option<Ranged<1, 16>>,
    /// Re-score the fused best labels with the bundle's image-text-matching re-ranker, when it has one ([rerank]; see docs/FUSION.md for what it costs and gains) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub rerank: Option<bool>,
    /// Minimum probability for a label to win a frame.
    #[arg(long, value_name = "X")]
    pub threshold: Option<Unit>,
    /// Per-label threshold, LABEL=X (repeatable).
    #[arg(long = "label-threshold", value_name = "LABEL=X")]
    #[serde(default, deserialize_with = "de_label_thresholds")]
    pub label_thresholds: Vec<LabelThreshold>,
    /// A label fires after winning N of the last --window frames (1..=32).
    #[arg(long, value_name = "N")]
    pub fire_wins: Option<Ranged<1, 32>>,
    /// Hysteresis window in frames (1..=32).
    #[arg(long, value_name = "N")]
    pub window: Option<Ranged<1, 32>>,
    /// An active label is released after losing this many frames in a row (1..=1000).
    #[arg(long, value_name = "N")]
    pub release: Option<Ranged<1, 1000>>,
    /// Minimum milliseconds between two firings of the same label (up to one day).
    #[arg(long, value_name = "MS")]
    pub cooldown_ms: Option<Ranged<0, 86_400_000>>,
    /// Stop after N classified frames.
    #[arg(long, value_name = "N")]
    pub frames: Option<Ranged<1, { u64::MAX >> 1 }>>,
    /// One JSON object per classified frame on stdout (summary on stderr).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub json: Option<bool>,
    /// Board whose header numbering `pin:N` uses (nano, xavier-nx, agx-xavier, orin-nano, orin-nx, agx-orin) [default: detected].
    #[arg(long, value_name = "NAME")]
    #[serde(default, deserialize_with = "de_from_str")]
    pub board: Option<BoardName>,
    /// Drive a pin when LABEL fires: LABEL=pin:N[,pulse=200ms|hold][,active-low] (repeatable).
    #[arg(long = "on", value_name = "LABEL=PIN", value_parser = ActuatorSpec::parse_flag)]
    #[serde(default, deserialize_with = "de_actuators")]
    pub on: Vec<ActuatorSpec>,
    /// Status LED (ready: on, classifying: fast blink, error: 3 blinks): pin:N[,active-low].
    #[arg(long, value_name = "PIN")]
    #[serde(default, deserialize_with = "de_from_str")]
    pub status_led: Option<LedSpec>,
    /// Where the models run.
    #[arg(long, value_name = "DEVICE")]
    #[serde(default, deserialize_with = "de_from_str")]
    pub device: Option<DeviceChoice>,
    /// Threads for the models on the CPU, 0 = every core this process may use [default: 0].
    #[arg(long, value_name = "N")]
    pub threads: Option<Ranged<0, 4096>>,
    /// CPU engine: plan (ours: every core, no allocation per frame), tract (the reference, one
    /// thread) or auto (plan; tract for a model with a node the plan cannot run) [default: auto].
    #[arg(long, value_name = "ENGINE")]
    #[serde(default, deserialize_with = "de_from_str")]
    pub cpu_engine: Option<EngineChoice>,

    // --- Events out: MQTT, journal, webhook, snapshots (issue 15 part A; cli/src/events.rs) ---
    /// Device id in event topics and payloads (one MQTT topic level) [default: the host name].
    #[arg(long, value_name = "NAME")]
    #[serde(default, deserialize_with = "de_from_str")]
    pub device_id: Option<crate::events::DeviceId>,
    /// Publish events to an MQTT broker (QoS 1, <prefix>/<device>/event; retained .../status):
    /// mqtt://[user:password@]host[:port]/topic-prefix, mqtts:// for TLS.
    #[arg(long, value_name = "URI")]
    pub mqtt: Option<String>,
    /// CA certificates (PEM) to trust for mqtts:// [default: the system's].
    #[arg(long, value_name = "FILE")]
    pub mqtt_ca: Option<PathBuf>,
    /// Also publish frame results to <prefix>/<device>/results (QoS 0), at most N per second (1..=100).
    #[arg(long, value_name = "N")]
    pub mqtt_results: Option<Ranged<1, 100>>,
    /// Store-and-forward journal folder: undelivered events survive broker outages and restarts [default: in memory].
    #[arg(long, value_name = "DIR")]
    pub journal: Option<PathBuf>,
    /// Journal bound in MiB; when full the oldest undelivered events are dropped and counted (1..=65536) [default: 64].
    #[arg(long, value_name = "MB")]
    pub journal_max_mb: Option<Ranged<1, 65536>>,
    /// POST events as JSON to this http:// or https:// URL (through the journal, retried).
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Sign webhook requests with HMAC-SHA256 of the body under the secret in FILE (X-Edgefuse-Signature).
    #[arg(long, value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Webhook request timeout in milliseconds (100..=600000) [default: 5000].
    #[arg(long, value_name = "MS")]
    pub webhook_timeout_ms: Option<Ranged<100, 600_000>>,
    /// Write a JPEG of each frame that fires into DIR (the event carries its path).
    #[arg(long, value_name = "DIR")]
    pub snapshots: Option<PathBuf>,
    /// Also write the N frames before the firing one (0..=8) [default: 0].
    #[arg(long, value_name = "N")]
    pub snapshots_before: Option<Ranged<0, 8>>,
    /// Most snapshot files kept, the oldest deleted first (1..=1000000) [default: 1000].
    #[arg(long, value_name = "N")]
    pub snapshots_max_files: Option<Ranged<1, 1_000_000>>,
    /// Most MiB of snapshot files kept, the oldest deleted first (1..=1000000) [default: 1024].
    #[arg(long, value_name = "MB")]
    pub snapshots_max_mb: Option<Ranged<1, 1_000_000>>,

    // --- Camera recovery (issue 15 part B) ---
    /// A camera that delivers no frame for this long is treated as failed and reopened (like an
    /// unplugged one): 200ms, 5s, … from 100ms to 3600s [default: 5s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default, deserialize_with = "de_from_str")]
    pub stall_timeout: Option<StallTimeout>,

    // --- Status page, metrics, health (issue 16; cli/src/status.rs, sinks/src/http/) ---
    /// Serve the status page, /metrics, /healthz, /snapshot.jpg and /events on ADDR (e.g.
    /// 127.0.0.1:8080; port 0 picks a free port, printed on stderr). A non-loopback address
    /// needs --http-token-file.
    #[arg(long, value_name = "ADDR")]
    #[serde(default, deserialize_with = "de_from_str")]
    pub http: Option<std::net::SocketAddr>,
    /// Bearer token (one line, at least 16 characters) that every HTTP request must carry
    /// (Authorization: Bearer <token>, or ?access_token=<token> for the page).
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,
}

impl RunOptions {
    /// These options (the command line) laid over `file`'s: a value given here wins. Label
    /// thresholds apply in order, the file's first; an actuator given here replaces the file's
    /// for the same label.
    pub fn over(self, file: RunOptions) -> RunOptions {
        let mut label_thresholds = file.label_thresholds;
        label_thresholds.extend(self.label_thresholds);
        let mut on = file.on;
        for a in self.on {
            on.retain(|x| x.label != a.label);
            on.push(a);
        }
        RunOptions {
            model: self.model.or(file.model),
            source: self.source.or(file.source),
            roi: self.roi.or(file.roi),
            trigger: self.trigger.or(file.trigger),
            top_k: self.top_k.or(file.top_k),
            rerank: self.rerank.or(file.rerank),
            threshold: self.threshold.or(file.threshold),
            label_thresholds,
            fire_wins: self.fire_wins.or(file.fire_wins),
            window: self.window.or(file.window),
            release: self.release.or(file.release),
            cooldown_ms: self.cooldown_ms.or(file.cooldown_ms),
            frames: self.frames.or(file.frames),
            json: self.json.or(file.json),
            board: self.board.or(file.board),
            on,
            status_led: self.status_led.or(file.status_led),
            device: self.device.or(file.device),
            threads: self.threads.or(file.threads),
            cpu_engine: self.cpu_engine.or(file.cpu_engine),
            // Events out (issue 15 part A).
            device_id: self.device_id.or(file.device_id),
            mqtt: self.mqtt.or(file.mqtt),
            mqtt_ca: self.mqtt_ca.or(file.mqtt_ca),
            mqtt_results: self.mqtt_results.or(file.mqtt_results),
            journal: self.journal.or(file.journal),
            journal_max_mb: self.journal_max_mb.or(file.journal_max_mb),
            webhook: self.webhook.or(file.webhook),
            webhook_secret_file: self.webhook_secret_file.or(file.webhook_secret_file),
            webhook_timeout_ms: self.webhook_timeout_ms.or(file.webhook_timeout_ms),
            snapshots: self.snapshots.or(file.snapshots),
            snapshots_before: self.snapshots_before.or(file.snapshots_before),
            snapshots_max_files: self.snapshots_max_files.or(file.snapshots_max_files),
            snapshots_max_mb: self.snapshots_max_mb.or(file.snapshots_max_mb),
            stall_timeout: self.stall_timeout.or(file.stall_timeout),
            // Status page (issue 16).
            http: self.http.or(file.http),
            http_token_file: self.http_token_file.or(file.http_token_file),
        }
    }

    /// Read a configuration file (label-threshold origins name it): a regular file of at most
    /// [`MAX_CONFIG_BYTES`].
    #[cfg(test)]
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_text(path).map(|(o, _)| o)
    }

    /// Like [`RunOptions::load`], also returning the file's text (a reload compares it).
    pub fn load_text(path: &Path) -> Result<(Self, String), ConfigError> {
        let text =
            read_text_limited(path, MAX_CONFIG_BYTES).map_err(|error| ConfigError::Read {
                path: path.to_path_buf(),
                error,
            })?;
        let mut o = Self::parse(&text, path)?;
        for t in &mut o.label_thresholds {
            t.origin = format!("{} {}", path.display(), t.origin);
        }
        Ok((o, text))
    }

    /// How live sources are opened (`stall_timeout`).
    pub fn open_options(&self) -> edgefuse_runtime::capture::OpenOptions {
        let mut o = edgefuse_runtime::capture::OpenOptions::default();
        if let Some(t) = self.stall_timeout {
            o.stall_timeout = t.0;
        }
        o
    }

    /// The trigger [default: continuous].
    pub fn trigger(&self) -> TriggerSpec {
        self.trigger.clone().unwrap_or(TriggerSpec::Continuous)
    }

    /// Whether to print JSON lines.
    pub fn json(&self) -> bool {
        self.json.unwrap_or(false)
    }

    /// What is wired to GPIO (the trigger too, when it is a GPIO input).
    pub fn wiring(&self) -> Wiring {
        Wiring {
            trigger: match &self.trigger {
                Some(TriggerSpec::Gpio(g)) => Some(g.clone()),
                _ => None,
            },
            actuators: self.on.clone(),
            status_led: self.status_led.clone(),
        }
    }

    /// The decision settings for a bundle with `labels`: the runtime's defaults with what was
    /// given laid over them, label thresholds resolved to indices.
    pub fn decision(&self, labels: &[String]) -> Result<DecisionConfig, UsageError> {
        let mut d = DecisionConfig::default();
        if let Some(t) = self.threshold {
            d.threshold = t.0;
        }
        if let Some(v) = self.fire_wins {
            d.fire_wins = v.0 as u32;
        }
        if let Some(v) = self.window {
            d.window = v.0 as u32;
        }
        if let Some(v) = self.release {
            d.release_losses = v.0 as u32;
        }
        if let Some(v) = self.cooldown_ms {
            d.cooldown = Duration::from_millis(v.0);
        }
        for t in &self.label_thresholds {
            let idx = labels.iter().position(|l| *l == t.label).ok_or_else(|| {
                UsageError(format!(
                    "{}: no label `{}`; labels are {labels:?}",
                    t.origin, t.label
                ))
            })? as u16;
            d.label_thresholds.retain(|(i, _)| *i != idx);
            d.label_thresholds.push((idx, t.value));
        }
        if d.fire_wins > d.window {
            return Err(UsageError(format!(
                "--fire-wins (fire_wins) {} is larger than --window (window) {}: a label can win at most `window` frames of the window",
                d.fire_wins, d.window
            )));
        }
        Ok(d)
    }

    /// The pipeline settings for a bundle with `labels`.
    /// The CPU engine and threads.
    pub fn cpu(&self) -> CpuConfig {
        CpuConfig {
            engine: self.cpu_engine.unwrap_or_default(),
            threads: self.threads.map_or(0, |t| t.0 as usize),
        }
    }

    pub fn pipeline(&self, labels: &[String]) -> Result<PipelineConfig, UsageError> {
        let mut cfg = PipelineConfig {
            decision: self.decision(labels)?,
            device: self.device.unwrap_or_default(),
            cpu: self.cpu(),
            roi: self.roi,
            rerank: self.rerank.unwrap_or(false),
            ..Default::default()
        };
        if let Some(k) = self.top_k {
            cfg.top_k = k.0 as usize;
        }
        Ok(cfg)
    }
}

/// `--help` text for the options whose default lives in a runtime type: the doc comment's text
/// with that default appended, read from the type (so the number is written once).
pub fn help_with_defaults(cmd: clap::Command) -> clap::Command {
    let d = DecisionConfig::default();
    let p = PipelineConfig::default();
    let device = DeviceChoice::default();
    let device_help = format!("{} [default: {device}]", edgefuse_runtime::gpu::DEVICE_HELP);
    let defaults = [
        ("top_k", p.top_k.to_string()),
        ("threshold", d.threshold.to_string()),
        ("fire_wins", d.fire_wins.to_string()),
        ("window", d.window.to_string()),
        ("release", d.release_losses.to_string()),
        ("cooldown_ms", d.cooldown.as_millis().to_string()),
    ];
    let append = |a: clap::Arg, v: &str| {
        let h = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        a.help(format!("{h} [default: {v}]"))
    };
    cmd.mut_subcommand("run", |mut run| {
        for (id, v) in &defaults {
            run = run.mut_arg(*id, |a| append(a, v));
        }
        run.mut_arg("device", |a| a.help(device_help.clone()))
    })
    .mut_subcommand("bench", |b| {
        b.mut_arg("device", |a| a.help(device_help.clone()))
    })
}

impl RunOptions {
    /// Parse configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column, key) = match e.span() {
                Some(span) => locate(text, span.start),
                None => (0, 0, String::new()),
            };
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                key: if key.is_empty() {
                    key
                } else {
                    format!("key `{key}`: ")
                },
                message: e.message().trim_end().to_string(),
            }
        })
    }
}

/// 1-based line and column of byte `offset`, and the key assigned on that line (if any).
fn locate(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("");
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').trim_matches('\'').to_string())
        .filter(|k| !k.starts_with('[') && !k.starts_with('#'))
        .unwrap_or_default();
    (line, column, key)
}

#[cfg(test)]
mod tests;
