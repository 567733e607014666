//! Webhook: each event from the journal is POSTed as JSON to a URL, in order, one at a time;
//! a record leaves the journal (for this reader) only on a 2xx answer. Failures (refused,
//! timeout, any other status) are retried with exponential backoff (0.2 s doubling to 30 s)
//! for as long as the run lasts; what is left stays journaled for the next start.
//!
//! With a secret, every request carries `X-Edgefuse-Signature: sha256=<hex HMAC-SHA256 of the
//! body>`; every request carries `X-Edgefuse-Event-Id` (the stable event id: a receiver drops
//! a repeat).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::journal::Journal;
use crate::stats::EventStats;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where and how to POST.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The URL (`http://` or `https://`).
    pub url: String,
    /// The HMAC key, when requests are signed.
    pub secret: Option<Vec<u8>>,
    /// Timeout of one request.
    pub timeout: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("signed", &self.secret.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A webhook setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigError {
    /// The URL is not http(s).
    #[error("--webhook `{0}`: expected http://host[:port]/path or https://…")]
    Url(String),
    /// The secret file cannot be read or is empty.
    #[error("--webhook-secret-file {path}: {reason}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl WebhookConfig {
    /// Check the URL and read the secret (trailing newline removed) from `secret_file`.
    pub fn new(
        url: &str,
        secret_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, WebhookConfigError> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| WebhookConfigError::Url(url.to_string()))?;
        if rest.is_empty() || rest.starts_with('/') || url.chars().any(|c| c.is_whitespace()) {
            return Err(WebhookConfigError::Url(url.to_string()));
        }
        let secret = match secret_file {
            None => None,
            Some(p) => {
                let bad = |reason: String| WebhookConfigError::Secret {
                    path: p.to_path_buf(),
                    reason,
                };
                let mut s = edgefuse_models::files::read_limited(p, 64 << 10)
                    .map_err(|e| bad(e.to_string()))?;
                while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    s.pop();
                }
                if s.is_empty() {
                    return Err(bad("is empty; put the shared secret in it".into()));
                }
                Some(s)
            }
        };
        Ok(Self {
            url: url.to_string(),
            secret,
            timeout,
        })
    }
}

/// `sha256=<hex>` of `body` under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256=");
    for b in tag {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Counters of the webhook publisher.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookStats {
    /// Events delivered (2xx).
    pub delivered: u64,
    /// Attempts that failed (and were retried).
    pub failures: u64,
}

/// The webhook publisher (one thread).
pub struct Webhook {
    cfg: WebhookConfig,
    journal: Arc<Mutex<Journal>>,
    reader: usize,
    wake: (Mutex<bool>, Condvar),
    stop: AtomicBool,
    deadline: Mutex<Option<Instant>>,
    stats: Mutex<WebhookStats>,
    live: Arc<EventStats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Webhook {
    /// Start the thread; it reads `journal` as reader `reader` and keeps `live`'s delivered
    /// count and failing flag.
    pub fn start(
        cfg: WebhookConfig,
        journal: Arc<Mutex<Journal>>,
        reader: usize,
        live: Arc<EventStats>,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let w = Arc::new(Webhook {
            cfg,
            journal,
            reader,
            wake: (Mutex::new(false), Condvar::new()),
            stop: AtomicBool::new(false),
            deadline: Mutex::new(None),
            stats: Mutex::new(WebhookStats::default()),
            live,
        });
        let me = w.clone();
        let t = std::thread::spawn(move || me.run());
        (w, t)
    }

    /// New records are journaled.
    pub fn wake(&self) {
        *lock(&self.wake.0) = true;
        self.wake.1.notify_one();
    }

    fn sleep(&self, d: Duration) {
        let g = lock(&self.wake.0);
        let (mut g, _) = self
            .wake
            .1
            .wait_timeout_while(g, d, |woken| !*woken && !self.stop.load(Ordering::Relaxed))
            .unwrap_or_else(|p| p.into_inner());
        *g = false;
    }

    fn past_deadline(&self) -> bool {
        lock(&self.deadline).is_some_and(|d| Instant::now() >= d)
    }

    fn run(self: Arc<Self>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.cfg.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let mut backoff = Duration::from_millis(200);
        let mut failing = false;
        loop {
            let next = {
                let j = lock(&self.journal);
                let r = j.after(j.acked(self.reader)).next().cloned();
                r
            };
            let Some(rec) = next else {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                self.sleep(Duration::from_secs(1));
                continue;
            };
            if self.past_deadline() {
                return;
            }
            let mut req = agent
                .post(&self.cfg.url)
                .header("Content-Type", "application/json")
                .header("X-Edgefuse-Event-Id", rec.id.to_string());
            if let Some(key) = &self.cfg.secret {
                req = req.header("X-Edgefuse-Signature", signature(key, &rec.payload));
            }
            let outcome = match req.send(&rec.payload[..]) {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => Err(format!("HTTP {}", resp.status())),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => {
                    lock(&self.journal).ack(self.reader, rec.id);
                    lock(&self.stats).delivered += 1;
                    EventStats::add(&self.live.webhook_delivered, 1);
                    EventStats::set(&self.live.webhook_failing, 0);
                    if failing {
                        log::warn!("webhook {}: delivering again", self.cfg.url);
                    }
                    failing = false;
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    lock(&self.stats).failures += 1;
                    EventStats::set(&self.live.webhook_failing, 1);
                    if !failing {
                        log::warn!(
                            "webhook {}: event {} not delivered ({e}); retrying with backoff, events stay journaled (said once per outage)",
                            self.cfg.url,
                            rec.id
                        );
                    }
                    failing = true;
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && !self.past_deadline() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Stop once everything journaled is delivered or `grace` has passed; join the thread.
    pub fn finish(&self, thread: JoinHandle<()>, grace: Duration) -> WebhookStats {
        *lock(&self.deadline) = Some(Instant::now() + grace);
        self.stop.store(true, Ordering::Relaxed);
        self.wake();
        let _ = thread.join();
        lock(&self.journal).save_cursors();
        *lock(&self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bad_urls_and_secrets_are_named() {
        for bad in ["ftp://x/", "http://", "https:///path", "http://a b/"] {
            let e = WebhookConfig::new(bad, None, Duration::from_secs(1))
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad), "{e}");
        }
        let e = WebhookConfig::new(
            "http://127.0.0.1:9/x",
            Some(Path::new("/nonexistent/secret")),
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/secret"), "{e}");
    }
}
