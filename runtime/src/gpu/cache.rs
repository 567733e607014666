//! Compiled kernels on disk.
//!
//! An entry is named `<kernel>-sm<XY>-drv<driver>-<hash>.cubin`, `hash` covering the full source
//! text, the compile options and the NVRTC version, so a changed kernel, a different GPU or a
//! new driver (JetPack update) never loads an old binary: it misses and is rebuilt, and the
//! entries of the same kernel and `sm` built for another driver are deleted then. Each file
//! starts with a header (magic, payload length, payload SHA-256) so a truncated or corrupted
//! entry is detected and rebuilt rather than handed to the driver. Writes go to a temporary
//! file renamed into place, so concurrent processes never read half an entry.
//!
//! The cache is an optimisation: when the directory cannot be created or written, the kernel is
//! compiled and used anyway, after a warning.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"EFCUBIN1";
const HEADER: usize = 8 + 8 + 32;

/// What identifies one compiled kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// Kernel file, e.g. `linear.cu`.
    pub kernel: String,
    /// Compute capability as `major*10+minor`.
    pub sm: u32,
    /// Driver version as reported by `cuDriverGetVersion` (e.g. 12060).
    pub driver: i32,
    /// Hex digest of source + options + compiler version.
    pub hash: String,
}

impl CacheKey {
    /// Key for `source` compiled with `options` by NVRTC `nvrtc_version` for `sm` under `driver`.
    pub fn new(
        kernel: &str,
        source: &str,
        options: &[String],
        nvrtc_version: (i32, i32),
        sm: u32,
        driver: i32,
    ) -> Self {
        let mut text = source.as_bytes().to_vec();
        for o in options {
            text.push(0);
            text.extend_from_slice(o.as_bytes());
        }
        text.extend_from_slice(format!("nvrtc {}.{}", nvrtc_version.0, nvrtc_version.1).as_bytes());
        let mut hash = edgefuse_models::sha256_hex(&text);
        hash.truncate(16);
        Self {
            kernel: kernel.to_string(),
            sm,
            driver,
            hash,
        }
    }

    fn stem(&self) -> String {
        self.kernel
            .trim_end_matches(".cu")
            .replace(['/', '\\'], "_")
    }

    /// The entry's file name.
    pub fn file_name(&self) -> String {
        format!(
            "{}-sm{}-drv{}-{}.cubin",
            self.stem(),
            self.sm,
            self.driver,
            self.hash
        )
    }
}

/// Where cache entries live: `$EDGEFUSE_CACHE_DIR`, else systemd's `$CACHE_DIRECTORY` (the
/// service's `/var/cache/edgefuse`), else `$XDG_CACHE_HOME/edgefuse`, else
/// `~/.cache/edgefuse`; kernels under `kernels/` there.
pub fn default_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = env("EDGEFUSE_CACHE_DIR")
        .or_else(|| env("CACHE_DIRECTORY"))
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("edgefuse")))
        .or_else(|| env("HOME").map(|p| p.join(".cache").join("edgefuse")))?;
    Some(base.join("kernels"))
}

/// How an entry was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Read from disk.
    Hit,
    /// Compiled and stored.
    Built,
    /// Compiled, but could not be stored (warned).
    BuiltUncached,
}

/// A directory of compiled kernels.
#[derive(Debug, Clone)]
pub struct KernelCache {
    dir: Option<PathBuf>,
}

