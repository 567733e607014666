//! The URIs of the GStreamer sources, taken apart without GStreamer: `rtsp://` (credentials,
//! transport, latency) and `csi://` (the Argus pipeline); passwords are hidden by [`redact`] in any URI
//! shown in logs, errors and descriptions.

use super::super::{percent_decode, redact, CaptureError, Uri};

/// How RTSP media travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// RTP interleaved in the RTSP TCP connection: works through NAT and firewalls, no loss.
    Tcp,
    /// RTP over UDP: lower latency on a clean LAN; lost packets corrupt frames.
    Udp,
    /// rtspsrc's own order: UDP multicast, UDP, then TCP after a UDP timeout.
    Auto,
}

impl Transport {
    /// The value of rtspsrc's `protocols` property (GstRTSPLowerTrans flags).
    pub fn protocols(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Auto => "udp-mcast+udp+tcp",
        }
    }
}

/// Default of `latency=` (rtspsrc's jitter buffer, milliseconds): short, for live inference.
pub const DEFAULT_LATENCY_MS: u32 = 200;
/// Largest accepted `latency=`.
const MAX_LATENCY_MS: u32 = 60_000;

/// An `rtsp://[user[:password]@]host[:port]/path?transport=tcp&latency=200&…` URI, taken apart.
#[derive(Clone, PartialEq, Eq)]
pub struct RtspTarget {
    /// The URI with its password replaced by `***`: the only form that is shown.
    pub shown: String,
    /// What rtspsrc connects to: scheme, host, port, path and the query parameters that are
    /// not ours (a camera's own, e.g. `?channel=1&subtype=0`), without credentials.
    pub location: String,
    /// Percent-decoded user name.
    pub user: Option<String>,
    /// Percent-decoded password.
    pub password: Option<String>,
    /// `transport=` (default TCP).
    pub transport: Transport,
    /// `latency=` in milliseconds.
    pub latency_ms: u32,
}

impl std::fmt::Debug for RtspTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtspTarget")
            .field("shown", &self.shown)
            .field("location", &self.location)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("transport", &self.transport)
            .field("latency_ms", &self.latency_ms)
            .finish()
    }
}

/// Our query options; any other parameter belongs to the camera's URL.
const RTSP_OPTIONS: [&str; 2] = ["transport", "latency"];

impl RtspTarget {
    /// Take `raw` apart. The credentials are split off the raw text at the last `@` of the
    /// authority before decoding, so an encoded `@` (`%40`) or `:` (`%3A`) in a password is
    /// kept. Every error shows the URI with its password hidden.
    pub fn parse(raw: &str) -> Result<Self, CaptureError> {
        let shown = redact(raw);
        let unknown = || CaptureError::UnknownScheme { uri: shown.clone() };
        let (scheme, rest) = raw.split_once("://").ok_or_else(unknown)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "rtsp" && scheme != "rtsps" {
            return Err(unknown());
        }
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let bad = |key: &str, value: &str, expected: &str| CaptureError::BadOption {
            uri: shown.clone(),
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        };
        if hostport.is_empty() || hostport.starts_with(':') {
            return Err(bad(
                "host",
                "",
                "the URI names no host: use rtsp://[user:password@]host[:port]/path",
            ));
        }
        let decode = |what: &str, s: &str| {
            percent_decode(s).ok_or_else(|| {
                bad(
                    what,
                    if what == "password" { "***" } else { s },
                    "its percent-encoding (%XX) decodes to bytes that are not UTF-8",
                )
            })
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((name, pw)) => (Some(decode("user", name)?), Some(decode("password", pw)?)),
                None => (Some(decode("user", u)?), None),
            },
        };
        // Our options, checked on the shown form (so their errors hide the password too).
        let ours = Uri::parse(&shown)?;
        let transport = match ours.options.iter().rev().find(|(k, _)| k == "transport") {
            None => Transport::Tcp,
            Some((k, v)) => match v.to_ascii_lowercase().as_str() {
                "tcp" => Transport::Tcp,
                "udp" => Transport::Udp,
                "auto" => Transport::Auto,
                _ => return Err(ours.bad(k, v, "expected tcp, udp or auto")),
            },
        };
        let latency_ms: u32 = ours.get(
            "latency",
            DEFAULT_LATENCY_MS,
            "expected the jitter buffer's length in milliseconds, e.g. latency=200",
        )?;
        if latency_ms > MAX_LATENCY_MS {
            return Err(ours.bad(
                "latency",
                &latency_ms.to_string(),
                &format!("expected at most {MAX_LATENCY_MS} milliseconds"),
            ));
        }
        let theirs: Vec<&str> = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .filter(|kv| {
                let key = kv.split_once('=').map_or(*kv, |(k, _)| k);
                let key = percent_decode(key).unwrap_or_default().to_ascii_lowercase();
                !RTSP_OPTIONS.contains(&key.as_str())
            })
            .collect();
        let mut location = format!("{scheme}://{hostport}{path}");
        if !theirs.is_empty() {
            location.push('?');
            location.push_str(&theirs.join("&"));
        }
        Ok(Self {
            shown,
            location,
            user,
            password,
            transport,
            latency_ms,
        })
    }
}

