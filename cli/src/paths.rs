//! Where the bundled data lives and how `--model` finds a bundle.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use edgefuse_models::Bundle;

use crate::UsageError;

/// `--model DIR`, shared by the subcommands that open a bundle.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArg {
    /// Model bundle folder [default: $EDGEFUSE_MODEL, else the bundled default model].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
}

/// Where data files live: next to an installed binary (`../share/edgefuse`), the Debian
/// location, or the source tree this binary was built from.
fn data_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            dirs.push(prefix.join("share/edgefuse"));
        }
    }
    dirs.push(PathBuf::from("/usr/share/edgefuse"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"));
    dirs
}

fn find_data(rel: &str) -> Option<PathBuf> {
    data_dirs()
        .into_iter()
        .map(|d| d.join(rel))
        .find(|p| p.exists())
}

/// The models folder of `edgefuse models`: `$EDGEFUSE_MODELS_DIR`, else the package's
/// `/var/lib/edgefuse/models` (the services' state directory).
pub fn models_dir() -> PathBuf {
    std::env::var_os("EDGEFUSE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/edgefuse/models"))
}

/// The bundle folder: `model`, else `$EDGEFUSE_MODEL`, else the active model of the models
/// folder ([`models_dir`]; resolved, so a switch while it loads cannot mix two versions), else
/// the bundled default.
pub fn model_dir(model: Option<&Path>) -> Result<PathBuf> {
    if let Some(m) = model {
        return Ok(m.to_path_buf());
    }
    if let Some(m) = std::env::var_os("EDGEFUSE_MODEL") {
        return Ok(PathBuf::from(m));
    }
    if let Some(active) = edgefuse_models::store::Store::new(models_dir()).active_dir() {
        return Ok(active);
    }
    find_data("default").ok_or_else(|| {
        UsageError(
            "no default model bundle found (looked in ../share/edgefuse, /usr/share/edgefuse and the source tree); pass --model DIR".into(),
        )
        .into()
    })
}

/// Open the bundle [`model_dir`] names.
pub fn open_bundle(model: Option<&Path>) -> Result<Bundle> {
    let dir = model_dir(model)?;
    Bundle::open(&dir).with_context(|| format!("cannot use model bundle {}", dir.display()))
}

/// Open the bundle `labels add/remove` will change in place: one named by `--model` or
/// `$EDGEFUSE_MODEL`, never the installed default bundle (shared by every user and replaced by
/// package updates). The refusal says how to make a copy to change.
pub fn open_bundle_to_edit(model: Option<&Path>, command: &str) -> Result<Bundle> {
    if model.is_none() && std::env::var_os("EDGEFUSE_MODEL").is_none() {
        let dir = model_dir(None)?;
        return Err(UsageError(format!(
            "`edgefuse labels {command}` changes a bundle in place and does not change the installed default bundle ({}); \
             copy it and change the copy: cp -r {} my-bundle && edgefuse labels {command} --model my-bundle ...",
            dir.display(),
            dir.display()
        ))
        .into());
    }
    open_bundle(model)
}

/// The bundled sample frames as a source URI.
pub fn default_samples() -> Result<String> {
    let dir = find_data("samples/mnist")
        .ok_or_else(|| UsageError("no bundled sample frames found; pass --source URI".into()))?;
    Ok(format!("file://{}", dir.display()))
}

/// `--out` of a command that writes a new bundle (`calibrate`, `fit`) must not exist yet: never
/// overwrite a bundle.
pub fn refuse_existing_out(out: &Path) -> Result<(), UsageError> {
    if out.exists() {
        return Err(UsageError(format!(
            "--out {}: already exists; remove it or choose another folder",
            out.display()
        )));
    }
    Ok(())
}
