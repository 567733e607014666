//! `edgefuse models`: install → list → activate → rollback end to end, the refusals (bad archive,
//! checksum, format version, failing test inference, signatures, names, full or read-only models
//! folder) leaving the active model as it was, and a kill at each write of install, activate and
//! rollback.

use std::path::{Path, PathBuf};

use crate::*;

/// A copy of the default bundle with ten labelled MNIST sample frames in `samples/`; with
/// `wrong`, every sample's label is off by one (a bundle whose test inference fails).
fn bundle_with_samples(into: &Path, wrong: bool) {
    copy_default_bundle(into);
    let samples = into.join("samples");
    std::fs::create_dir_all(&samples).unwrap();
    let src = repo().join("models/samples/mnist");
    let truth = ground_truth(&src);
    let mut csv = String::from("file,label\n");
    for (file, label) in truth.iter().take(10) {
        std::fs::copy(src.join(file), samples.join(file)).unwrap();
        let label = if wrong {
            ((label.parse::<u32>().unwrap() + 1) % 10).to_string()
        } else {
            label.clone()
        };
        csv.push_str(&format!("{file},{label}\n"));
    }
    std::fs::write(samples.join("labels.csv"), csv).unwrap();
}

/// `tar -cf` of the folder `dir` (as its own top folder), optionally zstd-compressed.
fn archive(dir: &Path, out: &Path, zstd: bool) {
    let ok = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir.parent().unwrap())
        .arg("-cf")
        .arg(out)
        .arg(dir.file_name().unwrap())
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar failed");
    if zstd {
        let t = std::fs::read(out).unwrap();
        let z = zstd_compress(&t);
        std::fs::write(out, z).unwrap();
    }
}

/// zstd through the `zstd` program when it is installed, else a stored (uncompressed) zstd
/// frame written by hand: either is a valid .zst the store must read.
fn zstd_compress(data: &[u8]) -> Vec<u8> {
    if let Ok(mut child) = std::process::Command::new("zstd")
        .args(["-q", "-c", "-1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let bytes = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&bytes));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        if out.status.success() {
            return out.stdout;
        }
    }
    // Frame header: magic, descriptor (single segment, 8-byte content size), size; then raw
    // blocks of at most 128 KiB (header: last flag, type 0 = raw, size).
    let mut z = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
    z.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let chunks: Vec<&[u8]> = data.chunks(128 << 10).collect();
    for (i, c) in chunks.iter().enumerate() {
        let last = u32::from(i + 1 == chunks.len());
        let h = last | ((c.len() as u32) << 3);
        z.extend_from_slice(&h.to_le_bytes()[..3]);
        z.extend_from_slice(c);
    }
    z
}

fn models(dir: &Path, args: &[&str]) -> Run {
    let mut full = vec!["models", "--models-dir", dir.to_str().unwrap()];
    full.extend_from_slice(args);
    Run::new(&full)
}

/// The active and previous names as `models list` shows them.
fn marks(dir: &Path) -> (Option<String>, Option<String>) {
    let r = models(dir, &["list"]);
    r.code(0);
    let find = |m: &str| {
        r.stdout()
            .lines()
            .find(|l| l.split('\t').nth(1) == Some(m))
            .map(|l| l.split('\t').next().unwrap().to_string())
    };
    (find("active"), find("previous"))
}