/// The sensor and output of a `csi://N?width=…&height=…&fps=…&flip=…` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiTarget {
    /// Argus sensor index (`csi://0`, `csi://1`, …).
    pub sensor: u32,
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// Frames per second asked of the sensor.
    pub fps: u32,
    /// nvvidconv's `flip-method` (0: none, 2: rotate 180°, …).
    pub flip: u32,
}

impl CsiTarget {
    /// Read a `csi://` URI (defaults: sensor 0, 1920×1080 at 30 fps, no flip).
    pub fn parse(uri: &Uri) -> Result<Self, CaptureError> {
        uri.check_known(&["width", "height", "fps", "flip"])?;
        let sensor = if uri.path.is_empty() {
            0
        } else {
            uri.path.trim_end_matches('/').parse().map_err(|_| {
                uri.bad(
                    "sensor",
                    &uri.path,
                    "expected the Argus sensor index after csi://, e.g. csi://0",
                )
            })?
        };
        let even = |key: &str, default: u32| -> Result<u32, CaptureError> {
            let v: u32 = uri.get(key, default, "expected a size in pixels")?;
            if v == 0 || v % 2 == 1 || v > 8192 {
                return Err(uri.bad(key, &v.to_string(), "expected an even size from 2 to 8192"));
            }
            Ok(v)
        };
        let width = even("width", 1920)?;
        let height = even("height", 1080)?;
        let fps: u32 = uri.get("fps", 30, "expected whole frames per second, e.g. fps=30")?;
        if !(1..=240).contains(&fps) {
            return Err(uri.bad(
                "fps",
                &fps.to_string(),
                "expected 1 to 240 frames per second",
            ));
        }
        let flip: u32 = uri.get("flip", 0, "expected nvvidconv's flip-method, 0 to 7")?;
        if flip > 7 {
            return Err(uri.bad(
                "flip",
                &flip.to_string(),
                "expected nvvidconv's flip-method, 0 to 7",
            ));
        }
        Ok(Self {
            sensor,
            width,
            height,
            fps,
            flip,
        })
    }

