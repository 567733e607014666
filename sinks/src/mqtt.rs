//! MQTT: events from the journal to `<prefix>/<device>/event` (QoS 1), per-frame results to
//! `<prefix>/<device>/results` (QoS 0, rate-limited, not journaled), and a retained
//! `<prefix>/<device>/status` (`online` with counters; the broker publishes the last will
//! `offline` when the connection dies).
//!
//! Two threads: the dispatcher (see `dispatch`) appends events to the journal and calls
//! [`Mqtt::pump`]; the connection thread drives rumqttc's event loop, and on each CONNACK
//! replays every record the broker has not acknowledged, in order, on each PUBACK advances
//! the journal's cursor. Every (re)connection is a fresh client, so rumqttc never resends on
//! its own: which record a PUBACK acknowledges is known exactly (rumqttc reports each outgoing
//! publish's packet id in the order it was handed the publishes).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS};

use crate::journal::Journal;
use crate::stats::EventStats;

/// Most events handed to the client and not yet acknowledged.
const WINDOW: usize = 64;
/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A broker URI or TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MqttConfigError {
    /// The URI does not parse.
    #[error("--mqtt `{uri}`: {reason}; expected mqtt://[user:password@]host[:port]/topic-prefix (mqtts:// for TLS)")]
    Uri {
        /// The URI as given.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("--mqtt-ca {path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Where and how to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port (1883, or 8883 with TLS, unless given).
    pub port: u16,
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// User name and password, when given.
    pub credentials: Option<(String, String)>,
    /// Topic prefix (the URI's path): topics are `<prefix>/<device>/…`.
    pub prefix: String,
    /// CA certificates (PEM) to trust for TLS instead of the system's.
    pub ca: Option<PathBuf>,
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl MqttConfig {
    /// Parse `mqtt://[user:password@]host[:port]/topic-prefix` (`mqtts://` for TLS; user and
    /// password percent-encoded).
    pub fn parse(uri: &str, ca: Option<&Path>) -> Result<Self, MqttConfigError> {
        let bad = |reason: &str| MqttConfigError::Uri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let (tls, rest) = if let Some(r) = uri.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = uri.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad("the scheme must be mqtt:// or mqtts://"));
        };
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(bad(
                "no topic prefix (the part after the host, e.g. /edgefuse)",
            ));
        }
        if prefix
            .chars()
            .any(|c| matches!(c, '+' | '#' | '?') || c.is_control())
            || prefix.split('/').any(str::is_empty)
        {
            return Err(bad(
                "the topic prefix may not contain `+`, `#`, `?`, control characters or empty levels",
            ));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                let user = percent_decode(user).ok_or_else(|| bad("bad %-escape in the user"))?;
                let pass =
                    percent_decode(pass).ok_or_else(|| bad("bad %-escape in the password"))?;
                Some((user, pass))
            }
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            // [IPv6]:port
            let (h, after) = h.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| bad(&format!("port `{p}` is not a number in 1..=65535")))?,
        };
        if ca.is_some() && !tls {
            return Err(bad(
                "--mqtt-ca is given but the URI is mqtt:// (use mqtts:// for TLS)",
            ));
        }
        let cfg = MqttConfig {
            host: host.to_string(),
            port,
            tls,
            credentials,
            prefix: prefix.to_string(),
            ca: ca.map(Path::to_path_buf),
        };
        if cfg.ca.is_some() {
            // The CA file is checked now (a missing file is a usage error at start); the
            // system's roots are loaded when connecting.
            cfg.tls_config()?;
        }
        Ok(cfg)
    }

    /// The rustls client configuration: the CA file's certificates, or the system's roots.
    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, MqttConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let ca_err = |reason: String| MqttConfigError::Ca {
                    path: path.clone(),
                    reason,
                };
                let bytes = edgefuse_models::files::read_limited(path, 1 << 20)
                    .map_err(|e| ca_err(e.to_string()))?;
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&bytes) {
                    let cert = cert.map_err(|e| ca_err(format!("not a PEM certificate: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| ca_err(format!("unusable certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(ca_err("holds no PEM certificate".into()));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| MqttConfigError::Ca {
                path: self.ca.clone().unwrap_or_default(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }

    /// Where the broker is, for messages (no credentials).
    pub fn describe(&self) -> String {
        format!(
            "{}://{}:{}/{}",
            if self.tls { "mqtts" } else { "mqtt" },
            self.host,
            self.port,
            self.prefix
        )
    }
}

/// Counters of the MQTT publisher.
#[derive(Debug, Clone, Default)]
pub struct MqttStats {
    /// Events acknowledged by the broker (PUBACK), replays included.
    pub acked: u64,
    /// Events sent again after a reconnect or restart.
    pub resent: u64,
    /// Per-frame results published.
    pub results: u64,
    /// Per-frame results not published because the broker was not connected.
    pub results_skipped: u64,
    /// Connections made.
    pub connections: u64,
    /// Decision → PUBACK latency of events decided in this run, milliseconds.
    pub latency_ms: Vec<f64>,
}

struct State {
    client: Option<Client>,
    connected: bool,
    /// Journal ids handed to the client, waiting for rumqttc to report their packet id
    /// (`None`: a message outside the journal: status, results).
    handed: VecDeque<Option<u64>>,
    by_pkid: HashMap<u16, u64>,
    /// Acknowledged ids above the journal's contiguous cursor.
    acked: BTreeSet<u64>,
    /// The highest id handed to the current client.
    sent_upto: u64,
    /// Ids sent by a previous connection (a second send is a resend).
    sent_before: u64,
    outage_logged: bool,
    /// The loss counters the last status message reported.
    reported: [u64; 3],
    stats: MqttStats,
    /// When each event of this run was decided, for the latency figures.
    decided: HashMap<u64, Instant>,
}

/// Shared by the dispatcher, the connection thread and the sink.
pub struct Mqtt {
    cfg: MqttConfig,
    device: String,
    topic_event: String,
    topic_results: String,
    topic_status: String,
    reader: usize,
    journal: Arc<Mutex<Journal>>,
    state: Mutex<State>,
    stop: AtomicBool,
    /// Extra counters for the status topic (the dispatcher's drops), set by the dispatcher.
    pub dropped: std::sync::atomic::AtomicU64,
    /// Live figures: connected or not, events acknowledged.
    live: Arc<EventStats>,
}

impl std::fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mqtt")
            .field("broker", &self.cfg.describe())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mqtt {
    /// The publisher for `cfg`, reading `journal` as reader number `reader`; starts the
    /// connection thread. The connection state and acknowledgements go to `live`.
    pub fn start(
        cfg: MqttConfig,
        device: &str,
        journal: Arc<Mutex<Journal>>,
        reader: usize,
        live: Arc<EventStats>,
    ) -> Result<(Arc<Self>, JoinHandle<()>), MqttConfigError> {
        let base = format!("{}/{device}", cfg.prefix);
        let sent = lock(&journal).acked(reader);
        let m = Arc::new(Mqtt {
            topic_event: format!("{base}/event"),
            topic_results: format!("{base}/results"),
            topic_status: format!("{base}/status"),
            device: device.to_string(),
            reader,
            journal,
            state: Mutex::new(State {
                client: None,
                connected: false,
                handed: VecDeque::new(),
                by_pkid: HashMap::new(),
                acked: BTreeSet::new(),
                sent_upto: sent,
                sent_before: 0,
                outage_logged: false,
                reported: [0; 3],
                stats: MqttStats::default(),
                decided: HashMap::new(),
            }),
            stop: AtomicBool::new(false),
            dropped: Default::default(),
            live,
            cfg,
        });
        let options = m.options()?;
        let me = m.clone();
        let t = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || me.connection_loop(options))
            .map_err(|e| MqttConfigError::Uri {
                uri: m.cfg.describe(),
                reason: format!("cannot start the MQTT thread: {e}"),
            })?;
        Ok((m, t))
    }

    fn options(&self) -> Result<MqttOptions, MqttConfigError> {
        let mut o = MqttOptions::new(
            format!("edgefuse-{}", self.device),
            &self.cfg.host,
            self.cfg.port,
        );
        o.set_keep_alive(Duration::from_secs(10));
        o.set_clean_session(true);
        o.set_inflight(WINDOW as u16 * 2);
        // rumqttc's default outgoing limit (10 KiB) is below a long event (a 4 KiB path, 16
        // long labels); a refused publish would fail the connection on every replay.
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_request_channel_capacity(WINDOW * 4);
        o.set_last_will(LastWill::new(
            &self.topic_status,
            serde_json::json!({"state": "offline", "device": self.device}).to_string(),
            QoS::AtLeastOnce,
            true,
        ));
        if let Some((u, p)) = &self.cfg.credentials {
            o.set_credentials(u, p);
        }
        if self.cfg.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(self.cfg.tls_config()?),
            ));
        }
        Ok(o)
    }

    /// Remember when event `id` was decided (for the latency figures).
    pub fn decided(&self, id: u64, at: Instant) {
        let mut s = lock(&self.state);
        // Bounded through a long outage: the latency figures then cover the first ones.
        if s.decided.len() < 1 << 16 {
            s.decided.insert(id, at);
        }
    }

    /// Hand the client every journaled event it has not been handed, up to the window.
    pub fn pump(&self) {
        let mut s = lock(&self.state);
        self.pump_locked(&mut s);
    }

    fn pump_locked(&self, s: &mut State) {
        if !s.connected {
            return;
        }
        let Some(client) = s.client.clone() else {
            return;
        };
        let j = lock(&self.journal);
        // A full journal may have dropped records past what was handed out.
        s.sent_upto = s.sent_upto.max(j.acked(self.reader));
        let in_flight = (s.sent_upto - j.acked(self.reader)) as usize;
        let room = WINDOW.saturating_sub(in_flight);
        for r in j.after(s.sent_upto).take(room) {
            if client
                .try_publish(
                    &self.topic_event,
                    QoS::AtLeastOnce,
                    false,
                    r.payload.clone(),
                )
                .is_err()
            {
                break;
            }
            if r.id <= s.sent_before {
                s.stats.resent += 1;
            }
            s.handed.push_back(Some(r.id));
            s.sent_upto = r.id;
        }
    }

    /// Publish one per-frame result (QoS 0), if connected; else count it as skipped.
    pub fn result(&self, payload: Vec<u8>) {
        let mut s = lock(&self.state);
        let sent = s.connected
            && s.client.as_ref().is_some_and(|c| {
                c.try_publish(&self.topic_results, QoS::AtMostOnce, false, payload)
                    .is_ok()
            });
        if sent {
            s.handed.push_back(None);
            s.stats.results += 1;
        } else {
            s.stats.results_skipped += 1;
        }
    }

    /// The status message and the loss counters it reports.
    fn status_payload(&self, state: &str) -> (String, [u64; 3]) {
        let j = lock(&self.journal);
        let js = j.stats();
        let losses = [
            self.dropped.load(Ordering::Relaxed),
            js.dropped,
            js.not_written,
        ];
        let v = serde_json::json!({
            "state": state,
            "device": self.device,
            "events_dropped": losses[0],
            "journal_dropped": losses[1],
            "journal_not_written": losses[2],
            "pending": (j.next_id() - 1).saturating_sub(j.acked(self.reader)),
        });
        (v.to_string(), losses)
    }

    /// Publish the `online` status again when a loss counter changed since the last one.
    pub fn refresh_status(&self) {
        let mut s = lock(&self.state);
        if s.connected && self.status_payload("online").1 != s.reported {
            self.publish_status(&mut s, "online");
        }
    }

    fn publish_status(&self, s: &mut State, state: &str) {
        let (payload, losses) = self.status_payload(state);
        s.reported = losses;
        if let Some(c) = &s.client {
            if c.try_publish(&self.topic_status, QoS::AtLeastOnce, true, payload)
                .is_ok()
            {
                s.handed.push_back(None);
            }
        }
    }

    fn on_event(&self, ev: Event) {
        let mut s = lock(&self.state);
        match ev {
            Event::Incoming(Incoming::ConnAck(_)) => {
                s.connected = true;
                EventStats::set(&self.live.broker_connected, 1);
                s.stats.connections += 1;
                s.handed.clear();
                s.by_pkid.clear();
                s.acked.clear();
                s.sent_before = s.sent_before.max(s.sent_upto);
                let acked = lock(&self.journal).acked(self.reader);
                let backlog = lock(&self.journal).after(acked).count();
                s.sent_upto = acked;
                if s.outage_logged {
                    log::warn!(
                        "mqtt: connected to {} again; sending {backlog} journaled events",
                        self.cfg.describe()
                    );
                } else {
                    log::info!(
                        "mqtt: connected to {} ({backlog} journaled events to send)",
                        self.cfg.describe()
                    );
                }
                s.outage_logged = false;
                self.publish_status(&mut s, "online");
                self.pump_locked(&mut s);
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(Some(id)) = s.handed.pop_front() {
                    s.by_pkid.insert(pkid, id);
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(id) = s.by_pkid.remove(&ack.pkid) {
                    s.stats.acked += 1;
                    EventStats::add(&self.live.acknowledged, 1);
                    if let Some(at) = s.decided.remove(&id) {
                        s.stats.latency_ms.push(at.elapsed().as_secs_f64() * 1000.0);
                    }
                    s.acked.insert(id);
                    let mut j = lock(&self.journal);
                    let mut cursor = j.acked(self.reader);
                    // Ids at or below the cursor (skipped by a full journal) are done.
                    while s.acked.first().is_some_and(|&a| a <= cursor) {
                        s.acked.pop_first();
                    }
                    while s.acked.first() == Some(&(cursor + 1)) {
                        s.acked.pop_first();
                        cursor += 1;
                    }
                    j.ack(self.reader, cursor);
                    drop(j);
                    self.pump_locked(&mut s);
                }
            }
            _ => {}
        }
    }

    fn connection_loop(self: Arc<Self>, options: MqttOptions) {
        let mut backoff = Duration::from_millis(200);
        while !self.stop.load(Ordering::Relaxed) {
            let (client, mut conn): (Client, Connection) = Client::new(options.clone(), WINDOW * 4);
            let mut net = rumqttc::NetworkOptions::new();
            net.set_tcp_nodelay(true);
            net.set_connection_timeout(3);
            conn.eventloop.set_network_options(net);
            lock(&self.state).client = Some(client);
            let error = loop {
                match conn.recv() {
                    Ok(Ok(ev)) => {
                        if matches!(ev, Event::Incoming(Incoming::ConnAck(_))) {
                            backoff = Duration::from_millis(200);
                        }
                        self.on_event(ev);
                    }
                    Ok(Err(e)) => break Some(e),
                    Err(_) => break None, // every client dropped: stopping
                }
            };
            {
                let mut s = lock(&self.state);
                s.connected = false;
                EventStats::set(&self.live.broker_connected, 0);
                s.client = None;
                if let Some(e) = &error {
                    if !self.stop.load(Ordering::Relaxed) && !s.outage_logged {
                        log::warn!(
                            "mqtt: broker {} unreachable ({e}); events are journaled and sent when it is back (said once per outage)",
                            self.cfg.describe()
                        );
                        s.outage_logged = true;
                    }
                }
            }
            drop(conn);
            let until = Instant::now() + backoff;
            while Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Whether the broker has acknowledged every journaled event.
    fn drained(&self) -> bool {
        let j = lock(&self.journal);
        j.acked(self.reader) + 1 >= j.next_id()
    }

    /// Stop: wait up to `grace` for the broker to acknowledge what is journaled (when
    /// connected), publish the retained `offline` status, disconnect, join the thread.
    pub fn finish(&self, thread: JoinHandle<()>, grace: Duration) -> MqttStats {
        let until = Instant::now() + grace;
        while Instant::now() < until && !self.drained() {
            if !lock(&self.state).connected && lock(&self.state).stats.connections == 0 {
                // Never connected: nothing will come back in the grace time worth waiting for.
                if Instant::now() + grace / 2 > until {
                    break;
                }
            }
            self.pump();
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Ordering::Relaxed);
        {
            let mut s = lock(&self.state);
            if s.connected {
                self.publish_status(&mut s, "offline");
                if let Some(c) = &s.client {
                    let _ = c.try_disconnect();
                }
            }
            s.client = None;
        }
        let _ = thread.join();
        lock(&self.journal).save_cursors();
        lock(&self.state).stats.clone()
    }
}
