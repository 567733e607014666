//! The model store: installed bundle versions under one models folder and an atomic switch
//! between them.
//!
//! ```text
//! <models>/versions/<name>/   one folder per installed bundle, never changed once installed
//! <models>/active           → state/active      the bundle `edgefuse run` uses by default
//! <models>/previous         → state/previous    the one `rollback` returns to
//! <models>/state            → states/<n>        switched by one rename
//! <models>/states/<n>/active, previous → ../../versions/<name>
//! <models>/.staging-<pid>/   an install in progress (removed by the next install if killed)
//! ```
//!
//! An install unpacks into the staging folder, validates the bundle completely (signature when a
//! key is given, manifest and checksums through [`Bundle::open`], then the caller's test
//! inference), renames it into `versions/`, and only then switches `active`. The switch writes a
//! new state folder with both links, then a new `state` link beside the old one, and renames it
//! over it: `rename(2)` replaces the link in one step, so `active` and `previous` always name
//! complete, validated bundles and change together, whatever moment the process is killed at. Every write goes through [`crate::files::crash_point`] for the
//! kill-at-each-write tests.

mod sign;
mod unpack;

use std::path::{Path, PathBuf};

/// An ed25519 public key that bundles must be signed with ([`read_public_key`]).
pub use ed25519_dalek::VerifyingKey as PublicKey;
pub use sign::{
    keypair_hex, read_public_key, read_secret_key, sign_bundle, verify_bundle, SIGNATURE_FILE,
};
pub use unpack::{MAX_ENTRIES, MAX_UNPACKED_BYTES};

use crate::files;
use crate::{Bundle, BundleError};

/// The link naming the active bundle.
pub const ACTIVE: &str = "active";
/// The link naming the bundle `rollback` returns to.
pub const PREVIOUS: &str = "previous";
/// The folder holding the installed versions.
pub const VERSIONS: &str = "versions";
const STAGING_PREFIX: &str = ".staging-";
/// The link to the current state folder (which holds the `active` and `previous` links).
const STATE: &str = "state";
/// The folder of state folders.
const STATES: &str = "states";

/// Everything that can go wrong in the store; each names the path or model and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The models folder cannot be created or written.
    #[error("models folder {}: not writable ({error}); run as a user who may write it (e.g. `sudo -u edgefuse`) or pass --models-dir", dir.display())]
    NotWritable {
        /// The folder.
        dir: PathBuf,
        /// The I/O error (in the message, not a `source`).
        error: std::io::Error,
    },
    /// The file system is full.
    #[error("{}: no space left on the device; free space (old versions under {VERSIONS}/ that are neither active nor previous can be deleted) and retry", path.display())]
    NoSpace {
        /// Where the write failed.
        path: PathBuf,
    },
    /// Another I/O failure.
    #[error("{}: cannot {action} ({error})", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The I/O error (in the message, not a `source`).
        error: std::io::Error,
    },
    /// The source is not a usable archive (truncated, corrupt, too large).
    #[error("{}: {message}", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// An archive entry that must not be unpacked.
    #[error("{}: entry `{entry}` refused: {why}", archive.display())]
    UnsafeEntry {
        /// The archive (or source folder).
        archive: PathBuf,
        /// The entry's name as stored.
        entry: String,
        /// Why.
        why: String,
    },
    /// No `bundle.toml` in what was unpacked.
    #[error("{}: no bundle.toml at its top or in its only folder; give a bundle folder or an archive of one", source_path.display())]
    NoManifest {
        /// The source.
        source_path: PathBuf,
    },
    /// The bundle does not validate (manifest, checksums, format version, models).
    #[error("bundle from {}: {error}", source_path.display())]
    Invalid {
        /// The source.
        source_path: PathBuf,
        /// What [`Bundle::open`] found.
        error: BundleError,
    },
    /// Unsigned or wrongly signed while a public key is configured.
    #[error("bundle {}: signature refused: {message}", bundle.display())]
    Signature {
        /// The bundle folder.
        bundle: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A key file is unusable.
    #[error("key file {}: {message}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The test inference on the bundle's sample frames failed.
    #[error("bundle {name}: test inference failed: {message}; the bundle was not made active")]
    TestInference {
        /// The model name.
        name: String,
        /// What failed.
        message: String,
    },
    /// A version of that name is installed already.
    #[error("a model named `{name}` is installed already; pass --name to install this one under another name (if an install of it was interrupted, `edgefuse models activate {name}` makes it active)")]
    Exists {
        /// The name.
        name: String,
    },
    /// The name is not usable as a folder name.
    #[error("model name `{name}` is not usable: use 1-100 letters, digits, `.`, `_`, `-` or `+`, not starting with `.`")]
    BadName {
        /// The name.
        name: String,
    },
    /// No installed version has that name.
    #[error("no model named `{name}` in {}; installed: {}", dir.display(), if installed.is_empty() { "none".to_string() } else { installed.join(", ") })]
    NoSuchModel {
        /// The name asked for.
        name: String,
        /// The models folder.
        dir: PathBuf,
        /// The installed names.
        installed: Vec<String>,
    },
    /// `rollback` with nothing to roll back to.
    #[error("no previous model to roll back to in {}: only one model has been active (activate one by name with `edgefuse models activate NAME`)", dir.display())]
    NoPrevious {
        /// The models folder.
        dir: PathBuf,
    },
}

