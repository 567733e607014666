//! A fixed ring of preallocated frame slots between the capture thread and the inference thread.
//!
//! The writer takes a free slot, fills it in place and commits it; the reader takes the oldest
//! committed slot and hands it back when done. When no slot is free a live writer reclaims the
//! oldest committed frame (counted in [`FrameRing::dropped`]) so latency stays bounded; a lossless
//! writer waits instead. No operation allocates.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use heapless::{Deque, Vec as HVec};

use crate::frame::Frame;

/// Upper bound on the number of slots.
pub const MAX_SLOTS: usize = 16;

#[derive(Debug)]
struct State {
    ready: Deque<usize, MAX_SLOTS>,
    free: HVec<usize, MAX_SLOTS>,
    closed: bool,
    dropped: u64,
}

/// The ring. Share it with `Arc` between one writer and one reader.
#[derive(Debug)]
pub struct FrameRing {
    slots: Box<[Mutex<Frame>]>,
    state: Mutex<State>,
    changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic on the other thread must not cascade; the data stays consistent by construction.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FrameRing {
    /// `slots` frames (2..=MAX_SLOTS) of `frame_bytes` bytes each, allocated now.
    pub fn new(slots: usize, frame_bytes: usize) -> Self {
        Self::with_source_len(slots, frame_bytes, crate::frame::SOURCE_NAME_CAPACITY)
    }

    /// Like [`FrameRing::new`], with room for source names of `source_len` bytes.
    pub fn with_source_len(slots: usize, frame_bytes: usize, source_len: usize) -> Self {
        let n = slots.clamp(2, MAX_SLOTS);
        let mut free = HVec::new();
        for i in (0..n).rev() {
            let _ = free.push(i);
        }
        Self {
            slots: (0..n)
                .map(|_| Mutex::new(Frame::with_capacities(frame_bytes, source_len)))
                .collect(),
            state: Mutex::new(State {
                ready: Deque::new(),
                free,
                closed: false,
                dropped: 0,
            }),
            changed: Condvar::new(),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Frames reclaimed unread because the reader fell behind.
    pub fn dropped(&self) -> u64 {
        lock(&self.state).dropped
    }

    /// Take a slot to fill. With `drop_oldest`, reclaim the oldest unread frame when none is free;
    /// otherwise wait for the reader. `None` once the ring is closed.
    pub fn begin_write(&self, drop_oldest: bool) -> Option<WriteSlot<'_>> {
        let mut st = lock(&self.state);
        let idx = loop {
            if st.closed {
                return None;
            }
            if let Some(i) = st.free.pop() {
                break i;
            }
            if drop_oldest {
                if let Some(i) = st.ready.pop_front() {
                    st.dropped += 1;
                    break i;
                }
            }
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        };
        drop(st);
        Some(WriteSlot {
            ring: self,
            idx,
            frame: Some(lock(&self.slots[idx])),
            committed: false,
        })
    }

    /// Take the oldest committed frame, waiting for one. `None` when closed and drained.
    pub fn next(&self) -> Option<ReadSlot<'_>> {
        let mut st = lock(&self.state);
        let idx = loop {
            if let Some(i) = st.ready.pop_front() {
                break i;
            }
            if st.closed {
                return None;
            }
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        };
        drop(st);
        Some(ReadSlot {
            ring: self,
            idx,
            frame: Some(lock(&self.slots[idx])),
        })
    }

    /// Like [`FrameRing::next`], but `None` as soon as `stop` is set, even while no frame
    /// comes (a slow paced source): `stop` is looked at every `poll` while waiting.
    pub fn next_unless(&self, stop: &AtomicBool, poll: Duration) -> Option<ReadSlot<'_>> {
        let mut st = lock(&self.state);
        let idx = loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(i) = st.ready.pop_front() {
                break i;
            }
            if st.closed {
                return None;
            }
            st = self
                .changed
                .wait_timeout(st, poll)
                .map_or_else(|p| p.into_inner().0, |(g, _)| g);
        };
        drop(st);
        Some(ReadSlot {
            ring: self,
            idx,
            frame: Some(lock(&self.slots[idx])),
        })
    }

    /// Like [`FrameRing::next_unless`], but returns [`Next::Idle`] when no frame came within
    /// `poll`, so the reader can do its periodic work (a watchdog ping, a reload) while the
    /// source is slow or offline.
    pub fn wait_next(&self, stop: &AtomicBool, poll: Duration) -> Next<'_> {
        let mut st = lock(&self.state);
        if stop.load(Ordering::Relaxed) {
            return Next::Done;
        }
        let idx = match st.ready.pop_front() {
            Some(i) => i,
            None if st.closed => return Next::Done,
            None => {
                st = self
                    .changed
                    .wait_timeout(st, poll)
                    .map_or_else(|p| p.into_inner().0, |(g, _)| g);
                if stop.load(Ordering::Relaxed) {
                    return Next::Done;
                }
                match st.ready.pop_front() {
                    Some(i) => i,
                    None if st.closed => return Next::Done,
                    None => return Next::Idle,
                }
            }
        };
        drop(st);
        Next::Frame(ReadSlot {
            ring: self,
            idx,
            frame: Some(lock(&self.slots[idx])),
        })
    }

    /// No more frames will be written; wakes a waiting reader and writer.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    fn release(&self, idx: usize, ready: bool) {
        let mut st = lock(&self.state);
        if ready {
            let _ = st.ready.push_back(idx);
        } else {
            let _ = st.free.push(idx);
        }
        drop(st);
        self.changed.notify_all();
    }
}