/// `info` with the models folder as the default: the bundle it opened (the active model loads).
fn info_bundle(dir: &Path) -> String {
    let out = edgefuse_command()
        .arg("info")
        .env_remove("EDGEFUSE_MODEL")
        .env("EDGEFUSE_MODELS_DIR", dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "info failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find(|l| l.starts_with("bundle"))
        .unwrap_or_default()
        .to_string()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let store = root.join("models");
    Fixture {
        _tmp: tmp,
        root,
        store,
    }
}

#[test]
fn install_list_activate_rollback_end_to_end() {
    native_only!("models install/activate/rollback");
    let f = fixture();
    let b = f.root.join("mnist-v2");
    bundle_with_samples(&b, false);
    let zst = f.root.join("mnist-v2.tar.zst");
    archive(&b, &zst, true);
    models(&f.store, &["rollback"])
        .code(2)
        .stderr_has(&["no previous model to roll back to"]);
    models(&f.store, &["list"]).code(0);
    models(
        &f.store,
        &[
            "install",
            repo().join("models/default").to_str().unwrap(),
            "--name",
            "v1",
        ],
    )
    .code(0);
    let r = models(
        &f.store,
        &["install", zst.to_str().unwrap(), "--name", "v2"],
    );
    r.code(0);
    assert!(
        r.stdout()
            .contains("10/10 sample frames classified as labelled"),
        "{}",
        r.context()
    );
    assert_eq!(marks(&f.store), (Some("v2".into()), Some("v1".into())));
    assert!(info_bundle(&f.store).contains("/versions/v2)"));
    models(&f.store, &["rollback"]).code(0);
    assert_eq!(marks(&f.store), (Some("v1".into()), Some("v2".into())));
    assert!(info_bundle(&f.store).contains("/versions/v1)"));
    models(&f.store, &["activate", "v2"]).code(0);
    assert_eq!(marks(&f.store), (Some("v2".into()), Some("v1".into())));
    models(&f.store, &["activate", "v3"])
        .code(2)
        .stderr_has(&["no model named `v3`", "installed: v1, v2"]);
    models(
        &f.store,
        &["install", zst.to_str().unwrap(), "--name", "v2"],
    )
    .code(2)
    .stderr_has(&["`v2` is installed already"]);
    assert_eq!(marks(&f.store), (Some("v2".into()), Some("v1".into())));
}

#[test]
fn bad_bundles_are_refused_and_the_active_model_stays() {
    native_only!("models install refusals");
    let f = fixture();
    let default = repo().join("models/default");
    models(
        &f.store,
        &["install", default.to_str().unwrap(), "--name", "good"],
    )
    .code(0);
    let active = (Some("good".to_string()), None);
    let b = f.root.join("b");
    let refused = |src: &Path, needles: &[&str]| {
        models(
            &f.store,
            &["install", src.to_str().unwrap(), "--name", "new"],
        )
        .code(1)
        .stderr_has(needles);
        assert_eq!(marks(&f.store), active, "after {}", src.display());
        assert!(!f.store.join("versions/new").exists());
    };
    // A new model whose test inference fails.
    bundle_with_samples(&b, true);
    refused(
        &b,
        &[
            "test inference failed",
            "0 of 10 sample frames classified as labelled",
            "not made active",
        ],
    );
    // Truncated and corrupt archives.
    bundle_with_samples(&b, false);
    let t = f.root.join("b.tar");
    archive(&b, &t, false);
    let bytes = std::fs::read(&t).unwrap();
    std::fs::write(&t, &bytes[..bytes.len() / 2 + 100]).unwrap();
    refused(&t, &["truncated or corrupt"]);
    std::fs::write(
        &t,
        b"this is not an archive at all, not even close; it is text.",
    )
    .unwrap();
    refused(&t, &["b.tar"]);
    // A file that fails its checksum.
    let mut onnx = std::fs::read(b.join("qformer.onnx")).unwrap();
    onnx[5000] ^= 0x40;
    std::fs::write(b.join("qformer.onnx"), &onnx).unwrap();
    refused(&b, &["qformer.onnx", "sha256"]);
    // Another bundle format version.
    copy_default_bundle(&b);
    let m = std::fs::read_to_string(b.join("bundle.toml")).unwrap();
    std::fs::write(
        b.join("bundle.toml"),
        m.replace("format_version = 1", "format_version = 9"),
    )
    .unwrap();
    refused(&b, &["format_version", "is 9"]);
    // A path leaving the folder.
    let evil = f.root.join("evil.tar");
    let mut h = vec![0u8; 512];
    h[..9].copy_from_slice(b"../escape");
    h[100..107].copy_from_slice(b"000644\0");
    h[124..136].copy_from_slice(b"00000000001\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h.extend_from_slice(&[b'x'; 1]);
    h.resize(512 * 4, 0);
    std::fs::write(&evil, &h).unwrap();
    refused(&evil, &["../escape", "outside the bundle folder"]);
    assert!(!f.root.join("escape").exists() && !f.store.join("escape").exists());
    // Names.
    models(
        &f.store,
        &["install", default.to_str().unwrap(), "--name", "../x"],
    )
    .code(2)
    .stderr_has(&["model name `../x` is not usable"]);
    assert_eq!(marks(&f.store), active);
}

#[test]
fn signed_bundles_when_a_public_key_is_given() {
    native_only!("signed bundles");
    let f = fixture();
    let keys = f.root.join("fleet");
    models(&f.store, &["keygen", keys.to_str().unwrap()]).code(0);
    let (sk, pk) = (keys.with_extension("key"), keys.with_extension("pub"));
    let other = f.root.join("other");
    models(&f.store, &["keygen", other.to_str().unwrap()]).code(0);
    let b = f.root.join("b");
    copy_default_bundle(&b);
    let install = |name: &str| {
        models(
            &f.store,
            &[
                "install",
                b.to_str().unwrap(),
                "--name",
                name,
                "--public-key",
                pk.to_str().unwrap(),
            ],
        )
    };
    install("unsigned").code(1).stderr_has(&["not signed"]);
    models(
        &f.store,
        &[
            "sign",
            b.to_str().unwrap(),
            "--secret-key",
            other.with_extension("key").to_str().unwrap(),
        ],
    )
    .code(0);
    install("wrong").code(1).stderr_has(&["does not match"]);
    models(
        &f.store,
        &[
            "sign",
            b.to_str().unwrap(),
            "--secret-key",
            sk.to_str().unwrap(),
        ],
    )
    .code(0);
    install("signed").code(0);
    // Changing the manifest after signing breaks the signature.
    let m = std::fs::read_to_string(b.join("bundle.toml")).unwrap();
    std::fs::write(
        b.join("bundle.toml"),
        m.replace("version = \"1.0.0\"", "version = \"1.0.1\""),
    )
    .unwrap();
    install("changed").code(1).stderr_has(&["does not match"]);
    assert_eq!(marks(&f.store).0.as_deref(), Some("signed"));
    models(
        &f.store,
        &[
            "install",
            b.to_str().unwrap(),
            "--public-key",
            "/nonexistent.pub",
        ],
    )
    .code(2)
    .stderr_has(&["/nonexistent.pub"]);
}

/// A tmpfs mounted at a path, unmounted when dropped (also when an assertion fails).
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Mount a tmpfs with `opts` at `at`; `None` where this machine does not allow it (not root, a
/// container without CAP_SYS_ADMIN).
fn tmpfs(at: &Path, opts: &str) -> Option<Tmpfs> {
    std::fs::create_dir_all(at).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Tmpfs(at.to_path_buf()))
}

#[test]
fn a_full_or_read_only_models_folder_is_refused_cleanly() {
    native_only!("a full or read-only models folder");
    let f = fixture();
    let small = f.root.join("small");
    let Some(_mounted) = tmpfs(&small, "size=6m") else {
        println!("SKIPPED: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the full-disk and read-only cases were not run");
        return;
    };
    // The bundle without its text tower (4.7 MiB) fits in 6 MiB; the whole one (12.8 MiB) does not.
    let tiny = f.root.join("tiny");
    copy_default_bundle(&tiny);
    let m = std::fs::read_to_string(tiny.join("bundle.toml")).unwrap();
    let start = m.find("[text_encoder]").unwrap();
    let end = m[start..].find("[text_embeddings]").unwrap() + start;
    std::fs::write(
        tiny.join("bundle.toml"),
        format!("{}{}", &m[..start], &m[end..]),
    )
    .unwrap();
    std::fs::remove_file(tiny.join("text_encoder.onnx")).unwrap();
    let store = small.join("models");
    models(
        &store,
        &["install", tiny.to_str().unwrap(), "--name", "tiny"],
    )
    .code(0);
    let default = repo().join("models/default");
    models(
        &store,
        &["install", default.to_str().unwrap(), "--name", "big"],
    )
    .code(1)
    .stderr_has(&["no space left on the device"]);
    assert_eq!(marks(&store), (Some("tiny".into()), None));
    assert!(info_bundle(&store).contains("/versions/tiny)"));
    let mut left: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["active", "previous", "state", "states", "versions"],
        "staging left behind"
    );
    // A read-only models folder.
    let ro = f.root.join("ro");
    let _ro = tmpfs(&ro, "ro,size=1m").expect("a read-only tmpfs where a tmpfs mounts");
    models(&ro, &["install", default.to_str().unwrap()])
        .code(1)
        .stderr_has(&["not writable", "--models-dir"]);
}

/// A temporary folder in /dev/shm where there is one: the kill-at-each-write test runs ~50
/// installs, each of which fsyncs every file (free on tmpfs; seconds on a busy disk).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

/// Run `models <args>` with `EDGEFUSE_CRASH_AT=n`; whether it was killed at the crash point.
fn killed_at(n: usize, store: &Path, args: &[&str]) -> bool {
    let mut full = vec!["models", "--models-dir", store.to_str().unwrap()];
    full.extend_from_slice(args);
    let out = edgefuse_command()
        .args(&full)
        .env_remove("EDGEFUSE_MODEL")
        .env_remove("RUST_LOG")
        .env("EDGEFUSE_CRASH_AT", n.to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        assert!(!err.contains("EDGEFUSE_CRASH_AT"), "N={n}: {err}");
        return false;
    }
    assert!(
        err.contains(&format!("EDGEFUSE_CRASH_AT={n}: aborting before")),
        "models {args:?} N={n} failed without reaching the crash point: {err}"
    );
    true
}

/// Kill `models <args>` at each of its writes on a copy of the store `template`; after each
/// kill the active model must be `before` or `after` and load (`info` opens it), and the
/// interrupted command must then complete (an install killed after its version was renamed into
/// place is finished by `activate`, as its refusal says). Returns the number of writes.
fn killed_at_each_write(
    what: &str,
    template: &Path,
    args: &[&str],
    before: &str,
    after: &str,
) -> usize {
    for n in 1.. {
        let tmp = scratch();
        let store = tmp.path().join("models");
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(&store)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cp -a {}", template.display());
        let killed = killed_at(n, &store, args);
        let (active, _) = marks(&store);
        let active =
            active.unwrap_or_else(|| panic!("{what} killed at write {n}: no active model"));
        assert!(
            active == before || active == after,
            "{what} killed at write {n}: active {active}"
        );
        assert!(info_bundle(&store).contains(&format!("/versions/{active})")));
        if !killed {
            assert_eq!(active, after, "{what} completed");
            return n - 1;
        }
        // The command must complete after the kill (checked at every other kill to keep the
        // test within its budget: each retry is a full validation). An install killed after its
        // version was renamed into place (the `activate` path) is retried at every kill.
        let interrupted_install =
            args[0] == "install" && store.join("versions").join(after).exists();
        if active == before && (interrupted_install || n % 2 == 0) {
            let r = models(&store, args);
            if r.stderr().contains("is installed already") {
                models(&store, &["activate", after]).code(0);
            } else {
                r.code(0);
            }
            assert_eq!(
                marks(&store).0.as_deref(),
                Some(after),
                "{what} after a kill at write {n}"
            );
        }
        assert!(n < 200, "{what}: no end to the writes");
    }
    unreachable!()
}

#[test]
fn install_activate_rollback_killed_at_each_write_keep_a_loadable_active_model() {
    native_only!("one process start and test inference per write");
    let t0 = std::time::Instant::now();
    let src = scratch();
    let b = src.path().join("b");
    copy_default_bundle(&b);
    let tar = src.path().join("b.tar");
    archive(&b, &tar, false);
    let default = repo().join("models/default");
    let default = default.to_str().unwrap();
    let one = src.path().join("one");
    models(&one, &["install", default, "--name", "v1"]).code(0);
    let two = src.path().join("two");
    models(&two, &["install", default, "--name", "v1"]).code(0);
    models(&two, &["install", default, "--name", "v2"]).code(0);
    let w = killed_at_each_write(
        "install",
        &one,
        &["install", tar.to_str().unwrap(), "--name", "v2"],
        "v1",
        "v2",
    );
    println!(
        "models install: killed at each of its {w} writes; the active model loaded every time"
    );
    assert!(w >= 20, "{w} writes: the crash points are not reached");
    let w = killed_at_each_write("activate", &two, &["activate", "v1"], "v2", "v1");
    println!("models activate: killed at each of its {w} writes");
    assert!(w >= 4, "{w} writes");
    let w = killed_at_each_write("rollback", &two, &["rollback"], "v2", "v1");
    println!(
        "models rollback: killed at each of its {w} writes ({:.1} s for the three)",
        t0.elapsed().as_secs_f64()
    );
    assert!(w >= 4, "{w} writes");
}
