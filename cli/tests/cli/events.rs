//! Events out of the `edgefuse` binary against a real broker (Debian's mosquitto on a free
//! loopback port): a run SIGKILLed mid-stream, with the broker down, loses no journaled event
//! and the next start replays them, with snapshots; bad settings (broker URI, CA file, folders)
//! are clear errors; a broker that is down at start is said once and the run goes on; a camera
//! that fails and comes back is published as camera_offline / camera_online; a killed run is
//! reported offline by its last will.
//! Budget: about 20 s natively; skipped under emulation (each start loads the model under
//! qemu; the sinks crate's broker tests run there).

use std::collections::BTreeSet;
use std::time::Duration;

use edgefuse_tests::mosquitto::{free_port, Broker, Subscriber};

use crate::signals::Spawned;
use crate::*;

fn mnist_paced(fps: u32) -> String {
    format!(
        "file://{}?fps={fps}",
        repo().join("models/samples/mnist").display()
    )
}

/// `(frame, source)` of a `--json` line when it reports an event (a fire or a release).
fn event_of(line: &str) -> Option<(u64, String)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let happened = !v["event"].is_null() || v["released"].as_array().is_some_and(|a| !a.is_empty());
    happened.then(|| {
        (
            v["frame"].as_u64().unwrap(),
            v["source"].as_str().unwrap().to_string(),
        )
    })
}

#[test]
fn a_sigkilled_run_loses_no_journaled_event_and_the_next_start_replays_them() {
    native_only!("SIGKILL and journal replay end to end");
    let Some(mut broker) = Broker::start("sigkill_replay") else {
        return;
    };
    let sub = Subscriber::new(&broker, "k/#");
    let journal = tempfile::tempdir().unwrap();
    let snaps = tempfile::tempdir().unwrap();
    let uri = broker.uri("k");
    let src = mnist_paced(20);
    let (j, s) = (
        journal.path().to_str().unwrap(),
        snaps.path().to_str().unwrap(),
    );
    let run = Spawned::new(&[
        "run",
        "--source",
        &src,
        "--threshold",
        "0",
        "--json",
        "--mqtt",
        &uri,
        "--journal",
        j,
        "--device-id",
        "k1",
        "--snapshots",
        s,
    ]);
    // Ten events with the broker up, ten more with it down, then SIGKILL.
    let mut printed = Vec::new();
    while printed.len() < 20 {
        let line = run
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("edgefuse prints frames");
        if let Some(e) = event_of(&line) {
            printed.push(e);
            if printed.len() == 10 {
                broker.stop();
            }
        }
    }
    run.signal("KILL");
    let (code, _, _, err) = run.exit_within(Duration::from_secs(10));
    assert_eq!(code, None, "killed by the signal\n{err}");
    assert!(err.contains("unreachable"), "the outage is said\n{err}");
    broker.resume();
    // The next start (one synthetic frame) replays the journal first.
    let r = Run::within(
        60,
        &[
            "run",
            "--source",
            "synthetic://?frames=1",
            "--frames",
            "1",
            "--mqtt",
            &uri,
            "--journal",
            j,
            "--device-id",
            "k1",
        ],
    );
    r.code(0)
        .stderr_has(&["journaled events from an earlier run"]);
    let events = |m: &[edgefuse_tests::mosquitto::Message]| -> Vec<serde_json::Value> {
        m.iter()
            .filter(|m| m.topic == "k/k1/event")
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect()
    };
    let key = |v: &serde_json::Value| {
        (
            v["frame"].as_u64().unwrap_or(u64::MAX),
            v["source"].as_str().unwrap_or("").to_string(),
        )
    };
    // Every event printed before the last line arrives (the last one may have been decided
    // just before the kill, inside its journal batch).
    let msgs = sub.wait_for(Duration::from_secs(15), |m| {
        let got: BTreeSet<_> = events(m).iter().map(key).collect();
        printed[..19].iter().all(|p| got.contains(p))
    });
    let evs = events(&msgs);
    let got: BTreeSet<_> = evs.iter().map(key).collect();
    let lost: Vec<_> = printed[..19].iter().filter(|p| !got.contains(p)).collect();
    assert!(
        lost.is_empty(),
        "lost across SIGKILL: {lost:?}\n{}",
        r.context()
    );
    // Ids are stable and increase with the frames of the first run.
    let mut first_run: Vec<(u64, u64)> = evs
        .iter()
        .filter(|v| v["source"].as_str().is_some_and(|s| s.contains("mnist")))
        .map(|v| (v["id"].as_u64().unwrap(), v["frame"].as_u64().unwrap()))
        .collect();
    first_run.sort();
    first_run.dedup();
    assert!(
        first_run
            .windows(2)
            .all(|w| w[1].0 == w[0].0 + 1 && w[1].1 > w[0].1),
        "{first_run:?}"
    );
    // Fired events carry a complete JPEG of their frame.
    let snapshots: Vec<&str> = evs.iter().filter_map(|v| v["snapshot"].as_str()).collect();
    assert!(!snapshots.is_empty());
    for p in snapshots {
        let bytes = std::fs::read(p).unwrap();
        assert!(
            bytes.starts_with(&[0xff, 0xd8]) && bytes.ends_with(&[0xff, 0xd9]),
            "{p}"
        );
    }
}

