//! Bad bundles are reported with the file and field, never a panic.

use edgefuse_models::{sha256_hex, Bundle};
use edgefuse_runtime::engine::TractEngine;
use edgefuse_tests::{copy_bundle, edit_manifest};

fn open_err(dir: &std::path::Path) -> String {
    match Bundle::open(dir) {
        Err(e) => e.to_string(),
        Ok(b) => match TractEngine::new(&b) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("bundle in {} unexpectedly loaded", dir.display()),
        },
    }
}

/// Replace a file and fix its checksum in the manifest so only the content is wrong.
fn replace_file(dir: &std::path::Path, file: &str, bytes: &[u8]) {
    let old = sha256_hex(&std::fs::read(dir.join(file)).unwrap());
    std::fs::write(dir.join(file), bytes).unwrap();
    let new = sha256_hex(bytes);
    edit_manifest(dir, |t| t.replace(&old, &new));
}

#[test]
fn missing_manifest() {
    let d = tempfile::tempdir().unwrap();
    let e = open_err(d.path());
    assert!(e.contains("bundle.toml") && e.contains("--model"), "{e}");
}

#[test]
fn missing_model_file() {
    let d = copy_bundle();
    std::fs::remove_file(d.path().join("qformer.onnx")).unwrap();
    let e = open_err(d.path());
    assert!(
        e.contains("qformer.onnx") && e.contains("qformer.file"),
        "{e}"
    );
}

#[test]
fn checksum_mismatch() {
    let d = copy_bundle();
    let mut bytes = std::fs::read(d.path().join("image_encoder.onnx")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(d.path().join("image_encoder.onnx"), bytes).unwrap();
    let e = open_err(d.path());
    assert!(
        e.contains("image_encoder.onnx") && e.contains("sha256") && e.contains("encoder.file"),
        "{e}"
    );
}

#[test]
fn corrupt_onnx() {
    let d = copy_bundle();
    replace_file(
        d.path(),
        "image_encoder.onnx",
        b"this is not a protobuf model at all",
    );
    let e = open_err(d.path());
    assert!(
        e.contains("image_encoder.onnx") && e.contains("not a loadable ONNX model"),
        "{e}"
    );
}

#[test]
fn truncated_onnx() {
    let d = copy_bundle();
    let bytes = std::fs::read(d.path().join("qformer.onnx")).unwrap();
    replace_file(d.path(), "qformer.onnx", &bytes[..bytes.len() / 3]);
    let e = open_err(d.path());
    assert!(e.contains("qformer.onnx"), "{e}");
}

#[test]
fn label_embedding_width_differs_from_encoder() {
    let d = copy_bundle();
    // 10 labels x 48 wide instead of 64.
    let bytes: Vec<u8> = (0..10 * 48)
        .flat_map(|i| (1.0f32 + i as f32).to_le_bytes())
        .collect();
    replace_file(d.path(), "text_embeddings.bin", &bytes);
    let e = open_err(d.path());
    assert!(
        e.contains("text_embeddings.bin") && e.contains("embedding_dim"),
        "{e}"
    );
}

#[test]
fn encoder_width_differs_from_manifest() {
    let d = copy_bundle();
    // Claim a 48-wide embedding and ship 10 x 48 label rows: the ONNX output (64) disagrees.
    let bytes: Vec<u8> = (0..10 * 48)
        .flat_map(|i| (1.0f32 + i as f32).to_le_bytes())
        .collect();
    replace_file(d.path(), "text_embeddings.bin", &bytes);
    edit_manifest(d.path(), |t| {
        t.replace("embedding_dim = 64", "embedding_dim = 48")
    });
    let e = open_err(d.path());
    assert!(
        e.contains("image_encoder.onnx") && e.contains("[1, 64]") && e.contains("48"),
        "{e}"
    );
}

#[test]
fn label_count_differs_from_embedding_rows() {
    let d = copy_bundle();
    edit_manifest(d.path(), |t| {
        let cut = t.rfind("[[labels]]").unwrap();
        t[..cut].to_string()
    });
    let e = open_err(d.path());
    assert!(e.contains("10 rows") && e.contains("9 labels"), "{e}");
}

#[test]
fn input_shape_mismatch() {
    let d = copy_bundle();
    edit_manifest(d.path(), |t| {
        t.replace("image_size = [32, 32]", "image_size = [48, 48]")
    });
    let e = open_err(d.path());
    assert!(
        e.contains("image_encoder.onnx") && e.contains("encoder.input") && e.contains("48"),
        "{e}"
    );
}

#[test]
fn unknown_manifest_key_and_bad_values() {
    let d = copy_bundle();
    edit_manifest(d.path(), |t| {
        t.replace(
            "channel_order = \"rgb\"",
            "channel_order = \"rgb\"\ncolour = 1",
        )
    });
    let e = open_err(d.path());
    assert!(e.contains("colour") && e.contains("line"), "{e}");
    let d = copy_bundle();
    edit_manifest(d.path(), |t| t.replacen("weight = 0.5", "weight = -1.0", 1));
    let e = open_err(d.path());
    assert!(e.contains("fusion.clip.weight"), "{e}");
}

/// The message as `edgefuse` prints it: the error and its sources (anyhow's `{:#}`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[test]
fn os_errors_are_printed_once() {
    let d = tempfile::tempdir().unwrap();
    let missing = Bundle::open(d.path()).unwrap_err();
    let m = chain(&missing);
    assert_eq!(m.matches("No such file or directory").count(), 1, "{m}");

    let b = copy_bundle();
    std::fs::remove_file(b.path().join("text_embeddings.bin")).unwrap();
    let m = chain(&Bundle::open(b.path()).unwrap_err());
    assert_eq!(m.matches("No such file or directory").count(), 1, "{m}");

    let write = edgefuse_models::BundleError::Write {
        path: "/ro/bundle.toml".into(),
        error: std::io::Error::from_raw_os_error(30),
    };
    let m = chain(&write);
    assert_eq!(m.matches("Read-only file system").count(), 1, "{m}");
}
