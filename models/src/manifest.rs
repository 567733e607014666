//! The `bundle.toml` manifest: what a model bundle folder contains and how to feed it.
//!
//! Every field is documented with its unit and layout; unknown keys are rejected so a typo never
//! silently falls back to a default.

use serde::{Deserialize, Serialize};

/// Manifest format understood by this version of edgefuse.
pub const FORMAT_VERSION: u32 = 1;

/// Most labels a `[rerank]` section may re-score per frame.
pub const MAX_RERANK_K: usize = 16;

/// The whole `bundle.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format; must equal [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Bundle name, e.g. `edgefuse-mnist-clip`.
    pub name: String,
    /// Bundle version (free text, semver recommended).
    pub version: String,
    /// One line on what the bundle recognises.
    #[serde(default)]
    pub description: String,
    /// Licence and attribution of the weights and training data.
    #[serde(default)]
    pub license: String,
    /// How a camera frame becomes the encoder's input tensor.
    pub preprocess: Preprocess,
    /// The CLIP image tower.
    pub encoder: Encoder,
    /// Optional Q-Former reading the encoder's token sequence.
    #[serde(default)]
    pub qformer: Option<QFormer>,
    /// Optional text tower, needed only to add labels on the device.
    #[serde(default)]
    pub text_encoder: Option<TextEncoder>,
    /// Label text embeddings, one row per entry of `labels`.
    pub text_embeddings: TextEmbeddings,
    /// How the heads' scores are combined.
    pub fusion: Fusion,
    /// Fusion parameters fitted by `edgefuse fit` on labelled frames (absent: zero-shot only).
    #[serde(default)]
    pub fusion_fitted: Option<FusionFitted>,
    /// Optional image-text-matching re-ranker of the fused shortlist (needs the Q-Former).
    #[serde(default)]
    pub rerank: Option<Rerank>,
    /// Accuracy figures recorded when the bundle was built (name → fraction in 0..=1).
    #[serde(default)]
    pub accuracy: std::collections::BTreeMap<String, f64>,
    /// The labels, in the row order of the text-embedding matrix.
    pub labels: Vec<Label>,
    /// int8 execution of the linear layers (written by `edgefuse calibrate`); absent = float.
    #[serde(default)]
    pub quantization: Option<Quantization>,
}

/// The `[quantization]` section of an int8 bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// Calibration method the activation ranges came from (`entropy`, `percentile:99.99`, …).
    pub method: String,
    /// Calibration frames.
    pub frames: u64,
    /// The calibration table: JSON `{"encoder": {...}, "qformer": {...}}` of per-layer ranges.
    pub table: FileRef,
    /// Layers kept in float (`--skip`).
    #[serde(default)]
    pub skip: Vec<String>,
}

/// Preprocessing specification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Encoder input `[width, height]` in pixels.
    #[serde(deserialize_with = "de_image_size")]
    pub image_size: [u32; 2],
    /// Resize policy.
    pub resize: ResizePolicy,
    /// Per-channel mean subtracted after scaling pixels to 0..=1, in `channel_order`.
    #[serde(deserialize_with = "de_mean")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided after subtracting `mean`.
    #[serde(deserialize_with = "de_std")]
    pub std: [f32; 3],
    /// Channel order of the encoder input tensor.
    pub channel_order: ChannelOrder,
}

/// A fixed-size array that must have exactly `N` elements (serde's array impl ignores extra ones,
/// so `image_size = [32, 32, 3]` would pass silently).
fn exact<'de, D, T, const N: usize>(d: D, field: &str, what: &str) -> Result<[T; N], D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let v = Vec::<T>::deserialize(d)?;
    let n = v.len();
    v.try_into().map_err(|_| {
        serde::de::Error::custom(format!(
            "`{field}` has {n} elements; it takes exactly {N}: {what}"
        ))
    })
}

fn de_image_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u32; 2], D::Error> {
    exact(d, "preprocess.image_size", "[width, height] in pixels")
}

