//! The `edgefuse run` configuration file (`/etc/edgefuse/edgefuse.toml` in the package).
//!
//! Every `run` option has a key of the same name (with `_` for `-`); a value given on the command
//! line overrides the file. Unknown keys and bad values are rejected when the file is read, with
//! the file, line and key, so a service with a broken configuration stops at start instead of
//! running with something it did not ask for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::trigger::TriggerSpec;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}; check the path given to --config (the service uses /etc/edgefuse/edgefuse.toml)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
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

/// An integer option restricted to `MIN..=MAX`, checked while the file is parsed so the error
/// points at the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranged<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Ranged<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MIN: u64, const MAX: u64>;
        impl<const MIN: u64, const MAX: u64> de::Visitor<'_> for V<MIN, MAX> {
            type Value = Ranged<MIN, MAX>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an integer in {MIN}..={MAX}")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "{v} is out of range; allowed {MIN}..={MAX}"
                    )));
                }
                self.visit_u64(v as u64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                if v < MIN || v > MAX {
                    return Err(E::custom(format!(
                        "{v} is out of range; allowed {MIN}..={MAX}"
                    )));
                }
                Ok(Ranged(v))
            }
        }
        d.deserialize_i64(V::<MIN, MAX>)
    }
}

/// A probability in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unit(pub f32);

impl<'de> Deserialize<'de> for Unit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=1.0).contains(&v) {
            return Err(de::Error::custom(format!("{v} must be between 0 and 1")));
        }
        Ok(Unit(v as f32))
    }
}

fn de_trigger<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TriggerSpec>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(de::Error::custom)
}

/// The `run` options a configuration file may set; `None` = not set in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Model bundle folder.
    pub model: Option<PathBuf>,
    /// Frame source URI.
    pub source: Option<String>,
    /// Trigger spec, as `--trigger`.
    #[serde(default, deserialize_with = "de_trigger")]
    pub trigger: Option<TriggerSpec>,
    /// Labels reported per frame.
    pub top_k: Option<Ranged<1, 16>>,
    /// Minimum probability for a label to win a frame.
    pub threshold: Option<Unit>,
    /// Per-label thresholds: `[label_thresholds]` table of `"label" = 0.8`.
    #[serde(default)]
    pub label_thresholds: BTreeMap<String, Unit>,
    /// A label fires after winning this many of the last `window` frames.
    pub fire_wins: Option<Ranged<1, 32>>,
    /// Hysteresis window in frames.
    pub window: Option<Ranged<1, 32>>,
    /// Frames lost in a row before an active label is released.
    pub release: Option<Ranged<1, 1000>>,
    /// Minimum milliseconds between two firings of the same label.
    pub cooldown_ms: Option<Ranged<0, 86_400_000>>,
    /// Stop after this many classified frames.
    pub frames: Option<Ranged<1, { u64::MAX >> 1 }>>,
    /// One JSON object per frame on stdout.
    pub json: Option<bool>,
    /// Board for GPIO pin numbers (`nano`, `orin-nano`, …); autodetected when absent.
    pub board: Option<String>,
    /// Actuators: `[on]` table of `"label" = "pin:11,pulse=200ms"`.
    #[serde(default)]
    pub on: BTreeMap<String, String>,
    /// Status LED, as `--status-led`.
    pub status_led: Option<String>,
    /// `auto`, `cpu` or `cuda`, as `--device`.
    pub device: Option<crate::gpu::DeviceChoice>,
}

impl RunConfig {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

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
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<RunConfig, ConfigError> {
        RunConfig::parse(s, Path::new("/etc/edgefuse/edgefuse.toml"))
    }

    #[test]
    fn every_run_option_parses() {
        let c = parse(
            r#"
model = "/usr/share/edgefuse/default"
source = "v4l2:///dev/video0?width=640&height=480"
trigger = "motion:threshold=0.1,area=0.02"
top_k = 5
threshold = 0.6
fire_wins = 2
window = 3
release = 2
cooldown_ms = 1500
frames = 100
json = true
board = "orin-nano"
status_led = "pin:12"

[label_thresholds]
"seven" = 0.9

[on]
"seven" = "pin:11,pulse=200ms"
"#,
        )
        .unwrap();
        assert_eq!(c.top_k, Some(Ranged(5)));
        assert_eq!(c.threshold, Some(Unit(0.6)));
        assert_eq!(c.window, Some(Ranged(3)));
        assert_eq!(c.cooldown_ms, Some(Ranged(1500)));
        assert_eq!(c.frames, Some(Ranged(100)));
        assert_eq!(c.json, Some(true));
        assert!(matches!(c.trigger, Some(TriggerSpec::Motion { .. })));
        assert_eq!(c.label_thresholds["seven"], Unit(0.9));
        assert_eq!(c.on["seven"], "pin:11,pulse=200ms");
        assert_eq!(c.board.as_deref(), Some("orin-nano"));
    }

    #[test]
    fn empty_file_sets_nothing() {
        let c = parse("# nothing\n").unwrap();
        assert!(c.model.is_none() && c.top_k.is_none() && c.on.is_empty());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("top_k = 3\n\nthreshhold = 0.4\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "/etc/edgefuse/edgefuse.toml:3:1: key `threshhold`: unknown field `threshhold`"
            ),
            "{e}"
        );
        assert!(e.contains("threshold"), "lists the valid keys: {e}");
    }

    #[test]
    fn bad_values_name_line_and_key() {
        let e = parse("json = false\ntop_k = 99\n").unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("key `top_k`"), "{e}");
        assert!(e.contains("allowed 1..=16"), "{e}");

        let e = parse("threshold = 1.5\n").unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("between 0 and 1"), "{e}");

        let e = parse("trigger = \"sometimes\"\n").unwrap_err().to_string();
        assert!(
            e.contains("key `trigger`") && e.contains("sometimes"),
            "{e}"
        );

        let e = parse("window = \"three\"\n").unwrap_err().to_string();
        assert!(
            e.contains("key `window`") && e.contains("an integer in 1..=32"),
            "{e}"
        );

        let e = parse("[label_thresholds]\nseven = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:") && e.contains("key `seven`"), "{e}");
    }

    #[test]
    fn broken_toml_names_the_line() {
        let e = parse("top_k = 3\nsource = \"v4l2://\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:"), "{e}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = RunConfig::load(Path::new("/nonexistent/edgefuse.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/edgefuse.toml"), "{e}");
    }
}