#[test]
fn bad_event_settings_are_clear_errors() {
    native_only!("event option errors");
    let synth = ["run", "--source", "synthetic://?frames=1", "--frames", "1"];
    let with = |extra: &[&str]| {
        let mut a = synth.to_vec();
        a.extend_from_slice(extra);
        Run::within(60, &a)
    };
    with(&["--mqtt", "mqtt://broker:99999/x"])
        .code(2)
        .stderr_has(&["--mqtt `mqtt://broker:99999/x`", "port `99999`"]);
    with(&["--mqtt", "http://broker/x"])
        .code(2)
        .stderr_has(&["mqtt:// or mqtts://"]);
    with(&[
        "--mqtt",
        "mqtts://127.0.0.1/x",
        "--mqtt-ca",
        "/nonexistent/ca.pem",
    ])
    .code(2)
    .stderr_has(&["--mqtt-ca /nonexistent/ca.pem"]);
    with(&["--snapshots", "/proc/edgefuse-snaps"])
        .code(1)
        .stderr_has(&["--snapshots /proc/edgefuse-snaps"]);
    with(&[
        "--mqtt",
        "mqtt://127.0.0.1:1/x",
        "--journal",
        "/proc/edgefuse-journal",
    ])
    .code(1)
    .stderr_has(&["journal /proc/edgefuse-journal"]);
    with(&["--webhook", "ftp://x/"])
        .code(2)
        .stderr_has(&["--webhook `ftp://x/`"]);
}

#[test]
fn a_broker_down_at_start_is_said_once_and_the_run_journals() {
    native_only!("unreachable broker end to end");
    let journal = tempfile::tempdir().unwrap();
    let uri = format!("mqtt://127.0.0.1:{}/x", free_port());
    let r = Run::within(
        60,
        &[
            "run",
            "--source",
            &mnist_paced(100),
            "--frames",
            "40",
            "--threshold",
            "0",
            "--json",
            "--mqtt",
            &uri,
            "--journal",
            journal.path().to_str().unwrap(),
        ],
    );
    r.code(0);
    let events = r.stdout().lines().filter(|l| event_of(l).is_some()).count();
    assert!(events > 10, "{}", r.context());
    let err = r.stderr();
    assert_eq!(err.matches("unreachable").count(), 1, "said once\n{err}");
    assert!(
        err.contains(&format!(
            "{events} journaled, 0 dropped (queue full), 0 dropped (journal full)"
        )) && err.contains(&format!("{events} left undelivered")),
        "{}",
        r.context()
    );
}

#[test]
fn a_killed_run_is_reported_offline_by_its_last_will() {
    native_only!("MQTT last will end to end");
    let Some(broker) = Broker::start("last_will") else {
        return;
    };
    let sub = Subscriber::new(&broker, "w/+/status");
    let run = Spawned::new(&[
        "run",
        "--source",
        &mnist_paced(20),
        "--json",
        "--mqtt",
        &broker.uri("w"),
        "--device-id",
        "w1",
    ]);
    let online = sub.wait_for(Duration::from_secs(30), |m| !m.is_empty());
    let first: serde_json::Value = serde_json::from_slice(&online[0].payload).unwrap();
    assert_eq!(first["state"], "online", "{first}");
    run.signal("KILL");
    let _ = run.exit_within(Duration::from_secs(10));
    let msgs = sub.wait_for(Duration::from_secs(10), |m| m.len() >= 2);
    let last: serde_json::Value = serde_json::from_slice(&msgs.last().unwrap().payload).unwrap();
    assert_eq!(last["state"], "offline", "the broker published the will");
    assert_eq!(last["device"], "w1");
}

#[test]
fn a_camera_that_fails_and_comes_back_is_published_as_offline_then_online() {
    native_only!("camera events end to end");
    let Some(broker) = Broker::start("camera_events") else {
        return;
    };
    let sub = Subscriber::new(&broker, "c/+/event");
    let r = Run::within(
        120,
        &[
            "run",
            "--source",
            "synthetic://?width=64&height=48&fps=25&fail_every=10&fail_for=2",
            "--frames",
            "25",
            "--mqtt",
            &broker.uri("c"),
            "--device-id",
            "cam",
        ],
    );
    r.code(0);
    let msgs = sub.wait_for(Duration::from_secs(5), |m| m.len() >= 4);
    let camera: Vec<(String, Option<String>)> = msgs
        .iter()
        .map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap())
        .filter(|v| v["kind"].as_str().unwrap().starts_with("camera_"))
        .map(|v| {
            (
                v["kind"].as_str().unwrap().to_string(),
                v["reason"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert!(camera.len() >= 4, "{camera:?}\n{}", r.context());
    for (i, (kind, reason)) in camera.iter().enumerate() {
        assert_eq!(
            kind,
            ["camera_offline", "camera_online"][i % 2],
            "{camera:?}"
        );
        if i % 2 == 0 {
            assert!(
                reason.as_deref().is_some_and(|r| r.contains("simulated")),
                "{camera:?}"
            );
        }
    }
}