/// Map an I/O error, telling a full disk apart.
pub(crate) fn io_err(path: &Path, action: &'static str, error: std::io::Error) -> StoreError {
    if error.kind() == std::io::ErrorKind::StorageFull
        || error.kind() == std::io::ErrorKind::QuotaExceeded
    {
        StoreError::NoSpace {
            path: path.to_path_buf(),
        }
    } else {
        StoreError::Io {
            path: path.to_path_buf(),
            action,
            error,
        }
    }
}

/// The test a bundle must pass before it becomes active (the CLI runs the bundle's sample frames
/// through the runtime pipeline). `Ok` carries a one-line summary, `Err` what failed.
pub type TestInference<'a> = &'a mut dyn FnMut(&Bundle) -> Result<String, String>;

/// One installed version, as [`Store::list`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    /// The folder name under `versions/`.
    pub name: String,
    /// The manifest's `name` and `version`, or why the bundle does not open now.
    pub describe: String,
    /// Whether `active` names it.
    pub active: bool,
    /// Whether `previous` names it.
    pub previous: bool,
}

/// What [`Store::install`] did.
#[derive(Debug, Clone)]
pub struct InstallReport {
    /// The name it was installed under.
    pub name: String,
    /// The installed folder.
    pub dir: PathBuf,
    /// Files unpacked and their bytes.
    pub files: usize,
    /// Bytes unpacked.
    pub bytes: u64,
    /// The test inference's summary.
    pub test: String,
    /// The model that was active before (now `previous`).
    pub replaced: Option<String>,
    /// Whether the bundle's signature was checked.
    pub signed: bool,
}

/// A models folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName { name: name.into() })
    }
}

impl Store {
    /// The store in `dir` (nothing is created until the first install).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The models folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder of the active bundle, resolved (so a later switch does not change a bundle
    /// under a reader that already opened it); `None` when no model was ever activated.
    pub fn active_dir(&self) -> Option<PathBuf> {
        let link = self.dir.join(ACTIVE);
        std::fs::symlink_metadata(&link).ok()?;
        std::fs::canonicalize(&link).ok()
    }

    /// The name `link` (`active` or `previous`) points at.
    fn link_name(&self, link: &str) -> Option<String> {
        let target = std::fs::read_link(self.dir.join(STATE).join(link)).ok()?;
        let name = target.file_name()?.to_str()?.to_string();
        self.dir.join(VERSIONS).join(&name).is_dir().then_some(name)
    }

    /// The active model's name.
    pub fn active(&self) -> Option<String> {
        self.link_name(ACTIVE)
    }

