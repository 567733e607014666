//! `run`'s event outputs (issue 15): the options `--mqtt`, `--journal`, `--webhook`,
//! `--snapshots` and their companions turned into the sinks crate's [`EventSink`].

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};

use edgefuse_sinks::dispatch::{EventConfig, EventSink};
use edgefuse_sinks::event::{default_device_id, valid_device_id};
use edgefuse_sinks::mqtt::MqttConfig;
use edgefuse_sinks::snapshot::SnapshotConfig;
use edgefuse_sinks::webhook::WebhookConfig;
use edgefuse_sinks::{RunInfo, Sinks};

use crate::options::RunOptions;
use crate::output::{print_report, StdoutError};
use crate::UsageError;

/// Default bound of the journal, MiB.
pub const JOURNAL_MAX_MB: u64 = 64;
/// Default webhook timeout, ms.
pub const WEBHOOK_TIMEOUT_MS: u64 = 5000;
/// Default cap on snapshot files.
pub const SNAPSHOTS_MAX_FILES: u64 = 1000;
/// Default cap on snapshot bytes, MiB.
pub const SNAPSHOTS_MAX_MB: u64 = 1024;

/// A device id: one MQTT topic level (no `/`, `+`, `#`), 1 to 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId(pub String);

impl FromStr for DeviceId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        valid_device_id(s).map(|()| DeviceId(s.to_string()))
    }
}

/// The event sink `o` asks for, `None` when it asks for no event output. Unusable settings
/// (broker URI, CA file, webhook URL or secret) are usage errors; folders that cannot be
/// written are runtime errors naming the folder.
pub fn event_sink(o: &RunOptions, info: &RunInfo) -> Result<Option<EventSink>> {
    let mqtt = match &o.mqtt {
        Some(uri) => Some(
            MqttConfig::parse(uri, o.mqtt_ca.as_deref()).map_err(|e| UsageError(e.to_string()))?,
        ),
        None => {
            if o.mqtt_ca.is_some() || o.mqtt_results.is_some() {
                return Err(UsageError(
                    "--mqtt-ca / --mqtt-results (mqtt_ca / mqtt_results) need --mqtt (mqtt)".into(),
                )
                .into());
            }
            None
        }
    };
    let webhook = match &o.webhook {
        Some(url) => Some(
            WebhookConfig::new(
                url,
                o.webhook_secret_file.as_deref(),
                Duration::from_millis(o.webhook_timeout_ms.map_or(WEBHOOK_TIMEOUT_MS, |t| t.0)),
            )
            .map_err(|e| UsageError(e.to_string()))?,
        ),
        None => None,
    };
    let snapshots = o.snapshots.as_ref().map(|dir| SnapshotConfig {
        dir: dir.clone(),
        before: o.snapshots_before.map_or(0, |n| n.0 as usize),
        max_files: o.snapshots_max_files.map_or(SNAPSHOTS_MAX_FILES, |n| n.0),
        max_bytes: o.snapshots_max_mb.map_or(SNAPSHOTS_MAX_MB, |n| n.0) << 20,
        quality: 85,
    });
    if mqtt.is_none() && webhook.is_none() && snapshots.is_none() {
        if o.journal.is_some() {
            return Err(UsageError(
                "--journal (journal) is given but nothing reads it: add --mqtt or --webhook".into(),
            )
            .into());
        }
        return Ok(None);
    }
    let device = o
        .device_id
        .as_ref()
        .map_or_else(default_device_id, |d| d.0.clone());
    let cfg = EventConfig {
        device,
        journal: o.journal.clone(),
        journal_max_bytes: o.journal_max_mb.map_or(JOURNAL_MAX_MB, |m| m.0) << 20,
        mqtt,
        mqtt_results_every: o
            .mqtt_results
            .map(|n| Duration::from_secs_f64(1.0 / n.0 as f64)),
        webhook,
        snapshots,
    };
    let sink = EventSink::start(cfg, info).context("cannot start the event outputs")?;
    Ok(Some(sink))
}

