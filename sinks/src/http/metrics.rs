//! `/metrics`: the run's counters and per-stage latency histograms in the Prometheus
//! (OpenMetrics) text format, through the `prometheus-client` crate. Every per-label series is
//! created at start so that counting on the inference thread is an atomic add (no lookup, no
//! allocation). The event sink's figures (journal depth, drops, broker and webhook state) are
//! read from its [`EventStats`] when the text is encoded, on a server thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use edgefuse_runtime::decision::EventKind;
use edgefuse_runtime::pipeline::{FrameResult, STAGES};

use crate::stats::EventStats;
use crate::RunInfo;

/// Histogram bucket bounds in seconds: 0.5 ms to 60 s, about 3 per decade.
pub const LATENCY_BUCKETS_S: [f64; 17] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0,
    60.0,
];

type Labels = Vec<(String, String)>;

/// The registry and the handles the inference thread updates.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    frames: Counter,
    skipped: Counter,
    fires: Vec<Counter>,
    releases: Vec<Counter>,
    stages: Vec<Histogram>,
    source_online: Gauge,
    rss: Gauge,
    uptime: Gauge<f64, std::sync::atomic::AtomicU64>,
    http_rejected: Counter,
    snapshot_oversized: Gauge,
    temperature: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    throttling: Gauge,
    fallbacks: Counter,
    events: Option<EventMetrics>,
}

/// Where a series' value is kept in [`EventStats`].
type Figure = fn(&EventStats) -> &AtomicU64;

/// The event sink's series and where their values come from.
#[derive(Debug)]
struct EventMetrics {
    live: Arc<EventStats>,
    /// (series, figure) pairs copied at encode time.
    gauges: Vec<(Gauge, Figure)>,
    counters: Vec<(Counter, Figure)>,
}

impl EventMetrics {
    fn register(registry: &mut Registry, live: Arc<EventStats>) -> Self {
        let mut gauges: Vec<(Gauge, Figure)> = Vec::new();
        let mut counters: Vec<(Counter, Figure)> = Vec::new();
        let events = Unit::Other("events".into());
        let mut gauge = |name: &str, help: &str, unit: Option<Unit>, figure: Figure| {
            let g = Gauge::default();
            match unit {
                Some(u) => registry.register_with_unit(name, help, u, g.clone()),
                None => registry.register(name, help, g.clone()),
            }
            gauges.push((g, figure));
        };
        gauge(
            "journal_pending",
            "Journaled events not yet acknowledged by every publisher (MQTT broker, webhook)",
            Some(events.clone()),
            |s| &s.journal_pending,
        );
        gauge(
            "journal_size",
            "Bytes of the journal's segments (what counts against --journal-max-mb)",
            Some(Unit::Bytes),
            |s| &s.journal_bytes,
        );
        gauge(
            "journal_limit",
            "The journal's bound (--journal-max-mb); the oldest unsent events are dropped beyond it",
            Some(Unit::Bytes),
            |s| &s.journal_limit_bytes,
        );
        if live.mqtt {
            gauge(
                "broker_connected",
                "1 while connected to the MQTT broker, 0 while it is unreachable (events are journaled)",
                None,
                |s| &s.broker_connected,
            );
        }
        if live.webhook {
            gauge(
                "webhook_failing",
                "1 while the webhook's last attempt failed (retrying with backoff), else 0",
                None,
                |s| &s.webhook_failing,
            );
        }
        let mut counter = |name: &str, help: &str, unit: Option<Unit>, figure: Figure| {
            let c = Counter::default();
            match unit {
                Some(u) => registry.register_with_unit(name, help, u, c.clone()),
                None => registry.register(name, help, c.clone()),
            }
            counters.push((c, figure));
        };
        counter(
            "journal_dropped",
            "Events dropped unsent because the journal was full",
            Some(events.clone()),
            |s| &s.journal_dropped,
        );
        counter(
            "journal_unwritten",
            "Events that could not be written to the journal's folder (kept in memory and still sent, lost on a restart)",
            Some(events.clone()),
            |s| &s.journal_not_written,
        );
        counter(
            "event_queue_dropped",
            "Events dropped because the queue to the event dispatcher was full",
            Some(events.clone()),
            |s| &s.queue_dropped,
        );
        counter(
            "events_unencodable",
            "Events dropped because they could not be encoded within the payload limit",
            None,
            |s| &s.unencodable,
        );
        counter(
            "events_journaled",
            "Events appended to the journal in this run",
            None,
            |s| &s.journaled,
        );
        if live.mqtt {
            counter(
                "events_acknowledged",
                "Events the MQTT broker acknowledged (PUBACK), resends after a reconnect included",
                None,
                |s| &s.acknowledged,
            );
        }
        if live.webhook {
            counter(
                "webhook_delivered",
                "Events the webhook accepted (2xx)",
                Some(events),
                |s| &s.webhook_delivered,
            );
        }
        Self {
            live,
            gauges,
            counters,
        }
    }

    /// Copy the figures into the series (a store: concurrent scrapes agree).
    fn update(&self) {
        for (g, figure) in &self.gauges {
            g.set(EventStats::get(figure(&self.live)) as i64);
        }
        for (c, figure) in &self.counters {
            c.inner()
                .store(EventStats::get(figure(&self.live)), Ordering::Relaxed);
        }
    }
}