    /// The previous model's name.
    pub fn previous(&self) -> Option<String> {
        self.link_name(PREVIOUS)
    }

    /// The installed versions, sorted by name.
    pub fn list(&self) -> Result<Vec<Installed>, StoreError> {
        let versions = self.dir.join(VERSIONS);
        let rd = match std::fs::read_dir(&versions) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&versions, "read", e)),
        };
        let (active, previous) = (self.active(), self.previous());
        let mut out = Vec::new();
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !e.path().is_dir() || name.starts_with('.') {
                continue;
            }
            let describe = match manifest_only(&e.path()) {
                Ok(m) => format!("{} {}", m.name, m.version),
                Err(err) => format!("unusable: {err}"),
            };
            out.push(Installed {
                active: active.as_deref() == Some(name.as_str()),
                previous: previous.as_deref() == Some(name.as_str()),
                name,
                describe,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn ensure_writable(&self) -> Result<(), StoreError> {
        let not_writable = |error| StoreError::NotWritable {
            dir: self.dir.clone(),
            error,
        };
        std::fs::create_dir_all(self.dir.join(VERSIONS)).map_err(not_writable)?;
        // A probe: permissions alone do not say it (root, read-only mounts).
        let probe = self.dir.join(format!(".probe-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| match io_err(&probe, "write", e) {
            StoreError::Io { error, .. } => not_writable(error),
            other => other,
        })?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }

    /// Remove what killed installs left (staging folders, half-made links). They are never
    /// named by `active` or `previous`.
    fn sweep(&self) -> Result<(), StoreError> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let p = e.path();
            if name.starts_with(STAGING_PREFIX) {
                log::warn!("removing {} left by an interrupted install", p.display());
                files::crash_point("remove", &p);
                std::fs::remove_dir_all(&p).map_err(|err| io_err(&p, "remove", err))?;
            } else if name.ends_with(".new") || name.starts_with(".probe-") {
                files::crash_point("remove", &p);
                std::fs::remove_file(&p).map_err(|err| io_err(&p, "remove", err))?;
            }
        }
        // State folders other than the current one (a switch killed before its rename, or
        // replaced by a later switch).
        let current = self.state_number().map(|n| n.to_string());
        let states = self.dir.join(STATES);
        if let Ok(rd) = std::fs::read_dir(&states) {
            for e in rd.flatten() {
                if Some(e.file_name().to_string_lossy().as_ref()) != current.as_deref() {
                    let p = e.path();
                    files::crash_point("remove", &p);
                    std::fs::remove_dir_all(&p).map_err(|err| io_err(&p, "remove", err))?;
                }
            }
        }
        Ok(())
    }

    /// Open and validate a bundle folder: the signature first when a key is given (so nothing
    /// of an unsigned bundle is parsed), then everything [`Bundle::open`] checks, then `test`.
    fn validate(
        &self,
        source: &Path,
        dir: &Path,
        name: &str,
        key: Option<&ed25519_dalek::VerifyingKey>,
        test: TestInference<'_>,
    ) -> Result<String, StoreError> {
        if let Some(k) = key {
            verify_bundle(dir, k)?;
        }
        let bundle = Bundle::open(dir).map_err(|error| StoreError::Invalid {
            source_path: source.to_path_buf(),
            error,
        })?;
        test(&bundle).map_err(|message| StoreError::TestInference {
            name: name.to_string(),
            message,
        })
    }

    /// Install `source` (a bundle folder, `.tar` or `.tar.zst`) as `name` (default: the
    /// manifest's `name-version`), validate it, and make it active. On any failure the active
    /// model is untouched and nothing of the new one is left.
    pub fn install(
        &self,
        source: &Path,
        name: Option<&str>,
        key: Option<&ed25519_dalek::VerifyingKey>,
        test: TestInference<'_>,
    ) -> Result<InstallReport, StoreError> {
        if let Some(n) = name {
            check_name(n)?;
        }
        self.ensure_writable()?;
        self.sweep()?;
        let staging = self
            .dir
            .join(format!("{STAGING_PREFIX}{}", std::process::id()));
        files::crash_point("create", &staging);
        std::fs::create_dir(&staging).map_err(|e| io_err(&staging, "create", e))?;
        let result = self.install_staged(source, &staging, name, key, test);
        if result.is_err() && staging.exists() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    fn install_staged(
        &self,
        source: &Path,
        staging: &Path,
        name: Option<&str>,
        key: Option<&ed25519_dalek::VerifyingKey>,
        test: TestInference<'_>,
    ) -> Result<InstallReport, StoreError> {
        let n = unpack::unpack(source, staging)?;
        let root = unpack::bundle_root(staging).ok_or_else(|| StoreError::NoManifest {
            source_path: source.to_path_buf(),
        })?;
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let m = manifest_only(&root).map_err(|error| StoreError::Invalid {
                    source_path: source.to_path_buf(),
                    error,
                })?;
                let n = format!("{}-{}", m.name, m.version);
                check_name(&n)?;
                n
            }
        };
        let versions = self.dir.join(VERSIONS);
        let dest = versions.join(&name);
        if std::fs::symlink_metadata(&dest).is_ok() {
            return Err(StoreError::Exists { name });
        }
        let test_summary = self.validate(source, &root, &name, key, test)?;
        // The unpacked files were synced one by one; their folder entries now.
        sync_tree(&root)?;
        files::rename(&root, &dest).map_err(|e| io_err(&dest, "rename", e))?;
        files::sync_dir(&versions).map_err(|e| io_err(&versions, "sync", e))?;
        if root != staging {
            // The archive's top folder moved out; the staging folder is empty now.
            files::crash_point("remove", staging);
            std::fs::remove_dir(staging).map_err(|e| io_err(staging, "remove", e))?;
        }
        let replaced = self.active();
        self.switch(&name)?;
        Ok(InstallReport {
            dir: dest,
            name,
            files: n.files,
            bytes: n.bytes,
            test: test_summary,
            replaced,
            signed: key.is_some(),
        })
    }

    fn names(&self) -> Vec<String> {
        self.list()
            .map(|l| l.into_iter().map(|i| i.name).collect())
            .unwrap_or_default()
    }

    /// Validate the installed version `name` again (signature, checksums, test inference) and
    /// make it active; the one active before becomes `previous`. Returns the test's summary.
    pub fn activate(
        &self,
        name: &str,
        key: Option<&ed25519_dalek::VerifyingKey>,
        test: TestInference<'_>,
    ) -> Result<String, StoreError> {
        let dir = self.dir.join(VERSIONS).join(name);
        if check_name(name).is_err() || !dir.is_dir() {
            return Err(StoreError::NoSuchModel {
                name: name.into(),
                dir: self.dir.clone(),
                installed: self.names(),
            });
        }
        self.ensure_writable()?;
        self.sweep()?;
        let summary = self.validate(&dir, &dir, name, key, test)?;
        self.switch(name)?;
        Ok(summary)
    }

    /// Make `previous` active again (and the one active now `previous`). Returns the name
    /// rolled back to and the test's summary.
    pub fn rollback(
        &self,
        key: Option<&ed25519_dalek::VerifyingKey>,
        test: TestInference<'_>,
    ) -> Result<(String, String), StoreError> {
        let previous = self
            .previous()
            .filter(|p| Some(p) != self.active().as_ref());
        let Some(previous) = previous else {
            return Err(StoreError::NoPrevious {
                dir: self.dir.clone(),
            });
        };
        let summary = self.activate(&previous, key, test)?;
        Ok((previous, summary))
    }

    /// Make `name` active and what was active `previous`, in one atomic step: both links live in
    /// a new folder `states/<n>/`, and renaming a new `state` link over the old one switches them
    /// together (`active` and `previous` themselves are fixed links into `state/`).
    fn switch(&self, name: &str) -> Result<(), StoreError> {
        let current = self.active();
        if current.as_deref() == Some(name) {
            return Ok(());
        }
        let states = self.dir.join(STATES);
        if !states.is_dir() {
            files::crash_point("create", &states);
            std::fs::create_dir(&states).map_err(|e| io_err(&states, "create", e))?;
        }
        let old = self.state_number();
        let next = (old.unwrap_or(0) + 1).to_string();
        let staged = states.join(format!(".new-{}", std::process::id()));
        files::crash_point("create", &staged);
        std::fs::create_dir(&staged).map_err(|e| io_err(&staged, "create", e))?;
        let link = |link: &str, to: &str| -> Result<(), StoreError> {
            let p = staged.join(link);
            files::crash_point("create", &p);
            let target = Path::new("../..").join(VERSIONS).join(to);
            std::os::unix::fs::symlink(target, &p).map_err(|e| io_err(&p, "create", e))
        };
        link(ACTIVE, name)?;
        if let Some(c) = &current {
            link(PREVIOUS, c)?;
        }
        files::sync_dir(&staged).map_err(|e| io_err(&staged, "sync", e))?;
        let done = states.join(&next);
        files::rename(&staged, &done).map_err(|e| io_err(&done, "rename", e))?;
        files::sync_dir(&states).map_err(|e| io_err(&states, "sync", e))?;
        self.set_link(STATE, &Path::new(STATES).join(&next))?;
        // The fixed links, made once (dangling until the first state exists).
        for l in [ACTIVE, PREVIOUS] {
            let want = Path::new(STATE).join(l);
            if std::fs::read_link(self.dir.join(l)).ok().as_deref() != Some(want.as_path()) {
                self.set_link(l, &want)?;
            }
        }
        // The replaced state folder is no longer named by anything.
        if let Some(o) = old {
            let p = states.join(o.to_string());
            if p.is_dir() {
                files::crash_point("remove", &p);
                std::fs::remove_dir_all(&p).map_err(|e| io_err(&p, "remove", e))?;
            }
        }
        log::info!("{}: active model is now {name}", self.dir.display());
        Ok(())
    }

    /// The number of the state folder `state` names.
    fn state_number(&self) -> Option<u64> {
        std::fs::read_link(self.dir.join(STATE))
            .ok()?
            .file_name()?
            .to_str()?
            .parse()
            .ok()
    }

    /// Replace the link `link` by one to `target`, atomically (a new link renamed over it).
    fn set_link(&self, link: &str, target: &Path) -> Result<(), StoreError> {
        let tmp = self.dir.join(format!(".{link}.new"));
        let _ = std::fs::remove_file(&tmp);
        files::crash_point("create", &tmp);
        std::os::unix::fs::symlink(target, &tmp).map_err(|e| io_err(&tmp, "create", e))?;
        let path = self.dir.join(link);
        files::rename(&tmp, &path).map_err(|e| io_err(&path, "rename", e))?;
        files::sync_dir(&self.dir).map_err(|e| io_err(&self.dir, "sync", e))
    }
}

/// The manifest of the bundle in `dir`, parsed but not checked against its files (for names
/// and listings; [`Bundle::open`] does the full check).
fn manifest_only(dir: &Path) -> Result<crate::Manifest, BundleError> {
    let path = dir.join(crate::MANIFEST_FILE);
    let text = files::read_text_limited(&path, files::MAX_MANIFEST_BYTES).map_err(|error| {
        BundleError::ManifestRead {
            path: path.clone(),
            error,
        }
    })?;
    toml::from_str(&text).map_err(|e| BundleError::ManifestParse {
        path,
        message: e.to_string(),
    })
}

/// fsync every folder under `dir` (and `dir`), so the names of the synced files survive.
fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err(dir, "read", e))?;
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            sync_tree(&e.path())?;
        }
    }
    files::sync_dir(dir).map_err(|e| io_err(dir, "sync", e))
}

#[cfg(test)]
mod tests;
