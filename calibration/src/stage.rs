//! Writing the int8 bundle: staged in a temporary folder next to its destination, checked to
//! load, then renamed into place in one step.

use std::path::{Path, PathBuf};

use edgefuse_models::files::{crash_point, rename, sync_dir, write_synced};
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
        write_synced(&p, text.as_bytes()).map_err(|e| CalibrateError::Write {
            path: p.clone(),
            message: e.to_string(),
        })
    }

    /// Move the bundle into place: its files and folder are fsynced first, so that after a
    /// crash or power cut `out` is either absent or complete; the parent folder after.
    pub fn commit(mut self) -> Result<PathBuf, CalibrateError> {
        let werr = |path: &Path, e: std::io::Error| CalibrateError::Write {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        sync_dir(&self.tmp).map_err(|e| werr(&self.tmp, e))?;
        rename(&self.tmp, &self.out).map_err(|e| werr(&self.out, e))?;
        self.committed = true;
        if let Some(parent) = self.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(|e| werr(parent, e))?;
        }
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

/// What the temporary folders of [`stage_bundle`] end with, before the process id.
pub const STAGING_SUFFIX: &str = ".tmp-edgefuse";

/// How old the temporary folder of a process that still exists must be to count as stale
/// anyway (its id was reused, e.g. after a reboot).
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The temporary folder this process stages `out` in: `.<out name>.tmp-edgefuse-<pid>` next to
/// it (hidden, and named by its writer so that a later run can tell whether it is abandoned).
pub fn staging_dir(out: &Path) -> Result<PathBuf, CalibrateError> {
    let name = out.file_name().ok_or_else(|| CalibrateError::Write {
        path: out.to_path_buf(),
        message: "--out must name a folder".into(),
    })?;
    Ok(out.with_file_name(format!(
        ".{}{STAGING_SUFFIX}-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// A temporary folder of an interrupted calibration that [`remove_stale_staging`] found.
#[derive(Debug)]
pub struct StaleStaging {
    /// The folder.
    pub path: PathBuf,
    /// Why it is stale (its process is gone, or it is old).
    pub why: String,
    /// Whether it could be removed.
    pub removed: Result<(), std::io::Error>,
}

/// Remove the temporary folders that interrupted calibrations (a SIGKILL, a power cut) left
/// next to `out`: folders named `.<name>.tmp-edgefuse-<pid>` whose process no longer exists or
/// that are older than [`STALE_AFTER`], and `.<out name>.tmp-edgefuse` of older versions.
/// Folders of calibrations still running are left alone. Returns what was found.
pub fn remove_stale_staging(out: &Path) -> Vec<StaleStaging> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let legacy = out
        .file_name()
        .map(|n| format!(".{}{STAGING_SUFFIX}", n.to_string_lossy()));
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || !name.starts_with('.') {
            continue;
        }
        let why = if legacy.as_deref() == Some(name) {
            "left by an older edgefuse".to_string()
        } else {
            let Some(pid) = staging_pid(name) else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            if !Path::new(&format!("/proc/{pid}")).exists() {
                format!("its calibration (process {pid}) is gone")
            } else if age > STALE_AFTER {
                format!("untouched for {} hours", age.as_secs() / 3600)
            } else {
                continue;
            }
        };
        let path = entry.path();
        let removed = std::fs::remove_dir_all(&path);
        found.push(StaleStaging { path, why, removed });
    }
    found
}

/// The process id in a staging folder name `.<name>.tmp-edgefuse-<pid>`.
fn staging_pid(name: &str) -> Option<u32> {
    let (head, pid) = name.rsplit_once('-')?;
    if !head.ends_with(STAGING_SUFFIX) || head.len() <= STAGING_SUFFIX.len() + 1 {
        return None;
    }
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
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
    let tmp = staging_dir(out)?;
    let _ = std::fs::remove_dir_all(&tmp);
    crash_point("create", &tmp);
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
            crash_point("copy", &to);
            std::fs::copy(entry.path(), &to)
                .and_then(|_| std::fs::File::open(&to)?.sync_all())
                .map_err(|e| werr(&to, &e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_carry_the_pid_and_only_ours_are_recognised() {
        let d = staging_dir(Path::new("/x/int8")).unwrap();
        let name = d.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name, format!(".int8.tmp-edgefuse-{}", std::process::id()));
        assert_eq!(staging_pid(&name), Some(std::process::id()));
        for other in [
            ".tmp-edgefuse-12",
            ".int8.tmp-edgefuse-",
            ".int8.tmp-x-12",
            ".a.tmp-edgefuse-1x",
        ] {
            assert_eq!(staging_pid(other), None, "{other}");
        }
    }

    #[test]
    fn stale_folders_of_gone_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("int8");
        // pid_max is at most 2^22: this process cannot exist.
        let gone = dir.path().join(".int8.tmp-edgefuse-999999999");
        let other_gone = dir.path().join(".other.tmp-edgefuse-999999998");
        let legacy = dir.path().join(".int8.tmp-edgefuse");
        let mine = staging_dir(&out).unwrap();
        let live = dir.path().join(".int8.tmp-edgefuse-1");
        let not_ours = dir.path().join(".int8.tmp-elsewhere-999999999");
        for d in [&gone, &other_gone, &legacy, &mine, &live, &not_ours] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("bundle.toml"), "x").unwrap();
        }
        let found = remove_stale_staging(&out);
        let mut paths: Vec<_> = found.iter().map(|f| f.path.clone()).collect();
        paths.sort();
        let mut want = vec![gone.clone(), other_gone.clone(), legacy.clone()];
        want.sort();
        assert_eq!(paths, want, "{found:?}");
        assert!(found.iter().all(|f| f.removed.is_ok()));
        assert!(!gone.exists() && !other_gone.exists() && !legacy.exists());
        assert!(mine.exists() && live.exists() && not_ours.exists());
    }
}
