//! Writing a bundle with fitted fusion parameters (for `edgefuse fit`): every file of the source
//! bundle, the parameters as a content-addressed JSON file, and a manifest naming them. The
//! caller stages this in a temporary folder and renames it into place.

use std::path::Path;

use super::open::sha256_hex;
use super::{Bundle, MANIFEST_FILE};
use crate::files::{read_limited, write_synced, MAX_MODEL_BYTES};
use crate::fitted::FittedParams;
use crate::manifest::{FileRef, FusionFitted, FusionMethod};
use crate::BundleError;

/// What `edgefuse fit` records next to the parameters.
#[derive(Debug, Clone)]
pub struct FitRecord {
    /// The method the new bundle runs.
    pub method: FusionMethod,
    /// Labelled frames fitted on.
    pub frames: u64,
    /// sha256 over the frames' names, labels and bytes.
    pub frames_sha256: String,
    /// The frames' source.
    pub source: String,
    /// Folds of the cross-validation.
    pub folds: u32,
    /// Cross-validated accuracy by head or method name.
    pub cv_accuracy: std::collections::BTreeMap<String, f64>,
}

impl Bundle {
    /// Write this bundle with `params` fitted into the existing, empty folder `dir`: its files
    /// (except fitted parameters of an earlier fit), `fusion_fitted-<sha256 prefix>.json`, and
    /// the manifest with `[fusion] method` and `[fusion_fitted]`. Every file is fsynced; the
    /// folder is not (the caller renames it into place and syncs then).
    pub fn write_fitted(
        &self,
        dir: &Path,
        params: &FittedParams,
        record: &FitRecord,
    ) -> Result<(), BundleError> {
        let werr = |path: &Path, error: std::io::Error| BundleError::Write {
            path: path.to_path_buf(),
            error,
        };
        let m = self.manifest();
        params
            .check(m.labels.len(), m.encoder.embedding_dim, m.qformer.is_some())
            .map_err(|message| BundleError::Field {
                path: dir.join(MANIFEST_FILE),
                field: "fusion_fitted".into(),
                message,
            })?;
        let old_params = m.fusion_fitted.as_ref().map(|f| f.params.file.as_str());
        let entries = std::fs::read_dir(self.dir()).map_err(|e| werr(self.dir(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| werr(self.dir(), e))?;
            let name = entry.file_name();
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            let text = name.to_string_lossy();
            // Not the old manifest or parameters, nor what interrupted updates left behind.
            if !is_file
                || name == MANIFEST_FILE
                || Some(text.as_ref()) == old_params
                || text.ends_with("tmp-edgefuse")
            {
                continue;
            }
            let bytes = read_limited(&entry.path(), MAX_MODEL_BYTES)
                .map_err(|e| werr(&entry.path(), std::io::Error::other(e.to_string())))?;
            let to = dir.join(&name);
            write_synced(&to, &bytes).map_err(|e| werr(&to, e))?;
        }
        let mut json = serde_json::to_string(params).map_err(|e| BundleError::Field {
            path: dir.join(MANIFEST_FILE),
            field: "fusion_fitted".into(),
            message: format!("cannot serialise the parameters: {e}"),
        })?;
        json.push('\n');
        let sha = sha256_hex(json.as_bytes());
        let file = format!("fusion_fitted-{}.json", &sha[..16]);
        let p = dir.join(&file);
        write_synced(&p, json.as_bytes()).map_err(|e| werr(&p, e))?;
        let mut manifest = m.clone();
        let zero_shot_method = match &m.fusion_fitted {
            Some(f) => f.zero_shot_method,
            None if m.fusion.method.needs_fit() => FusionMethod::WeightedLogits,
            None => m.fusion.method,
        };
        manifest.fusion.method = record.method;
        manifest.fusion_fitted = Some(FusionFitted {
            params: FileRef { file, sha256: sha },
            labels: m.labels.iter().map(|l| l.name.clone()).collect(),
            zero_shot_method,
            frames: record.frames,
            frames_sha256: record.frames_sha256.clone(),
            source: record.source.clone(),
            folds: record.folds,
            cv_accuracy: record.cv_accuracy.clone(),
        });
        let mp = dir.join(MANIFEST_FILE);
        let text = toml::to_string_pretty(&manifest).map_err(|e| BundleError::ManifestParse {
            path: mp.clone(),
            message: e.to_string(),
        })?;
        let text = format!("# edgefuse model bundle: fusion fitted by `edgefuse fit`\n{text}");
        write_synced(&mp, text.as_bytes()).map_err(|e| werr(&mp, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fitted::{Head, Linear};

    fn fitted_default() -> (tempfile::TempDir, std::path::PathBuf) {
        let src = Bundle::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("default")).unwrap();
        let m = src.manifest();
        let n = m.labels.len();
        let params = FittedParams {
            heads: vec![Head::Clip, Head::Qformer],
            adapter: None,
            learned_weights: None,
            stacking: Some(Linear {
                rows: n,
                cols: 2 * n,
                weights: vec![0.5; 2 * n * n],
                bias: vec![0.0; n],
                l2: 0.1,
            }),
            gated: None,
            concat: None,
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fitted");
        std::fs::create_dir(&dir).unwrap();
        let record = FitRecord {
            method: FusionMethod::Stacking,
            frames: 20,
            frames_sha256: "00".repeat(32),
            source: "file://x".into(),
            folds: 2,
            cv_accuracy: [("stacking".to_string(), 0.9)].into(),
        };
        src.write_fitted(&dir, &params, &record).unwrap();
        (tmp, dir)
    }

    #[test]
    fn a_fitted_bundle_opens_with_its_parameters() {
        let (_tmp, dir) = fitted_default();
        let b = Bundle::open(&dir).unwrap();
        assert_eq!(b.manifest().fusion.method, FusionMethod::Stacking);
        let f = b.manifest().fusion_fitted.as_ref().unwrap();
        assert_eq!(f.zero_shot_method, FusionMethod::WeightedLogits);
        assert!(b.fitted().unwrap().stacking.is_some());
    }

    /// Fitting a fitted bundle again replaces its parameters (the old file is not carried over)
    /// and keeps the zero-shot method it had before the first fit.
    #[test]
    fn a_refit_replaces_the_parameters() {
        let (tmp, dir) = fitted_default();
        let b = Bundle::open(&dir).unwrap();
        let old = b
            .manifest()
            .fusion_fitted
            .as_ref()
            .unwrap()
            .params
            .file
            .clone();
        std::fs::write(dir.join(".bundle.toml.1.tmp-edgefuse"), "junk").unwrap();
        let mut params = b.fitted().unwrap().clone();
        params.stacking.as_mut().unwrap().bias[0] = 1.0;
        let record = FitRecord {
            method: FusionMethod::Voting,
            frames: 5,
            frames_sha256: "11".repeat(32),
            source: "file://y".into(),
            folds: 2,
            cv_accuracy: Default::default(),
        };
        let again = tmp.path().join("again");
        std::fs::create_dir(&again).unwrap();
        b.write_fitted(&again, &params, &record).unwrap();
        let b2 = Bundle::open(&again).unwrap();
        let f = b2.manifest().fusion_fitted.as_ref().unwrap();
        assert_ne!(f.params.file, old);
        assert!(!again.join(&old).exists() && !again.join(".bundle.toml.1.tmp-edgefuse").exists());
        assert_eq!(f.zero_shot_method, FusionMethod::WeightedLogits);
        assert_eq!(b2.manifest().fusion.method, FusionMethod::Voting);
        assert_eq!(b2.fitted().unwrap().stacking.as_ref().unwrap().bias[0], 1.0);
    }

    /// `labels remove` drops the fitted parameters (they have rows for the old labels), says so,
    /// and the bundle runs its zero-shot method again; the parameter file is removed.
    #[test]
    fn a_label_change_drops_the_fit() {
        let (_tmp, dir) = fitted_default();
        let mut b = Bundle::open(&dir).unwrap();
        let file = dir.join(&b.manifest().fusion_fitted.as_ref().unwrap().params.file);
        assert!(file.exists());
        let dim = b.manifest().encoder.embedding_dim;
        let mut labels = b.manifest().labels.clone();
        labels.pop();
        let rows = b.label_embeddings()[..labels.len() * dim].to_vec();
        let dropped = b.write_labels(labels, &rows).unwrap().expect("dropped");
        assert_eq!(dropped.method, FusionMethod::Stacking);
        assert_eq!(dropped.now, FusionMethod::WeightedLogits);
        assert_eq!(dropped.frames, 20);
        let b = Bundle::open(&dir).unwrap();
        assert!(b.manifest().fusion_fitted.is_none() && b.fitted().is_none());
        assert_eq!(b.manifest().fusion.method, FusionMethod::WeightedLogits);
        assert!(!file.exists(), "the parameter file is removed");
    }

    /// A manifest whose fitted labels differ from its labels (edited by hand, or by an older
    /// edgefuse) is refused with what to do, never run with mismatched rows.
    #[test]
    fn mismatched_labels_and_missing_parameters_are_refused() {
        let (_tmp, dir) = fitted_default();
        let mp = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&mp).unwrap();
        let swapped = text.replacen(
            "labels = [\n    \"0\",\n    \"1\",",
            "labels = [\n    \"1\",\n    \"0\",",
            1,
        );
        assert_ne!(swapped, text, "{text}");
        std::fs::write(&mp, &swapped).unwrap();
        let e = Bundle::open(&dir).unwrap_err().to_string();
        assert!(
            e.contains("fusion_fitted.labels") && e.contains("edgefuse fit"),
            "{e}"
        );

        let no_fit = text.split("[fusion_fitted]").next().unwrap().to_string()
            + &text[text.find("[[labels]]").unwrap()..];
        std::fs::write(&mp, no_fit).unwrap();
        let e = Bundle::open(&dir).unwrap_err().to_string();
        assert!(e.contains("`stacking` needs parameters fitted"), "{e}");

        std::fs::write(
            &mp,
            text.replace("method = \"stacking\"", "method = \"gated\""),
        )
        .unwrap();
        let e = Bundle::open(&dir).unwrap_err().to_string();
        assert!(
            e.contains("no parameters for [fusion] method = \"gated\""),
            "{e}"
        );
    }
}
