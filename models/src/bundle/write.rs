//! Rewriting a bundle's labels with one commit point, so that a kill, a crash, a power cut or a
//! full disk at any moment leaves a bundle that opens, in its old state or its new one:
//!
//! 1. the new label embeddings go to a new, content-addressed file
//!    (`text_embeddings-<sha256 prefix>.bin`), written under a temporary name, fsynced and
//!    renamed; the manifest does not name it yet, so the old state is untouched;
//! 2. the new manifest is written to a temporary file and fsynced;
//! 3. **commit**: the temporary manifest is renamed over `bundle.toml`, and the folder fsynced;
//! 4. the embedding file the old manifest named is removed (as are embedding files of earlier
//!    updates that never committed).
//!
//! Nothing before step 3 changes a file the old manifest names, and opening a bundle reads only
//! the files its manifest names, so stray temporary files never stop a bundle from opening.

use std::path::{Path, PathBuf};

use super::open::sha256_hex;
use super::validate::validate_fields;
use super::{Bundle, MANIFEST_FILE};
use crate::files::{crash_point, rename, sync_dir, write_synced};
use crate::manifest::{Label, Manifest};
use crate::BundleError;

/// Suffix of the temporary files a labels update writes (`.NAME.PID.tmp-edgefuse`).
const TMP_SUFFIX: &str = "tmp-edgefuse";
/// Hex digits of the sha256 in a content-addressed file name.
const HASH_DIGITS: usize = 16;

/// A labels update written next to the bundle but not committed: the bundle still opens in its
/// old state.
#[derive(Debug)]
pub(crate) struct StagedLabels {
    dir: PathBuf,
    manifest: Manifest,
    /// The new manifest, written and fsynced under a temporary name.
    manifest_tmp: PathBuf,
    /// The embedding file the new manifest names (relative to `dir`), and whether this update
    /// created it (it did not when the rows are unchanged).
    embeddings: String,
    created: bool,
    /// The embedding file the old manifest names.
    old_embeddings: String,
    /// The fitted-parameters file the old manifest names, when this update drops it.
    old_fitted: Option<String>,
    /// What this update dropped of the fitted fusion.
    dropped: Option<DroppedFit>,
}

/// Fitted fusion parameters a labels update dropped: they were fitted for the old label set
/// (names or rows), and rows fitted for other labels must never be applied to these.
#[derive(Debug, Clone, PartialEq)]
pub struct DroppedFit {
    /// `[fusion] method` before the update.
    pub method: crate::manifest::FusionMethod,
    /// `[fusion] method` after it: unchanged when it needed no fit, else the zero-shot method
    /// the bundle had before it was fitted.
    pub now: crate::manifest::FusionMethod,
    /// Frames the dropped parameters were fitted on.
    pub frames: u64,
}

fn werr(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |error| BundleError::Write {
        path: path.to_path_buf(),
        error,
    }
}

/// `.NAME.PID.tmp-edgefuse` next to `path`: hidden, and unique to this process.
fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{TMP_SUFFIX}", std::process::id()))
}

/// `stem` without a trailing `-<HASH_DIGITS hex digits>` (the mark of a content-addressed name).
fn strip_hash(stem: &str) -> &str {
    match stem.rsplit_once('-') {
        Some((base, h)) if h.len() == HASH_DIGITS && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            base
        }
        _ => stem,
    }
}

/// The content-addressed name of an embedding file replacing `old` (a path relative to the
/// bundle): same folder, stem and extension, with the first digits of `sha256`.
fn content_name(old: &str, sha256: &str) -> String {
    let p = Path::new(old);
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "text_embeddings".into());
    let mut name = format!("{}-{}", strip_hash(&stem), &sha256[..HASH_DIGITS]);
    if let Some(ext) = p.extension() {
        name.push('.');
        name.push_str(&ext.to_string_lossy());
    }
    match p.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => format!("{}/{name}", d.to_string_lossy()),
        None => name,
    }
}

/// Whether `candidate` (a path relative to the bundle) is an earlier version of the embedding
/// file `current` names: same folder, extension and stem up to the content hash (the exporter's
/// original name has none).
fn is_earlier_version(candidate: &Path, current: &str) -> bool {
    let cur = Path::new(current);
    let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned());
    let (Some(c), Some(k)) = (stem(cur), stem(candidate)) else {
        return false;
    };
    candidate.parent() == cur.parent()
        && candidate.extension() == cur.extension()
        && k != c
        && strip_hash(&k) == strip_hash(&c)
}