impl Metrics {
    /// Every series of a run with `info`'s labels and description; the event sink's series
    /// when `event_stats` (its figures) is given.
    pub fn new(info: &RunInfo, event_stats: Option<Arc<EventStats>>) -> Self {
        let mut registry = Registry::with_prefix("edgefuse");
        registry.register(
            "build",
            "What runs: the bundle, its precision, the device and the source",
            Info::new(vec![
                ("version".to_string(), info.version.clone()),
                ("model".to_string(), info.model.clone()),
                ("precision".to_string(), info.precision.clone()),
                ("backend".to_string(), info.backend.clone()),
                ("source".to_string(), info.source.clone()),
            ]),
        );
        let frames = Counter::default();
        registry.register("frames", "Frames classified", frames.clone());
        let skipped = Counter::default();
        registry.register(
            "frames_skipped",
            "Frames the source numbered that were not classified (dropped behind inference, not triggered, broken)",
            skipped.clone(),
        );
        let events = Family::<Labels, Counter>::default();
        registry.register(
            "events",
            "Decision events by label and kind (fire, release)",
            events.clone(),
        );
        let series = |kind: &str| -> Vec<Counter> {
            info.labels
                .iter()
                .map(|l| {
                    events
                        .get_or_create(&vec![
                            ("label".to_string(), l.clone()),
                            ("kind".to_string(), kind.to_string()),
                        ])
                        .clone()
                })
                .collect()
        };
        let fires = series("fire");
        let releases = series("release");
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS_S.iter().copied())
        });
        registry.register_with_unit(
            "stage_latency",
            "Per-stage latency of classified frames (end_to_end: capture to decision)",
            Unit::Seconds,
            latency.clone(),
        );
        let stages = STAGES
            .iter()
            .map(|s| {
                latency
                    .get_or_create(&vec![("stage".to_string(), s.to_string())])
                    .clone()
            })
            .collect();
        let source_online = Gauge::default();
        source_online.set(1);
        registry.register(
            "source_online",
            "1 while the source delivers frames, 0 while it is offline",
            source_online.clone(),
        );
        let rss = Gauge::default();
        registry.register_with_unit(
            "resident_memory",
            "Resident set size of the process",
            Unit::Bytes,
            rss.clone(),
        );
        let uptime = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "uptime",
            "Time since the status server started",
            Unit::Seconds,
            uptime.clone(),
        );
        let http_rejected = Counter::default();
        registry.register(
            "http_rejected_connections",
            "Connections the status server closed at once because every worker was busy",
            http_rejected.clone(),
        );
        let snapshot_oversized = Gauge::default();
        registry.register(
            "snapshot_oversized_frames",
            "Frames larger than the snapshot buffer (not shown on the page)",
            snapshot_oversized.clone(),
        );
        let temperature = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register_with_unit(
            "temperature",
            "Thermal zones of the board (read at scrape time)",
            Unit::Celsius,
            temperature.clone(),
        );
        let throttling = Gauge::default();
        registry.register(
            "throttling",
            "Thermal zones at or above their throttling trip point (the SoC slows down)",
            throttling.clone(),
        );
        let fallbacks = Counter::default();
        registry.register(
            "backend_fallbacks",
            "Times the models moved to the fallback backend (the CPU) after the primary (a GPU) failed; edgefuse_build's backend is the one the run started on",
            fallbacks.clone(),
        );
        let events = event_stats.map(|live| EventMetrics::register(&mut registry, live));
        Self {
            registry,
            fallbacks,
            events,
            temperature,
            throttling,
            frames,
            skipped,
            fires,
            releases,
            stages,
            source_online,
            rss,
            uptime,
            http_rejected,
            snapshot_oversized,
        }
    }

    /// Count one classified frame (inference thread; atomic adds and short locks, no
    /// allocation). `skipped`: frames of the source not classified since the previous one.
    pub fn frame(&self, r: &FrameResult<'_>, skipped: u64) {
        self.frames.inc();
        self.fallbacks
            .inner()
            .store(u64::from(r.fallbacks), Ordering::Relaxed);
        if skipped > 0 {
            self.skipped.inc_by(skipped);
        }
        for (h, d) in self.stages.iter().zip(r.times.0) {
            h.observe(d.as_secs_f64());
        }
        for e in r.events.iter() {
            let counters = match e.kind {
                EventKind::Fire => &self.fires,
                EventKind::Release => &self.releases,
            };
            if let Some(c) = counters.get(e.label as usize) {
                c.inc();
            }
        }
    }

    /// The source went offline (`false`) or came back.
    pub fn source_online(&self, online: bool) {
        self.source_online.set(online as i64);
    }

    /// A connection was refused because the server was full.
    pub fn rejected(&self) {
        self.http_rejected.inc();
    }

    /// The text exposition, with the gauges read now.
    pub fn encode(
        &self,
        uptime_s: f64,
        rss_bytes: Option<u64>,
        oversized: u64,
        board: &edgefuse_board::linux::Health,
    ) -> String {
        for z in &board.zones {
            self.temperature
                .get_or_create(&vec![("zone".to_string(), z.name.clone())])
                .set(z.celsius as f64);
        }
        self.throttling.set(board.throttling().count() as i64);
        self.uptime.set(uptime_s);
        if let Some(b) = rss_bytes {
            self.rss.set(b as i64);
        }
        self.snapshot_oversized.set(oversized as i64);
        if let Some(e) = &self.events {
            e.update();
        }
        let mut out = String::with_capacity(16 << 10);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The resident set size of this process, from `/proc/self/statm` (Linux).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as u64)
}
