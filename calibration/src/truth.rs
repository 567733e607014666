//! Ground truth of a folder of labelled frames: its `labels.csv` (`file,label`, one header
//! line), as the bundled samples and most exported data sets ship it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The file name looked for next to the frames (the file source skips it quietly).
pub use edgefuse_runtime::capture::file::LABELS_CSV;

/// The largest `labels.csv` read (a million labelled frames fit well within it).
pub const MAX_LABELS_CSV_BYTES: u64 = 64 << 20;

/// `file name -> label` from `dir/labels.csv`. Lines without a comma are skipped; labels are
/// trimmed. Only a regular file of at most [`MAX_LABELS_CSV_BYTES`] is read (a FIFO or a device
/// named `labels.csv` is an error, not a hang).
pub fn read_labels_csv(dir: &Path) -> std::io::Result<BTreeMap<String, String>> {
    use edgefuse_models::files::{read_text_limited, ReadError};
    let path = dir.join(LABELS_CSV);
    let text = read_text_limited(&path, MAX_LABELS_CSV_BYTES).map_err(|e| match e {
        ReadError::Io(e) => e,
        other => std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {other}", path.display()),
        ),
    })?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .map(|(f, l)| (f.to_string(), l.trim().to_string()))
        .collect())
}

/// The label of a frame by its source path, from the `labels.csv` of the frame's folder (read
/// once per folder; a folder without one labels nothing).
#[derive(Debug, Default)]
pub struct GroundTruth {
    folders: HashMap<PathBuf, BTreeMap<String, String>>,
}

impl GroundTruth {
    /// The label of the frame read from `source`, if its folder labels it.
    pub fn label(&mut self, source: &str) -> Option<&str> {
        let p = Path::new(source);
        let dir = p.parent()?;
        let map = self
            .folders
            .entry(dir.to_path_buf())
            .or_insert_with(|| read_labels_csv(dir).unwrap_or_default());
        map.get(p.file_name()?.to_str()?).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_by_folder_and_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(LABELS_CSV),
            "file,label\na.png, 7\nbroken\nb.png,cat\n",
        )
        .unwrap();
        let mut t = GroundTruth::default();
        let a = d.path().join("a.png");
        assert_eq!(t.label(a.to_str().unwrap()), Some("7"));
        assert_eq!(
            t.label(d.path().join("b.png").to_str().unwrap()),
            Some("cat")
        );
        assert_eq!(t.label(d.path().join("c.png").to_str().unwrap()), None);
        assert_eq!(t.label("/nonexistent/x.png"), None);
        assert_eq!(read_labels_csv(d.path()).unwrap().len(), 2);
        // Not a regular file: refused at once (a FIFO would block a plain read forever).
        let fifo = tempfile::tempdir().unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(fifo.path().join(LABELS_CSV))
            .status()
            .is_ok_and(|s| s.success());
        if made {
            let e = read_labels_csv(fifo.path()).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        } else {
            println!("mkfifo unavailable: the FIFO case of labels.csv is not checked");
        }
    }
}