impl Bundle {
    /// Replace the labels and their (unnormalised) embedding rows: a new embedding file and a
    /// new manifest with fresh checksums, committed by one rename (see the module docs). Used by
    /// `edgefuse labels add/remove`; unchanged rows can be taken from
    /// [`Bundle::label_embeddings`]. On an error the bundle on disk is in its old state, or (if
    /// only the clean-up after the commit failed) its new one.
    ///
    /// Fitted fusion parameters (`[fusion_fitted]`) are dropped when the names or rows change
    /// (returned, for the caller to say so): a method that needed them falls back to the
    /// zero-shot method the bundle had before the fit.
    pub fn write_labels(
        &mut self,
        labels: Vec<Label>,
        rows: &[f32],
    ) -> Result<Option<DroppedFit>, BundleError> {
        let staged = self.stage_labels(labels, rows)?;
        let dropped = staged.dropped.clone();
        let manifest = staged.commit()?;
        *self = Self::from_manifest(self.dir.clone(), manifest)?;
        Ok(dropped)
    }

    /// Steps 1 and 2: write the new embedding file and the temporary manifest.
    pub(crate) fn stage_labels(
        &self,
        labels: Vec<Label>,
        rows: &[f32],
    ) -> Result<StagedLabels, BundleError> {
        let dim = self.manifest.encoder.embedding_dim;
        assert_eq!(
            rows.len(),
            labels.len() * dim,
            "one embedding row per label"
        );
        let mut bytes = Vec::with_capacity(rows.len() * 4);
        rows.iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        let sha = sha256_hex(&bytes);
        let old = &self.manifest.text_embeddings.data;
        let mut manifest = self.manifest.clone();
        let renamed = labels.len() != manifest.labels.len()
            || labels
                .iter()
                .zip(&manifest.labels)
                .any(|(a, b)| a.name != b.name);
        manifest.labels = labels;
        let created = !old.sha256.trim().eq_ignore_ascii_case(&sha);
        if created {
            manifest.text_embeddings.data.file = content_name(&old.file, &sha);
        }
        let mut old_fitted = None;
        let mut dropped = None;
        if created || renamed {
            if let Some(f) = manifest.fusion_fitted.take() {
                let method = manifest.fusion.method;
                if method.needs_fit() {
                    manifest.fusion.method = f.zero_shot_method;
                }
                dropped = Some(DroppedFit {
                    method,
                    now: manifest.fusion.method,
                    frames: f.frames,
                });
                old_fitted = Some(f.params.file);
            }
        }
        manifest.text_embeddings.data.sha256 = sha;
        // Refuse before writing anything: a bundle this would make must still open.
        let manifest_path = self.dir.join(MANIFEST_FILE);
        validate_fields(&manifest, &|field: &str, message: String| {
            BundleError::Field {
                path: manifest_path.clone(),
                field: field.to_string(),
                message,
            }
        })?;
        let text = toml::to_string_pretty(&manifest).map_err(|e| BundleError::ManifestParse {
            path: manifest_path.clone(),
            message: e.to_string(),
        })?;
        let embeddings = manifest.text_embeddings.data.file.clone();
        let emb_path = self.dir.join(&embeddings);
        if created {
            let tmp = tmp_name(&emb_path);
            let written = write_synced(&tmp, &bytes).and_then(|()| rename(&tmp, &emb_path));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(werr(&emb_path)(e));
            }
        }
        let manifest_tmp = tmp_name(&manifest_path);
        if let Err(e) = write_synced(&manifest_tmp, text.as_bytes()) {
            let _ = std::fs::remove_file(&manifest_tmp);
            if created {
                let _ = std::fs::remove_file(&emb_path);
            }
            return Err(werr(&manifest_path)(e));
        }
        Ok(StagedLabels {
            dir: self.dir.clone(),
            manifest,
            manifest_tmp,
            embeddings,
            created,
            old_embeddings: old.file.clone(),
            old_fitted,
            dropped,
        })
    }
}