fn de_mean<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[f32; 3], D::Error> {
    exact(d, "preprocess.mean", "one value per channel")
}

fn de_std<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[f32; 3], D::Error> {
    exact(d, "preprocess.std", "one value per channel")
}

/// How a frame of arbitrary size is brought to `image_size`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResizePolicy {
    /// CLIP: scale so the shortest side matches, then crop the centre.
    ShortestSideCenterCrop,
    /// Scale both axes independently (aspect ratio not kept).
    Stretch,
}

/// Channel order of the input tensor.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue planes.
    Rgb,
    /// Blue, green, red planes.
    Bgr,
}

/// A file of the bundle with its checksum.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// Path relative to the bundle folder.
    pub file: String,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
}

/// The image encoder section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Encoder {
    /// ONNX file and checksum.
    #[serde(flatten)]
    pub model: FileRef,
    /// Name of the image input (`[1, 3, height, width]`, f32).
    pub input: String,
    /// Name of the pooled, projected embedding output (`[1, embedding_dim]`).
    pub embedding_output: String,
    /// Name of the token-sequence output (`[1, tokens, width]`), required with a Q-Former.
    #[serde(default)]
    pub tokens_output: Option<String>,
    /// Width of the pooled embedding.
    pub embedding_dim: usize,
}

/// The Q-Former section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QFormer {
    /// ONNX file and checksum.
    #[serde(flatten)]
    pub model: FileRef,
    /// Name of the image-token input.
    pub input: String,
    /// Name of the projected query output (`[1, queries, embedding_dim]`).
    pub output: String,
    /// Number of learned queries.
    pub queries: usize,
}

/// The `[rerank]` section: an image-text-matching (ITM) model, BLIP-2 style, that re-scores the
/// best `top_k` labels of the fusion. Each candidate label is one row of its input
/// `[candidates, 2 + queries, embedding_dim]`: the label's text embedding, the pooled image
/// embedding, then the Q-Former's query outputs, each L2-normalised; it outputs one match logit
/// per row (`[candidates]`). A candidate's final score is its fused log-probability plus
/// `weight` times its match logit. It runs when asked (`edgefuse run --rerank`); `edgefuse
/// eval` always measures it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rerank {
    /// ONNX file and checksum.
    #[serde(flatten)]
    pub model: FileRef,
    /// Name of the input (`[candidates, 2 + queries, embedding_dim]`, f32, candidates =
    /// min(`top_k`, labels): export the first axis as dynamic, or it must equal that count).
    pub input: String,
    /// Name of the output (`[candidates]` match logits).
    pub output: String,
    /// Labels re-scored per frame (the shortlist), 2..=16; fewer when the bundle has fewer labels.
    pub top_k: usize,
    /// Weight of the match logit against the fused log-probability, > 0.
    pub weight: f32,
}

/// The text tower section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextEncoder {
    /// ONNX file and checksum; input `tokens` (`[1, context_length]`, i64), output `[1, embedding_dim]`.
    #[serde(flatten)]
    pub model: FileRef,
    /// Name of the token-id input.
    pub input: String,
    /// Name of the embedding output.
    pub output: String,
    /// Token context length, start and end tokens included.
    pub context_length: usize,
    /// Tokenizer: only `clip-bpe` (the OpenAI CLIP BPE vocabulary) is supported.
    pub tokenizer: String,
}

/// The text-embedding matrix section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextEmbeddings {
    /// Raw little-endian f32 file, `[labels, embedding_dim]` row-major, and its checksum.
    #[serde(flatten)]
    pub data: FileRef,
}

/// How the zero-shot heads are combined.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fusion {
    /// Combination of the heads' outputs.
    pub method: FusionMethod,
    /// CLIP head (pooled image embedding vs label embeddings).
    pub clip: HeadParams,
    /// Q-Former head (max over queries); required when the bundle has a Q-Former.
    #[serde(default)]
    pub qformer: Option<HeadParams>,
}

