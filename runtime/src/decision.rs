//! Decision: thresholds, hysteresis and cooldown turn per-frame scores into events.
//!
//! A frame's *winner* is its top-1 label when the score reaches the label's threshold (or the
//! global one). A label fires after winning `fire_wins` of the last `window` frames, and is
//! released after losing `release_losses` frames in a row. After firing, a label does not fire
//! again for `cooldown` even if released and re-won. State is sized at construction.

use std::time::{Duration, Instant};

use crate::fusion::TopK;

/// Decision parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionConfig {
    /// Global minimum probability for a winner.
    pub threshold: f32,
    /// Per-label thresholds overriding `threshold` (by label index).
    pub label_thresholds: Vec<(u16, f32)>,
    /// Frames a label must win within `window` to fire.
    pub fire_wins: u32,
    /// Sliding window length in frames (1..=32).
    pub window: u32,
    /// Consecutive lost frames that release an active label.
    pub release_losses: u32,
    /// Minimum time between two firings of the same label.
    pub cooldown: Duration,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            label_thresholds: Vec::new(),
            fire_wins: 1,
            window: 1,
            release_losses: 1,
            cooldown: Duration::ZERO,
        }
    }
}

/// What happened to a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The label became active.
    Fire,
    /// The label stopped being active.
    Release,
}

/// A decision event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    /// Fire or release.
    pub kind: EventKind,
    /// Label index.
    pub label: u16,
    /// The label's probability on this frame.
    pub score: f32,
    /// Frame sequence number.
    pub frame: u64,
    /// When the event was decided.
    pub at: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
struct LabelState {
    wins: u32,
    active: bool,
    losses: u32,
    last_fire: Option<Instant>,
}

/// Events of one frame (a fire and a release can happen together).
pub type Events = heapless::Vec<Event, 4>;

/// The decision state machine.
#[derive(Debug, Clone)]
pub struct Decision {
    cfg: DecisionConfig,
    thresholds: Vec<f32>,
    state: Vec<LabelState>,
    mask: u32,
}

impl Decision {
    /// For `labels` labels. `window` is clamped to 1..=32 and `fire_wins` to 1..=window.
    pub fn new(cfg: DecisionConfig, labels: usize) -> Self {
        let mut d = Self {
            cfg: DecisionConfig::default(),
            thresholds: vec![0.0; labels],
            state: vec![LabelState::default(); labels],
            mask: 1,
        };
        d.reconfigure(cfg);
        d
    }

    /// Change the parameters while running (a configuration reload), clamped like
    /// [`Decision::new`]. What each label has seen stays: its wins in the last frames (cut to
    /// the new window), whether it is active (it is released by the new `release_losses`) and
    /// when it last fired (the new cooldown counts from then). A new threshold applies from the
    /// next frame.
    pub fn reconfigure(&mut self, mut cfg: DecisionConfig) {
        cfg.window = cfg.window.clamp(1, 32);
        cfg.fire_wins = cfg.fire_wins.clamp(1, cfg.window);
        cfg.release_losses = cfg.release_losses.max(1);
        self.thresholds.fill(cfg.threshold);
        for &(l, t) in &cfg.label_thresholds {
            if let Some(x) = self.thresholds.get_mut(l as usize) {
                *x = t;
            }
        }
        self.mask = if cfg.window == 32 {
            u32::MAX
        } else {
            (1u32 << cfg.window) - 1
        };
        for st in &mut self.state {
            st.wins &= self.mask;
        }
        self.cfg = cfg;
    }

    /// The parameters in use (after clamping).
    pub fn config(&self) -> &DecisionConfig {
        &self.cfg
    }

    /// The winner of a frame: top-1 when above its threshold.
    pub fn winner(&self, top: &TopK) -> Option<(u16, f32)> {
        let &(l, p) = top.first()?;
        (p >= self.thresholds[l as usize]).then_some((l, p))
    }

    /// Feed one frame's top-k; returns the events it causes.
    pub fn update(
        &mut self,
        frame: u64,
        top: &TopK,
        probs: &[f32],
        now: Instant,
        events: &mut Events,
    ) {
        events.clear();
        let winner = self.winner(top).map(|w| w.0);
        for (i, st) in self.state.iter_mut().enumerate() {
            let won = winner == Some(i as u16);
            st.wins = ((st.wins << 1) | won as u32) & self.mask;
            if st.active {
                st.losses = if won { 0 } else { st.losses + 1 };
                if st.losses >= self.cfg.release_losses {
                    st.active = false;
                    st.losses = 0;
                    let _ = events.push(Event {
                        kind: EventKind::Release,
                        label: i as u16,
                        score: probs[i],
                        frame,
                        at: now,
                    });
                }
            } else if st.wins.count_ones() >= self.cfg.fire_wins {
                let cooled = st
                    .last_fire
                    .is_none_or(|t| now.duration_since(t) >= self.cfg.cooldown);
                if cooled {
                    st.active = true;
                    st.losses = 0;
                    st.last_fire = Some(now);
                    let _ = events.push(Event {
                        kind: EventKind::Fire,
                        label: i as u16,
                        score: probs[i],
                        frame,
                        at: now,
                    });
                }
            }
        }
    }

