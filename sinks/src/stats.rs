//! The event sink's live figures, shared without locks: the dispatcher, the journal and the
//! publishers store into plain atomics where a fact changes; the status server reads them when
//! `/metrics` is asked for. Nothing here runs on the inference thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live figures of an [`crate::dispatch::EventSink`] (see the module docs). Counters only grow;
/// gauges hold the latest value.
#[derive(Debug, Default)]
pub struct EventStats {
    /// Whether events go to an MQTT broker (fixed at start).
    pub mqtt: bool,
    /// Whether events go to a webhook (fixed at start).
    pub webhook: bool,
    /// Gauge: journaled events not yet acknowledged by every publisher.
    pub journal_pending: AtomicU64,
    /// Gauge: bytes of the journal's segments (what counts against its bound).
    pub journal_bytes: AtomicU64,
    /// Gauge: the journal's bound, bytes.
    pub journal_limit_bytes: AtomicU64,
    /// Counter: events dropped unacknowledged because the journal was full.
    pub journal_dropped: AtomicU64,
    /// Counter: events that could not be written to disk (kept in memory, still sent).
    pub journal_not_written: AtomicU64,
    /// Counter: events dropped because the hand-off queue was full.
    pub queue_dropped: AtomicU64,
    /// Counter: events dropped because they could not be encoded (larger than the payload limit).
    pub unencodable: AtomicU64,
    /// Counter: events appended to the journal in this run.
    pub journaled: AtomicU64,
    /// Gauge: 1 while connected to the MQTT broker, else 0.
    pub broker_connected: AtomicU64,
    /// Counter: events the broker acknowledged (PUBACK), resends included.
    pub acknowledged: AtomicU64,
    /// Counter: events the webhook delivered (2xx).
    pub webhook_delivered: AtomicU64,
    /// Gauge: 1 while the webhook's last attempt failed (retrying), else 0.
    pub webhook_failing: AtomicU64,
}

impl EventStats {
    /// Figures for an event sink publishing to MQTT and/or a webhook (as configured).
    pub fn new(mqtt: bool, webhook: bool) -> Self {
        Self {
            mqtt,
            webhook,
            ..Self::default()
        }
    }

    /// Read a figure (relaxed: each one is independent).
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }

    /// Store a figure.
    pub fn set(v: &AtomicU64, to: u64) {
        v.store(to, Ordering::Relaxed);
    }

    /// Add to a counter.
    pub fn add(v: &AtomicU64, n: u64) {
        v.fetch_add(n, Ordering::Relaxed);
    }
}