/// The sinks' summary lines, after the run's summary and in the same place (stderr with
/// `--json`, where a failure is ignored; else stdout).
pub fn print_summaries(sinks: &Sinks, to_stderr: bool) -> Result<(), StdoutError> {
    let lines = sinks.summaries();
    if lines.is_empty() {
        return Ok(());
    }
    print_report(&(lines.join("\n") + "\n"), to_stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    use edgefuse_runtime::decision::{Event as Decided, EventKind as DecidedKind, Events};
    use edgefuse_runtime::frame::Frame;
    use edgefuse_runtime::fusion::{HeadTop1, TopK};
    use edgefuse_runtime::pipeline::{FrameResult, StageTimes};
    use edgefuse_sinks::event::{EventContext, Fact};

    /// The event's common fields are the `--json` line's, with the same values.
    #[test]
    fn events_carry_the_json_lines_fields_with_the_same_values() {
        let labels: Vec<String> = ["cat", "dog \"quoted\"", "bird"].map(String::from).to_vec();
        let mut frame = Frame::with_capacity(0);
        frame.seq = 42;
        frame.set_source("/data/frames/ünï\ncode.png");
        let mut top = TopK::new();
        top.push((1, 0.75)).unwrap();
        top.push((0, 0.2)).unwrap();
        let now = std::time::Instant::now();
        let mut events = Events::new();
        for (kind, label, score) in [
            (DecidedKind::Release, 0, 0.2),
            (DecidedKind::Fire, 1, 0.75),
            (DecidedKind::Release, 2, 0.05),
        ] {
            events
                .push(Decided {
                    kind,
                    label,
                    score,
                    frame: 42,
                    at: now,
                })
                .unwrap();
        }
        let mut times = StageTimes::default();
        for (i, t) in times.0.iter_mut().enumerate() {
            *t = Duration::from_micros(1234 * (i as u64 + 1));
        }
        let r = FrameResult {
            frame: &frame,
            top: &top,
            events: &events,
            times,
            heads: HeadTop1 {
                clip: 1,
                qformer: Some(2),
            },
            fallbacks: 0,
        };
        let mut line = Vec::new();
        crate::output::write_json(&mut line, &r, &labels, "file:///data", None).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let mut fact = Fact::empty();
        fact.fill(&r, "file:///data");
        let ctx = EventContext {
            labels: labels.clone(),
            device: "jetson-1".into(),
            model: "clip 1.0".into(),
            uri: "file:///data".into(),
        };
        let event = fact.event(9, &ctx, Some("/snaps/event-0000000009.jpg".into()));
        let ev = serde_json::to_value(&event).unwrap();
        let line_obj = line.as_object().unwrap();
        for (k, v) in line_obj {
            let e = ev
                .get(k)
                .unwrap_or_else(|| panic!("event lacks `{k}`: {ev}"));
            if k == "time_unix_ms" {
                let d = v.as_i64().unwrap() - e.as_i64().unwrap();
                assert!(d.abs() < 5_000, "{v} vs {e}");
            } else {
                assert!(same(v, e), "`{k}`: line {v} vs event {e}");
            }
        }
        for k in ["id", "kind", "device", "model", "snapshot"] {
            assert!(ev.get(k).is_some(), "{k}");
        }
        assert_eq!(ev["kind"], "fire");
        assert_eq!(ev["device"], "jetson-1");
        assert_eq!(ev["snapshot"], "/snaps/event-0000000009.jpg");
    }

    /// JSON values equal, numbers to the line's 6 (scores) and 3 (latencies) decimals.
    fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value::*;
        match (a, b) {
            (Number(x), Number(y)) => (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5,
            (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
            (Object(x), Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            _ => a == b,
        }
    }

    /// Every key of the event options reads the same through the config file and the command
    /// line, and the command line wins.
    #[test]
    fn event_keys_share_the_command_lines_grammar() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            o: RunOptions,
        }
        let path = std::path::Path::new("/etc/edgefuse/edgefuse.toml");
        let file = RunOptions::parse(
            r#"
device_id = "porch"
mqtt = "mqtt://user:pa%40ss@broker.lan:1884/home/edgefuse"
mqtt_results = 2
journal = "/var/lib/edgefuse/journal"
journal_max_mb = 16
webhook = "https://hooks.example/edgefuse"
webhook_secret_file = "/etc/edgefuse/webhook.secret"
webhook_timeout_ms = 2500
snapshots = "/var/lib/edgefuse/snapshots"
snapshots_before = 2
snapshots_max_files = 500
snapshots_max_mb = 256
"#,
            path,
        )
        .unwrap();
        let cli = Cmd::try_parse_from([
            "run",
            "--device-id",
            "porch",
            "--mqtt",
            "mqtt://user:pa%40ss@broker.lan:1884/home/edgefuse",
            "--mqtt-results",
            "2",
            "--journal",
            "/var/lib/edgefuse/journal",
            "--journal-max-mb",
            "16",
            "--webhook",
            "https://hooks.example/edgefuse",
            "--webhook-secret-file",
            "/etc/edgefuse/webhook.secret",
            "--webhook-timeout-ms",
            "2500",
            "--snapshots",
            "/var/lib/edgefuse/snapshots",
            "--snapshots-before",
            "2",
            "--snapshots-max-files",
            "500",
            "--snapshots-max-mb",
            "256",
        ])
        .unwrap()
        .o;
        assert_eq!(format!("{file:?}"), format!("{cli:?}"));
        let m = MqttConfig::parse(file.mqtt.as_deref().unwrap(), None).unwrap();
        assert_eq!(
            (m.host.as_str(), m.port, m.prefix.as_str()),
            ("broker.lan", 1884, "home/edgefuse")
        );
        assert_eq!(m.credentials, Some(("user".into(), "pa@ss".into())));
        // The same bad values are refused through both doors.
        for (key, flag, bad, want) in [
            ("device_id", "--device-id", "\"a/b\"", "MQTT topic"),
            (
                "snapshots_before",
                "--snapshots-before",
                "9",
                "allowed 0..=8",
            ),
            ("mqtt_results", "--mqtt-results", "0", "allowed 1..=100"),
        ] {
            let fe = RunOptions::parse(&format!("{key} = {bad}\n"), path)
                .unwrap_err()
                .to_string();
            let ce = Cmd::try_parse_from(["run", flag, bad.trim_matches('"')])
                .err()
                .unwrap()
                .to_string();
            assert!(fe.contains(want) && ce.contains(want), "{fe}\n{ce}");
        }
        let o = Cmd::try_parse_from(["run", "--device-id", "cli"])
            .unwrap()
            .o
            .over(file);
        assert_eq!(o.device_id, Some(DeviceId("cli".into())));
        assert_eq!(o.journal_max_mb.map(|m| m.0), Some(16));
    }

    #[test]
    fn device_ids_are_checked_through_both_doors() {
        assert!("cam-1".parse::<DeviceId>().is_ok());
        let e = "a/b".parse::<DeviceId>().unwrap_err();
        assert!(e.contains("MQTT topic"), "{e}");
    }
}
