//! Bringing a bundle into the store's staging folder: from a folder (copied) or a `.tar` /
//! `.tar.zst` archive (recognised by content, not by name). Only regular files and folders are
//! taken; a link, a device, an absolute path or a `..` component is refused (nothing is ever
//! written outside the staging folder). Every file is written durably (see
//! [`crate::files::write_synced`]).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::{io_err, StoreError};
use crate::files;

/// Most files one bundle may hold.
pub const MAX_ENTRIES: usize = 10_000;
/// Most bytes one bundle may unpack to (the sum of its files).
pub const MAX_UNPACKED_BYTES: u64 = 16 << 30;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Tally of what was unpacked.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unpacked {
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// Unpack or copy `source` into `dest` (an existing empty folder).
pub fn unpack(source: &Path, dest: &Path) -> Result<Unpacked, StoreError> {
    let meta = std::fs::metadata(source).map_err(|e| io_err(source, "read", e))?;
    if meta.is_dir() {
        let mut n = Unpacked::default();
        copy_dir(source, source, dest, &mut n)?;
        return Ok(n);
    }
    if !meta.is_file() {
        return Err(StoreError::Archive {
            path: source.to_path_buf(),
            message: "is neither a folder nor a regular file; give a bundle folder or a .tar / .tar.zst archive".into(),
        });
    }
    let mut file = std::fs::File::open(source).map_err(|e| io_err(source, "read", e))?;
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut file, &mut magic).map_err(|e| io_err(source, "read", e))?;
    let head = std::io::Cursor::new(magic[..got].to_vec());
    let reader = head.chain(file);
    if got == 4 && magic == ZSTD_MAGIC {
        let z =
            ruzstd::decoding::StreamingDecoder::new(reader).map_err(|e| StoreError::Archive {
                path: source.to_path_buf(),
                message: format!(
                    "is not a readable zstd stream ({e}); the download may be corrupt"
                ),
            })?;
        untar(source, z, dest)
    } else {
        untar(source, reader, dest)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The relative path of an archive entry or copied file, refused if it could leave the folder.
fn safe_relative(source: &Path, entry: &Path) -> Result<PathBuf, StoreError> {
    let mut out = PathBuf::new();
    for c in entry.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => {
                return Err(StoreError::UnsafeEntry {
                    archive: source.to_path_buf(),
                    entry: entry.display().to_string(),
                    why: "its path is absolute or goes up with `..`: it would be written outside the bundle folder".into(),
                })
            }
        }
    }
    Ok(out)
}

fn count(source: &Path, n: &mut Unpacked, bytes: u64) -> Result<(), StoreError> {
    n.files += 1;
    n.bytes = n.bytes.saturating_add(bytes);
    if n.files > MAX_ENTRIES || n.bytes > MAX_UNPACKED_BYTES {
        return Err(StoreError::Archive {
            path: source.to_path_buf(),
            message: format!(
                "unpacks to more than {MAX_ENTRIES} files or {} GiB; this is not a model bundle",
                MAX_UNPACKED_BYTES >> 30
            ),
        });
    }
    Ok(())
}

fn make_dir(path: &Path) -> Result<(), StoreError> {
    if path.is_dir() {
        return Ok(());
    }
    files::crash_point("create", path);
    std::fs::create_dir_all(path).map_err(|e| io_err(path, "create", e))
}

fn untar(source: &Path, reader: impl Read, dest: &Path) -> Result<Unpacked, StoreError> {
    let corrupt = |e: std::io::Error| {
        StoreError::Archive {
        path: source.to_path_buf(),
        message: format!("is not a readable tar archive ({e}); it may be truncated or corrupt: download or copy it again"),
    }
    };
    let mut archive = tar::Archive::new(reader);
    let mut n = Unpacked::default();
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let name = entry.path().map_err(corrupt)?.into_owned();
        let rel = safe_relative(source, &name)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            make_dir(&dest.join(&rel))?;
            continue;
        }
        if !kind.is_file() {
            return Err(StoreError::UnsafeEntry {
                archive: source.to_path_buf(),
                entry: name.display().to_string(),
                why:
                    "it is a link or a special file; a bundle holds only regular files and folders"
                        .into(),
            });
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let size = entry.header().size().map_err(corrupt)?;
        if size > files::MAX_MODEL_BYTES {
            return Err(StoreError::Archive {
                path: source.to_path_buf(),
                message: format!("entry {} is larger than 4 GiB", name.display()),
            });
        }
        count(source, &mut n, size)?;
        let mut bytes = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut bytes).map_err(corrupt)?;
        if bytes.len() as u64 != size {
            return Err(corrupt(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("entry {} ends early", name.display()),
            )));
        }
        let out = dest.join(&rel);
        if let Some(parent) = out.parent() {
            make_dir(parent)?;
        }
        files::write_synced(&out, &bytes).map_err(|e| io_err(&out, "write", e))?;
    }
    Ok(n)
}

