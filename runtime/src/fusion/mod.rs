//! The heads and their fusion.
//!
//! Heads, each giving one logit per label:
//! * CLIP: L2-normalise the pooled image embedding, cosine against the L2-normalised label
//!   embeddings, times the bundle's logit scale.
//! * Q-Former (BLIP-2 image-text contrastive style): each projected query output is normalised
//!   and compared with every label embedding; a label's score is the maximum over queries, times
//!   the head's logit scale.
//! * Adapter (after `edgefuse fit`): a linear probe `W x + b` on the normalised image embedding,
//!   fitted on labelled frames starting from, and regularised toward, the CLIP head
//!   (`W = scale * label embeddings`).
//!
//! Fusion ([`FusionMethod`], `combine`): the fixed rules (weighted logits, weighted
//! probabilities, max, voting) and the fitted ones (learned weights, stacking, gated,
//! concatenation); [`fit`] fits them. All buffers are sized at construction;
//! [`FusionHead::run`] and [`FusionHead::combine`] do not allocate.

pub mod combine;
pub mod fit;
mod lbfgs;

use edgefuse_models::fitted::{gate_features, FittedParams, Head};
use edgefuse_models::manifest::{Fusion, FusionMethod};
use edgefuse_models::Bundle;

pub use combine::{argmax, softmax};

/// Most labels the top-k list holds.
pub const MAX_TOP_K: usize = 16;

/// `(label index, probability)` best first.
pub type TopK = heapless::Vec<(u16, f32), MAX_TOP_K>;

/// The heads and the fusion over a fixed label set.
#[derive(Debug, Clone)]
pub struct FusionHead {
    labels: Vec<f32>,
    dim: usize,
    n: usize,
    method: FusionMethod,
    clip_scale: f32,
    qf_scale: Option<f32>,
    heads: Vec<Head>,
    /// Weight of each head in the fixed rules.
    weights: Vec<f32>,
    fitted: Option<FittedParams>,
    /// `[heads, n]` logits of the last frame.
    logits: Vec<f32>,
    /// `[heads, n]` softmax of each head's logits.
    head_probs: Vec<f32>,
    /// Normalised image embedding, then (with a Q-Former) the normalised mean of the normalised
    /// queries: the concatenation input.
    pooled: Vec<f32>,
    query_norm: Vec<f32>,
    features: Vec<f32>,
    gates: Vec<f32>,
    probs: Vec<f32>,
    zeros: Vec<f32>,
    /// Whether the last frame had Q-Former outputs for a Q-Former head.
    complete: bool,
}

/// Per-head results of the last frame, for reporting and evaluation.
#[derive(Debug, Clone, Copy)]
pub struct HeadTop1 {
    /// Best label of the CLIP head.
    pub clip: u16,
    /// Best label of the Q-Former head, when present.
    pub qformer: Option<u16>,
}

impl FusionHead {
    /// The zero-shot heads. `label_embeddings` row-major `[labels, dim]`, rows L2-normalised.
    pub fn new(label_embeddings: &[f32], dim: usize, fusion: &Fusion, with_qformer: bool) -> Self {
        Self::build(label_embeddings, dim, fusion, with_qformer, None)
    }

    /// The bundle's heads and method, with its fitted parameters when it has them (they were
    /// checked against the bundle when it opened). `with_qformer`: whether the engine runs the
    /// bundle's Q-Former.
    pub fn from_bundle(bundle: &Bundle, with_qformer: bool) -> Self {
        let m = bundle.manifest();
        let mut fitted = bundle.fitted().cloned();
        if fitted.is_some() && m.qformer.is_some() && !with_qformer {
            log::warn!(
                "the fitted fusion parameters need the Q-Former, which does not run here; using the zero-shot heads"
            );
            fitted = None;
        }
        Self::build(
            bundle.label_embeddings(),
            m.encoder.embedding_dim,
            &m.fusion,
            with_qformer,
            fitted,
        )
    }