/// What [`FrameRing::wait_next`] found.
#[derive(Debug)]
pub enum Next<'a> {
    /// The oldest committed frame.
    Frame(ReadSlot<'a>),
    /// No frame within the poll time.
    Idle,
    /// Stopped, or closed and drained.
    Done,
}

/// A slot being filled by the writer. Dropped without [`WriteSlot::commit`] it goes back free.
#[derive(Debug)]
pub struct WriteSlot<'a> {
    ring: &'a FrameRing,
    idx: usize,
    frame: Option<MutexGuard<'a, Frame>>,
    committed: bool,
}

impl WriteSlot<'_> {
    /// Publish the frame to the reader.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Deref for WriteSlot<'_> {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        self.frame.as_deref().expect("slot held until drop")
    }
}

impl DerefMut for WriteSlot<'_> {
    fn deref_mut(&mut self) -> &mut Frame {
        self.frame.as_deref_mut().expect("slot held until drop")
    }
}

impl Drop for WriteSlot<'_> {
    fn drop(&mut self) {
        self.frame.take();
        self.ring.release(self.idx, self.committed);
    }
}

/// A frame being read. Dropping it returns the slot to the writer.
#[derive(Debug)]
pub struct ReadSlot<'a> {
    ring: &'a FrameRing,
    idx: usize,
    frame: Option<MutexGuard<'a, Frame>>,
}

impl Deref for ReadSlot<'_> {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        self.frame.as_deref().expect("slot held until drop")
    }
}

impl Drop for ReadSlot<'_> {
    fn drop(&mut self) {
        self.frame.take();
        self.ring.release(self.idx, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(ring: &FrameRing, seq: u64, drop_oldest: bool) {
        let mut s = ring.begin_write(drop_oldest).unwrap();
        s.seq = seq;
        s.commit();
    }

    #[test]
    fn fifo_and_drop_oldest() {
        let ring = FrameRing::new(3, 16);
        for i in 0..5 {
            write(&ring, i, true);
        }
        assert_eq!(ring.dropped(), 2);
        let got: Vec<u64> = (0..3).map(|_| ring.next().unwrap().seq).collect();
        assert_eq!(got, vec![2, 3, 4]);
        ring.close();
        assert!(ring.next().is_none());
        assert!(ring.begin_write(true).is_none());
    }

    #[test]
    fn lossless_writer_waits_for_reader() {
        let ring = std::sync::Arc::new(FrameRing::new(2, 16));
        let w = ring.clone();
        let t = std::thread::spawn(move || {
            for i in 0..50 {
                write(&w, i, false);
            }
            w.close();
        });
        let mut seen = Vec::new();
        while let Some(f) = ring.next() {
            seen.push(f.seq);
        }
        t.join().unwrap();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert_eq!(ring.dropped(), 0);
    }

    #[test]
    fn a_reader_waiting_for_a_frame_sees_stop_within_the_poll_period() {
        let ring = FrameRing::new(2, 16);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                stop.store(true, Ordering::Relaxed);
            });
            let t = std::time::Instant::now();
            assert!(ring.next_unless(&stop, Duration::from_millis(10)).is_none());
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        });
        // Without stop it hands out frames like `next`.
        let stop = AtomicBool::new(false);
        write(&ring, 7, false);
        let f = ring.next_unless(&stop, Duration::from_millis(10)).unwrap();
        assert_eq!(f.seq, 7);
    }

    #[test]
    fn uncommitted_slot_is_returned() {
        let ring = FrameRing::new(2, 16);
        drop(ring.begin_write(false).unwrap());
        drop(ring.begin_write(false).unwrap());
        drop(ring.begin_write(false).unwrap());
        ring.close();
        assert!(ring.next().is_none());
    }
}