impl StagedLabels {
    /// Step 3, the commit point, then step 4. Returns the committed manifest.
    pub(crate) fn commit(self) -> Result<Manifest, BundleError> {
        let manifest_path = self.dir.join(MANIFEST_FILE);
        // The new embedding file's name must be on disk before the manifest naming it is.
        let renamed = sync_dir(&self.dir).and_then(|()| rename(&self.manifest_tmp, &manifest_path));
        if let Err(e) = renamed {
            self.abandon();
            return Err(werr(&manifest_path)(e));
        }
        sync_dir(&self.dir).map_err(werr(&self.dir))?;
        self.remove_old();
        Ok(self.manifest)
    }

    /// Undo steps 1 and 2 after a failure before the commit (best effort: what stays behind is
    /// never read).
    fn abandon(&self) {
        let _ = std::fs::remove_file(&self.manifest_tmp);
        if self.created {
            let _ = std::fs::remove_file(self.dir.join(&self.embeddings));
        }
    }

    /// Step 4: remove the old embedding file and those of earlier updates that never committed,
    /// unless the new manifest names them. Failures only leave unused files behind.
    fn remove_old(&self) {
        let named = self.named_files();
        let mut stale = vec![self.old_embeddings.clone()];
        stale.extend(self.old_fitted.clone());
        let rel_dir = Path::new(&self.embeddings)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(self.dir.join(&rel_dir)) {
            for e in entries.flatten() {
                let rel = rel_dir.join(e.file_name());
                if is_earlier_version(&rel, &self.embeddings) {
                    stale.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        for f in stale {
            if named.iter().any(|n| Path::new(n) == Path::new(&f)) {
                continue;
            }
            let path = self.dir.join(&f);
            crash_point("remove", &path);
            match std::fs::remove_file(&path) {
                Ok(()) => log::info!("removed {}, no longer part of the bundle", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!(
                    "cannot remove {} ({e}); it is no longer part of the bundle",
                    path.display()
                ),
            }
        }
        let _ = sync_dir(&self.dir);
    }

    /// Every file the new manifest names.
    fn named_files(&self) -> Vec<String> {
        let m = &self.manifest;
        let mut v = vec![
            m.encoder.model.file.clone(),
            m.text_embeddings.data.file.clone(),
        ];
        v.extend(m.qformer.as_ref().map(|q| q.model.file.clone()));
        v.extend(m.text_encoder.as_ref().map(|t| t.model.file.clone()));
        v.extend(m.quantization.as_ref().map(|q| q.table.file.clone()));
        v.extend(m.fusion_fitted.as_ref().map(|f| f.params.file.clone()));
        v.extend(m.rerank.as_ref().map(|r| r.model.file.clone()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_default() -> tempfile::TempDir {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("default");
        let tmp = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
        tmp
    }

    /// The labels of the default bundle with the last one removed, and their rows.
    fn one_fewer(b: &Bundle) -> (Vec<Label>, Vec<f32>) {
        let dim = b.manifest().encoder.embedding_dim;
        let mut labels = b.manifest().labels.clone();
        labels.pop();
        let rows = b.label_embeddings()[..labels.len() * dim].to_vec();
        (labels, rows)
    }

    #[test]
    fn content_addressed_names_keep_folder_stem_and_extension() {
        let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            content_name("text_embeddings.bin", sha),
            "text_embeddings-0123456789abcdef.bin"
        );
        assert_eq!(
            content_name("text_embeddings-fedcba9876543210.bin", sha),
            "text_embeddings-0123456789abcdef.bin"
        );
        assert_eq!(
            content_name("sub/emb.f32", sha),
            "sub/emb-0123456789abcdef.f32"
        );
        assert!(is_earlier_version(
            Path::new("text_embeddings-fedcba9876543210.bin"),
            "text_embeddings-0123456789abcdef.bin"
        ));
        assert!(is_earlier_version(
            Path::new("text_embeddings.bin"),
            "text_embeddings-0123456789abcdef.bin"
        ));
        assert!(!is_earlier_version(
            Path::new("text_embeddings.bin.orig"),
            "text_embeddings-0123456789abcdef.bin"
        ));
        assert!(!is_earlier_version(
            Path::new("encoder.onnx"),
            "text_embeddings.bin"
        ));
    }

    /// A kill at any point of an update leaves a bundle that opens, in the old state before the
    /// commit point and in the new one after it. (The old code renamed the new embeddings over
    /// the old ones first: a kill before the manifest's rename left a checksum mismatch.)
    #[test]
    fn every_state_of_an_update_opens() {
        let tmp = copy_default();
        let dir = tmp.path();
        let b = Bundle::open(dir).unwrap();
        let old_labels = b.manifest().labels.len();
        let old_file = b.manifest().text_embeddings.data.file.clone();
        let (labels, rows) = one_fewer(&b);

        // Killed after steps 1 and 2 (new embedding file and temporary manifest written, not
        // committed): the old state, with the old file untouched.
        let staged = b.stage_labels(labels.clone(), &rows).unwrap();
        assert!(staged.created && dir.join(&staged.embeddings).exists());
        assert!(staged.manifest_tmp.exists());
        let reopened = Bundle::open(dir).expect("opens before the commit");
        assert_eq!(reopened.manifest().labels.len(), old_labels);
        assert_eq!(reopened.manifest().text_embeddings.data.file, old_file);

        // Killed after the commit but before the old file is removed: the new state.
        let manifest_path = dir.join(MANIFEST_FILE);
        std::fs::rename(&staged.manifest_tmp, &manifest_path).unwrap();
        let reopened = Bundle::open(dir).expect("opens after the commit");
        assert_eq!(reopened.manifest().labels.len(), old_labels - 1);
        assert!(dir.join(&old_file).exists(), "not removed yet");

        // A later update completes: the stale files of the interrupted one are removed.
        let mut b = reopened;
        let (labels, rows) = one_fewer(&b);
        b.write_labels(labels, &rows).unwrap();
        assert_eq!(b.manifest().labels.len(), old_labels - 2);
        assert!(!dir.join(&old_file).exists(), "the original file is gone");
        let mut left: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("text_embeddings"))
            .collect();
        left.sort();
        assert_eq!(left, [b.manifest().text_embeddings.data.file.clone()]);
        Bundle::open(dir).unwrap();
    }

    #[test]
    fn a_failed_commit_leaves_the_old_state_and_no_new_files() {
        let tmp = copy_default();
        let dir = tmp.path();
        let b = Bundle::open(dir).unwrap();
        let (labels, rows) = one_fewer(&b);
        let staged = b.stage_labels(labels, &rows).unwrap();
        let new_file = dir.join(&staged.embeddings);
        // The rename fails: the temporary manifest is gone.
        std::fs::remove_file(&staged.manifest_tmp).unwrap();
        assert!(staged.commit().is_err());
        assert!(
            !new_file.exists(),
            "the uncommitted embedding file is removed"
        );
        assert_eq!(
            Bundle::open(dir).unwrap().manifest().labels.len(),
            b.manifest().labels.len()
        );
    }

    #[test]
    fn stray_temporary_files_and_folders_do_not_stop_open_or_update() {
        let tmp = copy_default();
        let dir = tmp.path();
        // What the old code's and this code's interrupted updates leave behind, as files and as
        // folders (a folder where the old code put its temporary manifest broke every update).
        std::fs::create_dir(dir.join("bundle.tmp-edgefuse")).unwrap();
        std::fs::write(dir.join("text_embeddings.tmp-edgefuse"), b"junk").unwrap();
        std::fs::write(dir.join(".bundle.toml.1.tmp-edgefuse"), b"junk").unwrap();
        std::fs::create_dir(dir.join(".text_embeddings.bin.2.tmp-edgefuse")).unwrap();
        std::fs::write(dir.join("text_embeddings-00000000deadbeef.bin"), b"junk").unwrap();
        let mut b = Bundle::open(dir).expect("stray files do not matter");
        let (labels, rows) = one_fewer(&b);
        b.write_labels(labels.clone(), &rows).unwrap();
        let file = b.manifest().text_embeddings.data.file.clone();
        let reopened = Bundle::open(dir).unwrap();
        assert_eq!(reopened.manifest().labels.len(), labels.len());
        assert!(
            !dir.join("text_embeddings-00000000deadbeef.bin").exists(),
            "an uncommitted embedding file of an earlier update is removed"
        );
        // The same rows again: no new file, the same name stays.
        b.write_labels(labels, &rows).unwrap();
        assert_eq!(b.manifest().text_embeddings.data.file, file);
        assert!(dir.join(&file).exists());
        Bundle::open(dir).unwrap();
    }
}
