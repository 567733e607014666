//! ed25519 signatures over a bundle's manifest: keys as hex text files, the signature as
//! `bundle.sig` (hex) next to `bundle.toml`. The manifest carries the sha256 of every other file,
//! so signing it covers the models and embeddings too.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::StoreError;
use crate::files;

/// Name of the signature file inside a bundle folder.
pub const SIGNATURE_FILE: &str = "bundle.sig";

/// What is signed: this prefix, then the bytes of `bundle.toml` (so a signature made for
/// something else can never pass as a bundle's).
const CONTEXT: &[u8] = b"edgefuse bundle manifest v1\0";

fn message(manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + manifest.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(manifest);
    m
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from hex text (surrounding white space ignored); `None` if it is not that.
fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let t = text.trim().as_bytes();
    if t.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in t.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn read_key_text(path: &Path) -> Result<String, StoreError> {
    files::read_text_limited(path, 4096).map_err(|e| StoreError::Key {
        path: path.to_path_buf(),
        message: format!("cannot read it ({e})"),
    })
}

/// A public key file: 64 hex digits (32 bytes), as `edgefuse models keygen` writes.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, StoreError> {
    let bad = |m: &str| StoreError::Key {
        path: path.to_path_buf(),
        message: m.to_string(),
    };
    let bytes = from_hex::<32>(&read_key_text(path)?)
        .ok_or_else(|| bad("is not an ed25519 public key (64 hex digits)"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad("is not a valid ed25519 public key"))
}

/// A secret key file: 64 hex digits (the 32-byte seed).
pub fn read_secret_key(path: &Path) -> Result<SigningKey, StoreError> {
    let bytes = from_hex::<32>(&read_key_text(path)?).ok_or_else(|| StoreError::Key {
        path: path.to_path_buf(),
        message: "is not an ed25519 secret key (64 hex digits)".into(),
    })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// A key pair from a 32-byte seed (from the system's random source: the caller reads it).
/// Returns the secret and public key as hex text.
pub fn keypair_hex(seed: &[u8; 32]) -> (String, String) {
    let k = SigningKey::from_bytes(seed);
    (to_hex(seed), to_hex(k.verifying_key().as_bytes()))
}

/// Sign the bundle in `dir`: writes `bundle.sig` (durably) over its current `bundle.toml`.
pub fn sign_bundle(dir: &Path, key: &SigningKey) -> Result<PathBuf, StoreError> {
    let manifest_path = dir.join(crate::MANIFEST_FILE);
    let manifest = files::read_limited(&manifest_path, files::MAX_MANIFEST_BYTES).map_err(|e| {
        StoreError::Signature {
            bundle: dir.to_path_buf(),
            message: format!("cannot read {} ({e})", manifest_path.display()),
        }
    })?;
    let sig = key.sign(&message(&manifest));
    let out = dir.join(SIGNATURE_FILE);
    files::write_synced(&out, format!("{}\n", to_hex(&sig.to_bytes())).as_bytes()).map_err(
        |error| StoreError::Io {
            path: out.clone(),
            action: "write",
            error,
        },
    )?;
    Ok(out)
}

/// Check `bundle.sig` in `dir` against its `bundle.toml` and `key`.
pub fn verify_bundle(dir: &Path, key: &VerifyingKey) -> Result<(), StoreError> {
    let err = |message: String| StoreError::Signature {
        bundle: dir.to_path_buf(),
        message,
    };
    let sig_path = dir.join(SIGNATURE_FILE);
    if !sig_path.exists() {
        return Err(err(format!(
            "the bundle is not signed (no {SIGNATURE_FILE}) and a public key is configured; \
             sign it with `edgefuse models sign` and the matching secret key"
        )));
    }
    let text = files::read_text_limited(&sig_path, 4096)
        .map_err(|e| err(format!("cannot read {SIGNATURE_FILE} ({e})")))?;
    let bytes = from_hex::<64>(&text).ok_or_else(|| {
        err(format!(
            "{SIGNATURE_FILE} is not an ed25519 signature (128 hex digits)"
        ))
    })?;
    let manifest_path = dir.join(crate::MANIFEST_FILE);
    let manifest = files::read_limited(&manifest_path, files::MAX_MANIFEST_BYTES)
        .map_err(|e| err(format!("cannot read {} ({e})", manifest_path.display())))?;
    key.verify_strict(&message(&manifest), &Signature::from_bytes(&bytes))
        .map_err(|_| {
            err(format!(
                "{SIGNATURE_FILE} does not match bundle.toml and the configured public key \
                 (signed with another key, or the manifest was changed after signing)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_bad_text() {
        assert_eq!(from_hex::<2>(" 0aff\n"), Some([0x0a, 0xff]));
        assert_eq!(from_hex::<2>("0af"), None);
        assert_eq!(from_hex::<2>("0afg"), None);
        assert_eq!(to_hex(&[0x0a, 0xff]), "0aff");
    }

    #[test]
    fn a_signature_covers_the_manifest_and_only_the_right_key_passes() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("bundle.toml"), b"name = \"x\"\n").unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let e = verify_bundle(tmp.path(), &key.verifying_key()).unwrap_err();
        assert!(e.to_string().contains("not signed"), "{e}");
        sign_bundle(tmp.path(), &key).unwrap();
        verify_bundle(tmp.path(), &key.verifying_key()).unwrap();
        let e = verify_bundle(tmp.path(), &other.verifying_key()).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        std::fs::write(tmp.path().join("bundle.toml"), b"name = \"y\"\n").unwrap();
        let e = verify_bundle(tmp.path(), &key.verifying_key()).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
    }
}