fn copy_dir(root: &Path, dir: &Path, dest: &Path, n: &mut Unpacked) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, "read", e))?;
    let mut entries: Vec<_> = entries
        .collect::<Result<_, _>>()
        .map_err(|e| io_err(dir, "read", e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let t = e.file_type().map_err(|err| io_err(&path, "read", err))?;
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let out = dest.join(rel);
        if t.is_dir() {
            make_dir(&out)?;
            copy_dir(root, &path, dest, n)?;
        } else if t.is_file() {
            let bytes = files::read_limited(&path, files::MAX_MODEL_BYTES).map_err(|err| {
                StoreError::Io {
                    path: path.clone(),
                    action: "read",
                    error: std::io::Error::other(err.to_string()),
                }
            })?;
            count(root, n, bytes.len() as u64)?;
            files::write_synced(&out, &bytes).map_err(|err| io_err(&out, "write", err))?;
        } else {
            return Err(StoreError::UnsafeEntry {
                archive: root.to_path_buf(),
                entry: rel.display().to_string(),
                why:
                    "it is a link or a special file; a bundle holds only regular files and folders"
                        .into(),
            });
        }
    }
    Ok(())
}

/// Where the unpacked bundle's `bundle.toml` is: the staging folder itself, or its one folder
/// (archives made with `tar -C parent -cf x.tar bundle-folder`).
pub fn bundle_root(staging: &Path) -> Option<PathBuf> {
    if staging.join(crate::MANIFEST_FILE).is_file() {
        return Some(staging.to_path_buf());
    }
    let mut dirs = std::fs::read_dir(staging).ok()?.flatten();
    let only = dirs.next()?;
    if dirs.next().is_some() {
        return None;
    }
    let p = only.path();
    p.join(crate::MANIFEST_FILE).is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..`; write the raw name to test what a hostile archive holds.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn tar_and_tar_zst_unpack_alike() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tar_with(&[("b/bundle.toml", b"x"), ("b/m.onnx", b"yy")]);
        std::fs::write(tmp.path().join("a.tar"), &t).unwrap();
        let z =
            ruzstd::encoding::compress_to_vec(&t[..], ruzstd::encoding::CompressionLevel::Fastest);
        std::fs::write(tmp.path().join("a.bin"), &z).unwrap();
        for (name, out) in [("a.tar", "o1"), ("a.bin", "o2")] {
            let dest = tmp.path().join(out);
            std::fs::create_dir(&dest).unwrap();
            let n = unpack(&tmp.path().join(name), &dest).unwrap();
            assert_eq!((n.files, n.bytes), (2, 3));
            assert_eq!(std::fs::read(dest.join("b/m.onnx")).unwrap(), b"yy");
            assert_eq!(bundle_root(&dest), Some(dest.join("b")));
        }
    }

    #[test]
    fn paths_leaving_the_folder_and_links_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for (i, name) in ["../evil", "/etc/evil", "a/../../evil"].iter().enumerate() {
            let p = tmp.path().join(format!("{i}.tar"));
            std::fs::write(&p, tar_with(&[(name, b"x")])).unwrap();
            let dest = tmp.path().join(format!("d{i}"));
            std::fs::create_dir(&dest).unwrap();
            let e = unpack(&p, &dest).unwrap_err();
            assert!(matches!(e, StoreError::UnsafeEntry { .. }), "{name}: {e}");
            assert!(e.to_string().contains("outside the bundle folder"), "{e}");
        }
        assert!(!tmp.path().join("evil").exists());
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "bundle.toml", "/etc/passwd").unwrap();
        let p = tmp.path().join("link.tar");
        std::fs::write(&p, b.into_inner().unwrap()).unwrap();
        let dest = tmp.path().join("dl");
        std::fs::create_dir(&dest).unwrap();
        let e = unpack(&p, &dest).unwrap_err();
        assert!(e.to_string().contains("a link or a special file"), "{e}");
    }

    #[test]
    fn a_truncated_archive_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tar_with(&[("bundle.toml", &[b'x'; 3000])]);
        let p = tmp.path().join("t.tar");
        std::fs::write(&p, &t[..1500]).unwrap();
        let dest = tmp.path().join("d");
        std::fs::create_dir(&dest).unwrap();
        let e = unpack(&p, &dest).unwrap_err();
        assert!(e.to_string().contains("truncated or corrupt"), "{e}");
        let z =
            ruzstd::encoding::compress_to_vec(&t[..], ruzstd::encoding::CompressionLevel::Fastest);
        std::fs::write(&p, &z[..z.len() / 2]).unwrap();
        let dest = tmp.path().join("d2");
        std::fs::create_dir(&dest).unwrap();
        let e = unpack(&p, &dest).unwrap_err();
        assert!(matches!(e, StoreError::Archive { .. }), "{e}");
    }
}
