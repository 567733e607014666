//! Fitted fusion parameters: the JSON file `[fusion_fitted]` names, written by `edgefuse fit`
//! and read (and checked against the bundle) when the bundle opens.
//!
//! Matrices are row-major `f32` lists. Heads are ordered `clip`, `qformer` (when the bundle has
//! one), `adapter` (when fitted); the stacking matrix's columns and the gate's rows follow that
//! order.

use serde::{Deserialize, Serialize};

use crate::manifest::FusionMethod;

/// Gate features per head: the head's top probability, its entropy over `ln(labels)` and the
/// margin between its two best probabilities.
pub const GATE_FEATURES_PER_HEAD: usize = 3;

/// One head of the fusion.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// Pooled image embedding against the label embeddings.
    Clip,
    /// Q-Former queries against the label embeddings (max over queries).
    Qformer,
    /// The few-shot adapter: a linear probe on the normalised image embedding.
    Adapter,
}

impl Head {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Head::Clip => "clip",
            Head::Qformer => "qformer",
            Head::Adapter => "adapter",
        }
    }
}

/// A linear map `y = W x + b`, `W` `[rows, cols]` row-major.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Linear {
    /// Output size.
    pub rows: usize,
    /// Input size.
    pub cols: usize,
    /// `rows * cols` weights, row-major.
    pub weights: Vec<f32>,
    /// `rows` biases.
    pub bias: Vec<f32>,
    /// The L2 strength the cross-validation chose (for the record).
    #[serde(default)]
    pub l2: f64,
}

impl Linear {
    fn check(&self, what: &str, rows: usize, cols: usize) -> Result<(), String> {
        if self.rows != rows || self.cols != cols {
            return Err(format!(
                "{what} is {}x{}, the bundle needs {rows}x{cols}",
                self.rows, self.cols
            ));
        }
        if self.weights.len() != rows * cols || self.bias.len() != rows {
            return Err(format!(
                "{what} has {} weights and {} biases for {rows}x{cols}",
                self.weights.len(),
                self.bias.len()
            ));
        }
        finite(what, self.weights.iter().chain(&self.bias))
    }
}

/// The few-shot adapter head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Adapter {
    /// `[labels, embedding_dim]` on the L2-normalised image embedding; logits = `W x + b`.
    pub linear: Linear,
    /// The adapter's weight in the fixed rules (weighted logits/probabilities); the zero-shot
    /// heads keep their `[fusion.*] weight`.
    pub weight: f32,
}

/// Everything `edgefuse fit` fitted. A method's entry is absent when it was not fitted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FittedParams {
    /// The heads, in order.
    pub heads: Vec<Head>,
    /// The few-shot adapter head.
    #[serde(default)]
    pub adapter: Option<Adapter>,
    /// Learned weighted average: one raw weight per head; the head counts `sigmoid(w)`.
    #[serde(default)]
    pub learned_weights: Option<Vec<f32>>,
    /// Stacking: `[labels, heads * labels]` on the concatenated logits.
    #[serde(default)]
    pub stacking: Option<Linear>,
    /// Gated fusion: `[heads, gate_features]`, softmax over heads.
    #[serde(default)]
    pub gated: Option<Linear>,
    /// Concatenation: `[labels, embedding_dim * (1 + has Q-Former)]` on the normalised image
    /// embedding followed by the normalised mean of the normalised queries.
    #[serde(default)]
    pub concat: Option<Linear>,
}

fn finite<'a>(what: &str, mut v: impl Iterator<Item = &'a f32>) -> Result<(), String> {
    match v.position(|x| !x.is_finite()) {
        Some(i) => Err(format!("{what} has a non-finite value at index {i}")),
        None => Ok(()),
    }
}

/// Gate features for `heads` heads (one more, the image/query cosine, with a Q-Former).
pub fn gate_features(heads: usize, with_qformer: bool) -> usize {
    GATE_FEATURES_PER_HEAD * heads + usize::from(with_qformer)
}

impl FittedParams {
    /// Whether `method` can run with these parameters (the fixed rules always can).
    pub fn has(&self, method: FusionMethod) -> bool {
        match method {
            FusionMethod::LearnedWeights => self.learned_weights.is_some(),
            FusionMethod::Stacking => self.stacking.is_some(),
            FusionMethod::Gated => self.gated.is_some(),
            FusionMethod::Concat => self.concat.is_some(),
            _ => true,
        }
    }

    /// The methods these parameters can run, in [`FusionMethod::ALL`] order.
    pub fn methods(&self) -> Vec<FusionMethod> {
        FusionMethod::ALL
            .into_iter()
            .filter(|m| self.has(*m))
            .collect()
    }

    /// Check the shapes against a bundle of `labels` labels, embedding width `dim`, with or
    /// without a Q-Former; every value must be finite. The message says what is wrong.
    pub fn check(&self, labels: usize, dim: usize, with_qformer: bool) -> Result<(), String> {
        let mut want = vec![Head::Clip];
        if with_qformer {
            want.push(Head::Qformer);
        }
        if self.adapter.is_some() {
            want.push(Head::Adapter);
        }
        if self.heads != want {
            return Err(format!(
                "heads are {:?}, the bundle and its adapter make {:?}",
                self.heads, want
            ));
        }
        let h = self.heads.len();
        if let Some(a) = &self.adapter {
            a.linear.check("adapter", labels, dim)?;
            if !(a.weight.is_finite() && a.weight >= 0.0) {
                return Err(format!("adapter weight {} must be >= 0", a.weight));
            }
        }
        if let Some(w) = &self.learned_weights {
            if w.len() != h {
                return Err(format!(
                    "learned_weights has {} weights for {h} heads",
                    w.len()
                ));
            }
            finite("learned_weights", w.iter())?;
        }
        if let Some(s) = &self.stacking {
            s.check("stacking", labels, h * labels)?;
        }
        if let Some(g) = &self.gated {
            g.check("gated", h, gate_features(h, with_qformer))?;
        }
        if let Some(c) = &self.concat {
            c.check("concat", labels, dim * (1 + usize::from(with_qformer)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lin(rows: usize, cols: usize) -> Linear {
        Linear {
            rows,
            cols,
            weights: vec![0.0; rows * cols],
            bias: vec![0.0; rows],
            l2: 0.0,
        }
    }

    #[test]
    fn shapes_and_values_are_checked() {
        let mut p = FittedParams {
            heads: vec![Head::Clip, Head::Qformer],
            adapter: None,
            learned_weights: Some(vec![0.0, 0.0]),
            stacking: Some(lin(3, 6)),
            gated: Some(lin(2, gate_features(2, true))),
            concat: Some(lin(3, 8)),
        };
        p.check(3, 4, true).unwrap();
        assert!(p.check(4, 4, true).unwrap_err().contains("stacking"));
        assert!(p.check(3, 4, false).unwrap_err().contains("heads"));
        p.stacking.as_mut().unwrap().weights[2] = f32::NAN;
        assert!(p.check(3, 4, true).unwrap_err().contains("non-finite"));
        assert_eq!(p.methods(), FusionMethod::ALL.to_vec());
        p.concat = None;
        assert!(!p.methods().contains(&FusionMethod::Concat));
    }
}
