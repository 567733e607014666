//! The value types of `run`'s options, each with one grammar for the command line (`FromStr`)
//! and the config file (serde): integer and probability ranges, board names, per-label
//! thresholds, and the serde adapters that read a TOML string or table through the same parser.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use edgefuse_board::jetson::Board;
use edgefuse_runtime::actuate::ActuatorSpec;

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

impl<const MIN: u64, const MAX: u64> FromStr for Ranged<MIN, MAX> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an integer in {MIN}..={MAX}"))?;
        if v < MIN || v > MAX {
            return Err(format!("{v} is out of range; allowed {MIN}..={MAX}"));
        }
        Ok(Ranged(v))
    }
}

impl FromStr for Unit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: f32 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number"))?;
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("{v} must be between 0 and 1"));
        }
        Ok(Unit(v))
    }
}

/// A board name (`nano`, `orin-nano`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoardName(pub Board);

impl FromStr for BoardName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Board::from_name(s).map(BoardName).ok_or_else(|| {
            format!(
                "unknown board `{s}`; supported: {}",
                Board::ALL.map(Board::name).join(", ")
            )
        })
    }
}

/// One per-label threshold and where it was given (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelThreshold {
    /// The label.
    pub label: String,
    /// Its threshold.
    pub value: f32,
    /// `--label-threshold `7=0.9`` or `FILE [label_thresholds]`.
    pub origin: String,
}

impl FromStr for LabelThreshold {
    type Err = String;
    /// The command-line form `LABEL=X`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (label, v) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("`{s}`: expected LABEL=X"))?;
        let value = v.parse::<Unit>().map_err(|e| format!("`{s}`: {e}"))?.0;
        Ok(Self {
            label: label.to_string(),
            value,
            origin: format!("--label-threshold `{s}`"),
        })
    }
}

/// Any value with a `FromStr` grammar, read from a TOML string: the file accepts exactly what
/// the command line accepts.
pub(crate) fn de_from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(de::Error::custom)
}

/// `[label_thresholds]`: a table of `"label" = 0.8`.
pub(crate) fn de_label_thresholds<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<LabelThreshold>, D::Error> {
    let table = BTreeMap::<String, Unit>::deserialize(d)?;
    Ok(table
        .into_iter()
        .map(|(label, v)| LabelThreshold {
            label,
            value: v.0,
            origin: "[label_thresholds]".into(),
        })
        .collect())
}

/// `[on]`: a table of `"label" = "pin:11,pulse=200ms"`.
pub(crate) fn de_actuators<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ActuatorSpec>, D::Error> {
    let table = BTreeMap::<String, String>::deserialize(d)?;
    table
        .iter()
        .map(|(label, spec)| ActuatorSpec::parse(label, spec).map_err(de::Error::custom))
        .collect()
}

/// `--stall-timeout` / `stall_timeout`: a duration in the one grammar (`200ms`, `5s`, `5000`),
/// from 100 ms to one hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallTimeout(pub std::time::Duration);

impl FromStr for StallTimeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let range = std::time::Duration::from_millis(100)..=std::time::Duration::from_secs(3600);
        match edgefuse_runtime::duration::parse_duration(s) {
            Some(d) if range.contains(&d) => Ok(Self(d)),
            _ => Err(format!(
                "`{s}`: expected {} from 100ms to 3600s",
                edgefuse_runtime::duration::DURATION_HELP
            )),
        }
    }
}
