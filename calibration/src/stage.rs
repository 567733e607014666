//! Writing the int8 bundle: staged in a temporary folder next to its destination, checked to
//! load, then renamed into place in one step.

use std::path::{Path, PathBuf};

use edgefuse_models::manifest::{FileRef, Quantization};
use edgefuse_models::{sha256_hex, Bundle, MANIFEST_FILE};

use crate::collect::{CalibrateError, Calibration};

/// An int8 bundle written into a temporary folder next to its destination; [`Staged::commit`]
/// renames it into place, dropping it without committing removes it (nothing half-written).
#[derive(Debug)]
pub struct Staged {
    /// The temporary folder (a loadable bundle).
    pub tmp: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl Staged {
    /// Add a file (a report) to the bundle.
    pub fn add_file(&self, name: &str, text: &str) -> Result<(), CalibrateError> {
        let p = self.tmp.join(name);
        std::fs::write(&p, text).map_err(|e| CalibrateError::Write {
            path: p.clone(),
            message: e.to_string(),
        })
    }

    /// Move the bundle into place.
    pub fn commit(mut self) -> Result<PathBuf, CalibrateError> {
        std::fs::rename(&self.tmp, &self.out).map_err(|e| CalibrateError::Write {
            path: self.out.clone(),
            message: e.to_string(),
        })?;
        self.committed = true;
        Ok(self.out.clone())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Stage the int8 bundle for `bundle` at `out`: every file of the float bundle, plus
/// `calibration.json` (the table the runtime reads), `calibration.cache` (TensorRT format) and
/// the manifest's `[quantization]` section. The staged bundle is checked to load.
pub fn stage_bundle(
    bundle: &Bundle,
    cal: &Calibration,
    skip: &[String],
    out: &Path,
) -> Result<Staged, CalibrateError> {
    let werr = |path: &Path, e: &dyn std::fmt::Display| CalibrateError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if out.exists() {
        return Err(werr(
            out,
            &"already exists; remove it or choose another --out",
        ));
    }
    let name = out
        .file_name()
        .ok_or_else(|| werr(out, &"--out must name a folder"))?
        .to_string_lossy()
        .into_owned();
    let tmp = out.with_file_name(format!(".{name}.tmp-edgefuse"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| werr(&tmp, &e))?;
    let staged = Staged {
        tmp: tmp.clone(),
        out: out.to_path_buf(),
        committed: false,
    };
    for entry in std::fs::read_dir(bundle.dir()).map_err(|e| werr(bundle.dir(), &e))? {
        let entry = entry.map_err(|e| werr(bundle.dir(), &e))?;
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            let to = tmp.join(entry.file_name());
            std::fs::copy(entry.path(), &to).map_err(|e| werr(&to, &e))?;
        }
    }
    let tables = cal.tables(skip);
    let json = serde_json::to_string_pretty(&tables).map_err(|e| werr(out, &e))?;
    staged.add_file("calibration.json", &json)?;
    staged.add_file("calibration.cache", &cal.trt_cache())?;
    let mut manifest = bundle.manifest().clone();
    manifest.quantization = Some(Quantization {
        method: cal.method_name.clone(),
        frames: cal.frames,
        table: FileRef {
            file: "calibration.json".into(),
            sha256: sha256_hex(json.as_bytes()),
        },
        skip: skip.to_vec(),
    });
    if !manifest.description.contains("int8") {
        manifest.description = format!(
            "{} (int8 linear layers, {} calibration over {} frames)",
            manifest.description, cal.method_name, cal.frames
        );
    }
    let text = toml::to_string(&manifest).map_err(|e| werr(out, &e))?;
    staged.add_file(MANIFEST_FILE, &text)?;
    // The result must load before it is put in place.
    Bundle::open(&tmp)?;
    Ok(staged)
}
