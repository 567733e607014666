//! The endpoints: `/` (the page), `/api/status` (what the page polls), `/metrics`, `/healthz`,
//! `/snapshot.jpg`, `/events` (Server-Sent Events). Everything reads the shared state; nothing
//! changes the run.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use edgefuse_board::linux::Health;
use edgefuse_runtime::pipeline::STAGES;

use super::metrics::{rss_bytes, Metrics};
use super::server::{write_head, Handler, Request, Response};
use super::snapshot;
use super::state::{Shared, Status};
use crate::event::{default_device_id, EventContext, Fact};
use crate::RunInfo;

/// Concurrent `/events` streams (each holds a worker); more get 503.
pub const MAX_STREAMS: usize = 2;
/// How often an `/events` stream looks for new events.
const STREAM_POLL: Duration = Duration::from_millis(200);
/// A comment line keeps idle streams (and proxies) alive this often.
const KEEPALIVE: Duration = Duration::from_secs(15);

const PAGE_HTML: &str = include_str!("page/index.html");
const PAGE_CSS: &str = include_str!("page/page.css");
const PAGE_JS: &str = include_str!("page/page.js");

/// The application behind the server.
pub struct App {
    pub(crate) shared: Arc<Shared>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) info: RunInfo,
    pub(crate) token: Option<String>,
    pub(crate) stop: Arc<AtomicBool>,
    ctx: EventContext,
    page: String,
    streams: AtomicUsize,
    /// The last JPEG and the frame it shows.
    jpeg: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

impl App {
    pub(crate) fn new(
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
        info: RunInfo,
        token: Option<String>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let page = PAGE_HTML
            .replace("/*CSS*/", PAGE_CSS)
            .replace("/*JS*/", PAGE_JS);
        let ctx = EventContext {
            labels: info.labels.clone(),
            device: default_device_id(),
            model: info.model.clone(),
            uri: info.source.clone(),
        };
        Self {
            shared,
            metrics,
            ctx,
            info,
            token,
            stop,
            page,
            streams: AtomicUsize::new(0),
            jpeg: Mutex::new(None),
        }
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .or_else(|| req.param("access_token"))
            .unwrap_or("");
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }

    fn label(&self, i: u16) -> &str {
        self.info.labels.get(i as usize).map_or("?", String::as_str)
    }

    /// Ask for pixels as `/snapshot.jpg` does (frames are then copied for the next 10 s).
    pub fn shared_want_pixels(&self) {
        self.shared.want_pixels();
    }

    /// `/api/status` as JSON.
    pub fn status_json(&self) -> Value {
        let s: Status = self.shared.status().clone();
        let now = Instant::now();
        let health = s.health.status(now);
        let mut p50 = Vec::with_capacity(STAGES.len());
        let mut p99 = Vec::with_capacity(STAGES.len());
        let mut column: Vec<f32> = Vec::with_capacity(s.latency_ms.len());
        for i in 0..STAGES.len() {
            column.clear();
            column.extend(s.history().map(|(_, row)| row[i]));
            column.sort_by(f32::total_cmp);
            p50.push(quantile(&column, 0.5));
            p99.push(quantile(&column, 0.99));
        }
        let history: Vec<_> = s.history().collect();
        let fps = match (history.first(), history.last()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                (history.len() - 1) as f64 * 1000.0 / (b.0 - a.0) as f64
            }
            _ => 0.0,
        };
        let e2e = STAGES.len() - 1;
        json!({
            "version": self.info.version,
            "model": self.info.model,
            "precision": self.info.precision,
            "backend": self.info.backend,
            "backend_fallbacks": s.fallbacks,
            "source": self.info.source,
            "roi": self.info.roi,
            "uptime_s": self.shared.started.elapsed().as_secs_f64(),
            "health": {"ok": health.is_ok(), "reason": health.to_string()},
            "frames": s.frames,
            "skipped": s.skipped,
            "events": s.events,
            "fps": fps,
            "frame": {"seq": s.seq, "source": s.source},
            "top": s.top[..s.top_len].iter().map(|(l, p)| json!({"label": self.label(*l), "score": p})).collect::<Vec<_>>(),
            "heads": {"clip": self.label(s.heads.0), "qformer": s.heads.1.map(|q| self.label(q))},
            "latency": {
                "stages": STAGES,
                "p50_ms": p50,
                "p99_ms": p99,
                "window": history.len(),
                "recent_end_to_end_ms": history.iter().map(|(_, r)| r[e2e]).collect::<Vec<_>>(),
                "recent_encoder_ms": history.iter().map(|(_, r)| r[2]).collect::<Vec<_>>(),
            },
            "recent_events": s.event_history().map(|(i, e)| self.event_json(i, e)).collect::<Vec<_>>(),
            "board": board_health(),
        })
    }

    /// One event as JSON: the line `/events` streams, the event sinks' [`crate::event::Event`]
    /// (as published over MQTT, without a snapshot path; `id` counts this run's events).
    pub fn event_json(&self, id: u64, fact: &Fact) -> Value {
        serde_json::to_value(fact.event(id, &self.ctx, None)).unwrap_or(Value::Null)
    }

    fn snapshot(&self) -> Response {
        self.shared.want_pixels();
        // The first request after a quiet spell waits (briefly) for the next copied frame.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut rgb = Vec::new();
        loop {
            let seq = self.shared.pixels().seq;
            if let Some(seq) = seq {
                if let Some((cached, jpeg)) = &*self.jpeg.lock().unwrap_or_else(|p| p.into_inner())
                {
                    if *cached == seq {
                        return jpeg_response(jpeg);
                    }
                }
                // Copy out under the lock; convert and encode without it.
                let (w, h, seq) = {
                    let p = self.shared.pixels();
                    let Some(()) = snapshot::to_rgb(&p.data, p.width, p.height, p.format, &mut rgb)
                    else {
                        return Response::text(
                            500,
                            "the latest frame is shorter than its geometry\n",
                        );
                    };
                    (p.width, p.height, p.seq.unwrap_or(seq))
                };
                return match snapshot::jpeg(&rgb, w, h) {
                    Ok(j) => {
                        let j = Arc::new(j);
                        *self.jpeg.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((seq, j.clone()));
                        jpeg_response(&j)
                    }
                    Err(e) => Response::text(500, format!("cannot encode the frame: {e}\n")),
                };
            }
            if Instant::now() > deadline || self.stop.load(Ordering::Relaxed) {
                return Response::text(503, "no frame yet\n");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stream events as they come (from the next one on), until the client goes or the run ends.
    fn events(&self, stream: &mut TcpStream) -> Option<Response> {
        if self.streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
            self.streams.fetch_sub(1, Ordering::SeqCst);
            return Some(Response::text(
                503,
                format!("at most {MAX_STREAMS} event streams at once\n"),
            ));
        }
        let _ = self.stream_events(stream);
        self.streams.fetch_sub(1, Ordering::SeqCst);
        None
    }

    fn stream_events(&self, w: &mut TcpStream) -> std::io::Result<()> {
        write_head(w, 200, "text/event-stream", None, "")?;
        w.write_all(b": edgefuse events\n\n")?;
        w.flush()?;
        let mut next = self.shared.status().events;
        let mut last_write = Instant::now();
        let mut line = Vec::with_capacity(512);
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(STREAM_POLL);
            let s = self.shared.status().clone();
            line.clear();
            for (i, e) in s.event_history() {
                if i >= next {
                    line.extend_from_slice(b"data: ");
                    serde_json::to_writer(&mut line, &self.event_json(i, e))?;
                    line.extend_from_slice(b"\n\n");
                }
            }
            if s.events > next + super::state::EVENT_HISTORY as u64 {
                // A client slower than the ring lost some: say how many.
                let lost = s.events - next - super::state::EVENT_HISTORY as u64;
                line.splice(
                    0..0,
                    format!(": {lost} events lost (client too slow)\n\n").into_bytes(),
                );
            }
            next = s.events;
            if line.is_empty() && last_write.elapsed() >= KEEPALIVE {
                line.extend_from_slice(b": keep-alive\n\n");
            }
            if !line.is_empty() {
                w.write_all(&line)?;
                w.flush()?;
                last_write = Instant::now();
            }
        }
        Ok(())
    }
}

