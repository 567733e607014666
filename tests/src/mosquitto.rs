//! A real MQTT broker for tests: Debian's `mosquitto`, started on a free loopback port with a
//! configuration in a temporary folder (persistence on, so a stopped and restarted broker
//! keeps a subscriber's session), and a subscriber that records every message it receives.
//!
//! `scripts/setup --test` installs mosquitto. Where it is missing, [`Broker::start`] fails the
//! test under CI (`CI` set) and elsewhere returns `None` after printing why the test is skipped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};

/// A mosquitto process on `127.0.0.1:port`.
pub struct Broker {
    /// The port it listens on.
    pub port: u16,
    exe: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// `openssl`, for test certificates: fails under CI when missing, else `None` after saying why.
fn find_openssl(test: &str) -> Option<()> {
    if Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some(());
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: openssl is not installed; `scripts/setup --test` installs it");
    }
    eprintln!("{test}: SKIPPED: openssl is not installed (scripts/setup --test installs it)");
    None
}

/// A broker with a TLS listener too.
pub struct TlsBroker {
    /// The broker (its plain listener is `broker.port`).
    pub broker: Broker,
    /// The TLS listener's port.
    pub tls_port: u16,
    /// The CA that signed the broker's certificate (PEM).
    pub ca: PathBuf,
    /// Another CA, which did not.
    pub other_ca: PathBuf,
}

impl Broker {
    /// Start a broker, or (mosquitto not installed, outside CI) print why and return `None`.
    pub fn start(test: &str) -> Option<Broker> {
        Self::start_with(test, |_| String::new())
    }

    /// A broker with a plain listener and a TLS listener on 127.0.0.1 whose certificate
    /// (`IP:127.0.0.1`, `DNS:localhost`) is signed by a CA made here with `openssl`.
    pub fn start_tls(test: &str) -> Option<TlsBroker> {
        find_openssl(test)?;
        let tls_port = free_port();
        let mut paths = None;
        let broker = Self::start_with(test, |dir| {
            let run = |args: &[&str]| {
                let out = Command::new("openssl")
                    .args(args)
                    .current_dir(dir)
                    .output()
                    .expect("run openssl");
                assert!(
                    out.status.success(),
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let ec = [
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ];
            for name in ["ca", "other-ca"] {
                let mut a = vec!["req", "-x509", "-days", "2", "-subj"];
                let subj = format!("/CN=edgefuse test {name}");
                let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
                a.extend([subj.as_str(), "-keyout", &key, "-out", &pem]);
                a.extend(ec);
                a.extend([
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign",
                ]);
                run(&a);
            }
            let mut a = vec![
                "req",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ];
            a.extend(ec);
            run(&a);
            std::fs::write(
                dir.join("ext.cnf"),
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            )
            .unwrap();
            run(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                "server.pem",
                "-extfile",
                "ext.cnf",
            ]);
            paths = Some((dir.join("ca.pem"), dir.join("other-ca.pem")));
            format!(
                "listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
                d = dir.display()
            )
        })?;
        let (ca, other_ca) = paths.expect("certificates made");
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
            assert!(
                Instant::now() < until,
                "mosquitto did not listen on {tls_port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(TlsBroker {
            broker,
            tls_port,
            ca,
            other_ca,
        })
    }

    /// Start a broker whose configuration ends with `extra(dir)` (more listeners).
    fn start_with(test: &str, extra: impl FnOnce(&std::path::Path) -> String) -> Option<Broker> {
        let Some(exe) = find_mosquitto() else {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: mosquitto is not installed; `scripts/setup --test` installs it");
            }
            eprintln!(
                "{test}: SKIPPED: mosquitto is not installed (scripts/setup --test installs it)"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        // Started by root, mosquitto drops to the `mosquitto` user, who cannot read this
        // test's private temporary folder (persistence, TLS key): stay the test's user.
        // SAFETY: geteuid(2) has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        std::fs::write(
            &conf,
            user.to_string()
                + &format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\nlog_dest none\n",
                dir.path().display()
            ) + &extra(dir.path()),
        )
        .expect("write mosquitto.conf");
        let mut b = Broker {
            port,
            exe,
            conf,
            child: None,
            _dir: dir,
        };
        b.resume();
        Some(b)
    }

    /// Stop the broker (SIGTERM: it saves its sessions) and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and wait until it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(&self.exe)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "mosquitto did not start listening on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `mqtt://127.0.0.1:<port>/<prefix>`.
    pub fn uri(&self, prefix: &str) -> String {
        format!("mqtt://127.0.0.1:{}/{prefix}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Whether the broker delivered it as a retained message.
    pub retain: bool,
    /// When it arrived.
    pub at: Instant,
}

/// A subscriber to `filter` with a persistent session (QoS 1): it misses nothing published
/// while it is reconnecting after a broker restart.
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Message>>>,
    client: Client,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// Connect, subscribe, and return once the broker acknowledged the subscription.
    pub fn new(broker: &Broker, filter: &str) -> Subscriber {
        let mut o = MqttOptions::new(
            format!("test-sub-{}", broker.port),
            "127.0.0.1",
            broker.port,
        );
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(o, 64);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let m = messages.clone();
        let c = client.clone();
        let filter = filter.to_string();
        let thread = std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = c.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        m.lock().unwrap().push(Message {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            at: Instant::now(),
                        });
                    }
                    Ok(Event::Incoming(Incoming::Disconnect)) => break,
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the broker acknowledged the subscription");
        Subscriber {
            messages,
            client,
            thread: Some(thread),
        }
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    /// Wait until `done(messages)` holds or `timeout` passes; returns the messages.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Message]) -> bool) -> Vec<Message> {
        let until = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if done(&m) || Instant::now() >= until {
                return m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        if let Some(t) = self.thread.take() {
            // The thread ends on the disconnect; don't hang a test on a dead broker.
            let until = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
