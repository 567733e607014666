use super::*;

fn default_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("default")
}

fn pass(_: &Bundle) -> Result<String, String> {
    Ok("ok".into())
}

#[test]
fn install_activate_rollback_switch_the_active_link() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("models"));
    assert_eq!(store.active(), None);
    assert!(matches!(
        store.rollback(None, &mut pass),
        Err(StoreError::NoPrevious { .. })
    ));
    let a = store
        .install(&default_bundle(), Some("a"), None, &mut pass)
        .unwrap();
    assert_eq!((a.name.as_str(), a.replaced.as_deref()), ("a", None));
    let b = store
        .install(&default_bundle(), None, None, &mut pass)
        .unwrap();
    assert_eq!(b.name, "edgefuse-mnist-clip-1.0.0");
    assert_eq!(store.active().as_deref(), Some("edgefuse-mnist-clip-1.0.0"));
    assert_eq!(store.previous().as_deref(), Some("a"));
    assert_eq!(
        store.active_dir().unwrap(),
        std::fs::canonicalize(store.dir().join("versions/edgefuse-mnist-clip-1.0.0")).unwrap()
    );
    let (to, _) = store.rollback(None, &mut pass).unwrap();
    assert_eq!(to, "a");
    assert_eq!(store.active().as_deref(), Some("a"));
    assert_eq!(
        store.previous().as_deref(),
        Some("edgefuse-mnist-clip-1.0.0")
    );
    let e = store
        .install(&default_bundle(), Some("a"), None, &mut pass)
        .unwrap_err();
    assert!(matches!(e, StoreError::Exists { .. }), "{e}");
    let e = store.activate("nope", None, &mut pass).unwrap_err();
    assert!(
        e.to_string()
            .contains("installed: a, edgefuse-mnist-clip-1.0.0"),
        "{e}"
    );
    let e = store
        .install(&default_bundle(), Some("../x"), None, &mut pass)
        .unwrap_err();
    assert!(matches!(e, StoreError::BadName { .. }), "{e}");
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0].active && !listed[0].previous && listed[1].previous);
    // Nothing else is left in the models folder.
    let mut names: Vec<String> = std::fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["active", "previous", "state", "states", "versions"]);
}

#[test]
fn a_failing_test_inference_or_checksum_leaves_the_active_model() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("models"));
    store
        .install(&default_bundle(), Some("good"), None, &mut pass)
        .unwrap();
    let mut fail = |_: &Bundle| Err::<String, String>("3 of 3 samples wrong".into());
    let e = store
        .install(&default_bundle(), Some("bad"), None, &mut fail)
        .unwrap_err();
    assert!(e.to_string().contains("3 of 3 samples wrong"), "{e}");
    // A corrupt file: the checksum catches it.
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(default_bundle()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let mut bytes = std::fs::read(copy.join("qformer.onnx")).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(copy.join("qformer.onnx"), bytes).unwrap();
    let e = store
        .install(&copy, Some("corrupt"), None, &mut pass)
        .unwrap_err();
    assert!(e.to_string().contains("sha256"), "{e}");
    // Another format version.
    let text = std::fs::read_to_string(default_bundle().join("bundle.toml")).unwrap();
    let newer = text.replace("format_version = 1", "format_version = 2");
    assert_ne!(newer, text);
    std::fs::write(copy.join("bundle.toml"), newer).unwrap();
    let e = store
        .install(&copy, Some("v2"), None, &mut pass)
        .unwrap_err();
    assert!(e.to_string().contains("format_version"), "{e}");
    assert_eq!(store.active().as_deref(), Some("good"));
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_dir(store.dir()).unwrap().count(),
        5,
        "no staging left"
    );
}

#[test]
fn a_configured_key_refuses_unsigned_and_wrongly_signed_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("models"));
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let other = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
    let vk = key.verifying_key();
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(default_bundle()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let e = store
        .install(&copy, Some("u"), Some(&vk), &mut pass)
        .unwrap_err();
    assert!(e.to_string().contains("not signed"), "{e}");
    sign_bundle(&copy, &other).unwrap();
    let e = store
        .install(&copy, Some("w"), Some(&vk), &mut pass)
        .unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    sign_bundle(&copy, &key).unwrap();
    let r = store
        .install(&copy, Some("s"), Some(&vk), &mut pass)
        .unwrap();
    assert!(r.signed);
    assert_eq!(store.active().as_deref(), Some("s"));
}

#[test]
fn a_models_folder_that_is_a_file_is_not_writable() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), b"").unwrap();
    let store = Store::new(tmp.path().join("f"));
    let e = store
        .install(&default_bundle(), None, None, &mut pass)
        .unwrap_err();
    assert!(matches!(e, StoreError::NotWritable { .. }), "{e}");
}

#[test]
fn a_full_disk_is_named_as_such() {
    let e = io_err(
        Path::new("/m/versions/x"),
        "write",
        std::io::Error::from(std::io::ErrorKind::StorageFull),
    );
    assert!(matches!(e, StoreError::NoSpace { .. }), "{e}");
    assert!(e.to_string().contains("no space left"), "{e}");
    let e = io_err(Path::new("/m"), "write", std::io::Error::other("x"));
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
}