fn jpeg_response(j: &[u8]) -> Response {
    Response {
        status: 200,
        content_type: "image/jpeg",
        body: j.to_vec(),
        extra: "",
    }
}

/// The `q` quantile of sorted values (nearest rank); 0 when empty.
fn quantile(sorted: &[f32], q: f64) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Compare in time independent of where the first difference is (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// The SoC's thermal zones (a Jetson's CPU/GPU/SoC sensors), which of them throttle, and the
/// nvpmodel power mode, read now.
fn board_health() -> Value {
    let h = Health::read(std::path::Path::new("/"));
    json!({
        "zones": h.zones.iter().map(|z| json!({
            "name": z.name,
            "celsius": z.celsius,
            "throttle_at_celsius": z.throttle_at,
        })).collect::<Vec<_>>(),
        "throttling": h.throttling().map(|z| z.name.as_str()).collect::<Vec<_>>(),
        "power_mode": h.power_mode,
    })
}

impl Handler for App {
    fn handle(&self, req: &Request, stream: &mut TcpStream) -> Option<Response> {
        if !self.authorized(req) {
            return Some(Response {
                extra: "WWW-Authenticate: Bearer realm=\"edgefuse\"\r\n",
                ..Response::text(401, "a bearer token is required (Authorization: Bearer <token>, or ?access_token=<token>)\n")
            });
        }
        Some(match req.path.as_str() {
            "/" | "/index.html" => Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: self.page.clone().into_bytes(),
                extra: "Content-Security-Policy: default-src 'none'; img-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\r\n",
            },
            "/api/status" => Response {
                status: 200,
                content_type: "application/json",
                body: self.status_json().to_string().into_bytes(),
                extra: "",
            },
            "/metrics" => Response {
                status: 200,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: self
                    .metrics
                    .encode(
                        self.shared.started.elapsed().as_secs_f64(),
                        rss_bytes(),
                        self.shared.oversized.load(Ordering::Relaxed),
                        &Health::read(std::path::Path::new("/")),
                    )
                    .into_bytes(),
                extra: "",
            },
            "/healthz" => {
                let h = self.shared.status().health.status(Instant::now());
                Response::text(if h.is_ok() { 200 } else { 503 }, format!("{h}\n"))
            }
            "/snapshot.jpg" => self.snapshot(),
            "/events" => return self.events(stream),
            _ => Response::text(404, "not found; see / for the page\n"),
        })
    }

    fn rejected(&self) {
        self.metrics.rejected();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokeN"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
        assert!(!constant_time_eq(b"", b"x"));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
    }
}
