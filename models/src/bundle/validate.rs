//! Checking a manifest's fields, and the label-embedding matrix against them.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::manifest::{Manifest, FORMAT_VERSION, MAX_RERANK_K};
use crate::BundleError;

/// Most labels a bundle may have: the runtime's top-k, head results, decision and thresholds
/// index labels with `u16`.
pub const MAX_LABELS: usize = u16::MAX as usize + 1;

pub(super) fn validate_fields(
    m: &Manifest,
    err: &dyn Fn(&str, String) -> BundleError,
) -> Result<(), BundleError> {
    if m.format_version != FORMAT_VERSION {
        return Err(err(
            "format_version",
            format!("is {}, this edgefuse reads version {FORMAT_VERSION}; upgrade edgefuse or re-export the bundle", m.format_version),
        ));
    }
    let p = &m.preprocess;
    if p.image_size[0] == 0
        || p.image_size[1] == 0
        || p.image_size[0] > 4096
        || p.image_size[1] > 4096
    {
        return Err(err(
            "preprocess.image_size",
            format!("{:?} must be 1..=4096 pixels per side", p.image_size),
        ));
    }
    for (i, s) in p.std.iter().enumerate() {
        if !(s.is_finite() && *s > 0.0) {
            return Err(err(
                &format!("preprocess.std[{i}]"),
                format!("{s} must be a positive number"),
            ));
        }
    }
    if p.mean.iter().any(|v| !v.is_finite()) {
        return Err(err(
            "preprocess.mean",
            format!("{:?} must be finite", p.mean),
        ));
    }
    check_paths(m, err)?;
    if m.encoder.embedding_dim == 0 {
        return Err(err("encoder.embedding_dim", "must be > 0".into()));
    }
    if m.labels.is_empty() {
        return Err(err(
            "labels",
            "the bundle lists no labels; add some with `edgefuse labels add`".into(),
        ));
    }
    if m.labels.len() > MAX_LABELS {
        return Err(err(
            "labels",
            format!(
                "the bundle lists {} labels; edgefuse handles at most {MAX_LABELS} per bundle (remove some with `edgefuse labels remove`, or split the bundle)",
                m.labels.len()
            ),
        ));
    }
    // Linear in the label count (a set of the names seen so far).
    let mut seen = HashSet::with_capacity(m.labels.len());
    for (i, l) in m.labels.iter().enumerate() {
        if l.name.trim().is_empty() {
            return Err(err(&format!("labels[{i}].name"), "is empty".into()));
        }
        if !seen.insert(l.name.as_str()) {
            return Err(err(
                &format!("labels[{i}].name"),
                format!("`{}` appears twice", l.name),
            ));
        }
    }
    check_head(&m.fusion.clip, "fusion.clip", err)?;
    check_fitted(m, err)?;
    match (&m.qformer, &m.fusion.qformer) {
        (Some(q), Some(h)) => {
            check_head(h, "fusion.qformer", err)?;
            if m.encoder.tokens_output.is_none() {
                return Err(err(
                    "encoder.tokens_output",
                    "is required when the bundle has a [qformer]".into(),
                ));
            }
            if q.queries == 0 {
                return Err(err("qformer.queries", "must be > 0".into()));
            }
        }
        (Some(_), None) => {
            return Err(err(
                "fusion.qformer",
                "is required when the bundle has a [qformer]".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                "fusion.qformer",
                "is set but the bundle has no [qformer] section".into(),
            ))
        }
        (None, None) => {}
    }
    if let Some(r) = &m.rerank {
        if m.qformer.is_none() {
            return Err(err(
                "rerank",
                "the re-ranker reads the Q-Former's query outputs and the bundle has no [qformer] section; remove [rerank]".into(),
            ));
        }
        if !(2..=MAX_RERANK_K).contains(&r.top_k) {
            return Err(err(
                "rerank.top_k",
                format!(
                    "{} must be 2..={MAX_RERANK_K} (the labels re-scored per frame)",
                    r.top_k
                ),
            ));
        }
        if !(r.weight.is_finite() && r.weight > 0.0) {
            return Err(err(
                "rerank.weight",
                format!("{} must be a finite number > 0", r.weight),
            ));
        }
    }
    if let Some(t) = &m.text_encoder {
        if t.tokenizer != "clip-bpe" {
            return Err(err(
                "text_encoder.tokenizer",
                format!("`{}` is not supported; use `clip-bpe`", t.tokenizer),
            ));
        }
        if !(3..=1024).contains(&t.context_length) {
            return Err(err(
                "text_encoder.context_length",
                format!("{} must be 3..=1024", t.context_length),
            ));
        }
    }
    Ok(())
}