    fn build(
        label_embeddings: &[f32],
        dim: usize,
        fusion: &Fusion,
        with_qformer: bool,
        fitted: Option<FittedParams>,
    ) -> Self {
        let n = label_embeddings.len() / dim;
        let qf = if with_qformer {
            fusion.qformer.as_ref()
        } else {
            None
        };
        let mut heads = vec![Head::Clip];
        let mut weights = vec![fusion.clip.weight];
        if let Some(h) = qf {
            heads.push(Head::Qformer);
            weights.push(h.weight);
        }
        if let Some(a) = fitted.as_ref().and_then(|f| f.adapter.as_ref()) {
            heads.push(Head::Adapter);
            weights.push(a.weight);
        }
        let mut method = fusion.method;
        if !fitted
            .as_ref()
            .map_or(!method.needs_fit(), |f| f.has(method))
        {
            log::warn!(
                "fusion method {} has no fitted parameters here; using weighted_logits",
                method.name()
            );
            method = FusionMethod::WeightedLogits;
        }
        let h = heads.len();
        Self {
            labels: label_embeddings.to_vec(),
            dim,
            n,
            method,
            clip_scale: fusion.clip.logit_scale,
            qf_scale: qf.map(|h| h.logit_scale),
            weights,
            fitted,
            logits: vec![0.0; h * n],
            head_probs: vec![0.0; h * n],
            pooled: vec![0.0; dim * (1 + usize::from(qf.is_some()))],
            query_norm: vec![0.0; dim],
            features: vec![0.0; gate_features(h, qf.is_some())],
            gates: vec![0.0; h],
            probs: vec![0.0; n],
            zeros: vec![0.0; n],
            heads,
            complete: false,
        }
    }

    /// Number of labels.
    pub fn labels(&self) -> usize {
        self.n
    }

    /// The heads, in order.
    pub fn heads(&self) -> &[Head] {
        &self.heads
    }

    /// The method [`FusionHead::run`] uses.
    pub fn method(&self) -> FusionMethod {
        self.method
    }

    /// Every method this head can run (the fixed rules, and those with fitted parameters).
    pub fn methods(&self) -> Vec<FusionMethod> {
        FusionMethod::ALL
            .into_iter()
            .filter(|m| self.can(*m))
            .collect()
    }

    fn can(&self, m: FusionMethod) -> bool {
        !m.needs_fit() || self.fitted.as_ref().is_some_and(|f| f.has(m))
    }

    /// Fused probabilities of the last [`FusionHead::run`] or [`FusionHead::combine`].
    pub fn probabilities(&self) -> &[f32] {
        &self.probs
    }

    /// Logits of head `i` (in [`FusionHead::heads`] order) for the last frame.
    pub fn head_logits(&self, i: usize) -> &[f32] {
        &self.logits[i * self.n..(i + 1) * self.n]
    }

    /// CLIP-head logits of the last frame.
    pub fn clip_logits(&self) -> &[f32] {
        self.head_logits(0)
    }

    /// Q-Former-head logits of the last frame (zeros without a Q-Former).
    pub fn qformer_logits(&self) -> &[f32] {
        match self.heads.iter().position(|h| *h == Head::Qformer) {
            Some(i) => self.head_logits(i),
            None => &self.zeros,
        }
    }

    /// The normalised image embedding followed (with a Q-Former) by the normalised pooled
    /// queries of the last frame.
    pub fn pooled(&self) -> &[f32] {
        &self.pooled
    }

    /// Row `i` of the L2-normalised label embeddings.
    pub fn label_row(&self, i: usize) -> &[f32] {
        &self.labels[i * self.dim..(i + 1) * self.dim]
    }

