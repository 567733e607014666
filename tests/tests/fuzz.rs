//! Fuzzing every parser of user input on the stable toolchain (see `edgefuse_tests::fuzz`):
//! the bundle manifest (parse + validation), source URIs (parsing and option checks, no device
//! opened), trigger / pin / actuator / status-LED specs and durations, the int8 calibration
//! table, label prompts (`labels add`'s text path: validation and tokenizer), image decoding
//! into a frame, the MJPEG decoder, and the event outputs' broker URIs, webhook URLs and device ids. (The config file is fuzzed in the cli crate, where `RunOptions`
//! lives.) Any panic, hang or allocation above [`CAP`] fails the test.
//!
//! `EDGEFUSE_FUZZ_SECS` sets the seconds per target (default 20; 3 under emulation); arguments
//! select targets by name (`cargo test -p edgefuse-tests --test fuzz -- uri image`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::OnceLock;

use edgefuse_models::text::LabelEmbedder;
use edgefuse_models::{Bundle, QuantTables};
use edgefuse_runtime::actuate::{parse_pin, ActuatorSpec, GpioTriggerSpec, LedSpec};
use edgefuse_runtime::capture::file::{decode_image_bytes, DEFAULT_MAX_PIXELS};
use edgefuse_runtime::capture::Uri;
use edgefuse_runtime::frame::Frame;
use edgefuse_runtime::trigger::TriggerSpec;
use edgefuse_tests::fuzz;

/// No single allocation of a target may exceed this (a bounded parser never needs it: the
/// largest legitimate one here is a 4096×4096 RGB image, 48 MiB).
const CAP: usize = 128 << 20;

struct Capped;

// SAFETY: forwards to the system allocator; only refuses (null) allocations of more than 4 GiB,
// which would otherwise exhaust the machine, after recording them.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if fuzz::over_cap(l.size(), CAP) && l.size() > 4 << 30 {
            return std::ptr::null_mut();
        }
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if fuzz::over_cap(l.size(), CAP) && l.size() > 4 << 30 {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        if fuzz::over_cap(size, CAP) && size > 4 << 30 {
            return std::ptr::null_mut();
        }
        System.realloc(p, l, size)
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

fn manifest(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = Bundle::check_manifest_text(t, Path::new("bundle.toml"));
    }
}

fn uri(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let Ok(u) = Uri::parse(t) else { return };
    let _ = u.fps();
    let _ = u.flag("loop");
    let _ = u.get::<u32>("width", 640, "");
    let _ = u.get::<u64>("max_pixels", DEFAULT_MAX_PIXELS, "");
    let _ = u.check_known(&["loop", "fps", "width", "height", "format", "frames"]);
    // synthetic:// opens no device: the whole source is built (sizes are capped), on one
    // input in 8 (rendering its frames is the slow part).
    if u.scheme == "synthetic" && data.len().is_multiple_of(8) {
        let _ = edgefuse_runtime::capture::synthetic::SyntheticSource::open(&u);
    }
}

fn specs(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let _ = t.parse::<TriggerSpec>();
    let _ = t.parse::<GpioTriggerSpec>();
    let _ = t.parse::<LedSpec>();
    let _ = parse_pin(t);
    let _ = ActuatorSpec::parse_flag(t);
    if let Some((label, spec)) = t.split_once('\n') {
        let _ = ActuatorSpec::parse(label, spec);
    }
    let _ = edgefuse_runtime::duration::parse_duration(t);
}

/// The event outputs' settings: broker URIs, webhook URLs, device ids.
fn sinks(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if let Ok(c) = edgefuse_sinks::mqtt::MqttConfig::parse(t, None) {
        let _ = c.describe();
    }
    let _ = edgefuse_sinks::webhook::WebhookConfig::new(t, None, std::time::Duration::ZERO);
    let _ = edgefuse_sinks::event::valid_device_id(t);
}

fn table(data: &[u8]) {
    let _ = serde_json::from_slice::<QuantTables>(data);
}

fn embedder() -> &'static LabelEmbedder {
    static E: OnceLock<LabelEmbedder> = OnceLock::new();
    E.get_or_init(|| {
        let b = Bundle::open(edgefuse_tests::default_bundle()).expect("default bundle");
        LabelEmbedder::new(&b).expect("text tower")
    })
}