    /// Whether a label is currently active.
    pub fn is_active(&self, label: u16) -> bool {
        self.state.get(label as usize).is_some_and(|s| s.active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(l: u16, p: f32) -> TopK {
        let mut t = TopK::new();
        t.push((l, p)).unwrap();
        t
    }

    fn run(
        d: &mut Decision,
        seq: &[(u16, f32)],
        t0: Instant,
        step: Duration,
    ) -> Vec<(u64, EventKind, u16)> {
        let mut out = Vec::new();
        let mut ev = Events::new();
        for (i, &(l, p)) in seq.iter().enumerate() {
            let mut probs = vec![0.0; 3];
            probs[l as usize] = p;
            d.update(i as u64, &top(l, p), &probs, t0 + step * i as u32, &mut ev);
            out.extend(ev.iter().map(|e| (e.frame, e.kind, e.label)));
        }
        out
    }

    #[test]
    fn hysteresis_n_of_m_and_release_after_k() {
        let cfg = DecisionConfig {
            threshold: 0.5,
            fire_wins: 2,
            window: 3,
            release_losses: 2,
            ..Default::default()
        };
        let mut d = Decision::new(cfg, 3);
        let seq = [
            (1, 0.9),
            (0, 0.9),
            (1, 0.9),
            (1, 0.9),
            (0, 0.9),
            (1, 0.9),
            (0, 0.9),
            (0, 0.9),
        ];
        let ev = run(&mut d, &seq, Instant::now(), Duration::from_millis(10));
        // label 1 wins frames 0 and 2 (2 of 3) -> fires at 2; loses 6 and 7 -> released at 7.
        // label 0 wins frames 4 and 6 (2 of the window 4..=6) -> fires at 6.
        assert_eq!(
            ev,
            vec![
                (2, EventKind::Fire, 1),
                (6, EventKind::Fire, 0),
                (7, EventKind::Release, 1)
            ]
        );
    }

    #[test]
    fn reconfigure_changes_thresholds_and_keeps_what_labels_have_seen() {
        let mut d = Decision::new(
            DecisionConfig {
                threshold: 0.95,
                window: 4,
                fire_wins: 1,
                release_losses: 3,
                ..Default::default()
            },
            3,
        );
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut ev = Events::new();
        let probs = [0.0, 0.9, 0.0];
        d.update(0, &top(1, 0.9), &probs, t0, &mut ev);
        assert!(ev.is_empty(), "0.9 is below 0.95");
        d.reconfigure(DecisionConfig {
            threshold: 0.5,
            label_thresholds: vec![(2, 0.99)],
            window: 40,
            fire_wins: 50,
            release_losses: 1,
            ..Default::default()
        });
        assert_eq!(
            (d.config().window, d.config().fire_wins),
            (32, 32),
            "clamped"
        );
        d.reconfigure(DecisionConfig {
            threshold: 0.5,
            label_thresholds: vec![(2, 0.99)],
            release_losses: 1,
            ..Default::default()
        });
        d.update(1, &top(1, 0.9), &probs, t0 + ms(1), &mut ev);
        assert_eq!(ev.len(), 1, "the new threshold applies at once");
        assert!(d.is_active(1));
        d.update(2, &top(2, 0.9), &[0.0, 0.0, 0.9], t0 + ms(2), &mut ev);
        assert_eq!(
            ev.iter().map(|e| (e.kind, e.label)).collect::<Vec<_>>(),
            [(EventKind::Release, 1)],
            "the label threshold of 2 holds; 1 is released after one loss (the new release)"
        );
    }

    #[test]
    fn threshold_and_per_label_threshold() {
        let cfg = DecisionConfig {
            threshold: 0.5,
            label_thresholds: vec![(2, 0.95)],
            ..Default::default()
        };
        let mut d = Decision::new(cfg, 3);
        let ev = run(
            &mut d,
            &[(0, 0.4), (2, 0.9), (2, 0.96)],
            Instant::now(),
            Duration::from_millis(1),
        );
        assert_eq!(ev, vec![(2, EventKind::Fire, 2)]);
    }

    #[test]
    fn cooldown_blocks_refire() {
        let cfg = DecisionConfig {
            cooldown: Duration::from_millis(100),
            ..Default::default()
        };
        let mut d = Decision::new(cfg, 3);
        let seq = [(1, 0.9), (0, 0.9), (1, 0.9), (0, 0.9), (0, 0.9), (1, 0.9)];
        let ev = run(&mut d, &seq, Instant::now(), Duration::from_millis(30));
        let fires1: Vec<u64> = ev
            .iter()
            .filter(|e| e.1 == EventKind::Fire && e.2 == 1)
            .map(|e| e.0)
            .collect();
        // fired at frame 0 (t=0); frame 2 (t=60ms) is inside the cooldown; frame 5 (t=150ms) is not.
        assert_eq!(fires1, vec![0, 5]);
    }
}