    /// The pipeline: Argus through the ISP into NVMM memory, nvvidconv to NV12 in system
    /// memory, the appsink named `sink`.
    pub fn pipeline(&self) -> String {
        format!(
            "nvarguscamerasrc sensor-id={} ! video/x-raw(memory:NVMM),width={},height={},framerate={}/1,format=NV12 ! nvvidconv flip-method={} ! video/x-raw,format=NV12 ! appsink name=sink",
            self.sensor, self.width, self.height, self.fps, self.flip
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtsp_credentials_are_decoded_and_never_shown() {
        let t = RtspTarget::parse(
            "rtsp://admin:pa%40ss%3Aw@cam.local:8554/live/main?transport=udp&latency=50",
        )
        .unwrap();
        assert_eq!(t.user.as_deref(), Some("admin"));
        assert_eq!(t.password.as_deref(), Some("pa@ss:w"));
        assert_eq!(t.location, "rtsp://cam.local:8554/live/main");
        assert_eq!(t.transport, Transport::Udp);
        assert_eq!(t.latency_ms, 50);
        assert_eq!(
            t.shown,
            "rtsp://admin:***@cam.local:8554/live/main?transport=udp&latency=50"
        );
        assert!(!format!("{t:?}").contains("pa@ss"), "{t:?}");
        // A raw `@` in the password: the last `@` of the authority ends the credentials.
        let t = RtspTarget::parse("rtsp://u:p@ss@10.0.0.2/s").unwrap();
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert_eq!(t.location, "rtsp://10.0.0.2/s");
        assert_eq!(t.shown, "rtsp://u:***@10.0.0.2/s");
    }

    #[test]
    fn rtsp_defaults_and_a_cameras_own_query_parameters() {
        let t = RtspTarget::parse(
            "RTSP://10.0.0.9/cam/realmonitor?channel=1&latency=0&subtype=0&Transport=auto",
        )
        .unwrap();
        assert_eq!(t.user, None);
        assert_eq!(t.password, None);
        assert_eq!(
            t.location,
            "rtsp://10.0.0.9/cam/realmonitor?channel=1&subtype=0"
        );
        assert_eq!(t.transport, Transport::Auto);
        assert_eq!(t.latency_ms, 0);
        let t = RtspTarget::parse("rtsp://only-user@host").unwrap();
        assert_eq!(t.user.as_deref(), Some("only-user"));
        assert_eq!(t.transport, Transport::Tcp);
        assert_eq!(t.latency_ms, DEFAULT_LATENCY_MS);
        assert_eq!(t.location, "rtsp://host");
    }

    #[test]
    fn rtsp_errors_name_the_option_and_hide_the_password() {
        for (uri, want) in [
            ("rtsp://u:secret@h/p?transport=quic", "transport=quic"),
            ("rtsp://u:secret@h/p?latency=-1", "latency=-1"),
            ("rtsp://u:secret@h/p?latency=99999", "at most 60000"),
            ("rtsp://u:secret@/p", "no host"),
            ("rtsp://u:secret@:554/p", "no host"),
            ("rtsp://u:%ff@h/p", "UTF-8"),
        ] {
            let e = RtspTarget::parse(uri).unwrap_err().to_string();
            assert!(e.contains(want), "{uri}: {e}");
            assert!(!e.contains("secret") && !e.contains("%ff"), "{uri}: {e}");
        }
    }

    #[test]
    fn csi_uris_become_the_argus_pipeline() {
        let u = Uri::parse("csi://1?width=1280&height=720&fps=60&flip=2").unwrap();
        let t = CsiTarget::parse(&u).unwrap();
        assert_eq!(
            t,
            CsiTarget {
                sensor: 1,
                width: 1280,
                height: 720,
                fps: 60,
                flip: 2
            }
        );
        let p = t.pipeline();
        assert!(p.starts_with("nvarguscamerasrc sensor-id=1 ! "), "{p}");
        assert!(p.contains("width=1280,height=720,framerate=60/1"), "{p}");
        assert!(
            p.ends_with("video/x-raw,format=NV12 ! appsink name=sink"),
            "{p}"
        );
        let d = CsiTarget::parse(&Uri::parse("csi://").unwrap()).unwrap();
        assert_eq!((d.sensor, d.width, d.height, d.fps), (0, 1920, 1080, 30));
        for (uri, want) in [
            ("csi://x", "sensor index"),
            ("csi://0?width=641", "even size"),
            ("csi://0?fps=0", "1 to 240"),
            ("csi://0?flip=9", "flip-method"),
            ("csi://0?exposure=3", "unknown option"),
        ] {
            let e = CsiTarget::parse(&Uri::parse(uri).unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{uri}: {e}");
        }
    }
}
