//! edgefuse model bundles.
//!
//! A bundle is a folder with a `bundle.toml` [`manifest::Manifest`], the ONNX graphs it names
//! (CLIP image tower, optional Q-Former, optional text tower), the label-embedding matrix, and a
//! sha256 for every file. [`Bundle::open`] validates all of it and reports the first problem with
//! the file and field; [`Bundle::load_encoder`] and friends parse and optimise the graphs in tract
//! for the fixed input shape ([`Bundle::load_encoder_graph`] and [`Bundle::load_qformer_graph`]
//! stop at the checked, decluttered graph, for backends that lower it themselves).
//! [`text::LabelEmbedder`] tokenizes prompts with the CLIP BPE and
//! runs the text tower to add labels on the device.

#![deny(missing_docs)]

pub mod bundle;
pub mod files;
pub mod fitted;
pub mod manifest;
pub mod quant;
pub mod rewrite;
pub mod store;
pub mod text;

pub use bundle::{
    sha256_hex, Bundle, DroppedFit, LoadedGraph, LoadedModel, QuantTables, MANIFEST_FILE,
    MAX_LABELS,
};
pub use manifest::Manifest;

use std::path::PathBuf;

/// Everything that can be wrong with a bundle. Every variant names the file and, where it
/// applies, the manifest field, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// `bundle.toml` could not be read.
    #[error("{}: cannot read the bundle manifest ({error}); point --model at a bundle folder containing bundle.toml", path.display())]
    ManifestRead {
        /// The manifest path.
        path: PathBuf,
        /// Why it could not be read (in the message, not a `source`: `{:#}` prints it once).
        error: files::ReadError,
    },
    /// `bundle.toml` is not valid TOML or does not match the schema.
    #[error("{}: invalid manifest: {message}", path.display())]
    ManifestParse {
        /// The manifest path.
        path: PathBuf,
        /// Parser message (with line and column).
        message: String,
    },
    /// A field has a value edgefuse cannot use.
    #[error("{}: field `{field}` {message}", path.display())]
    Field {
        /// The manifest path.
        path: PathBuf,
        /// Dotted field name.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A file named by the manifest is missing or unreadable.
    #[error("{} (manifest field `{field}`): cannot read the file ({error}); restore the bundle or fix the path", path.display())]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// The manifest field naming it.
        field: String,
        /// Why it could not be read (in the message, not a `source`: `{:#}` prints it once).
        error: files::ReadError,
    },
    /// A file's sha256 differs from the manifest's.
    #[error("{} (manifest field `{field}`): sha256 is {actual} but the manifest says {expected}; the file is corrupt or was replaced: restore it or re-run the exporter", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The manifest field naming it.
        field: String,
        /// Checksum in the manifest.
        expected: String,
        /// Checksum of the file on disk.
        actual: String,
    },
    /// An ONNX file could not be parsed or optimised.
    #[error("{} (manifest field `{field}`): not a loadable ONNX model: {message}", path.display())]
    CorruptModel {
        /// The file.
        path: PathBuf,
        /// The manifest field naming it.
        field: String,
        /// tract's message.
        message: String,
    },
    /// Shapes of the bundle's pieces do not fit together.
    #[error("{} (field `{field}`): {message}", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// The manifest field concerned.
        field: String,
        /// What does not fit and what to do.
        message: String,
    },
    /// Writing the bundle failed.
    #[error("{}: cannot write ({error})", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, not a `source`: `{:#}` prints it once).
        error: std::io::Error,
    },
    /// A prompt cannot be embedded.
    #[error("prompt {prompt:?}: {message}")]
    Prompt {
        /// The prompt.
        prompt: String,
        /// What is wrong and the limit.
        message: String,
    },
    /// The text tower failed at run time.
    #[error("{}: text tower failed: {message}", path.display())]
    Inference {
        /// The model file.
        path: PathBuf,
        /// tract's message.
        message: String,
    },
    /// A tract runtime (e.g. tract-cuda) could not prepare the model for its device.
    #[error("{}: the {runtime} runtime cannot run this model: {message}", path.display())]
    Runtime {
        /// The model file.
        path: PathBuf,
        /// Runtime name.
        runtime: String,
        /// tract's message.
        message: String,
    },
}
