//! The GStreamer sources (feature `gstreamer`) against real GStreamer: `videotestsrc` pipelines
//! in each format, bad pipelines, an unreachable RTSP address, `csi://` without Argus and (with
//! feature `gstreamer-tests`) an in-process RTSP server that is stopped and started again.
//!
//! A test whose GStreamer elements are missing is skipped with a printed reason, except under
//! `CI=true`, where it fails (CI installs them: `scripts/setup --test`).
#![cfg(feature = "gstreamer")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use edgefuse_runtime::capture::reconnect::{Backoff, Health};
use edgefuse_runtime::capture::{open, open_with, OpenOptions};
use edgefuse_runtime::frame::{Frame, PixelFormat};
use gstreamer as gst;

/// Counts the allocations of the thread that asks (GStreamer's own threads allocate through
/// GLib, not here).
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread-local
// Cell, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

/// Whether GStreamer and `elements` are there; otherwise skip (print why), or fail under CI.
fn ready(test: &str, elements: &[&str]) -> bool {
    let problem = match gst::init() {
        Err(e) => Some(format!("GStreamer does not initialise: {e}")),
        Ok(()) => {
            let missing: Vec<&str> = elements
                .iter()
                .copied()
                .filter(|e| gst::ElementFactory::find(e).is_none())
                .collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "GStreamer elements missing: {} (scripts/setup --test installs them)",
                    missing.join(", ")
                )
            })
        }
    };
    match problem {
        None => true,
        Some(p) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {p}; CI must run this test")
        }
        Some(p) => {
            eprintln!("skipped {test}: {p}");
            false
        }
    }
}

/// Open options for tests: a short stall timeout and a quick backoff.
fn quick() -> OpenOptions {
    OpenOptions {
        stall_timeout: Duration::from_secs(2),
        backoff: Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(400),
        },
    }
}

/// BT.601 limited-range Y, Cb, Cr of an RGB colour.
fn ycbcr(r: f64, g: f64, b: f64) -> [f64; 3] {
    [
        16.0 + 219.0 * (0.299 * r + 0.587 * g + 0.114 * b) / 255.0,
        128.0 + 224.0 * (-0.168736 * r - 0.331264 * g + 0.5 * b) / 255.0,
        128.0 + 224.0 * (0.5 * r - 0.418688 * g - 0.081312 * b) / 255.0,
    ]
}

fn near(got: u8, want: f64, what: &str) {
    assert!(
        (f64::from(got) - want).abs() <= 3.0,
        "{what}: got {got}, want {want:.1} ± 3"
    );
}

