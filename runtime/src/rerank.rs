//! The image-text-matching (ITM) re-ranker: mid fusion with text, after the late fusion.
//!
//! BLIP-2 ranks with its contrastive head and then re-scores the best candidates with an
//! image-text-matching head, in which the query tokens and the caption attend to each other. A
//! bundle with a `[rerank]` section (see [`edgefuse_models::manifest::Rerank`]) carries such a
//! model, trained for the bundle (`models/train/train_itm.py`). For each frame, the fusion's best
//! `k` labels become `k` rows `[label embedding, image embedding, queries...]` (each
//! L2-normalised), one model run scores all of them, and each candidate's probability is
//! multiplied by `exp(weight * match)` and the shortlist renormalised to the probability it had:
//! labels outside the shortlist keep theirs, and within it the order follows
//! `ln p + weight * match`.
//!
//! The model runs on the CPU plan (on the engine's worker pool, nothing allocated per frame), or
//! in tract when the plan cannot lower it (logged; tract allocates per run).

use std::sync::Arc;

use tract_onnx::prelude::*;

use edgefuse_models::Bundle;

use crate::alloc::{scope, Scope};
use crate::engine::EngineError;
use crate::fusion::{normalise_into, top_k, FusionHead, TopK, MAX_TOP_K};
use crate::plan::{self, CpuPlan, Pool};

// The shortlist is a `TopK`: every `[rerank] top_k` the manifest accepts must fit in it.
const _: () = assert!(edgefuse_models::manifest::MAX_RERANK_K <= MAX_TOP_K);

enum Exec {
    Plan(CpuPlan),
    Tract {
        state: Box<dyn State>,
        input: Tensor,
    },
}

/// A bundle's re-ranker, its input sized once.
pub struct Reranker {
    /// The model's file in the bundle.
    file: String,
    exec: Exec,
    k: usize,
    dim: usize,
    /// Values per candidate row: `(2 + queries) * dim`.
    row: usize,
    weight: f32,
    input: Vec<f32>,
    matches: Vec<f32>,
    shortlist: TopK,
    /// Frames whose match logits were unusable (non-finite): the fused result was kept.
    unusable: u64,
}

impl std::fmt::Debug for Reranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reranker")
            .field("k", &self.k)
            .field("engine", &self.engine())
            .finish()
    }
}

fn run_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Run {
        model: "rerank",
        message: e.to_string(),
    }
}

impl Reranker {
    /// The bundle's re-ranker, on `pool` when the plan can run it (tract otherwise, or when
    /// `pool` is `None`). `Ok(None)` when the bundle has none, or too few labels for one.
    pub fn new(bundle: &Bundle, pool: Option<Arc<Pool>>) -> Result<Option<Self>, EngineError> {
        let (Some(r), Some(shape)) = (&bundle.manifest().rerank, bundle.rerank_input_shape())
        else {
            return Ok(None);
        };
        let [k, slots, dim] = shape;
        let planned = match pool.map(|pool| Self::plan(bundle, pool)) {
            Some(Ok(p)) => Some(p),
            Some(Err(EngineError::Plan { reason, .. })) => {
                log::warn!("rerank: the CPU plan cannot run it ({reason}); running it in tract");
                None
            }
            Some(Err(e)) => return Err(e),
            None => None,
        };
        let exec = match planned {
            Some(p) => Exec::Plan(p),
            None => {
                let m = bundle
                    .load_rerank()?
                    .ok_or_else(|| run_err("no re-ranker"))?;
                Exec::Tract {
                    state: m.plan.spawn().map_err(run_err)?,
                    input: Tensor::zero::<f32>(&shape).map_err(run_err)?,
                }
            }
        };
        log::info!(
            "rerank: {} re-scores the best {k} labels per frame (weight {})",
            r.model.file,
            r.weight
        );
        Ok(Some(Self {
            file: r.model.file.clone(),
            exec,
            k,
            dim,
            row: slots * dim,
            weight: r.weight,
            input: vec![0.0; k * slots * dim],
            matches: vec![0.0; k],
            shortlist: TopK::new(),
            unusable: 0,
        }))
    }

