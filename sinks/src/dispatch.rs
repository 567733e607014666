//! The event sink: the inference thread's side ([`EventSink`], a [`Sink`]) copies each frame
//! that fired or released a label (and, rate-limited, plain results for `--mqtt-results`) into
//! the bounded [`FactQueue`]; the dispatcher thread turns facts into [`Event`]s, takes their
//! snapshots, appends them to the [`Journal`] (synced once per batch), and wakes the
//! publishers (MQTT, webhook), which send from the journal.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edgefuse_runtime::pipeline::{FrameResult, RunSummary};

use crate::event::{EventContext, EventKind, Fact};
use crate::journal::{Journal, JournalError, JournalStats};
use crate::mqtt::{Mqtt, MqttConfig, MqttConfigError, MqttStats};
use crate::queue::FactQueue;
use crate::snapshot::{SnapshotCapture, SnapshotConfig, SnapshotError, SnapshotWriter};
use crate::stats::EventStats;
use crate::webhook::{Webhook, WebhookConfig, WebhookStats};
use crate::{RunInfo, Sink, SinkError, SourceState};

/// Facts the queue holds: at 30 frames/s with an event on every frame, two seconds of a
/// stalled disk.
pub const QUEUE_FACTS: usize = 64;

/// Largest event payload (the journal's record limit and the MQTT packet limit are above it).
pub const MAX_EVENT_BYTES: usize = 512 << 10;

/// When no event comes, acknowledged cursors are saved this often (each batch saves them too).
const CURSOR_SAVE_EVERY: Duration = Duration::from_secs(1);

/// How long `finish` waits for the broker / endpoint to acknowledge what is journaled.
pub const DRAIN: Duration = Duration::from_secs(3);

/// What the event sink is asked to do.
#[derive(Debug, Clone, Default)]
pub struct EventConfig {
    /// The device id (topic level, event field).
    pub device: String,
    /// The journal's folder; `None` keeps it in memory.
    pub journal: Option<PathBuf>,
    /// The journal's bound in bytes.
    pub journal_max_bytes: u64,
    /// The broker, when events go to MQTT.
    pub mqtt: Option<MqttConfig>,
    /// Per-frame results to MQTT at most this often.
    pub mqtt_results_every: Option<Duration>,
    /// The webhook, when events go to HTTP.
    pub webhook: Option<WebhookConfig>,
    /// Snapshots of the frames that fire.
    pub snapshots: Option<SnapshotConfig>,
}

/// The event sink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EventSinkError {
    /// The journal's folder cannot be used.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The broker settings cannot be used.
    #[error(transparent)]
    Mqtt(#[from] MqttConfigError),
    /// The snapshot folder cannot be used.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A thread could not be started.
    #[error("cannot start the event dispatcher thread: {0}")]
    Thread(std::io::Error),
}

/// What the dispatcher reports at the end.
#[derive(Debug, Default)]
struct Report {
    events: u64,
    unencodable: u64,
    journal: JournalStats,
    left: u64,
    mqtt: Option<MqttStats>,
    webhook: Option<WebhookStats>,
    snapshots: (u64, u64),
}

/// The sink (see the module docs).
pub struct EventSink {
    queue: Arc<FactQueue>,
    uri: String,
    results_every: Option<Duration>,
    last_result: Option<Instant>,
    capture: Option<SnapshotCapture>,
    dispatcher: Option<JoinHandle<Report>>,
    summary: Option<String>,
    live: Arc<EventStats>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("queue", &self.queue)
            .finish()
    }
}