    /// Re-rank the last frame's fused probabilities with a re-ranker's match logits (see
    /// [`crate::rerank`]): each `shortlist` label's probability is multiplied by
    /// `exp(weight * match)`, then the shortlist is scaled back to the total it had, so labels
    /// outside it keep their probabilities. Computed in log space (`ln p + weight * match`,
    /// shifted by its maximum), so no match logit can overflow the scaling. Non-finite match
    /// logits, or a shortlist without probability, leave the probabilities alone and return
    /// false; otherwise returns true.
    pub fn apply_matches(&mut self, shortlist: &TopK, matches: &[f32], weight: f32) -> bool {
        let mut scaled = [f32::NEG_INFINITY; MAX_TOP_K];
        let (mut mass, mut top) = (0.0f32, f32::NEG_INFINITY);
        for ((&(l, _), &m), z) in shortlist.iter().zip(matches).zip(&mut scaled) {
            if !m.is_finite() {
                return false;
            }
            let p = self.probs[usize::from(l)];
            mass += p;
            // ln 0 = -inf: a label without probability stays at 0.
            *z = p.ln() + weight * m;
            top = top.max(*z);
        }
        if !(top.is_finite() && mass > 0.0 && mass.is_finite()) {
            return false;
        }
        let mut sum = 0.0f32;
        for z in &mut scaled[..shortlist.len().min(matches.len())] {
            *z = (*z - top).exp();
            sum += *z;
        }
        // sum >= 1 (the maximum contributes exp(0)), so the scale is at most `mass`.
        let f = mass / sum;
        for (&(l, _), s) in shortlist.iter().zip(&scaled) {
            self.probs[usize::from(l)] = s * f;
        }
        true
    }

    /// The best `k` labels of the last frame's probabilities (after [`FusionHead::combine`] or
    /// a re-ranking) into `top`.
    pub fn top(&self, k: usize, top: &mut TopK) {
        top_k(&self.probs, k, top);
    }

    /// Score one frame with the bundle's method: `embedding` is `[dim]`, `queries` is
    /// `[queries, dim]` when the bundle has a Q-Former. Writes the best `k` labels into `top`.
    pub fn run(
        &mut self,
        embedding: &[f32],
        queries: Option<&[f32]>,
        k: usize,
        top: &mut TopK,
    ) -> HeadTop1 {
        let r = self.heads_only(embedding, queries);
        self.combine(self.method);
        top_k(&self.probs, k, top);
        r
    }

    /// Run the heads on one frame without fusing (see [`FusionHead::combine`]).
    pub fn heads_only(&mut self, embedding: &[f32], queries: Option<&[f32]>) -> HeadTop1 {
        let (n, dim) = (self.n, self.dim);
        let (image, rest) = self.pooled.split_at_mut(dim);
        normalise_into(embedding, image);
        for (l, row) in self.logits[..n]
            .iter_mut()
            .zip(self.labels.chunks_exact(dim))
        {
            *l = self.clip_scale * combine::dot(image, row);
        }
        let mut next = 1;
        let mut top1 = HeadTop1 {
            clip: argmax(&self.logits[..n]) as u16,
            qformer: None,
        };
        self.complete = true;
        if let Some(scale) = self.qf_scale {
            let out = &mut self.logits[n..2 * n];
            match queries {
                Some(q) => {
                    out.fill(f32::NEG_INFINITY);
                    rest.fill(0.0);
                    for query in q.chunks_exact(dim) {
                        normalise_into(query, &mut self.query_norm);
                        rest.iter_mut()
                            .zip(&self.query_norm)
                            .for_each(|(o, v)| *o += v);
                        for (l, row) in out.iter_mut().zip(self.labels.chunks_exact(dim)) {
                            *l = l.max(scale * combine::dot(&self.query_norm, row));
                        }
                    }
                    let qi = 1.0 / norm(rest).max(1e-12);
                    rest.iter_mut().for_each(|v| *v *= qi);
                    top1.qformer = Some(argmax(out) as u16);
                }
                None => {
                    out.fill(0.0);
                    rest.fill(0.0);
                    self.complete = false;
                }
            }
            next = 2;
        }
        if let Some(a) = self.fitted.as_ref().and_then(|f| f.adapter.as_ref()) {
            let out = &mut self.logits[next * n..(next + 1) * n];
            combine::linear(&a.linear, &self.pooled[..dim], out);
        }
        self.head_probs.copy_from_slice(&self.logits);
        self.head_probs.chunks_exact_mut(n).for_each(softmax);
        top1
    }

