//! Zero-shot heads and their late fusion.
//!
//! * CLIP head: L2-normalise the pooled image embedding, cosine against the L2-normalised label
//!   embeddings, times the bundle's logit scale.
//! * Q-Former head (BLIP-2 image-text contrastive style): each projected query output is
//!   normalised and compared with every label embedding; a label's score is the maximum over
//!   queries, times the head's logit scale.
//! * Late fusion ([`FusionMethod`]): softmax of the weighted logits, weighted average of the
//!   heads' probabilities, or their element-wise maximum.
//!
//! Mid fusion is the Q-Former itself (its queries cross-attend to the image tokens). All buffers
//! are sized at construction; [`FusionHead::run`] does not allocate.

use edgefuse_models::manifest::{Fusion, FusionMethod};

/// Most labels the top-k list holds.
pub const MAX_TOP_K: usize = 16;

/// `(label index, probability)` best first.
pub type TopK = heapless::Vec<(u16, f32), MAX_TOP_K>;

/// The fused zero-shot classifier over a fixed label set.
#[derive(Debug, Clone)]
pub struct FusionHead {
    labels: Vec<f32>,
    dim: usize,
    n: usize,
    method: FusionMethod,
    clip_scale: f32,
    clip_weight: f32,
    qf: Option<(f32, f32)>,
    clip_logits: Vec<f32>,
    qf_logits: Vec<f32>,
    probs: Vec<f32>,
    tmp: Vec<f32>,
    query_norm: Vec<f32>,
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
    /// `label_embeddings` row-major `[labels, dim]`, rows L2-normalised.
    pub fn new(label_embeddings: &[f32], dim: usize, fusion: &Fusion, with_qformer: bool) -> Self {
        let n = label_embeddings.len() / dim;
        let qf = if with_qformer {
            fusion.qformer.as_ref().map(|h| (h.logit_scale, h.weight))
        } else {
            None
        };
        Self {
            labels: label_embeddings.to_vec(),
            dim,
            n,
            method: fusion.method,
            clip_scale: fusion.clip.logit_scale,
            clip_weight: fusion.clip.weight,
            qf,
            clip_logits: vec![0.0; n],
            qf_logits: vec![0.0; n],
            probs: vec![0.0; n],
            tmp: vec![0.0; n],
            query_norm: vec![0.0; dim],
        }
    }

    /// Number of labels.
    pub fn labels(&self) -> usize {
        self.n
    }

    /// Fused probabilities of the last [`FusionHead::run`].
    pub fn probabilities(&self) -> &[f32] {
        &self.probs
    }

    /// CLIP-head logits of the last run.
    pub fn clip_logits(&self) -> &[f32] {
        &self.clip_logits
    }

    /// Q-Former-head logits of the last run (zeros without a Q-Former).
    pub fn qformer_logits(&self) -> &[f32] {
        &self.qf_logits
    }