impl EventSink {
    /// Open the journal (replaying what it holds), connect the publishers, start the
    /// dispatcher.
    pub fn start(cfg: EventConfig, info: &RunInfo) -> Result<Self, EventSinkError> {
        let mut readers = Vec::new();
        if cfg.mqtt.is_some() {
            readers.push("mqtt");
        }
        if cfg.webhook.is_some() {
            readers.push("webhook");
        }
        let live = Arc::new(EventStats::new(cfg.mqtt.is_some(), cfg.webhook.is_some()));
        let mut journal = Journal::open(cfg.journal.as_deref(), cfg.journal_max_bytes, &readers)?;
        journal.set_live(live.clone());
        if journal.pending() > 0 {
            log::warn!(
                "events: {} journaled events from an earlier run not yet delivered; sending them first",
                journal.pending()
            );
        }
        if cfg.journal.is_none() {
            log::info!("events: no --journal folder: undelivered events survive a broker outage but not a restart");
        }
        let journal = Arc::new(Mutex::new(journal));
        let mqtt = match cfg.mqtt.clone() {
            Some(m) => Some(Mqtt::start(
                m,
                &cfg.device,
                journal.clone(),
                0,
                live.clone(),
            )?),
            None => None,
        };
        let webhook_reader = readers.iter().position(|r| *r == "webhook").unwrap_or(0);
        let webhook = cfg
            .webhook
            .clone()
            .map(|w| Webhook::start(w, journal.clone(), webhook_reader, live.clone()));
        let (capture, writer) = match &cfg.snapshots {
            Some(s) => {
                let (c, w) = crate::snapshot::open(s)?;
                (Some(c), Some(w))
            }
            None => (None, None),
        };
        let queue = Arc::new(FactQueue::new(QUEUE_FACTS));
        let ctx = EventContext {
            labels: info.labels.clone(),
            device: cfg.device.clone(),
            model: info.model.clone(),
            uri: info.source.clone(),
        };
        let q = queue.clone();
        let l = live.clone();
        let dispatcher = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || dispatch(q, ctx, journal, mqtt, webhook, writer, l))
            .map_err(EventSinkError::Thread)?;
        Ok(EventSink {
            queue,
            uri: info.source.clone(),
            results_every: if cfg.mqtt.is_some() {
                cfg.mqtt_results_every
            } else {
                None
            },
            last_result: None,
            capture,
            dispatcher: Some(dispatcher),
            summary: None,
            live,
        })
    }

    /// The sink's live figures (journal depth, drops, broker and webhook state), for the
    /// status server's `/metrics`.
    pub fn stats(&self) -> Arc<EventStats> {
        self.live.clone()
    }
}

impl Sink for EventSink {
    fn name(&self) -> &'static str {
        "events"
    }

    fn frame(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError> {
        let kind = Fact::kind_of(r);
        let snapshot = match (&mut self.capture, kind) {
            (Some(c), Some(EventKind::Fire)) => c.fire(r.frame),
            (Some(c), _) => {
                c.remember(r.frame);
                false
            }
            _ => false,
        };
        let uri = &self.uri;
        if kind.is_some() {
            self.queue.push_with(|f| {
                f.fill(r, uri);
                f.snapshot = snapshot;
            });
        }
        if let Some(every) = self.results_every {
            let now = Instant::now();
            if self
                .last_result
                .is_none_or(|t| now.duration_since(t) >= every)
            {
                self.last_result = Some(now);
                self.queue.push_with(|f| {
                    f.fill(r, uri);
                    f.kind = None;
                    f.snapshot = false;
                });
            }
        }
        Ok(())
    }

    fn source(&mut self, state: SourceState, reason: &str) -> Result<(), SinkError> {
        let kind = match state {
            SourceState::Offline => EventKind::CameraOffline,
            SourceState::Online => EventKind::CameraOnline,
        };
        self.queue.push_with(|f| {
            f.camera(kind, reason);
            f.snapshot = false;
        });
        Ok(())
    }

    fn finish(&mut self, _summary: &RunSummary) -> Result<(), SinkError> {
        self.queue.close();
        let Some(t) = self.dispatcher.take() else {
            return Ok(());
        };
        let report = t.join().map_err(|_| SinkError::Failed {
            sink: "events",
            reason: "the event dispatcher thread panicked".into(),
        })?;
        let queue_dropped = self.queue.dropped();
        let mut line = format!(
            "  events: {} journaled, {} dropped (queue full), {} dropped (journal full), {} not written to disk, {} torn records cut, {} left undelivered",
            report.events,
            queue_dropped,
            report.journal.dropped,
            report.journal.not_written,
            report.journal.torn,
            report.left,
        );
        if report.unencodable > 0 {
            line += &format!(", {} dropped (too large to send)", report.unencodable);
        }
        if let Some(m) = &report.mqtt {
            let mut l = m.latency_ms.clone();
            l.sort_by(f64::total_cmp);
            let q = |p: f64| {
                l.get(((l.len() as f64 - 1.0) * p).round() as usize)
                    .map_or("n/a".to_string(), |v| format!("{v:.1} ms"))
            };
            line += &format!(
                "\n  mqtt: {} acknowledged ({} resent), {} results, {} results skipped (offline), {} connections, decision→PUBACK p50 {} p99 {}",
                m.acked,
                m.resent,
                m.results,
                m.results_skipped,
                m.connections,
                q(0.5),
                q(0.99)
            );
        }
        if let Some(w) = &report.webhook {
            line += &format!(
                "\n  webhook: {} delivered, {} attempts failed",
                w.delivered, w.failures
            );
        }
        if self.capture.is_some() {
            line += &format!(
                "\n  snapshots: {} written, {} skipped (busy or capped)",
                report.snapshots.0, report.snapshots.1
            );
        }
        let lost = queue_dropped + report.journal.dropped + report.unencodable;
        if lost > 0 {
            log::warn!("events: {lost} events were dropped (see the summary)");
        }
        self.summary = Some(line);
        Ok(())
    }

    fn summary(&self) -> Option<String> {
        self.summary.clone()
    }
}