/// Fusion method: how the heads' outputs become one probability per label. The first four need
/// nothing but the manifest; the others need parameters fitted by `edgefuse fit`
/// (`[fusion_fitted]`). `docs/FUSION.md` describes each.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum FusionMethod {
    /// Softmax of the weighted sum of the heads' logits.
    WeightedLogits,
    /// Weighted average of the heads' probabilities.
    WeightedProbabilities,
    /// Element-wise maximum of the heads' probabilities, renormalised.
    Max,
    /// Each head votes for its best label; ties are broken by the voters' summed confidence.
    Voting,
    /// Softmax of the heads' logits weighted by sigmoid(w_h), the w_h fitted.
    LearnedWeights,
    /// A multinomial logistic regression on the concatenated heads' logits (fitted).
    Stacking,
    /// A per-frame gate (softmax over heads of a linear function of each head's confidence,
    /// entropy and margin, and of the image/query agreement) weighting the heads' logits (fitted).
    Gated,
    /// A multinomial logistic regression on the concatenated pooled image embedding and pooled
    /// Q-Former queries (fitted).
    Concat,
}

impl FusionMethod {
    /// Every method, in the order reports list them.
    pub const ALL: [FusionMethod; 8] = [
        FusionMethod::WeightedLogits,
        FusionMethod::WeightedProbabilities,
        FusionMethod::Max,
        FusionMethod::Voting,
        FusionMethod::LearnedWeights,
        FusionMethod::Stacking,
        FusionMethod::Gated,
        FusionMethod::Concat,
    ];

    /// Whether the method needs fitted parameters.
    pub fn needs_fit(self) -> bool {
        matches!(
            self,
            FusionMethod::LearnedWeights
                | FusionMethod::Stacking
                | FusionMethod::Gated
                | FusionMethod::Concat
        )
    }

    /// The name used in `bundle.toml` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FusionMethod::WeightedLogits => "weighted_logits",
            FusionMethod::WeightedProbabilities => "weighted_probabilities",
            FusionMethod::Max => "max",
            FusionMethod::Voting => "voting",
            FusionMethod::LearnedWeights => "learned_weights",
            FusionMethod::Stacking => "stacking",
            FusionMethod::Gated => "gated",
            FusionMethod::Concat => "concat",
        }
    }

    /// The method named `name` (see [`FusionMethod::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The `[fusion_fitted]` section: where the fitted parameters are and what they were fitted on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FusionFitted {
    /// The parameters: a JSON [`crate::fitted::FittedParams`] file and its checksum.
    #[serde(flatten)]
    pub params: FileRef,
    /// The label names, in row order, the parameters were fitted for; must equal `labels`.
    pub labels: Vec<String>,
    /// The method `[fusion] method` was before the fit: restored when a label change drops the
    /// fitted parameters.
    pub zero_shot_method: FusionMethod,
    /// Labelled frames fitted on.
    pub frames: u64,
    /// sha256 over the fitted frames' file names, labels and bytes.
    pub frames_sha256: String,
    /// Where the frames came from (the `--source` of `edgefuse fit`).
    #[serde(default)]
    pub source: String,
    /// Folds of the cross-validation.
    pub folds: u32,
    /// Cross-validated top-1 accuracy of each method evaluated (name → fraction in 0..=1).
    #[serde(default)]
    pub cv_accuracy: std::collections::BTreeMap<String, f64>,
}

/// Parameters of one head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeadParams {
    /// Multiplier of the cosine similarity (CLIP's `exp(logit_scale)`), > 0.
    pub logit_scale: f32,
    /// Weight of this head in the fusion, >= 0.
    pub weight: f32,
}

/// One label.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Label {
    /// Name reported in results and events.
    pub name: String,
    /// Prompts whose normalised text embeddings were averaged into this label's row.
    #[serde(default)]
    pub prompts: Vec<String>,
}
