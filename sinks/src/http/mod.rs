//! The status server: a page, Prometheus metrics, a health check, the latest frame and an event
//! stream over HTTP, as a [`Sink`].
//!
//! [`HttpSink::start`] binds the address (loopback unless a bearer token is given), starts the
//! server's threads and returns the sink. On the inference thread [`Sink::frame`] only copies
//! into preallocated shared state ([`state::Shared`]) and bumps counters: no allocation, no lock
//! held longer than a copy, never a wait on a client. Pixels of the latest frame are copied at
//! most [`HttpConfig::snapshots_per_s`] times a second, and only while someone has asked for a
//! picture in the last 10 s; the JPEG is encoded on a server thread on request.
//!
//! | path | what |
//! | --- | --- |
//! | `/` | the status page (HTML, CSS and JS embedded in the binary) |
//! | `/api/status` | the page's data, JSON |
//! | `/metrics` | Prometheus / OpenMetrics text |
//! | `/healthz` | 200 while frames flow, 503 and the reason otherwise |
//! | `/snapshot.jpg` | the latest frame |
//! | `/events` | Server-Sent Events: the event sinks' JSON ([`crate::event::Event`]) of each frame that fired or released labels, and of the camera going offline and back |

pub mod health;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod snapshot;
pub mod state;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use edgefuse_runtime::pipeline::{FrameResult, RunSummary};

use crate::stats::EventStats;
use crate::{RunInfo, Sink, SinkError, SourceState};

/// Shortest accepted bearer token, bytes.
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest token file, bytes.
pub const MAX_TOKEN_FILE: u64 = 4096;

/// How the status server is set up.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where to listen (port 0: any free port; see [`HttpSink::addr`]).
    pub addr: SocketAddr,
    /// The bearer token every request must carry; required for a non-loopback address.
    pub token: Option<String>,
    /// Most pixel copies (and so JPEG encodings) of the latest frame per second.
    pub snapshots_per_s: f64,
    /// `/healthz` reports a stall after this long without a classified frame (`None` for a
    /// trigger that classifies rarely by design).
    pub stall_after: Option<Duration>,
    /// Largest frame the source delivers, bytes (the pixel buffer is allocated this size).
    pub max_frame_bytes: usize,
    /// Connection and request limits.
    pub limits: server::Limits,
    /// The event sink's live figures, when one runs: `/metrics` then shows the journal, the
    /// broker and the webhook.
    pub events: Option<Arc<EventStats>>,
}

impl HttpConfig {
    /// Serve on `addr` with the defaults: no token, 2 snapshots a second, a 10 s stall limit.
    pub fn new(addr: SocketAddr, max_frame_bytes: usize) -> Self {
        Self {
            addr,
            token: None,
            snapshots_per_s: 2.0,
            stall_after: Some(Duration::from_secs(10)),
            max_frame_bytes,
            limits: server::Limits::default(),
            events: None,
        }
    }
}

/// The status server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A non-loopback address without a token.
    #[error("--http {0}: not a loopback address, so anyone on the network could read the camera's frames; give --http-token-file FILE (a bearer token of at least {MIN_TOKEN_LEN} characters) or bind 127.0.0.1")]
    NeedsToken(SocketAddr),
    /// The address cannot be bound.
    #[error("--http {addr}: cannot listen: {source}; is another program using the port?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token file cannot be used.
    #[error("--http-token-file {path}: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A server thread could not start.
    #[error("cannot start the status server's threads: {0}")]
    Threads(#[source] std::io::Error),
}

/// Read a bearer token from `path`: one line, surrounding whitespace removed, at least
/// [`MIN_TOKEN_LEN`] visible ASCII characters.
pub fn read_token(path: &Path) -> Result<String, HttpError> {
    let err = |reason: String| HttpError::Token {
        path: path.to_path_buf(),
        reason,
    };
    let text = edgefuse_models::files::read_text_limited(path, MAX_TOKEN_FILE)
        .map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(err(format!(
            "the token is {} characters; use at least {MIN_TOKEN_LEN} (e.g. `head -c 24 /dev/urandom | base64 > FILE`)",
            token.len()
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err(
            "the token must be one line of visible ASCII characters (no spaces)".into(),
        ));
    }
    Ok(token.to_string())
}

/// The status server as a sink.
pub struct HttpSink {
    shared: Arc<state::Shared>,
    metrics: Arc<metrics::Metrics>,
    server: server::Server,
    app: Arc<routes::App>,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("addr", &self.server.addr())
            .finish()
    }
}

impl HttpSink {
    /// Bind and start serving. Refuses a non-loopback address without a token.
    pub fn start(cfg: HttpConfig, info: &RunInfo) -> Result<Self, HttpError> {
        if !cfg.addr.ip().is_loopback() && cfg.token.is_none() {
            return Err(HttpError::NeedsToken(cfg.addr));
        }
        let listener = TcpListener::bind(cfg.addr).map_err(|source| HttpError::Bind {
            addr: cfg.addr,
            source,
        })?;
        let shared = Arc::new(state::Shared::new(
            cfg.max_frame_bytes,
            cfg.snapshots_per_s,
            cfg.stall_after,
        ));
        let metrics = Arc::new(metrics::Metrics::new(info, cfg.events.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let app = Arc::new(routes::App::new(
            shared.clone(),
            metrics.clone(),
            info.clone(),
            cfg.token,
            stop.clone(),
        ));
        let server = server::Server::start(listener, app.clone(), cfg.limits, stop)
            .map_err(HttpError::Threads)?;
        log::info!("http: serving on http://{}/", server.addr());
        Ok(Self {
            shared,
            metrics,
            server,
            app,
        })
    }

    /// The bound address (the port chosen when port 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The routes, for tests and for embedding.
    pub fn app(&self) -> &Arc<routes::App> {
        &self.app
    }
}

impl Sink for HttpSink {
    fn name(&self) -> &'static str {
        "http"
    }

    fn frame(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError> {
        let before = self.shared.status().skipped;
        self.shared.publish(r, &self.app.info.source);
        let skipped = self.shared.status().skipped - before;
        self.metrics.frame(r, skipped);
        Ok(())
    }

    fn source(&mut self, state: SourceState, reason: &str) -> Result<(), SinkError> {
        let offline = state == SourceState::Offline;
        self.shared.camera(offline, reason);
        self.metrics.source_online(!offline);
        Ok(())
    }

    fn finish(&mut self, _summary: &RunSummary) -> Result<(), SinkError> {
        self.shared.status().health.finish();
        self.server.stop();
        Ok(())
    }
}
