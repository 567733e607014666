//! `edgefuse labels`: list, add (embedding prompts with the bundle's text tower) and remove.

use anyhow::Result;
use clap::{Args, Subcommand};

use edgefuse_models::manifest::Label;
use edgefuse_models::text::LabelEmbedder;
use edgefuse_models::DroppedFit;

use crate::output::{Escaped, Out};
use crate::paths::{open_bundle, open_bundle_to_edit, ModelArg};
use crate::UsageError;

#[derive(Args, Debug)]
pub struct LabelsArgs {
    #[command(subcommand)]
    action: LabelsAction,
}

#[derive(Subcommand, Debug)]
enum LabelsAction {
    /// Print the labels and their prompts.
    List {
        #[command(flatten)]
        model: ModelArg,
    },
    /// Embed PROMPT(s) with the text tower and add them to label NAME (created if new), in the
    /// bundle --model names (never the installed default: copy it first).
    Add {
        #[command(flatten)]
        model: ModelArg,
        /// Prompts describing the label, e.g. "a photo of a cat".
        #[arg(required = true)]
        prompts: Vec<String>,
        /// The label's name.
        #[arg(long)]
        label: String,
    },
    /// Remove label NAME from the bundle --model names (never the installed default).
    Remove {
        #[command(flatten)]
        model: ModelArg,
        /// The label's name.
        #[arg(long)]
        label: String,
    },
}

pub fn labels(a: LabelsArgs) -> Result<()> {
    match a.action {
        LabelsAction::List { model } => {
            let b = open_bundle(model.model.as_deref())?;
            let mut out = Out::lock();
            for l in &b.manifest().labels {
                write!(out, "{}\t", Escaped(&l.name))?;
                for (i, p) in l.prompts.iter().enumerate() {
                    let sep = if i == 0 { "" } else { " | " };
                    write!(out, "{sep}{}", Escaped(p))?;
                }
                writeln!(out)?;
            }
            Ok(out.finish()?)
        }
        LabelsAction::Add {
            model,
            prompts,
            label,
        } => {
            if label.trim().is_empty() {
                return Err(UsageError("--label must not be empty".into()).into());
            }
            let mut b = open_bundle_to_edit(model.model.as_deref(), "add")?;
            let embedder = LabelEmbedder::new(&b)?;
            let mut labels = b.manifest().labels.clone();
            let mut rows = b.label_embeddings().to_vec();
            let dim = b.manifest().encoder.embedding_dim;
            let idx = match labels.iter().position(|l| l.name == label) {
                Some(i) => i,
                None => {
                    labels.push(Label {
                        name: label.clone(),
                        prompts: Vec::new(),
                    });
                    rows.extend(std::iter::repeat_n(0.0, dim));
                    labels.len() - 1
                }
            };
            labels[idx].prompts.extend(prompts);
            let row = embedder.embed_label(&labels[idx].prompts)?;
            rows[idx * dim..(idx + 1) * dim].copy_from_slice(&row);
            let dropped = b.write_labels(labels, &rows)?;
            let mut out = Out::lock();
            writeln!(
                out,
                "label `{}` now has {} prompt(s); the bundle has {} labels",
                Escaped(&label),
                b.manifest().labels[idx].prompts.len(),
                b.manifest().labels.len()
            )?;
            say_dropped(&mut out, dropped.as_ref())?;
            Ok(out.finish()?)
        }
        LabelsAction::Remove { model, label } => {
            let mut b = open_bundle_to_edit(model.model.as_deref(), "remove")?;
            let dim = b.manifest().encoder.embedding_dim;
            let mut labels = b.manifest().labels.clone();
            let idx = labels.iter().position(|l| l.name == label).ok_or_else(|| {
                UsageError(format!(
                    "no label `{label}`; labels are {:?}",
                    labels.iter().map(|l| &l.name).collect::<Vec<_>>()
                ))
            })?;
            if labels.len() == 1 {
                return Err(UsageError(format!(
                    "`{label}` is the last label; a bundle needs at least one"
                ))
                .into());
            }
            labels.remove(idx);
            let mut rows = b.label_embeddings().to_vec();
            rows.drain(idx * dim..(idx + 1) * dim);
            let dropped = b.write_labels(labels, &rows)?;
            let mut out = Out::lock();
            writeln!(
                out,
                "removed `{}`; {} labels remain",
                Escaped(&label),
                b.manifest().labels.len()
            )?;
            say_dropped(&mut out, dropped.as_ref())?;
            Ok(out.finish()?)
        }
    }
}

/// Say that a label change dropped the bundle's fitted fusion parameters, and what runs now.
fn say_dropped(out: &mut Out, dropped: Option<&DroppedFit>) -> Result<()> {
    if let Some(d) = dropped {
        writeln!(
            out,
            "the fitted fusion parameters ({} frames) were fitted for the old labels and are removed; \
             fusion method {} -> {}; run `edgefuse fit` again to adapt to the new labels",
            d.frames,
            d.method.name(),
            d.now.name()
        )?;
    }
    Ok(())
}
