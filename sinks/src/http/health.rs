//! The health state machine behind `/healthz`: healthy while classified frames flow, unhealthy
//! (with a reason) while the source is offline, before the first frame, after a stall, and once
//! the run has ended.

use std::time::{Duration, Instant};

/// Longest offline reason kept (the capture error's text); longer ones are cut at a character
/// boundary. Preallocated so that recording a reason on the inference thread does not allocate.
pub const REASON_CAPACITY: usize = 256;

/// What `/healthz` answers at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthStatus {
    /// Frames flow: 200.
    Ok,
    /// No frame classified yet: 503.
    Starting,
    /// The source is offline (the reason it gave): 503.
    Offline(String),
    /// No frame classified for this long (only with a stall limit): 503.
    Stalled(Duration),
    /// The run has ended: 503.
    Finished,
}

impl HealthStatus {
    /// Whether this is healthy (HTTP 200).
    pub fn is_ok(&self) -> bool {
        matches!(self, HealthStatus::Ok)
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthStatus::Ok => f.write_str("ok: frames are classified"),
            HealthStatus::Starting => f.write_str("starting: no frame classified yet"),
            HealthStatus::Offline(r) => write!(f, "camera offline: {r}"),
            HealthStatus::Stalled(d) => write!(
                f,
                "stalled: no frame classified for {:.1} s",
                d.as_secs_f64()
            ),
            HealthStatus::Finished => f.write_str("finished: the run has ended"),
        }
    }
}

/// The inputs of `/healthz`: the last frame, the source's state, the end of the run.
#[derive(Debug, Clone)]
pub struct Health {
    last_frame: Option<Instant>,
    offline: bool,
    reason: String,
    finished: bool,
    stall_after: Option<Duration>,
}

impl Health {
    /// A run that has classified nothing yet. With `stall_after`, a gap between classified
    /// frames longer than that is a stall (for a continuous trigger; a run triggered by motion
    /// or a pin classifies rarely by design and passes `None`).
    pub fn new(stall_after: Option<Duration>) -> Self {
        Self {
            last_frame: None,
            offline: false,
            reason: String::with_capacity(REASON_CAPACITY),
            finished: false,
            stall_after,
        }
    }

    /// A frame was classified at `now` (the source is evidently online). No allocation.
    pub fn frame(&mut self, now: Instant) {
        self.last_frame = Some(now);
        self.offline = false;
    }

    /// The source went offline (`reason` kept, cut to [`REASON_CAPACITY`] bytes) or came back.
    /// No allocation.
    pub fn source(&mut self, offline: bool, reason: &str) {
        self.offline = offline;
        self.reason.clear();
        if offline {
            let mut end = reason.len().min(REASON_CAPACITY);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            self.reason.push_str(&reason[..end]);
        }
    }

    /// The run ended.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// The state at `now`.
    pub fn status(&self, now: Instant) -> HealthStatus {
        if self.finished {
            return HealthStatus::Finished;
        }
        if self.offline {
            return HealthStatus::Offline(self.reason.clone());
        }
        let Some(last) = self.last_frame else {
            return HealthStatus::Starting;
        };
        let gap = now.saturating_duration_since(last);
        match self.stall_after {
            Some(limit) if gap > limit => HealthStatus::Stalled(gap),
            _ => HealthStatus::Ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_follows_frames_the_source_and_the_end() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut h = Health::new(Some(Duration::from_secs(5)));
        assert_eq!(h.status(t0), HealthStatus::Starting);
        assert!(!h.status(t0).is_ok());
        h.frame(s(1));
        assert_eq!(h.status(s(2)), HealthStatus::Ok);
        assert!(h.status(s(2)).is_ok());
        // A gap longer than the limit is a stall, with its length.
        assert_eq!(
            h.status(s(7)),
            HealthStatus::Stalled(Duration::from_secs(6))
        );
        assert_eq!(
            h.status(s(7)).to_string(),
            "stalled: no frame classified for 6.0 s"
        );
        h.frame(s(7));
        assert!(h.status(s(8)).is_ok());
        // Offline wins over a recent frame, and says why.
        h.source(true, "/dev/video0: No such device");
        let st = h.status(s(8));
        assert_eq!(
            st.to_string(),
            "camera offline: /dev/video0: No such device"
        );
        // Back online: healthy again once frames flow (the last frame is still recent).
        h.source(false, "");
        assert!(h.status(s(9)).is_ok());
        h.source(true, "stalled");
        h.frame(s(10));
        assert!(h.status(s(10)).is_ok(), "a classified frame means online");
        h.finish();
        assert_eq!(h.status(s(10)), HealthStatus::Finished);
    }

    #[test]
    fn without_a_stall_limit_a_quiet_run_stays_healthy_and_reasons_are_cut() {
        let t0 = Instant::now();
        let mut h = Health::new(None);
        h.frame(t0);
        assert!(h.status(t0 + Duration::from_secs(3600)).is_ok());
        let long = "é".repeat(REASON_CAPACITY);
        let cap = h.reason.capacity();
        h.source(true, &long);
        assert!(h.reason.len() <= REASON_CAPACITY && h.reason.len().is_multiple_of(2));
        assert_eq!(h.reason.capacity(), cap, "no reallocation");
    }
}