impl KernelCache {
    /// A cache in `dir`; `None` disables caching (every kernel is compiled).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// The binary for `key`: from disk when a valid entry exists, else from `build`, which is
    /// then stored. `build`'s error is returned unchanged.
    pub fn get_or_build<E>(
        &self,
        key: &CacheKey,
        build: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<(Vec<u8>, Outcome), E> {
        let Some(dir) = &self.dir else {
            return build().map(|b| (b, Outcome::BuiltUncached));
        };
        let path = dir.join(key.file_name());
        match read_entry(&path) {
            Ok(Some(bytes)) => {
                log::debug!("kernel {} from cache {}", key.kernel, path.display());
                return Ok((bytes, Outcome::Hit));
            }
            Ok(None) => {}
            Err(e) => log::warn!(
                "kernel cache entry {} is unusable ({e}); compiling {} again",
                path.display(),
                key.kernel
            ),
        }
        let bytes = build()?;
        match store(dir, key, &bytes) {
            Ok(()) => Ok((bytes, Outcome::Built)),
            Err(e) => {
                log::warn!(
                    "cannot write the kernel cache {} ({e}); {} will be compiled again next start \
                     (set EDGEFUSE_CACHE_DIR to a writable directory)",
                    dir.display(),
                    key.kernel
                );
                Ok((bytes, Outcome::BuiltUncached))
            }
        }
    }
}

/// `Ok(None)`: no entry. `Err`: an entry exists but is damaged.
fn read_entry(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    if data.len() < HEADER || &data[..8] != MAGIC {
        return Err(bad("not an edgefuse kernel cache file"));
    }
    let len = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes")) as usize;
    let payload = &data[HEADER..];
    if payload.len() != len {
        return Err(bad("truncated"));
    }
    if Sha256::digest(payload).as_slice() != &data[16..48] {
        return Err(bad("checksum mismatch"));
    }
    Ok(Some(payload.to_vec()))
}

fn store(dir: &Path, key: &CacheKey, bytes: &[u8]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Entries of this kernel and sm for other drivers or sources are stale now.
    let prefix = format!("{}-sm{}-", key.stem(), key.sm);
    let name = key.file_name();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let n = entry.file_name();
        let n = n.to_string_lossy();
        if n.starts_with(&prefix) && n.ends_with(".cubin") && n != name {
            log::info!("removing stale kernel cache entry {n}");
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let mut data = Vec::with_capacity(HEADER + bytes.len());
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    data.extend_from_slice(&Sha256::digest(bytes));
    data.extend_from_slice(bytes);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, dir.join(name)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn key(driver: i32, src: &str) -> CacheKey {
        CacheKey::new(
            "linear.cu",
            src,
            &["-arch=sm_87".into()],
            (12, 6),
            87,
            driver,
        )
    }

    #[test]
    fn hit_after_build_and_rebuild_for_a_new_driver() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(Some(dir.path().to_path_buf()));
        let builds = Cell::new(0);
        let build = |b: &[u8]| {
            builds.set(builds.get() + 1);
            Ok::<_, ()>(b.to_vec())
        };
        let k1 = key(12060, "src");
        assert_eq!(
            cache.get_or_build(&k1, || build(b"one")).unwrap(),
            (b"one".to_vec(), Outcome::Built)
        );
        assert_eq!(
            cache.get_or_build(&k1, || build(b"never")).unwrap(),
            (b"one".to_vec(), Outcome::Hit)
        );
        assert_eq!(builds.get(), 1);
        // A JetPack update: same source and GPU, new driver -> rebuilt, old entry removed.
        let k2 = key(12080, "src");
        assert_eq!(
            cache.get_or_build(&k2, || build(b"two")).unwrap(),
            (b"two".to_vec(), Outcome::Built)
        );
        assert_eq!(builds.get(), 2);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![k2.file_name()]);
    }

    #[test]
    fn changed_source_or_options_change_the_key() {
        let a = key(1, "a");
        assert_ne!(a.hash, key(1, "b").hash);
        let opts = CacheKey::new("linear.cu", "a", &["-arch=sm_72".into()], (12, 6), 87, 1);
        assert_ne!(a.hash, opts.hash);
        let nvrtc = CacheKey::new("linear.cu", "a", &["-arch=sm_87".into()], (12, 8), 87, 1);
        assert_ne!(a.hash, nvrtc.hash);
        assert_eq!(a.file_name(), format!("linear-sm87-drv1-{}.cubin", a.hash));
    }

    #[test]
    fn damaged_entries_are_rebuilt_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(Some(dir.path().to_path_buf()));
        let k = key(12060, "src");
        cache
            .get_or_build(&k, || Ok::<_, ()>(vec![7u8; 64]))
            .unwrap();
        let path = dir.path().join(k.file_name());
        // Flip a payload byte, then truncate: both are caught.
        let mut data = std::fs::read(&path).unwrap();
        data[HEADER + 3] ^= 1;
        std::fs::write(&path, &data).unwrap();
        let (b, o) = cache
            .get_or_build(&k, || Ok::<_, ()>(vec![8u8; 64]))
            .unwrap();
        assert_eq!((b[0], o), (8, Outcome::Built));
        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..data.len() - 1]).unwrap();
        let (b, o) = cache
            .get_or_build(&k, || Ok::<_, ()>(vec![9u8; 64]))
            .unwrap();
        assert_eq!((b[0], o), (9, Outcome::Built));
        std::fs::write(&path, b"garbage").unwrap();
        let (_, o) = cache.get_or_build(&k, || Ok::<_, ()>(vec![1u8])).unwrap();
        assert_eq!(o, Outcome::Built);
    }

    #[test]
    fn unwritable_directory_still_compiles_and_build_errors_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let cache = KernelCache::new(Some(file.join("kernels")));
        let k = key(1, "s");
        let (_, o) = cache.get_or_build(&k, || Ok::<_, ()>(vec![1])).unwrap();
        assert_eq!(o, Outcome::BuiltUncached);
        let err = cache
            .get_or_build(&k, || Err::<Vec<u8>, _>("nvrtc said no"))
            .unwrap_err();
        assert_eq!(err, "nvrtc said no");
        let off = KernelCache::new(None);
        assert_eq!(
            off.get_or_build(&k, || Ok::<_, ()>(vec![2])).unwrap().1,
            Outcome::BuiltUncached
        );
    }
}