/// Every file a manifest names is a relative path inside the bundle folder: no absolute path,
/// no `..`, so reading or rewriting a bundle never touches a file outside it.
fn check_paths(m: &Manifest, err: &dyn Fn(&str, String) -> BundleError) -> Result<(), BundleError> {
    let mut files = vec![
        ("encoder.file", &m.encoder.model.file),
        ("text_embeddings.file", &m.text_embeddings.data.file),
    ];
    if let Some(q) = &m.qformer {
        files.push(("qformer.file", &q.model.file));
    }
    if let Some(t) = &m.text_encoder {
        files.push(("text_encoder.file", &t.model.file));
    }
    if let Some(q) = &m.quantization {
        files.push(("quantization.table.file", &q.table.file));
    }
    if let Some(f) = &m.fusion_fitted {
        files.push(("fusion_fitted.file", &f.params.file));
    }
    if let Some(r) = &m.rerank {
        files.push(("rerank.file", &r.model.file));
    }
    for (field, file) in files {
        if !is_inside_bundle(file) {
            return Err(err(
                field,
                format!("`{file}` must be a path relative to the bundle folder, without `..` (bundle files stay inside the bundle)"),
            ));
        }
    }
    Ok(())
}

/// Whether `file` is a non-empty relative path that cannot leave the folder it is joined to.
pub(super) fn is_inside_bundle(file: &str) -> bool {
    use std::path::Component;
    let p = std::path::Path::new(file);
    p.components().any(|c| matches!(c, Component::Normal(_)))
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The `[fusion_fitted]` section against the manifest: a method that needs fitted parameters
/// has them, and they were fitted for exactly these labels (a label change since the fit would
/// mismatch rows silently).
fn check_fitted(
    m: &Manifest,
    err: &dyn Fn(&str, String) -> BundleError,
) -> Result<(), BundleError> {
    let method = m.fusion.method;
    let Some(f) = &m.fusion_fitted else {
        if method.needs_fit() {
            return Err(err(
                "fusion.method",
                format!(
                    "`{}` needs parameters fitted on labelled frames and the bundle has no [fusion_fitted] section; \
                     run `edgefuse fit --model DIR --source file://FOLDER --method {} --out NEW_DIR`, or choose weighted_logits, weighted_probabilities, max or voting",
                    method.name(),
                    method.name()
                ),
            ));
        }
        return Ok(());
    };
    if f.zero_shot_method.needs_fit() {
        return Err(err(
            "fusion_fitted.zero_shot_method",
            format!("`{}` needs fitting; it must be one of weighted_logits, weighted_probabilities, max, voting", f.zero_shot_method.name()),
        ));
    }
    let names: Vec<&str> = m.labels.iter().map(|l| l.name.as_str()).collect();
    if f.labels
        .iter()
        .map(String::as_str)
        .ne(names.iter().copied())
    {
        return Err(err(
            "fusion_fitted.labels",
            format!(
                "the fusion parameters were fitted for the labels {:?} but the bundle now has {:?}; \
                 fit again with `edgefuse fit`, or delete the [fusion_fitted] section and set [fusion] method = \"{}\"",
                f.labels,
                names,
                f.zero_shot_method.name()
            ),
        ));
    }
    Ok(())
}

fn check_head(
    h: &crate::manifest::HeadParams,
    field: &str,
    err: &dyn Fn(&str, String) -> BundleError,
) -> Result<(), BundleError> {
    if !(h.logit_scale.is_finite() && h.logit_scale > 0.0) {
        return Err(err(
            &format!("{field}.logit_scale"),
            format!("{} must be a positive number", h.logit_scale),
        ));
    }
    if !(h.weight.is_finite() && h.weight >= 0.0) {
        return Err(err(
            &format!("{field}.weight"),
            format!("{} must be >= 0", h.weight),
        ));
    }
    Ok(())
}

/// Decode the label-embedding file `path` (`raw`, little-endian f32) into one L2-normalised row
/// per label of `m`, checking its width against `encoder.embedding_dim`.
pub(super) fn label_embeddings(
    raw: &[u8],
    m: &Manifest,
    path: PathBuf,
) -> Result<Vec<f32>, BundleError> {
    let dim = m.encoder.embedding_dim;
    if !raw.len().is_multiple_of(4) || !(raw.len() / 4).is_multiple_of(dim) {
        return Err(BundleError::Shape {
            path,
            field: "text_embeddings.file".into(),
            message: format!(
                "{} bytes is not a whole number of f32 rows of encoder.embedding_dim = {dim}; \
                 the label-embedding width must equal the encoder's embedding width",
                raw.len()
            ),
        });
    }
    let rows = raw.len() / 4 / dim;
    if rows != m.labels.len() {
        return Err(BundleError::Shape {
            path,
            field: "labels".into(),
            message: format!(
                "the embedding file has {rows} rows of width {dim} but the manifest lists {} labels; \
                 re-run `edgefuse labels` or the exporter to regenerate it",
                m.labels.len()
            ),
        });
    }
    let mut label_embeddings: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    for (i, row) in label_embeddings.chunks_exact_mut(dim).enumerate() {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return Err(BundleError::Shape {
                path: path.clone(),
                field: format!("labels[{i}]"),
                message: format!(
                    "embedding row {i} (label `{}`) is zero or not finite",
                    m.labels[i].name
                ),
            });
        }
        row.iter_mut().for_each(|v| *v /= norm);
    }
    Ok(label_embeddings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Label;

    fn default_manifest() -> Manifest {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("default");
        let text = std::fs::read_to_string(dir.join(crate::MANIFEST_FILE)).unwrap();
        toml::from_str(&text).unwrap()
    }

    fn check(m: &Manifest) -> Result<(), String> {
        validate_fields(m, &|field, message| BundleError::Field {
            path: PathBuf::from("bundle.toml"),
            field: field.to_string(),
            message,
        })
        .map_err(|e| e.to_string())
    }

    fn labels(n: usize) -> Vec<Label> {
        (0..n)
            .map(|i| Label {
                name: format!("label {i}"),
                prompts: Vec::new(),
            })
            .collect()
    }

    fn default_text() -> String {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("default");
        std::fs::read_to_string(dir.join(crate::MANIFEST_FILE)).unwrap()
    }

    #[test]
    fn arrays_of_the_wrong_length_are_refused_naming_the_field() {
        let text = default_text();
        assert!(toml::from_str::<Manifest>(&text).is_ok());
        // `text` with the line `key = ...` replaced by `line`.
        let with = |key: &str, line: &str| -> String {
            let mut found = false;
            let out = text
                .lines()
                .map(|l| {
                    if l.starts_with(&format!("{key} =")) {
                        found = true;
                        line
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            assert!(found, "no `{key} =` line");
            out
        };
        for (key, line, field, n) in [
            (
                "image_size",
                "image_size = [32, 32, 3]",
                "preprocess.image_size",
                3,
            ),
            (
                "image_size",
                "image_size = [32]",
                "preprocess.image_size",
                1,
            ),
            ("mean", "mean = [0.5, 0.5, 0.5, 0.5]", "preprocess.mean", 4),
            ("std", "std = [0.5, 0.5]", "preprocess.std", 2),
        ] {
            let e = toml::from_str::<Manifest>(&with(key, line))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("`{field}` has {n} elements")),
                "{line}: {e}"
            );
        }
    }

    #[test]
    fn file_paths_outside_the_bundle_are_refused() {
        for bad in [
            "/tmp/victim/emb.bin",
            "../emb.bin",
            "a/../../emb.bin",
            "",
            ".",
            "./",
        ] {
            let mut m = default_manifest();
            m.text_embeddings.data.file = bad.into();
            let e = check(&m).unwrap_err();
            assert!(
                e.contains("text_embeddings.file") && e.contains("relative to the bundle folder"),
                "{bad:?}: {e}"
            );
        }
        let mut m = default_manifest();
        m.encoder.model.file = "/etc/passwd".into();
        assert!(check(&m).unwrap_err().contains("encoder.file"));
        for good in ["emb.bin", "./emb.bin", "sub/emb.bin"] {
            assert!(is_inside_bundle(good), "{good}");
        }
    }

    #[test]
    fn rerank_fields_are_checked_naming_the_field() {
        let mut m = default_manifest();
        let r = crate::manifest::Rerank {
            model: crate::manifest::FileRef {
                file: "itm.onnx".into(),
                sha256: "0".repeat(64),
            },
            input: "pairs".into(),
            output: "match".into(),
            top_k: 3,
            weight: 1.0,
        };
        m.rerank = Some(r.clone());
        assert_eq!(check(&m), Ok(()));
        for (top_k, weight, field) in [
            (1, 1.0, "rerank.top_k"),
            (MAX_RERANK_K + 1, 1.0, "rerank.top_k"),
            (3, 0.0, "rerank.weight"),
            (3, -1.0, "rerank.weight"),
            (3, f32::NAN, "rerank.weight"),
            (3, f32::INFINITY, "rerank.weight"),
        ] {
            m.rerank = Some(crate::manifest::Rerank {
                top_k,
                weight,
                ..r.clone()
            });
            let e = check(&m).unwrap_err();
            assert!(e.contains(field), "{top_k} {weight}: {e}");
        }
        m.rerank = Some(crate::manifest::Rerank {
            model: crate::manifest::FileRef {
                file: "../itm.onnx".into(),
                sha256: "0".repeat(64),
            },
            ..r.clone()
        });
        assert!(check(&m).unwrap_err().contains("rerank.file"));
        m.rerank = Some(r);
        m.qformer = None;
        m.fusion.qformer = None;
        let e = check(&m).unwrap_err();
        assert!(e.contains("rerank") && e.contains("no [qformer]"), "{e}");
    }

    #[test]
    fn label_count_is_capped_where_the_indices_end() {
        let mut m = default_manifest();
        m.labels = labels(MAX_LABELS);
        assert_eq!(check(&m), Ok(()));
        m.labels = labels(MAX_LABELS + 1);
        let e = check(&m).unwrap_err();
        assert!(
            e.contains("65537 labels") && e.contains("at most 65536"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_names_are_found_in_linear_time() {
        let mut m = default_manifest();
        m.labels = labels(MAX_LABELS);
        m.labels[MAX_LABELS - 1].name = "label 3".into();
        // Quadratic, this was ~2·10⁹ comparisons; a set makes it instant.
        let t = std::time::Instant::now();
        let e = check(&m).unwrap_err();
        assert!(
            e.contains("labels[65535].name") && e.contains("`label 3` appears twice"),
            "{e}"
        );
        println!(
            "duplicate check over {MAX_LABELS} labels: {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn write_labels_refuses_an_invalid_bundle_before_writing() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("default");
        let tmp = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
        let mut b = crate::Bundle::open(tmp.path()).unwrap();
        let before = std::fs::read(tmp.path().join(crate::MANIFEST_FILE)).unwrap();
        let mut labels = b.manifest().labels.clone();
        labels.push(labels[0].clone());
        let dim = b.manifest().encoder.embedding_dim;
        let rows = vec![0.5f32; labels.len() * dim];
        let e = b.write_labels(labels, &rows).unwrap_err().to_string();
        assert!(e.contains("appears twice"), "{e}");
        assert_eq!(
            std::fs::read(tmp.path().join(crate::MANIFEST_FILE)).unwrap(),
            before,
            "nothing written"
        );
        crate::Bundle::open(tmp.path()).expect("the bundle still opens");
    }
}