#[test]
fn videotestsrc_in_each_format_arrives_at_its_size_with_its_colour() {
    if !ready("videotestsrc", &["videotestsrc", "appsink"]) {
        return;
    }
    // 322 pixels wide: GStreamer pads RGB/GRAY8/NV12 rows to 4 bytes, so the strides differ
    // from the packed rows and a copy that ignored them would leave padding in the frame.
    let (w, h) = (322u32, 240u32);
    let (r, g, b) = (0x20u8, 0x80u8, 0xc0u8);
    let [y, cb, cr] = ycbcr(f64::from(r), f64::from(g), f64::from(b));
    for (caps, format) in [
        ("NV12", PixelFormat::Nv12),
        ("YUY2", PixelFormat::Yuyv),
        ("GRAY8", PixelFormat::Grey),
        ("RGB", PixelFormat::Rgb),
        ("BGR", PixelFormat::Bgr),
    ] {
        let uri = format!(
            "gst://videotestsrc pattern=solid-color foreground-color=0xff{r:02x}{g:02x}{b:02x} ! video/x-raw,format={caps},width={w},height={h},framerate=60/1 ! appsink"
        );
        let mut src = open_with(&uri, &quick()).unwrap_or_else(|e| panic!("{caps}: {e}"));
        assert_eq!(src.max_frame_bytes(), format.frame_len(w, h).unwrap());
        assert!(src.is_live());
        assert!(src
            .describe()
            .contains(&format!("{} {w}x{h}", format.name())));
        let mut f = Frame::with_capacity(src.max_frame_bytes());
        for i in 0..3 {
            assert!(src.next_frame(&mut f).unwrap(), "{caps}");
            assert_eq!(f.seq, i);
        }
        assert_eq!((f.width, f.height, f.format), (w, h, format), "{caps}");
        assert_eq!(f.data.len(), format.frame_len(w, h).unwrap(), "{caps}");
        assert_eq!(f.source, uri);
        let px = (w * h) as usize;
        match format {
            PixelFormat::Rgb | PixelFormat::Bgr => {
                let want = if format == PixelFormat::Rgb {
                    [r, g, b]
                } else {
                    [b, g, r]
                };
                for (i, p) in f.data.chunks_exact(3).enumerate() {
                    assert_eq!(p, want, "{caps}: pixel {i}");
                }
            }
            PixelFormat::Grey => {
                // Full-range (106.6) or limited-range (107.5) luma: within the tolerance.
                f.data.iter().for_each(|&v| near(v, y, "GRAY8 luma"));
            }
            PixelFormat::Nv12 => {
                f.data[..px].iter().for_each(|&v| near(v, y, "NV12 Y"));
                for uv in f.data[px..].chunks_exact(2) {
                    near(uv[0], cb, "NV12 U");
                    near(uv[1], cr, "NV12 V");
                }
            }
            PixelFormat::Yuyv => {
                for q in f.data.chunks_exact(4) {
                    near(q[0], y, "YUY2 Y0");
                    near(q[1], cb, "YUY2 U");
                    near(q[2], y, "YUY2 Y1");
                    near(q[3], cr, "YUY2 V");
                }
            }
        }
    }
}

#[test]
fn frames_are_copied_into_the_slot_without_allocating() {
    if !ready("allocations", &["videotestsrc", "appsink"]) {
        return;
    }
    let uri = "gst://videotestsrc ! video/x-raw,format=NV12,width=320,height=240,framerate=120/1 ! appsink";
    let mut src = open_with(uri, &quick()).unwrap();
    let mut f = Frame::with_capacity(src.max_frame_bytes());
    for _ in 0..3 {
        assert!(src.next_frame(&mut f).unwrap());
    }
    let before = allocations();
    let frames = 30;
    for _ in 0..frames {
        assert!(src.next_frame(&mut f).unwrap());
    }
    let n = allocations() - before;
    println!("allocations in {frames} frames through GstSource and Reconnecting: {n}");
    assert_eq!(n, 0, "allocations per {frames} frames");
}

#[test]
fn a_pipeline_that_ends_is_reopened_like_a_camera_that_comes_back() {
    if !ready("end of stream", &["videotestsrc", "appsink"]) {
        return;
    }
    let uri = "gst://videotestsrc num-buffers=2 ! video/x-raw,format=GRAY8,width=64,height=48 ! appsink sync=false";
    let mut src = open_with(uri, &quick()).unwrap();
    let feed = src.health().unwrap();
    let mut f = Frame::with_capacity(src.max_frame_bytes());
    for i in 0..5 {
        assert!(src.next_frame(&mut f).unwrap());
        assert_eq!(f.seq, i, "sequence numbers go on across reopens");
    }
    let states: Vec<Health> = std::iter::from_fn(|| feed.take())
        .map(|c| c.state)
        .collect();
    assert_eq!(&states[..2], [Health::Offline, Health::Online]);
    assert!(src.stats().outages >= 2, "{:?}", src.stats());
}