    /// Fuse the last frame's head outputs with `method` into [`FusionHead::probabilities`].
    /// Returns false (and leaves the probabilities alone) when the method has no fitted
    /// parameters here. A frame that lacked the Q-Former's outputs gets the CLIP head's
    /// probabilities, as does a fixed rule over the CLIP head alone.
    pub fn combine(&mut self, method: FusionMethod) -> bool {
        if !self.can(method) {
            return false;
        }
        // One head (or a frame without the Q-Former's outputs): the fixed rules are that
        // head's probabilities.
        if !self.complete || (self.heads.len() == 1 && !method.needs_fit()) {
            self.probs.copy_from_slice(&self.head_probs[..self.n]);
            return true;
        }
        let out = &mut self.probs;
        let fitted = self.fitted.as_ref();
        match method {
            FusionMethod::WeightedLogits => {
                combine::weighted_logits(&self.logits, &self.weights, out)
            }
            FusionMethod::WeightedProbabilities => {
                combine::weighted_probabilities(&self.head_probs, &self.weights, out)
            }
            FusionMethod::Max => combine::max(&self.head_probs, out),
            FusionMethod::Voting => combine::voting(&self.head_probs, out),
            FusionMethod::LearnedWeights => {
                let w = fitted.and_then(|f| f.learned_weights.as_ref());
                combine::learned_weights(&self.logits, w.map_or(&[][..], |w| w), out)
            }
            FusionMethod::Stacking => {
                if let Some(l) = fitted.and_then(|f| f.stacking.as_ref()) {
                    combine::logistic(l, &self.logits, out)
                }
            }
            FusionMethod::Concat => {
                if let Some(l) = fitted.and_then(|f| f.concat.as_ref()) {
                    combine::logistic(l, &self.pooled, out)
                }
            }
            FusionMethod::Gated => {
                if let Some(g) = fitted.and_then(|f| f.gated.as_ref()) {
                    let cosine = (self.qf_scale.is_some()).then(|| {
                        let (a, b) = self.pooled.split_at(self.dim);
                        combine::dot(a, b)
                    });
                    combine::gate_features(&self.head_probs, self.n, cosine, &mut self.features);
                    combine::gated(g, &self.features, &self.logits, &mut self.gates, out)
                }
            }
        }
        true
    }
}

#[inline]
fn norm(a: &[f32]) -> f32 {
    combine::dot(a, a).sqrt()
}

/// `out = v / |v|` (a zero vector stays zero): how every head and the re-ranker normalise.
#[inline]
pub(crate) fn normalise_into(v: &[f32], out: &mut [f32]) {
    let inv = 1.0 / norm(v).max(1e-12);
    out.iter_mut().zip(v).for_each(|(o, x)| *o = x * inv);
}

/// The best `k` (at most [`MAX_TOP_K`]) entries of `probs`, best first; ties keep label order.
pub fn top_k(probs: &[f32], k: usize, top: &mut TopK) {
    top.clear();
    let k = k.clamp(1, MAX_TOP_K).min(probs.len());
    for (i, &p) in probs.iter().enumerate() {
        if top.len() == k && p <= top[k - 1].1 {
            continue;
        }
        if top.len() == k {
            top.pop();
        }
        let pos = top.iter().position(|&(_, q)| p > q).unwrap_or(top.len());
        let _ = top.insert(pos, (i as u16, p));
    }
}

#[cfg(test)]
mod tests;