    /// Score one frame: `embedding` is `[dim]`, `queries` is `[queries, dim]` when the bundle has
    /// a Q-Former. Writes the best `k` labels into `top`.
    pub fn run(
        &mut self,
        embedding: &[f32],
        queries: Option<&[f32]>,
        k: usize,
        top: &mut TopK,
    ) -> HeadTop1 {
        let inv = 1.0 / norm(embedding).max(1e-12);
        for (l, row) in self
            .clip_logits
            .iter_mut()
            .zip(self.labels.chunks_exact(self.dim))
        {
            *l = self.clip_scale * inv * dot(embedding, row);
        }
        let clip_best = argmax(&self.clip_logits);
        let mut qf_best = None;
        match (self.qf, queries) {
            (Some((scale, qw)), Some(q)) => {
                self.qf_logits.fill(f32::NEG_INFINITY);
                for query in q.chunks_exact(self.dim) {
                    let qi = 1.0 / norm(query).max(1e-12);
                    self.query_norm
                        .iter_mut()
                        .zip(query)
                        .for_each(|(o, v)| *o = v * qi);
                    for (l, row) in self
                        .qf_logits
                        .iter_mut()
                        .zip(self.labels.chunks_exact(self.dim))
                    {
                        *l = l.max(scale * dot(&self.query_norm, row));
                    }
                }
                qf_best = Some(argmax(&self.qf_logits));
                let cw = self.clip_weight;
                match self.method {
                    FusionMethod::WeightedLogits => {
                        for ((p, a), b) in self
                            .probs
                            .iter_mut()
                            .zip(&self.clip_logits)
                            .zip(&self.qf_logits)
                        {
                            *p = cw * a + qw * b;
                        }
                        softmax(&mut self.probs);
                    }
                    FusionMethod::WeightedProbabilities | FusionMethod::Max => {
                        self.probs.copy_from_slice(&self.clip_logits);
                        softmax(&mut self.probs);
                        self.tmp.copy_from_slice(&self.qf_logits);
                        softmax(&mut self.tmp);
                        let total = (cw + qw).max(1e-12);
                        for (p, t) in self.probs.iter_mut().zip(&self.tmp) {
                            *p = if self.method == FusionMethod::Max {
                                p.max(*t)
                            } else {
                                (cw * *p + qw * t) / total
                            };
                        }
                        let s: f32 = self.probs.iter().sum();
                        self.probs.iter_mut().for_each(|p| *p /= s);
                    }
                }
            }
            _ => {
                self.probs.copy_from_slice(&self.clip_logits);
                softmax(&mut self.probs);
            }
        }
        top_k(&self.probs, k, top);
        HeadTop1 {
            clip: clip_best as u16,
            qformer: qf_best.map(|b| b as u16),
        }
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[inline]
fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Numerically stable in-place softmax.
pub fn softmax(v: &mut [f32]) {
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for x in v.iter_mut() {
        *x = (*x - m).exp();
        s += *x;
    }
    v.iter_mut().for_each(|x| *x /= s);
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
mod tests {
    use super::*;
    use edgefuse_models::manifest::HeadParams;

    fn fusion(method: FusionMethod) -> Fusion {
        Fusion {
            method,
            clip: HeadParams {
                logit_scale: 10.0,
                weight: 0.5,
            },
            qformer: Some(HeadParams {
                logit_scale: 10.0,
                weight: 0.5,
            }),
        }
    }

    #[test]
    fn top_k_orders_and_bounds() {
        let mut t = TopK::new();
        top_k(&[0.1, 0.5, 0.2, 0.15, 0.05], 3, &mut t);
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        top_k(&[0.3, 0.7], 10, &mut t);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn clip_head_matches_naive_softmax() {
        let labels = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let mut h = FusionHead::new(&labels, 2, &fusion(FusionMethod::WeightedLogits), false);
        let mut t = TopK::new();
        let r = h.run(&[3.0, 4.0], None, 3, &mut t);
        // cosines 0.6, 0.8, 1.0 → logits 6, 8, 10
        let e: Vec<f32> = [6.0f32, 8.0, 10.0].iter().map(|x| x.exp()).collect();
        let s: f32 = e.iter().sum();
        assert_eq!(r.clip, 2);
        assert_eq!(t[0].0, 2);
        assert!((t[0].1 - e[2] / s).abs() < 1e-6);
    }

    #[test]
    fn qformer_head_takes_max_over_queries_and_fuses() {
        let labels = [1.0, 0.0, 0.0, 1.0];
        for method in [
            FusionMethod::WeightedLogits,
            FusionMethod::WeightedProbabilities,
            FusionMethod::Max,
        ] {
            let mut h = FusionHead::new(&labels, 2, &fusion(method), true);
            let mut t = TopK::new();
            // image embedding mildly label 0; one query strongly label 1.
            let r = h.run(&[1.0, 0.9], Some(&[0.0, 5.0, 1.0, 1.0]), 2, &mut t);
            assert_eq!(r.clip, 0);
            assert_eq!(r.qformer, Some(1));
            assert!(
                (h.qformer_logits()[1] - 10.0).abs() < 1e-5,
                "max over queries"
            );
            assert_eq!(t[0].0, 1, "{method:?}");
            let s: f32 = h.probabilities().iter().sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
    }
}
