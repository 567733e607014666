//! Allocation counting, by scope, for tests and `edgefuse bench`.
//!
//! Install [`CountingAllocator`] as the `#[global_allocator]` of a binary or test; every heap
//! allocation (and reallocation) is then counted in the scope the allocating thread is in:
//! [`Scope::Pipeline`] on the pipeline's own threads (its run loop and its capture thread),
//! [`Scope::Engine`] inside the inference engine's calls, and [`Scope::Other`] on every other
//! thread (a test harness printing progress, signal handlers, GPIO timers), which is not part of
//! the per-frame figures. Without the allocator installed the counters simply stay at zero.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Who is allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Scope {
    /// Our code: capture, ring, preprocessing, fusion, decision, output.
    Pipeline = 0,
    /// Inside the inference engine (tract).
    Engine = 1,
    /// Threads that are not the pipeline's (the default for every thread).
    Other = 2,
}

static COUNTS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

thread_local! {
    static CURRENT: Cell<u8> = const { Cell::new(Scope::Other as u8) };
}

/// A `System` allocator wrapper that counts allocations per [`Scope`].
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

fn count() {
    // `try_with` because allocation can happen while thread-locals are being torn down.
    let s = CURRENT.try_with(|c| c.get()).unwrap_or(Scope::Other as u8) as usize;
    COUNTS[s.min(2)].fetch_add(1, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only atomics and a const-initialised thread-local `Cell`, neither of which allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocation counts so far: `(pipeline, engine)`.
pub fn counts() -> (u64, u64) {
    (
        COUNTS[0].load(Ordering::Relaxed),
        COUNTS[1].load(Ordering::Relaxed),
    )
}

/// Allocation counts so far in every scope: `[pipeline, engine, other]`; their sum covers the
/// whole process.
pub fn counts_all() -> [u64; 3] {
    COUNTS.each_ref().map(|c| c.load(Ordering::Relaxed))
}

/// Restores the previous scope when dropped.
#[derive(Debug)]
pub struct ScopeGuard(u8);

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        let prev = self.0;
        let _ = CURRENT.try_with(|c| c.set(prev));
    }
}

/// Count this thread's allocations in `s` until the guard drops.
pub fn scope(s: Scope) -> ScopeGuard {
    let prev = CURRENT
        .try_with(|c| c.replace(s as u8))
        .unwrap_or(Scope::Other as u8);
    ScopeGuard(prev)
}
