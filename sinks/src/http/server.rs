//! A small blocking HTTP/1.1 server for GET and HEAD: one accepting thread, a fixed pool of
//! workers fed through a bounded queue (a connection that finds the queue full is answered 503
//! and closed at once), a size limit on the request head, read and write timeouts, one request
//! per connection. No request body is read and no endpoint changes anything.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Server limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Worker threads (each serves one connection at a time).
    pub workers: usize,
    /// Accepted connections waiting for a worker; more are answered 503 and closed.
    pub queue: usize,
    /// Largest request head (request line and headers), bytes.
    pub max_head: usize,
    /// Time allowed to send the whole request head, and for each write of the answer.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            workers: 4,
            queue: 8,
            max_head: 8 << 10,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A parsed request: what the routes need.
#[derive(Debug)]
pub struct Request {
    /// `GET` or `HEAD`.
    pub head_only: bool,
    /// The path, without the query.
    pub path: String,
    /// The query string (after `?`), possibly empty.
    pub query: String,
    /// The `Authorization` header's value.
    pub authorization: Option<String>,
}

impl Request {
    /// The value of query parameter `key` (not percent-decoded: tokens are plain).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// An answer.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content-Type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
    /// Extra header lines, each ending in CRLF.
    pub extra: &'static str,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
            extra: "",
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Write a response head (`content_length` = None: streamed, no length).
pub fn write_head(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    content_length: Option<usize>,
    extra: &str,
) -> std::io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n{extra}",
        reason(status)
    )?;
    if let Some(n) = content_length {
        write!(w, "Content-Length: {n}\r\n")?;
    }
    w.write_all(b"\r\n")
}

/// Write a whole response.
pub fn write_response(w: &mut impl Write, r: &Response, head_only: bool) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(256);
    write_head(
        &mut head,
        r.status,
        r.content_type,
        Some(r.body.len()),
        r.extra,
    )?;
    w.write_all(&head)?;
    if !head_only {
        w.write_all(&r.body)?;
    }
    w.flush()
}

/// Why a request head could not be read.
#[derive(Debug)]
pub enum HeadError {
    /// The peer closed or the socket failed.
    Io(std::io::Error),
    /// Not sent within the time allowed.
    Timeout,
    /// Longer than the limit.
    TooLarge,
    /// Not HTTP.
    Malformed,
}

/// Read and parse one request head within `limits`.
pub fn read_request(s: &mut TcpStream, limits: &Limits) -> Result<Request, HeadError> {
    let deadline = Instant::now() + limits.timeout;
    let mut buf = vec![0u8; limits.max_head];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        s.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        if len == buf.len() {
            return Err(HeadError::TooLarge);
        }
        let n = match s.read(&mut buf[len..]) {
            Ok(0) => {
                return Err(HeadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::Timeout)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HeadError::Io(e)),
        };
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("");
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let authorization = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::to_string);
                return Ok(Request {
                    head_only: method == "HEAD",
                    path: if method == "GET" || method == "HEAD" {
                        path.to_string()
                    } else {
                        // Marks a method we do not serve; answered 405 by the caller.
                        String::new()
                    },
                    query: query.to_string(),
                    authorization,
                });
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

/// What serves a request. Streaming handlers (SSE) write to the stream themselves and return
/// `None`.
pub trait Handler: Send + Sync + 'static {
    /// Answer `req` on `stream`.
    fn handle(&self, req: &Request, stream: &mut TcpStream) -> Option<Response>;
    /// A connection was refused because the server was full.
    fn rejected(&self);
}

/// A running server; [`Server::stop`] (or drop) ends its threads.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Serve `handler` on `listener` within `limits`; `stop` is also seen by streaming handlers.
    pub fn start(
        listener: TcpListener,
        handler: Arc<dyn Handler>,
        limits: Limits,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, rx) = sync_channel::<TcpStream>(limits.queue);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(limits.workers + 1);
        for i in 0..limits.workers {
            let rx: Arc<Mutex<Receiver<TcpStream>>> = rx.clone();
            let handler = handler.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(mut s) = next else { break };
                        serve(&mut s, handler.as_ref(), &limits);
                    })?,
            );
        }
        let accept_stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name("http-accept".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if accept_stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let s = match conn {
                            Ok(s) => s,
                            Err(e) => {
                                // Out of descriptors (EMFILE) and the like: back off instead of
                                // spinning; the connection waits in the kernel's backlog.
                                log::warn!("http: accept failed: {e}");
                                std::thread::sleep(Duration::from_millis(50));
                                continue;
                            }
                        };
                        let _ = s.set_write_timeout(Some(limits.timeout));
                        match tx.try_send(s) {
                            Ok(()) => {}
                            Err(TrySendError::Full(mut s)) => {
                                handler.rejected();
                                // A short write timeout: a full server must not wait on anyone.
                                let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                                let _ = write_response(
                                    &mut s,
                                    &Response::text(
                                        503,
                                        "busy: every worker is serving a client; try again\n",
                                    ),
                                    false,
                                );
                            }
                            Err(TrySendError::Disconnected(_)) => break,
                        }
                    }
                })?,
        );
        Ok(Self {
            addr,
            stop,
            threads,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, let workers finish their connection, join every thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accepting thread with a connection of our own.
        let wake = if self.addr.ip().is_unspecified() {
            SocketAddr::new(
                if self.addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                },
                self.addr.port(),
            )
        } else {
            self.addr
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

fn serve(s: &mut TcpStream, handler: &dyn Handler, limits: &Limits) {
    let answer = match read_request(s, limits) {
        Ok(req) if req.path.is_empty() => Some((
            Response {
                extra: "Allow: GET, HEAD\r\n",
                ..Response::text(405, "only GET and HEAD are served\n")
            },
            false,
        )),
        Ok(req) => handler.handle(&req, s).map(|r| (r, req.head_only)),
        Err(HeadError::Io(_)) => None,
        Err(HeadError::Timeout) => Some((
            Response::text(408, "request head not sent in time\n"),
            false,
        )),
        Err(HeadError::TooLarge) => Some((
            Response::text(
                431,
                format!("request head over {} bytes\n", limits.max_head),
            ),
            false,
        )),
        Err(HeadError::Malformed) => {
            Some((Response::text(400, "not an HTTP/1.1 request\n"), false))
        }
    };
    if let Some((r, head_only)) = answer {
        let _ = s.set_write_timeout(Some(limits.timeout));
        let _ = write_response(s, &r, head_only);
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}