    fn plan(bundle: &Bundle, pool: Arc<Pool>) -> Result<CpuPlan, EngineError> {
        let err = |reason| EngineError::Plan {
            model: "rerank",
            reason,
        };
        let g = bundle
            .load_rerank_graph()?
            .ok_or_else(|| run_err("no re-ranker"))?;
        let p = plan::lower(&g.model).map_err(err)?;
        CpuPlan::new(&p, pool).map_err(err)
    }

    /// Labels re-scored per frame.
    pub fn candidates(&self) -> usize {
        self.k
    }

    /// `plan` or `tract`.
    pub fn engine(&self) -> &'static str {
        match self.exec {
            Exec::Plan(_) => "plan",
            Exec::Tract { .. } => "tract",
        }
    }

    /// `itm.onnx, top 3, plan`: the model file, the candidates, the engine.
    pub fn describe(&self) -> String {
        format!("{}, top {}, {}", self.file, self.k, self.engine())
    }

    /// Match logits of the last [`Reranker::run`], in the order of [`Reranker::shortlist`].
    pub fn matches(&self) -> &[f32] {
        &self.matches
    }

    /// The candidates of the last [`Reranker::run`] (label, fused probability before
    /// re-ranking), best first.
    pub fn shortlist(&self) -> &TopK {
        &self.shortlist
    }

    /// Re-rank the last frame of `head` (after [`FusionHead::run`] or
    /// [`FusionHead::combine`]): `queries` are that frame's Q-Former outputs `[queries, dim]`.
    /// Rewrites the head's probabilities (see the module documentation). Allocates nothing
    /// on the plan.
    pub fn run(&mut self, head: &mut FusionHead, queries: &[f32]) -> Result<(), EngineError> {
        let dim = self.dim;
        if queries.len() + 2 * dim != self.row {
            return Err(run_err(format!(
                "{} query values, expected {}",
                queries.len(),
                self.row - 2 * dim
            )));
        }
        top_k(head.probabilities(), self.k, &mut self.shortlist);
        // The visual part of a row (normalised image embedding, then the queries, each
        // normalised) is the same for every candidate: built once in the first row, copied.
        let (first, others) = self.input.split_at_mut(self.row);
        let (img, qs) = first[dim..].split_at_mut(dim);
        img.copy_from_slice(&head.pooled()[..dim]);
        for (o, q) in qs.chunks_exact_mut(dim).zip(queries.chunks_exact(dim)) {
            normalise_into(q, o);
        }
        for row in others.chunks_exact_mut(self.row) {
            row[dim..].copy_from_slice(&first[dim..]);
        }
        for (row, &(label, _)) in self.input.chunks_exact_mut(self.row).zip(&self.shortlist) {
            row[..dim].copy_from_slice(head.label_row(usize::from(label)));
        }
        {
            let _s = scope(Scope::Engine);
            match &mut self.exec {
                Exec::Plan(p) => {
                    p.run(&self.input).map_err(|reason| EngineError::Plan {
                        model: "rerank",
                        reason,
                    })?;
                    self.matches.copy_from_slice(p.output(0));
                }
                Exec::Tract { state, input } => {
                    input
                        .try_as_plain_ram_mut()
                        .and_then(|mut v| {
                            v.as_slice_mut::<f32>()
                                .map(|s| s.copy_from_slice(&self.input))
                        })
                        .map_err(run_err)?;
                    let out = state
                        .run(tvec!(input.clone().into_tvalue()))
                        .map_err(|e| run_err(format!("{e:#}")))?;
                    let m = crate::engine::f32s(&out[0]).map_err(run_err)?;
                    self.matches.copy_from_slice(m);
                }
            }
        }
        let n = self.shortlist.len();
        if !head.apply_matches(&self.shortlist, &self.matches[..n], self.weight) {
            if self.unusable == 0 {
                log::warn!(
                    "rerank: the model gave unusable match logits {:?}; keeping the fused probabilities for such frames (warned once)",
                    &self.matches[..n]
                );
            }
            self.unusable += 1;
        }
        Ok(())
    }

    /// Frames so far whose match logits were unusable (the fused result was kept).
    pub fn unusable_frames(&self) -> u64 {
        self.unusable
    }
}
