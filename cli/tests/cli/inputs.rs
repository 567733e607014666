//! Bad input: unknown URIs and formats, missing cameras and models, broken files, bad flags —
//! a clear message, the right exit code, no panic.

use crate::*;

#[test]
fn unknown_uri_scheme_is_a_usage_error() {
    native_only!("URI scheme errors");
    Run::new(&["run", "--source", "ftp://camera.local/stream"])
        .code(2)
        .stderr_has(&["ftp://camera.local/stream", "v4l2://"]);
    Run::new(&["run", "--source", "/dev/video0"])
        .code(2)
        .stderr_has(&["unknown source URI"]);
}

#[test]
fn unsupported_pixel_format_is_a_usage_error() {
    native_only!("pixel format errors");
    Run::new(&[
        "run",
        "--source",
        "synthetic://?format=bayer",
        "--frames",
        "1",
    ])
    .code(2)
    .stderr_has(&["format=bayer", "yuyv"]);
}

#[test]
fn missing_camera_is_a_clear_error() {
    native_only!("the missing-camera error");
    Run::new(&["run", "--source", "v4l2:///dev/video99"])
        .code(1)
        .stderr_has(&["/dev/video99"]);
}

#[test]
fn missing_model_folder_is_a_clear_error() {
    native_only!("the missing-model error");
    Run::new(&["run", "--model", "/nonexistent/bundle"])
        .code(1)
        .stderr_has(&["/nonexistent/bundle", "bundle.toml"]);
}

#[test]
fn truncated_and_non_image_files_are_skipped_by_name() {
    native_only!("skipping broken files");
    let tmp = tempfile::tempdir().unwrap();
    let src = repo().join("models/samples/mnist");
    std::fs::copy(src.join("mnist_00000.png"), tmp.path().join("a.png")).unwrap();
    std::fs::copy(src.join("mnist_00001.png"), tmp.path().join("c.png")).unwrap();
    let bytes = std::fs::read(src.join("mnist_00002.png")).unwrap();
    std::fs::write(tmp.path().join("b.png"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "hello").unwrap();
    std::fs::write(tmp.path().join("d.jpg"), "not a jpeg").unwrap();
    let uri = format!("file://{}", tmp.path().display());
    let r = Run::new(&["run", "--source", &uri, "--json"]);
    r.code(0).stderr_has(&[
        "b.png",
        "d.jpg",
        "notes.txt",
        "2 images undecodable",
        "1 files skipped",
    ]);
    assert_eq!(r.stdout().lines().count(), 2, "{}", r.context());
}

#[test]
fn folder_of_only_broken_images_fails() {
    native_only!("a folder of broken images");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("x.png"), "garbage").unwrap();
    let uri = format!("file://{}", tmp.path().display());
    Run::new(&["run", "--source", &uri])
        .code(1)
        .stderr_has(&["x.png", "could be decoded"]);
}

#[test]
fn bad_flags_are_usage_errors() {
    native_only!("flag validation");
    Run::new(&["run", "--top-k", "0"]).code(2);
    Run::new(&["run", "--threshold", "1.5"])
        .code(2)
        .stderr_has(&["between 0 and 1"]);
    Run::new(&["run", "--trigger", "sometimes"])
        .code(2)
        .stderr_has(&["unknown trigger"]);
    Run::new(&["run", "--fire-wins", "3", "--window", "2"])
        .code(2)
        .stderr_has(&["--fire-wins"]);
    Run::new(&["run", "--label-threshold", "eleven=0.5"])
        .code(2)
        .stderr_has(&["no label `eleven`"]);
    Run::new(&["frobnicate"]).code(2);
}

#[test]
fn tiny_huge_and_non_finite_fps_are_usage_errors() {
    native_only!("fps range errors");
    let samples = repo().join("models/samples/mnist");
    for uri in [
        "synthetic://?fps=1e-20".to_string(),
        "synthetic://?fps=inf".to_string(),
        format!("file://{}?fps=1e-300", samples.display()),
        format!("file://{}?fps=1e9", samples.display()),
    ] {
        let value = uri.rsplit_once("fps=").unwrap().1.to_string();
        Run::new(&["run", "--source", &uri, "--frames", "1"])
            .code(2)
            .stderr_has(&[&format!("fps={value}"), "0.0001", "10000"]);
    }
}

