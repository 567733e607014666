//! Opening a bundle folder: the manifest, every file's sha256, the label embeddings and the
//! int8 calibration tables.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::validate::{label_embeddings, validate_fields};
use super::{Bundle, QuantTables, MANIFEST_FILE};
use crate::files::{
    read_limited, read_text_limited, MAX_MANIFEST_BYTES, MAX_MODEL_BYTES, MAX_TABLE_BYTES,
};
use crate::fitted::FittedParams;
use crate::manifest::{FileRef, Manifest};
use crate::BundleError;

impl Bundle {
    /// Open `dir/bundle.toml`, check every field and every file checksum, and read the label
    /// embeddings. ONNX graphs are parsed later by [`Bundle::load_encoder`] and friends.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = read_text_limited(&manifest_path, MAX_MANIFEST_BYTES).map_err(|error| {
            BundleError::ManifestRead {
                path: manifest_path.clone(),
                error,
            }
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| BundleError::ManifestParse {
            path: manifest_path.clone(),
            message: e.to_string(),
        })?;
        let bundle = Self::from_manifest(dir, manifest)?;
        log::info!(
            "bundle {} {} from {}: {} labels, embedding {}, q-former {}",
            bundle.manifest.name,
            bundle.manifest.version,
            bundle.dir.display(),
            bundle.manifest.labels.len(),
            bundle.manifest.encoder.embedding_dim,
            if bundle.manifest.qformer.is_some() {
                "yes"
            } else {
                "no"
            }
        );
        Ok(bundle)
    }

    /// Parse and check manifest text as [`Bundle::open`] does before it looks at any file (for
    /// tools and the fuzz tests); `path` names it in errors.
    pub fn check_manifest_text(text: &str, path: &Path) -> Result<Manifest, BundleError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| BundleError::ManifestParse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let field_err = |field: &str, message: String| BundleError::Field {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        validate_fields(&manifest, &field_err)?;
        Ok(manifest)
    }

    /// Validate an in-memory manifest against the files of `dir`.
    pub fn from_manifest(dir: PathBuf, manifest: Manifest) -> Result<Self, BundleError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let field_err = |field: &str, message: String| BundleError::Field {
            path: manifest_path.clone(),
            field: field.to_string(),
            message,
        };
        validate_fields(&manifest, &field_err)?;
        let m = &manifest;
        verify_file(&dir, &m.encoder.model, "encoder.file", MAX_MODEL_BYTES)?;
        if let Some(q) = &m.qformer {
            verify_file(&dir, &q.model, "qformer.file", MAX_MODEL_BYTES)?;
        }
        if let Some(t) = &m.text_encoder {
            verify_file(&dir, &t.model, "text_encoder.file", MAX_MODEL_BYTES)?;
        }
        if let Some(r) = &m.rerank {
            verify_file(&dir, &r.model, "rerank.file", MAX_MODEL_BYTES)?;
        }
        let raw = verify_file(
            &dir,
            &m.text_embeddings.data,
            "text_embeddings.file",
            MAX_MODEL_BYTES,
        )?;
        let path = dir.join(&m.text_embeddings.data.file);
        let label_embeddings = label_embeddings(&raw, m, path)?;
        let quant = match &manifest.quantization {
            Some(q) => {
                let raw = verify_file(&dir, &q.table, "quantization.table", MAX_TABLE_BYTES)?;
                let tables: QuantTables =
                    serde_json::from_slice(&raw).map_err(|e| BundleError::Field {
                        path: dir.join(&q.table.file),
                        field: "quantization.table".into(),
                        message: format!(
                            "not a calibration table ({e}); re-run `edgefuse calibrate` to rebuild the int8 bundle"
                        ),
                    })?;
                if manifest.qformer.is_some() != tables.qformer.is_some() {
                    return Err(BundleError::Field {
                        path: dir.join(&q.table.file),
                        field: "quantization.table".into(),
                        message: "the table's Q-Former section does not match the manifest's [qformer]; re-run `edgefuse calibrate`".into(),
                    });
                }
                Some(tables)
            }
            None => None,
        };
        let fitted = match &manifest.fusion_fitted {
            Some(f) => Some(read_fitted(&dir, &manifest, f)?),
            None => None,
        };
        Ok(Self {
            dir,
            manifest,
            label_embeddings,
            quant,
            fitted,
            runtime: None,
        })
    }
}

/// Read and check the fitted fusion parameters `[fusion_fitted]` names.
fn read_fitted(
    dir: &Path,
    m: &Manifest,
    f: &crate::manifest::FusionFitted,
) -> Result<FittedParams, BundleError> {
    let raw = verify_file(dir, &f.params, "fusion_fitted.file", MAX_TABLE_BYTES)?;
    let path = dir.join(&f.params.file);
    let bad = |message: String| BundleError::Field {
        path: path.clone(),
        field: "fusion_fitted.file".into(),
        message,
    };
    let p: FittedParams = serde_json::from_slice(&raw).map_err(|e| {
        bad(format!(
            "not a fitted-parameters file ({e}); run `edgefuse fit` again"
        ))
    })?;
    p.check(m.labels.len(), m.encoder.embedding_dim, m.qformer.is_some())
        .map_err(|e| bad(format!("{e}; run `edgefuse fit` again")))?;
    if !p.has(m.fusion.method) {
        return Err(bad(format!(
            "has no parameters for [fusion] method = \"{}\"; fit it with `edgefuse fit --method {}` or choose one of {:?}",
            m.fusion.method.name(),
            m.fusion.method.name(),
            p.methods().iter().map(|m| m.name()).collect::<Vec<_>>()
        )));
    }
    Ok(p)
}

/// Read a bundle file (a regular file of at most `limit` bytes) and check its sha256; returns
/// its bytes.
fn verify_file(dir: &Path, f: &FileRef, field: &str, limit: u64) -> Result<Vec<u8>, BundleError> {
    let path = dir.join(&f.file);
    let bytes = read_limited(&path, limit).map_err(|error| BundleError::MissingFile {
        path: path.clone(),
        field: field.to_string(),
        error,
    })?;
    let actual = sha256_hex(&bytes);
    if !actual.eq_ignore_ascii_case(f.sha256.trim()) {
        return Err(BundleError::Checksum {
            path,
            field: field.to_string(),
            expected: f.sha256.clone(),
            actual,
        });
    }
    Ok(bytes)
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}
