//! Ground truth of a folder of labelled frames: its `labels.csv` (`file,label`, one header
//! line), as the bundled samples and most exported data sets ship it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The file name looked for next to the frames.
pub const LABELS_CSV: &str = "labels.csv";

/// `file name -> label` from `dir/labels.csv`. Lines without a comma are skipped; labels are
/// trimmed.
pub fn read_labels_csv(dir: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join(LABELS_CSV))?;
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
    }
}
