//! `HttpSink::frame` on the inference thread allocates nothing after warm-up, while the
//! pixels are wanted (copies) and while they are not; a server thread serving requests at the
//! same time allocates on its own thread only. Allocations are counted per thread.

mod http_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use edgefuse_sinks::Sink;
use http_common::*;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a thread-local Cell (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` above with `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: `p` came from this allocator with `l`.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

#[test]
fn publishing_a_frame_does_not_allocate() {
    let mut sink = start(|c| c.snapshots_per_s = 30.0);
    let addr = sink.addr();
    let mut feed = Feed::new();
    for seq in 0..20 {
        sink.frame(&feed.result(seq, 0, seq == 3)).unwrap();
    }
    // A page polling while frames flow (its thread allocates; ours must not).
    let poller = std::thread::spawn(move || {
        for _ in 0..20 {
            assert_eq!(get(addr, "/api/status", None).0, 200);
            let _ = get(addr, "/metrics", None);
        }
        get(addr, "/snapshot.jpg", None).0
    });
    let before = allocs();
    for seq in 20..2020 {
        let r = feed.result(seq, (seq % 3) as u16, seq % 100 == 0);
        sink.frame(&r).unwrap();
        if seq == 1000 {
            sink.app().shared_want_pixels();
        }
    }
    let after = allocs();
    assert_eq!(poller.join().unwrap(), 200);
    assert_eq!(
        after - before,
        0,
        "allocations on the inference thread over 2000 frames"
    );
    sink.finish(&Default::default()).unwrap();
}
