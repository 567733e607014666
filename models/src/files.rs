//! Reading the files a user names (a config, a bundle's manifest and data files) whole, safely:
//! only regular files (a FIFO would block forever, `/dev/zero` never ends), and never more than a
//! stated limit. Every whole-file read of a user-named path in edgefuse goes through
//! [`read_limited`]. And writing files durably ([`write_synced`], [`sync_dir`]).

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

/// Most bytes of a `bundle.toml` (65 536 labels with a few long prompts each fit).
pub const MAX_MANIFEST_BYTES: u64 = 32 << 20;
/// Most bytes of a bundle's small JSON files (the int8 calibration table).
pub const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Most bytes of a bundle's model or embedding file.
pub const MAX_MODEL_BYTES: u64 = 4 << 30;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The operating system refused (missing file, no permission, …).
    // The I/O error is in the message and is not a `source`, so `{:#}` prints it once.
    #[error("{0}")]
    Io(io::Error),
    /// The path is not a regular file.
    #[error("it is {kind}, not a regular file; give the path of a regular file")]
    NotRegular {
        /// What it is instead ("a FIFO", "a character device", "a directory", …).
        kind: &'static str,
    },
    /// The file is larger than the limit for its kind.
    #[error("it is larger than {}, the limit for this file", Bytes(*limit))]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
}

impl ReadError {
    /// The underlying I/O error's kind, if it is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Self::Io(e) => Some(e.kind()),
            _ => None,
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// A byte count for messages: `1 MiB`, `4 GiB`, `1500 bytes`.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n >= 1 << shift && n.is_multiple_of(1 << shift) {
                return write!(f, "{} {unit}", n >> shift);
            }
        }
        write!(f, "{n} bytes")
    }
}

fn describe(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Read the regular file `path` (symbolic links followed) whole, refusing anything else and
/// anything over `limit` bytes. The type is checked before opening (opening a FIFO would block)
/// and again on the opened file, and the read stops after `limit` bytes whatever the file is,
/// so a file swapped in between cannot make it block on a size check or read without end.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let t = std::fs::metadata(path)?.file_type();
    if !t.is_file() {
        return Err(ReadError::NotRegular { kind: describe(t) });
    }
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular {
            kind: describe(meta.file_type()),
        });
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// [`read_limited`] for a UTF-8 text file.
pub fn read_text_limited(path: &Path, limit: u64) -> Result<String, ReadError> {
    let bytes = read_limited(path, limit)?;
    String::from_utf8(bytes)
        .map_err(|_| ReadError::Io(io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text")))
}

/// Create (or truncate) `path`, write `bytes` and fsync the file: once this returns, the bytes
/// survive a crash or power cut (the name does once its folder is synced, see [`sync_dir`]).
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    crash_point("create", path);
    let mut f = std::fs::File::create(path)?;
    crash_point("write", path);
    f.write_all(bytes)?;
    crash_point("fsync", path);
    f.sync_all()
}

/// fsync the folder `dir`, so that files created, renamed or removed in it stay so after a
/// crash or power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    crash_point("fsync", dir);
    std::fs::File::open(dir)?.sync_all()
}

/// `std::fs::rename` behind a [`crash_point`].
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    crash_point("rename", from);
    std::fs::rename(from, to)
}

/// Fault injection for the crash-consistency tests: with `EDGEFUSE_CRASH_AT=N` in the
/// environment, the N-th call in the process (counted from 1) aborts it (SIGABRT: no clean-up,
/// as a kill at that moment). Every step that changes a bundle or an output on disk (create,
/// write, fsync, rename, remove) calls it first, so N = 1, 2, … kills a command at each of its
/// writes in turn. Without the variable it does nothing.
pub fn crash_point(step: &str, path: &Path) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static AT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let at = *AT.get_or_init(|| {
        std::env::var("EDGEFUSE_CRASH_AT")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    });
    if at == 0 {
        return;
    }
    if COUNT.fetch_add(1, Ordering::SeqCst) + 1 == at {
        eprintln!(
            "edgefuse: EDGEFUSE_CRASH_AT={at}: aborting before {step} {}",
            path.display()
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_regular_file_within_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read_limited(&p, 5).unwrap(), b"hello");
        let e = read_limited(&p, 4).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { limit: 4 }), "{e}");
        assert!(e.to_string().contains("4 bytes"), "{e}");
    }

    #[test]
    fn refuses_devices_directories_and_fifos_without_blocking() {
        let e = read_limited(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("a character device"), "{e}");
        let tmp = tempfile::tempdir().unwrap();
        let e = read_limited(tmp.path(), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        // A symbolic link to /dev/zero is refused for what it points to.
        let link = tmp.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_limited(&link, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("a character device"), "{e}");
        // A FIFO with no writer: opening it would block forever.
        let fifo = tmp.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = read_limited(&fifo, 1 << 20).unwrap_err();
            assert!(e.to_string().contains("a FIFO"), "{e}");
        }
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(Bytes(1 << 20).to_string(), "1 MiB");
        assert_eq!(Bytes(4 << 30).to_string(), "4 GiB");
        assert_eq!(Bytes(1500).to_string(), "1500 bytes");
    }
}
