//! The hand-off from the inference thread to a publisher thread: a bounded ring of [`Fact`]s
//! allocated once. `push` copies a fact into a free slot under a mutex and wakes the consumer;
//! it never waits for the consumer and never allocates. A full ring refuses the fact and
//! counts it (the publisher is stuck behind a slow disk for longer than the ring holds).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::event::Fact;

struct Ring {
    slots: Vec<Fact>,
    head: usize,
    len: usize,
    dropped: u64,
    closed: bool,
}

/// A bounded single-producer, single-consumer queue of facts.
pub struct FactQueue {
    ring: Mutex<Ring>,
    ready: Condvar,
}

impl std::fmt::Debug for FactQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.lock();
        f.debug_struct("FactQueue")
            .field("capacity", &r.slots.len())
            .field("len", &r.len)
            .field("dropped", &r.dropped)
            .finish()
    }
}

impl FactQueue {
    /// A queue of `capacity` facts (at least 1), all allocated now.
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                slots: vec![Fact::empty(); capacity.max(1)],
                head: 0,
                len: 0,
                dropped: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // A panicking publisher must not take the inference thread down with it.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Let `fill` write the next free slot; `false` (and the fact counted as dropped) when the
    /// queue is full or closed. No allocation, no waiting beyond the mutex.
    pub fn push_with(&self, fill: impl FnOnce(&mut Fact)) -> bool {
        let mut r = self.lock();
        let cap = r.slots.len();
        if r.len == cap || r.closed {
            r.dropped += 1;
            return false;
        }
        let i = (r.head + r.len) % cap;
        fill(&mut r.slots[i]);
        r.len += 1;
        drop(r);
        self.ready.notify_one();
        true
    }

    /// Move up to `max` queued facts into `out`, waiting up to `wait` for the first one.
    /// Returns whether the queue is closed and empty (the consumer can stop).
    pub fn pop_into(&self, out: &mut Vec<Fact>, max: usize, wait: Duration) -> bool {
        let mut r = self.lock();
        if r.len == 0 && !r.closed {
            r = self
                .ready
                .wait_timeout(r, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let n = r.len.min(max);
        let cap = r.slots.len();
        for _ in 0..n {
            out.push(r.slots[r.head]);
            r.head = (r.head + 1) % cap;
            r.len -= 1;
        }
        r.closed && r.len == 0
    }

    /// No more facts: `push` refuses from now on, and the consumer ends once it has the rest.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Facts refused because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_counts_drops_and_keeps_order() {
        let q = FactQueue::new(3);
        for i in 0..5 {
            let pushed = q.push_with(|f| f.seq = i);
            assert_eq!(pushed, i < 3);
        }
        assert_eq!(q.dropped(), 2);
        let mut out = Vec::new();
        assert!(!q.pop_into(&mut out, 2, Duration::ZERO));
        assert!(q.push_with(|f| f.seq = 9));
        q.close();
        assert!(q.pop_into(&mut out, 10, Duration::ZERO));
        let seqs: Vec<u64> = out.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [0, 1, 2, 9]);
        assert!(!q.push_with(|_| ()), "closed");
    }
}
