//! The MJPEG decoder allocates nothing once its buffers have grown for a frame geometry: a
//! counting global allocator sees zero allocations on this thread while it decodes frames of
//! every sampling layout, with and without restart intervals and DHT, at every scale.

use edgefuse_runtime::alloc::{counts, scope, CountingAllocator, Scope};
use edgefuse_runtime::capture::mjpeg::{MjpegDecoder, Scale};
use edgefuse_runtime::frame::Frame;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn frames() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<Vec<u8>> = [
        "s420_97x61.jpg",
        "s422_64x48.jpg",
        "s440_35x19.jpg",
        "s420_restart3_80x40.jpg",
        "s444_restart_row_97x61.jpg",
        "grey_restart2_80x40.jpg",
    ]
    .iter()
    .map(|n| std::fs::read(dir.join("src/capture/mjpeg/testdata").join(n)).unwrap())
    .collect();
    out.push(std::fs::read(dir.join("../models/samples/camera/frame_0001.jpg")).unwrap());
    out.push(std::fs::read(dir.join("../tests/fuzz/corpus/mjpeg/s420_no_dht_97x61.jpg")).unwrap());
    out
}

#[test]
fn no_allocation_once_grown() {
    let frames = frames();
    let mut dec = MjpegDecoder::new();
    // The frame's capacity comes from the ring in the pipeline; here, the largest output.
    let mut frame = Frame::with_capacity(640 * 480 * 3);
    // Grow the buffers: every frame at every scale once.
    for scale in Scale::ALL {
        for j in &frames {
            dec.decode(j, scale, &mut frame).unwrap();
        }
    }
    let guard = scope(Scope::Pipeline);
    let before = counts().0;
    for _ in 0..3 {
        for scale in Scale::ALL {
            for j in &frames {
                dec.decode(j, scale, &mut frame).unwrap();
            }
        }
    }
    let allocations = counts().0 - before;
    drop(guard);
    assert_eq!(
        allocations, 0,
        "allocations while decoding warmed-up geometries"
    );
    // The counter works: a fresh decoder allocates its tables and buffers.
    let _guard = scope(Scope::Pipeline);
    let before = counts().0;
    let mut fresh = MjpegDecoder::new();
    fresh.decode(&frames[0], Scale::Full, &mut frame).unwrap();
    assert!(counts().0 > before);
}
