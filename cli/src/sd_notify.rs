//! systemd's notify protocol (`Type=notify`, `WatchdogSec=`), without a crate: datagrams of
//! `KEY=value` lines to the socket in `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). `READY=1` once the first frame is classified (or passed over by the trigger: a
//! GPIO trigger not pressed yet is a healthy start), `WATCHDOG=1` from the inference loop every
//! half `$WATCHDOG_USEC`, `STATUS=…` lines for `systemctl status`, `STOPPING=1`.
//!
//! Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing. A ping sends preformatted
//! bytes on a socket connected once: nothing is allocated per frame.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// A connection to the service manager's notify socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    /// Ping period (half the watchdog timeout); `None` when the watchdog is off.
    watchdog: Option<Duration>,
    next_ping: Instant,
    ready: bool,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (ignored when `$WATCHDOG_PID` names another
    /// process). `None` outside systemd, or when the socket cannot be reached (logged).
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let socket = match connect(&path) {
            Ok(s) => s,
            Err(e) => {
                log::warn!(
                    "NOTIFY_SOCKET={}: cannot connect ({e}); not reporting to systemd",
                    path.to_string_lossy()
                );
                return None;
            }
        };
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(|u| Duration::from_micros(u / 2));
        if let Some(p) = watchdog {
            log::info!("systemd watchdog: pinging every {p:?}");
        }
        Some(Self {
            socket,
            watchdog,
            next_ping: Instant::now(),
            ready: false,
        })
    }

    fn send(&self, msg: &[u8]) {
        if let Err(e) = self.socket.send(msg) {
            log::debug!("sd_notify: {e}");
        }
    }

    /// `READY=1` (once) with a status line.
    pub fn ready(&mut self, status: &str) {
        if !self.ready {
            self.ready = true;
            self.send(format!("READY=1\nSTATUS={status}").as_bytes());
        }
    }

    /// Whether [`Notifier::ready`] was sent.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// A `STATUS=` line (`systemctl status` shows it).
    pub fn status(&self, status: &str) {
        self.send(format!("STATUS={status}").as_bytes());
    }

    /// `WATCHDOG=1` when half the watchdog period has passed since the last one. Cheap enough
    /// for every frame: one clock read, and a send without allocating when due.
    pub fn watchdog(&mut self) {
        let Some(period) = self.watchdog else {
            return;
        };
        let now = Instant::now();
        if now >= self.next_ping {
            self.next_ping = now + period;
            self.send(b"WATCHDOG=1");
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(b"STOPPING=1");
    }
}

/// Connect to `path`: a file system socket, or `@name` for the abstract namespace.
fn connect(path: &std::ffi::OsStr) -> std::io::Result<UnixDatagram> {
    use std::os::unix::ffi::OsStrExt as _;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.connect_addr(&addr)?;
        }
        None => socket.connect(path)?,
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_and_an_abstract_name_both_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut n = Notifier {
            socket: connect(path.as_os_str()).unwrap(),
            watchdog: Some(Duration::from_secs(3600)),
            next_ping: Instant::now(),
            ready: false,
        };
        n.ready("classifying");
        n.ready("again");
        n.watchdog();
        n.watchdog();
        let mut buf = [0u8; 256];
        let got: Vec<String> = (0..2)
            .map(|_| {
                let k = server.recv(&mut buf).unwrap();
                String::from_utf8_lossy(&buf[..k]).into_owned()
            })
            .collect();
        assert_eq!(got, ["READY=1\nSTATUS=classifying", "WATCHDOG=1"]);
        server.set_nonblocking(true).unwrap();
        assert!(
            server.recv(&mut buf).is_err(),
            "one READY, one ping per period"
        );

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("edgefuse-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let c = connect(std::ffi::OsStr::new(&format!("@{name}"))).unwrap();
        c.send(b"STOPPING=1").unwrap();
        let k = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"STOPPING=1");
    }
}
