//! Shared helpers for the edgefuse cross-crate tests: where the bundled model, samples and
//! fixtures live, and ground-truth label files.

pub mod fuzz;
pub mod mosquitto;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The repository root: `$EDGEFUSE_REPO` when set (test binaries built on one machine and run
/// from another checkout, as `scripts/gpu-check --prepare` does), else where this crate was built.
pub fn repo() -> PathBuf {
    match std::env::var_os("EDGEFUSE_REPO") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

/// The bundled default model.
pub fn default_bundle() -> PathBuf {
    repo().join("models/default")
}

/// A folder of bundled sample frames (`mnist` or `camera`).
pub fn samples(name: &str) -> PathBuf {
    repo().join("models/samples").join(name)
}

/// A test fixture file.
pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// `file -> label` from a samples folder's `labels.csv`.
pub fn ground_truth(dir: &std::path::Path) -> BTreeMap<String, String> {
    edgefuse_calibration::truth::read_labels_csv(dir).expect("labels.csv")
}

/// Copy a bundle folder into a fresh temporary folder (for tests that damage it).
pub fn copy_bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(default_bundle()).expect("bundle") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), dir.path().join(e.file_name())).expect("copy");
    }
    dir
}

/// Replace `field = ...` line values in a bundle's manifest text.
pub fn edit_manifest(dir: &std::path::Path, edit: impl FnOnce(String) -> String) {
    let p = dir.join("bundle.toml");
    let text = std::fs::read_to_string(&p).expect("manifest");
    std::fs::write(&p, edit(text)).expect("write manifest");
}