fn dispatch(
    queue: Arc<FactQueue>,
    ctx: EventContext,
    journal: Arc<Mutex<Journal>>,
    mqtt: Option<(Arc<Mqtt>, JoinHandle<()>)>,
    webhook: Option<(Arc<Webhook>, JoinHandle<()>)>,
    mut snapshots: Option<SnapshotWriter>,
    live: Arc<EventStats>,
) -> Report {
    let mut batch = Vec::with_capacity(QUEUE_FACTS);
    let mut report = Report::default();
    let mut last_cursor_save = Instant::now();
    loop {
        batch.clear();
        let done = queue.pop_into(&mut batch, QUEUE_FACTS, Duration::from_millis(200));
        EventStats::set(&live.queue_dropped, queue.dropped());
        let mut appended = false;
        for f in &batch {
            if f.kind.is_none() {
                if let Some((m, _)) = &mqtt {
                    let e = f.event(0, &ctx, None);
                    m.result(serde_json::to_vec(&e).unwrap_or_default());
                }
                continue;
            }
            let id = journal.lock().unwrap_or_else(|p| p.into_inner()).next_id();
            let snapshot = match (&mut snapshots, f.snapshot) {
                (Some(s), true) => s.write(id, f.seq, f.unix_ms),
                _ => None,
            };
            let e = f.event(id, &ctx, snapshot);
            let payload = match serde_json::to_vec(&e) {
                Ok(p) if p.len() <= MAX_EVENT_BYTES => p,
                Ok(p) => {
                    // Only absurd label names get here; the journal and the broker refuse it.
                    log::error!(
                        "events: event of frame {} is {} bytes, more than {MAX_EVENT_BYTES}: dropped (counted)",
                        f.seq,
                        p.len()
                    );
                    report.unencodable += 1;
                    EventStats::add(&live.unencodable, 1);
                    continue;
                }
                Err(err) => {
                    log::error!("events: cannot encode the event of frame {}: {err}", f.seq);
                    report.unencodable += 1;
                    EventStats::add(&live.unencodable, 1);
                    continue;
                }
            };
            let got = journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(payload);
            debug_assert_eq!(got, id);
            if let Some((m, _)) = &mqtt {
                m.decided(id, f.at);
            }
            report.events += 1;
            EventStats::add(&live.journaled, 1);
            appended = true;
        }
        if appended {
            journal.lock().unwrap_or_else(|p| p.into_inner()).sync();
            if let Some((m, _)) = &mqtt {
                m.dropped
                    .store(queue.dropped(), std::sync::atomic::Ordering::Relaxed);
                m.pump();
                m.refresh_status();
            }
            if let Some((w, _)) = &webhook {
                w.wake();
            }
            last_cursor_save = Instant::now();
        } else if last_cursor_save.elapsed() >= CURSOR_SAVE_EVERY {
            // Quiet moments: persist what was acknowledged since, so that a kill now replays
            // (sends twice) as little as possible.
            journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .save_cursors_if_changed();
            last_cursor_save = Instant::now();
        }
        if done {
            break;
        }
    }
    report.mqtt = mqtt.map(|(m, t)| m.finish(t, DRAIN));
    report.webhook = webhook.map(|(w, t)| w.finish(t, DRAIN));
    report.snapshots = snapshots.map_or((0, 0), |s| s.counts());
    let mut j = journal.lock().unwrap_or_else(|p| p.into_inner());
    j.sync();
    report.journal = j.stats();
    report.left = j.pending() as u64;
    report
}
