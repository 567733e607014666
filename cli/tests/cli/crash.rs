//! Crash consistency: every command that writes is killed at each of its writes in turn
//! (`EDGEFUSE_CRASH_AT=N` aborts the process before its N-th create / write / fsync / rename /
//! remove, see `edgefuse_models::files::crash_point`), N = 1, 2, … until the command completes;
//! after each kill the previous state must still load (or, past the commit point, the new one),
//! and the next run must work.

use std::path::Path;
use std::process::Output;

use crate::*;

/// Run edgefuse with `EDGEFUSE_CRASH_AT=n`.
fn run_crashing(n: usize, args: &[&str]) -> Output {
    edgefuse_command()
        .args(args)
        .env_remove("EDGEFUSE_MODEL")
        .env_remove("RUST_LOG")
        .env("EDGEFUSE_CRASH_AT", n.to_string())
        .output()
        .expect("spawn edgefuse")
}

/// Whether the run was killed at the crash point (rather than completing).
fn crashed(out: &Output, what: &str, n: usize) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        assert!(!err.contains("EDGEFUSE_CRASH_AT"), "{what} N={n}: {err}");
        return false;
    }
    assert!(
        err.contains(&format!("EDGEFUSE_CRASH_AT={n}: aborting before")),
        "{what} N={n} failed without reaching the crash point: {:?}\n{err}",
        out.status
    );
    true
}

/// The bundle's label names, through `labels list` (which opens and checks all of it).
fn label_names(dir: &Path) -> Vec<String> {
    let r = Run::new(&["labels", "list", "--model", dir.to_str().unwrap()]);
    r.code(0);
    r.stdout()
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .collect()
}

/// Kill `labels <args>` at each write; the bundle must list as `before` or `after` each time,
/// and the same command must then complete on it.
fn labels_killed_at_each_write(args: &[&str], before: &[String], after: &[String]) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let model = dir.to_str().unwrap().to_string();
    let mut full: Vec<&str> = vec!["labels"];
    full.extend_from_slice(args);
    full.extend(["--model", &model]);
    for n in 1.. {
        copy_default_bundle(&dir);
        let out = run_crashing(n, &full);
        let what = full[..full.len() - 2].join(" ");
        if !crashed(&out, &what, n) {
            assert_eq!(label_names(&dir), after, "{what} completed");
            return n - 1;
        }
        let now = label_names(&dir);
        assert!(
            now == before || now == after,
            "{what} killed at write {n}: the bundle lists {now:?}"
        );
        // The interrupted update does not stop the next one.
        if now == before {
            Run::new(&full).code(0);
            assert_eq!(label_names(&dir), after, "{what} after a kill at write {n}");
        }
        assert!(n < 100, "{what}: no end to the writes");
    }
    unreachable!()
}

#[test]
fn labels_add_and_remove_killed_at_each_write_leave_a_bundle_that_loads() {
    native_only!("one process start per write");
    let before: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let mut added = before.clone();
    added.push("cat".into());
    let writes = labels_killed_at_each_write(
        &["add", "a photo of a cat", "--label", "cat"],
        &before,
        &added,
    );
    println!("labels add: killed at each of its {writes} writes; the bundle loaded every time");
    assert!(
        writes >= 8,
        "{writes} writes: the crash points are not reached"
    );
    let removed: Vec<String> = before.iter().filter(|l| *l != "3").cloned().collect();
    let writes = labels_killed_at_each_write(&["remove", "--label", "3"], &before, &removed);
    println!("labels remove: killed at each of its {writes} writes; the bundle loaded every time");
    assert!(writes >= 8, "{writes} writes");
}

#[test]
fn calibrate_killed_at_each_write_leaves_no_partial_bundle() {
    native_only!("one calibration per write");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("int8");
    let source = format!("file://{}", repo().join("models/samples/mnist").display());
    let args = [
        "calibrate",
        "--source",
        &source,
        "--method",
        "minmax",
        "--frames",
        "8",
        "--eval-frames",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    let default = label_names(&repo().join("models/default"));
    let mut writes = 0;
    let mut cleaned = 0;
    for n in 1.. {
        let r = run_crashing(n, &args);
        let done = !crashed(&r, "calibrate", n);
        // Each run removes what the killed one before it left.
        if String::from_utf8_lossy(&r.stderr).contains("interrupted calibration") {
            cleaned += 1;
        }
        // `--out` is absent, or a complete bundle that loads.
        if out.exists() {
            assert_eq!(label_names(&out), default, "calibrate killed at write {n}");
            Run::new(&["info", "--model", out.to_str().unwrap()])
                .code(0)
                .stderr_has(&[]);
            std::fs::remove_dir_all(&out).unwrap();
        }
        if done {
            writes = n - 1;
            break;
        }
        assert!(n < 100, "calibrate: no end to the writes");
    }
    println!(
        "calibrate: killed at each of its {writes} writes; never a partial --out; \
         {cleaned} runs removed the staging folder of the killed run before them"
    );
    assert!(
        writes >= 10,
        "{writes} writes: the crash points are not reached"
    );
    assert!(
        cleaned >= writes / 2,
        "{cleaned} clean-ups after {writes} kills"
    );
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "int8")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
