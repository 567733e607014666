//! On-device label embedding: CLIP BPE tokenizer + the bundle's text tower in tract.

use tract_onnx::prelude::*;

use crate::{Bundle, BundleError, LoadedModel};

/// Tokenizes prompts with the OpenAI CLIP BPE vocabulary and embeds them with the text tower.
pub struct LabelEmbedder {
    tokenizer: instant_clip_tokenizer::Tokenizer,
    model: LoadedModel,
    context: usize,
}

impl std::fmt::Debug for LabelEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelEmbedder")
            .field("model", &self.model.path)
            .field("context", &self.context)
            .finish()
    }
}

impl LabelEmbedder {
    /// Load the bundle's text tower; fails when the bundle has none.
    pub fn new(bundle: &Bundle) -> Result<Self, BundleError> {
        let model = bundle.load_text_encoder()?;
        let context = bundle
            .manifest()
            .text_encoder
            .as_ref()
            .map(|t| t.context_length)
            .unwrap_or(0);
        Ok(Self {
            tokenizer: instant_clip_tokenizer::Tokenizer::new(),
            model,
            context,
        })
    }

    /// Token ids `[start, bpe…, end, 0…]` of length `context_length`. Empty prompts and prompts
    /// longer than the context are refused with the limit in the message.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<i64>, BundleError> {
        if prompt.trim().is_empty() {
            return Err(BundleError::Prompt {
                prompt: prompt.into(),
                message: "is empty; give a short description such as \"a photo of a cat\"".into(),
            });
        }
        let mut toks = Vec::new();
        self.tokenizer.encode(prompt, &mut toks);
        let n = toks.len() + 2;
        if n > self.context {
            return Err(BundleError::Prompt {
                prompt: prompt.into(),
                message: format!(
                    "is {n} tokens with start and end markers; this bundle's text tower takes at most {} (text_encoder.context_length): shorten it",
                    self.context
                ),
            });
        }
        let mut ids = vec![0i64; self.context];
        ids[0] = i64::from(self.tokenizer.start_of_text().to_u16());
        for (i, t) in toks.iter().enumerate() {
            ids[i + 1] = i64::from(t.to_u16());
        }
        ids[n - 1] = i64::from(self.tokenizer.end_of_text().to_u16());
        Ok(ids)
    }

    /// The text tower's raw (unnormalised) embedding of one prompt.
    pub fn embed(&self, prompt: &str) -> Result<Vec<f32>, BundleError> {
        let ids = self.tokenize(prompt)?;
        let input =
            Tensor::from_shape(&[1, self.context], &ids).map_err(|e| BundleError::Inference {
                path: self.model.path.clone(),
                message: format!("{e:#}"),
            })?;
        let out = self
            .model
            .plan
            .run(tvec!(input.into_tvalue()))
            .map_err(|e| BundleError::Inference {
                path: self.model.path.clone(),
                message: format!("{e:#}"),
            })?;
        let view = out[0]
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>())
            .map_err(|e| BundleError::Inference {
                path: self.model.path.clone(),
                message: format!("{e:#}"),
            })?;
        Ok(view.to_vec())
    }

    /// CLIP prompt ensembling: the L2-normalised mean of the prompts' L2-normalised embeddings.
    pub fn embed_label(&self, prompts: &[String]) -> Result<Vec<f32>, BundleError> {
        let mut acc: Vec<f32> = Vec::new();
        for p in prompts {
            let e = normalized(self.embed(p)?);
            if acc.is_empty() {
                acc = e;
            } else {
                acc.iter_mut().zip(&e).for_each(|(a, b)| *a += b);
            }
        }
        if acc.is_empty() {
            return Err(BundleError::Prompt {
                prompt: String::new(),
                message: "a label needs at least one prompt".into(),
            });
        }
        Ok(normalized(acc))
    }
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}