#[test]
fn bundle_file_linked_to_a_device_or_a_fifo_is_refused_at_once() {
    native_only!("bundle file reading");
    let tmp = tempfile::tempdir().unwrap();
    copy_default_bundle(tmp.path());
    let m = tmp.path().to_str().unwrap();
    let emb = tmp.path().join("text_embeddings.bin");
    std::fs::remove_file(&emb).unwrap();
    // Used to read /dev/zero without end.
    std::os::unix::fs::symlink("/dev/zero", &emb).unwrap();
    Run::within(30, &["info", "--model", m])
        .code(1)
        .stderr_has(&[
            "text_embeddings.bin",
            "a character device, not a regular file",
        ]);
    // Used to block forever.
    std::fs::remove_file(&emb).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&emb).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    Run::within(30, &["labels", "list", "--model", m])
        .code(1)
        .stderr_has(&["text_embeddings.bin", "a FIFO, not a regular file"]);
    // The manifest itself.
    let manifest = tmp.path().join("bundle.toml");
    std::fs::remove_file(&manifest).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &manifest).unwrap();
    Run::within(30, &["info", "--model", m])
        .code(1)
        .stderr_has(&["bundle.toml", "a character device, not a regular file"]);
}

#[test]
fn source_names_are_whole_escaped_and_percent_decoded() {
    native_only!("architecture-independent");
    let sample = repo().join("models/samples/mnist/mnist_00000.png");
    // A folder path longer than 1,024 bytes, and a file name with `?`, `%`, a newline and a
    // terminal escape sequence.
    let dir = tempfile::tempdir().unwrap();
    let deep = (0..6).fold(dir.path().to_path_buf(), |p, i| {
        p.join(format!("{i}{}", "d".repeat(199)))
    });
    std::fs::create_dir_all(&deep).unwrap();
    let name = "a?b%\n\x1b[31mc.png";
    std::fs::copy(&sample, deep.join(name)).unwrap();
    let full = deep.join(name).display().to_string();
    assert!(full.len() > 1100);
    let encoded = full.replace('%', "%25").replace('?', "%3F");
    let uri = format!("file://{encoded}");

    let r = Run::new(&["run", "--source", &uri, "--json"]);
    let lines = r.code(0).json_lines();
    assert_eq!(lines.len(), 1, "{}", r.context());
    assert_eq!(
        lines[0]["source"].as_str(),
        Some(full.as_str()),
        "cut or mangled"
    );

    let r = Run::new(&["run", "--source", &uri]);
    let out = r.code(0).stdout();
    assert!(
        !out.contains('\x1b'),
        "an escape sequence reached the terminal\n{out:?}"
    );
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with("frame") && first.contains("a?b%\\n\\x1b[31mc.png"),
        "{first:?}"
    );
    assert!(out.lines().nth(1).unwrap().starts_with("summary:"), "{out}");

    // A file name that is not UTF-8 is named by its bytes, not U+FFFD.
    let other = tempfile::tempdir().unwrap();
    let raw = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xffz.png");
    std::fs::copy(&sample, other.path().join(raw)).unwrap();
    let r = Run::new(&[
        "run",
        "--source",
        &format!("file://{}", other.path().display()),
    ]);
    r.code(0);
    assert!(r.stdout().contains("\\xffz.png"), "{}", r.context());
}

#[test]
fn a_device_that_is_not_a_camera_is_refused() {
    native_only!("architecture-independent");
    Run::new(&["info", "--camera", "/dev/null"])
        .code(1)
        .stderr_has(&["/dev/null", "not a V4L2 camera"]);
    Run::new(&["run", "--source", "v4l2:///dev/null"])
        .code(1)
        .stderr_has(&["/dev/null", "not a V4L2 camera"]);
}