#[test]
fn bad_pipelines_are_refused_with_gstreamers_message() {
    if !ready("bad pipelines", &["videotestsrc", "appsink", "fakesink"]) {
        return;
    }
    for (uri, want) in [
        (
            "gst://videotestsrc ! nosuchelement ! appsink",
            "nosuchelement",
        ),
        ("gst://videotestsrc ! ! appsink", "does not parse"),
        ("gst://videotestsrc ! fakesink", "no appsink"),
        ("gst://videotestsrc", "no appsink"),
        (
            "gst://videotestsrc ! tee name=t ! queue ! appsink t. ! queue ! appsink",
            "2 appsinks",
        ),
        (
            "gst://videotestsrc ! appsink caps=video/x-raw,format=I420",
            "allow none of the formats",
        ),
        (
            "gst://videotestsrc ! video/x-raw,format=I420 ! appsink",
            "not-negotiated",
        ),
    ] {
        let t = Instant::now();
        let e = open_with(uri, &quick()).err().unwrap().to_string();
        assert!(e.contains(want), "{uri}: {e}");
        assert!(e.contains("gst://videotestsrc"), "names the source: {e}");
        // A hang check, not a timing claim: the negotiation failure is an error at once.
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{uri}: {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn an_rtsp_address_nobody_listens_on_fails_quickly_without_showing_the_password() {
    if !ready(
        "rtsp closed port",
        &["rtspsrc", "decodebin", "videoconvert", "appsink"],
    ) {
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for transport in ["tcp", "udp", "auto"] {
        let uri = format!("rtsp://edge:pa%40ss@127.0.0.1:{port}/cam?transport={transport}");
        let t = Instant::now();
        let e = open_with(&uri, &quick()).err().unwrap().to_string();
        println!("closed port ({transport}): {e} after {:?}", t.elapsed());
        assert!(
            e.contains(&format!("rtsp://edge:***@127.0.0.1:{port}/cam")),
            "{e}"
        );
        assert!(!e.contains("pa%40ss") && !e.contains("pa@ss"), "{e}");
        assert!(e.contains("GstRTSPSrc:src"), "names rtspsrc: {e}");
        // A hang check, not a timing claim.
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    }
}

#[test]
fn csi_without_argus_says_it_is_a_jetson_element() {
    if !ready("csi", &[]) {
        return;
    }
    if gst::ElementFactory::find("nvarguscamerasrc").is_some() {
        eprintln!("skipped csi test: nvarguscamerasrc is here (a Jetson); the error path needs a machine without it");
        return;
    }
    let e = open("csi://0?width=1280&height=720")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("nvarguscamerasrc") && e.contains("Jetson"),
        "{e}"
    );
    assert!(e.contains("csi://0"), "{e}");
}

#[cfg(feature = "gstreamer-tests")]
mod rtsp {
    use super::*;
    use gst::glib;
    use gstreamer_rtsp_server as rtsp;
    use gstreamer_rtsp_server::prelude::*;

    /// An RTSP server on 127.0.0.1:`port` serving `/cam` (MJPEG over RTP), with basic auth for
    /// `user`:`password`, run by its own GLib main loop.
    struct Server {
        server: rtsp::RTSPServer,
        context: glib::MainContext,
        source: Option<glib::SourceId>,
        main_loop: glib::MainLoop,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    const FACTORY: &str = "( videotestsrc is-live=true ! video/x-raw,format=I420,width=320,height=240,framerate=15/1 ! jpegenc ! rtpjpegpay name=pay0 )";

    impl Server {
        fn start(port: u16, user: &str, password: &str) -> Self {
            let server = rtsp::RTSPServer::new();
            server.set_address("127.0.0.1");
            server.set_service(&port.to_string());
            let factory = rtsp::RTSPMediaFactory::new();
            factory.set_launch(FACTORY);
            factory.set_shared(true);
            let role = gst::Structure::builder("user")
                .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                .build();
            factory.add_role_from_structure(&role);
            let auth = rtsp::RTSPAuth::new();
            let token = rtsp::RTSPToken::builder()
                .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
                .build();
            auth.add_basic(rtsp::RTSPAuth::make_basic(user, password).as_str(), &token);
            server.set_auth(Some(&auth));
            server
                .mount_points()
                .expect("the server has mount points")
                .add_factory("/cam", factory);
            let context = glib::MainContext::new();
            let source = server
                .attach(Some(&context))
                .unwrap_or_else(|e| panic!("RTSP server on port {port}: {e}"));
            let main_loop = glib::MainLoop::new(Some(&context), false);
            let ml = main_loop.clone();
            let thread = std::thread::spawn(move || ml.run());
            Self {
                server,
                context,
                source: Some(source),
                main_loop,
                thread: Some(thread),
            }
        }

        /// Close every client and stop listening.
        fn stop(mut self) {
            self.server
                .client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
            // Destroying the listening source closes the socket.
            if let Some(s) = self
                .source
                .take()
                .and_then(|id| self.context.find_source_by_id(&id))
            {
                s.destroy();
            }
            self.main_loop.quit();
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    const ELEMENTS: [&str; 8] = [
        "rtspsrc",
        "decodebin",
        "jpegdec",
        "videoconvert",
        "appsink",
        "videotestsrc",
        "jpegenc",
        "rtpjpegpay",
    ];

    #[test]
    fn frames_arrive_from_an_rtsp_server_with_encoded_credentials() {
        if !ready("rtsp server", &ELEMENTS) {
            return;
        }
        let port = free_port();
        let server = Server::start(port, "edge", "p@ss:w/rd");
        // A wrong password is refused by the server: the error says so, without the password.
        let wrong = format!("rtsp://edge:nope@127.0.0.1:{port}/cam");
        let e = open_with(&wrong, &quick()).err().unwrap().to_string();
        println!("wrong password: {e}");
        assert!(!e.contains("nope") && e.contains("edge:***@"), "{e}");
        let uri =
            format!("rtsp://edge:p%40ss%3Aw%2Frd@127.0.0.1:{port}/cam?transport=tcp&latency=100");
        let mut src = open_with(&uri, &quick()).unwrap();
        let shown = format!("rtsp://edge:***@127.0.0.1:{port}/cam?transport=tcp&latency=100");
        assert_eq!(src.uri(), shown);
        assert!(!src.describe().contains("p%40ss"), "{}", src.describe());
        let mut f = Frame::with_capacity(src.max_frame_bytes());
        for _ in 0..5 {
            assert!(src.next_frame(&mut f).unwrap());
            assert_eq!((f.width, f.height), (320, 240));
            assert_eq!(f.data.len(), f.format.frame_len(320, 240).unwrap());
            assert_eq!(f.source, shown);
        }
        println!("rtsp: {}", src.describe());
        drop(src);
        server.stop();
    }

    #[test]
    fn an_rtsp_server_that_stops_and_returns_is_recovered() {
        if !ready("rtsp reconnect", &ELEMENTS) {
            return;
        }
        let port = free_port();
        let server = Server::start(port, "u", "pw");
        let uri = format!("rtsp://u:pw@127.0.0.1:{port}/cam?transport=tcp");
        let mut src = open_with(&uri, &quick()).unwrap();
        let feed = src.health().unwrap();
        let mut f = Frame::with_capacity(src.max_frame_bytes());
        for _ in 0..3 {
            assert!(src.next_frame(&mut f).unwrap());
        }
        server.stop();
        // Frames queued before the stop may still come; then the source goes offline.
        let restarter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            Server::start(port, "u", "pw")
        });
        let mut offline = false;
        let mut after = 0;
        let t = Instant::now();
        while after < 3 {
            assert!(src.next_frame(&mut f).unwrap());
            assert_eq!((f.width, f.height), (320, 240));
            for c in std::iter::from_fn(|| feed.take()) {
                println!("{:?}: {} after {:?}", c.state, c.reason, t.elapsed());
                match c.state {
                    Health::Offline => offline = true,
                    Health::Online => assert!(offline, "online before offline"),
                }
            }
            if offline && src.stats().outages >= 1 && t.elapsed() > Duration::from_secs(3) {
                after += 1;
            }
            assert!(t.elapsed() < Duration::from_secs(45), "never recovered");
        }
        assert!(offline, "the stop was noticed");
        assert_eq!(src.stats().outages, 1, "{:?}", src.stats());
        drop(src);
        restarter.join().unwrap().stop();
    }
}