fn labels(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let e = embedder();
    let _ = e.tokenize(t);
    // The text tower itself on one input in 16 (it is the slow part).
    if data.len() % 16 == 3 {
        let _ = e.embed_label(&[t.to_string()]);
    }
}

fn image(data: &[u8]) {
    if let Ok((w, h, format, pixels)) = decode_image_bytes(data, DEFAULT_MAX_PIXELS) {
        let mut frame = Frame::with_capacity(0);
        assert!(frame.reshape(w, h, format), "{w}x{h} {format:?}");
        assert_eq!(frame.data.len(), pixels.len());
        frame.data.copy_from_slice(&pixels);
    }
}

/// The MJPEG decoder at the scale the input's length picks; a decoded frame has the size the
/// header declares at that scale.
fn mjpeg(data: &[u8]) {
    use edgefuse_runtime::capture::mjpeg::{MjpegDecoder, Scale};
    let mut dec = MjpegDecoder::with_max_pixels(4 << 20);
    let mut frame = Frame::with_capacity(0);
    let scale = Scale::ALL[data.len() % 4];
    if dec.decode(data, scale, &mut frame).is_ok() {
        let (w, h) = dec.frame_size();
        assert_eq!((frame.width, frame.height), scale.output_size(w, h));
        assert_eq!(
            frame.data.len(),
            frame.width as usize * frame.height as usize * 3
        );
    }
}

type Target = (&'static str, &'static [&'static [u8]], usize, fn(&[u8]));

const TARGETS: &[Target] = &[
    (
        "manifest",
        &[
            b"format_version = 1\n",
            b"[[labels]]\nname = \"x\"\nprompts = [\"p\"]\n",
            b"image_size = [",
            b"embedding_dim = ",
            b"file = \"../x\"",
            b"[qformer]\n",
            b"[quantization]\n",
        ],
        1 << 16,
        manifest,
    ),
    (
        "uri",
        &[
            b"synthetic://?",
            b"file://",
            b"v4l2:///dev/video0?",
            b"&width=",
            b"&fps=",
            b"&format=nv12",
            b"%3F",
        ],
        4096,
        uri,
    ),
    (
        "specs",
        &[
            b"gpio:pin=",
            b"line:gpiochip0:",
            b"pin:",
            b",pulse=",
            b",hold",
            b",active-low",
            b"motion:threshold=",
            b"interval:",
            b"ms",
            b"s",
            b",debounce=",
        ],
        4096,
        specs,
    ),
    (
        "sinks",
        &[
            b"mqtt://",
            b"mqtts://",
            b"user:pa%40ss@",
            b"[::1]",
            b":1883",
            b"/prefix/",
            b"+",
            b"#",
            b"http://",
            b"https://",
        ],
        4096,
        sinks,
    ),
    (
        "table",
        &[b"\"scale\":", b"1e39", b"-0.0", b"null", b"{}", b"[]"],
        1 << 16,
        table,
    ),
    (
        "labels",
        &[b"a photo of a ", b"\xf0\x9f\x90\x88", b"'s", b"  "],
        4096,
        labels,
    ),
    (
        "image",
        &[b"IHDR", b"IDAT", b"\xff\xd8\xff", b"P6\n", b"P5\n65535\n"],
        1 << 18,
        image,
    ),
    (
        "mjpeg",
        &[
            b"\xff\xd8",
            b"\xff\xc0\x00\x11\x08",
            b"\xff\xc4",
            b"\xff\xdb\x00\x43\x00",
            b"\xff\xdd\x00\x04\x00\x01",
            b"\xff\xda",
            b"\xff\xd0",
            b"\xff\x00",
            b"\xff\xd9",
            b"\x22",
            b"\x11",
        ],
        1 << 16,
        mjpeg,
    ),
];

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut crashes = 0;
    for (name, dict, max, target) in TARGETS {
        if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        crashes += fuzz::run(name, dict, *max, *target).crashes.len();
    }
    if crashes > 0 {
        eprintln!(
            "fuzz: {crashes} crashing input(s); see above (saved under target/fuzz-crashes/)"
        );
        std::process::exit(1);
    }
}
