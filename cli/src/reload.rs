//! SIGHUP: `run --config FILE` re-reads FILE and applies its decision settings (threshold,
//! label thresholds, fire_wins, window, release, cooldown_ms, top_k) from the next frame,
//! without reopening the camera or reloading the models.
//!
//! The file is read and checked on the signal thread, exactly as at start (the command line
//! still overrides it); the inference thread only takes the checked settings from a
//! [`Mailbox`] between two frames. A file that cannot be used is rejected with the reason and
//! the settings in use stay. Keys that need a restart (model, source, device, …) are named and
//! ignored.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use edgefuse_runtime::pipeline::DecisionSettings;

use crate::options::RunOptions;

/// The keys a reload applies; every other key needs a restart.
pub const RELOADABLE: [&str; 7] = [
    "threshold",
    "label_thresholds",
    "fire_wins",
    "window",
    "release",
    "cooldown_ms",
    "top_k",
];

/// Checked settings on their way from the signal thread to the inference thread.
#[derive(Debug, Default)]
pub struct Mailbox {
    pending: AtomicBool,
    settings: Mutex<Option<DecisionSettings>>,
}

impl Mailbox {
    fn put(&self, s: DecisionSettings) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = Some(s);
        self.pending.store(true, Ordering::Release);
    }

    /// New settings, once; one atomic load when there are none (asked on every frame).
    pub fn take(&self) -> Option<DecisionSettings> {
        if !self.pending.swap(false, Ordering::Acquire) {
            return None;
        }
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Re-reads the configuration file on each SIGHUP.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    /// The command line's options (they win over the file, as at start).
    cli: RunOptions,
    labels: Vec<String>,
    /// The file as it was when the run started (what the keys that need a restart run with).
    started: toml::Table,
    /// The settings in use.
    current: DecisionSettings,
    mailbox: Arc<Mailbox>,
}

impl Reloader {
    /// For a run started with `cli` over the file at `path` whose text was `text`, classifying
    /// into `labels` with `current`.
    pub fn new(
        path: PathBuf,
        text: &str,
        cli: RunOptions,
        labels: Vec<String>,
        current: DecisionSettings,
    ) -> (Self, Arc<Mailbox>) {
        let mailbox = Arc::new(Mailbox::default());
        let r = Self {
            path,
            cli,
            labels,
            started: text.parse().unwrap_or_default(),
            current,
            mailbox: mailbox.clone(),
        };
        (r, mailbox)
    }

    /// Read the file again and hand its decision settings to the run, or log why not.
    pub fn reload(&mut self) {
        match self.check() {
            Ok(None) => log::info!(
                "SIGHUP: {} re-read; the decision settings are unchanged",
                self.path.display()
            ),
            Ok(Some(s)) => {
                log::info!(
                    "SIGHUP: {} reloaded; from the next frame: {}",
                    self.path.display(),
                    describe(&s, &self.labels)
                );
                self.current = s.clone();
                self.mailbox.put(s);
            }
            Err(e) => log::error!("SIGHUP: reload rejected, the settings in use stay: {e:#}"),
        }
    }

    /// The new settings (`None`: the same as now), after naming the keys that need a restart.
    fn check(&self) -> anyhow::Result<Option<DecisionSettings>> {
        let (file, text) = RunOptions::load_text(&self.path)?;
        let table: toml::Table = text.parse().unwrap_or_default();
        let mut restart: Vec<&str> = self
            .started
            .keys()
            .chain(table.keys())
            .map(String::as_str)
            .filter(|k| !RELOADABLE.contains(k) && self.started.get(*k) != table.get(*k))
            .collect();
        restart.sort_unstable();
        restart.dedup();
        if !restart.is_empty() {
            log::warn!(
                "SIGHUP: {}: {} changed: that needs a restart (systemctl restart edgefuse); ignored until then",
                self.path.display(),
                restart.join(", ")
            );
        }
        let o = self.cli.clone().over(file);
        let p = o.pipeline(&self.labels)?;
        let s = DecisionSettings {
            decision: p.decision,
            top_k: p.top_k,
        };
        Ok((s != self.current).then_some(s))
    }
}

/// `threshold 0.9, seven ≥ 0.95, 2 of 3 frames, release after 1, cooldown 0 ms, top 3`.
fn describe(s: &DecisionSettings, labels: &[String]) -> String {
    let d = &s.decision;
    let mut out = format!("threshold {}", d.threshold);
    for (l, t) in &d.label_thresholds {
        let name = labels.get(*l as usize).map_or("?", String::as_str);
        out.push_str(&format!(", {name} ≥ {t}"));
    }
    out.push_str(&format!(
        ", fire after {} of {} frames, release after {}, cooldown {} ms, top {}",
        d.fire_wins,
        d.window,
        d.release_losses,
        d.cooldown.as_millis(),
        s.top_k
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reloader(dir: &std::path::Path, text: &str) -> (Reloader, Arc<Mailbox>, PathBuf) {
        let path = dir.join("edgefuse.toml");
        std::fs::write(&path, text).unwrap();
        let labels: Vec<String> = ["cat", "dog"].map(String::from).to_vec();
        let o = RunOptions::default().over(RunOptions::load(&path).unwrap());
        let p = o.pipeline(&labels).unwrap();
        let current = DecisionSettings {
            decision: p.decision,
            top_k: p.top_k,
        };
        let (r, m) = Reloader::new(path.clone(), text, RunOptions::default(), labels, current);
        (r, m, path)
    }

    #[test]
    fn a_valid_file_is_applied_once_and_a_broken_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, m, path) = reloader(dir.path(), "threshold = 0.9\nsource = \"synthetic://\"\n");
        assert_eq!(m.take(), None);
        r.reload();
        assert_eq!(m.take(), None, "unchanged: nothing to apply");

        std::fs::write(
            &path,
            "threshold = 0.2\ntop_k = 2\nsource = \"synthetic://?fps=5\"\n[label_thresholds]\ndog = 0.7\n",
        )
        .unwrap();
        assert!(r.check().is_ok());
        r.reload();
        let s = m.take().expect("new settings");
        assert_eq!(s.decision.threshold, 0.2);
        assert_eq!(s.decision.label_thresholds, vec![(1, 0.7)]);
        assert_eq!(s.top_k, 2);
        assert_eq!(m.take(), None, "taken once");

        for bad in [
            "threshold = 2\n",
            "treshold = 0.5\n",
            "[label_thresholds]\nbird = 0.5\n",
            "fire_wins = 5\nwindow = 2\n",
            "threshold = \n",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = format!("{:#}", r.check().unwrap_err());
            assert!(
                e.contains("edgefuse.toml") || e.contains("fire_wins"),
                "{bad}: {e}"
            );
            r.reload();
            assert_eq!(m.take(), None, "{bad}: rejected");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(r.check().is_err());
        assert_eq!(
            r.current.decision.threshold, 0.2,
            "the last good settings stay"
        );
    }

    #[test]
    fn the_command_line_still_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, m, path) = reloader(dir.path(), "threshold = 0.9\n");
        r.cli.threshold = Some(crate::options::Unit(0.4));
        std::fs::write(&path, "threshold = 0.1\nwindow = 3\n").unwrap();
        r.reload();
        let s = m.take().unwrap();
        assert_eq!((s.decision.threshold, s.decision.window), (0.4, 3));
    }
}
