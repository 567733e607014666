//! The kernels no frame uses (`attention.cu`, `norm.cu`, `fusion.cu`): the lowered plan runs
//! attention and normalisation as generic steps of `graph.cu`, and the fusion head runs on the
//! CPU. They are kept compiled, measured and checked (`edgefuse kernels` compiles them,
//! `edgefuse kernels --bench` times them, `tests/gpu_parity.rs` checks them against their CPU
//! references) so that they can be wired into the plan; a start never loads them.

use std::sync::Arc;

use cudarc::driver::{sys as dsys, CudaFunction, CudaSlice, CudaStream, LaunchConfig};

use super::device::{driver_err, Gpu};
use super::launch::{check_len, launched, Launch};
use crate::gpu::reference::Activation;
use crate::gpu::GpuError;

/// Fused attention, layer norm, element-wise kernels and the fusion head, loaded on request;
/// launches check their arguments on the host.
pub struct UnwiredKernels {
    attention: CudaFunction,
    layer_norm: CudaFunction,
    add: CudaFunction,
    activation: CudaFunction,
    to_f16: CudaFunction,
    head_logits: CudaFunction,
    fuse_topk: CudaFunction,
    stream: Arc<CudaStream>,
    max_shared: usize,
}

impl UnwiredKernels {
    /// Load (compile on a cache miss) `attention.cu`, `norm.cu` and `fusion.cu` on `gpu`.
    pub fn load(gpu: &mut Gpu) -> Result<Self, GpuError> {
        let max_shared = gpu
            .ctx
            .attribute(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)
            .map_err(driver_err("cuDeviceGetAttribute"))? as usize;
        Ok(Self {
            attention: gpu.function("attention.cu", "ef_attention_f32")?,
            layer_norm: gpu.function("norm.cu", "ef_layer_norm")?,
            add: gpu.function("norm.cu", "ef_add")?,
            activation: gpu.function("norm.cu", "ef_activation")?,
            to_f16: gpu.function("norm.cu", "ef_f32_to_f16")?,
            head_logits: gpu.function("fusion.cu", "ef_head_logits")?,
            fuse_topk: gpu.function("fusion.cu", "ef_fuse_topk")?,
            stream: gpu.stream.clone(),
            max_shared,
        })
    }

    /// Fused attention; operands as `(buffer, row stride)`; `o` dense `[lq, heads·d]`.
    #[allow(clippy::too_many_arguments)] // the kernel's own parameter list
    pub fn attention(
        &self,
        q: (&CudaSlice<f32>, usize),
        k: (&CudaSlice<f32>, usize),
        v: (&CudaSlice<f32>, usize),
        o: &mut CudaSlice<f32>,
        (lq, lk, heads, d): (usize, usize, usize, usize),
        scale: f32,
    ) -> Result<(), GpuError> {
        if lq == 0 || lk == 0 || heads == 0 || d == 0 {
            return Err(GpuError::Unsupported(format!(
                "attention needs at least one query, key, head and channel (got {lq}, {lk}, {heads}, {d})"
            )));
        }
        let shared = (d + lk) * 4;
        // 128 bytes of static shared memory (the reduction scratch) come on top.
        if shared + 128 > self.max_shared {
            return Err(GpuError::Unsupported(format!(
                "attention over {lk} keys of width {d} needs {shared} bytes of shared memory, the GPU has {}",
                self.max_shared
            )));
        }
        let span = |rows: usize, stride: usize| (rows.max(1) - 1) * stride + heads * d;
        check_len("q", q.0.len(), span(lq, q.1))?;
        check_len("k", k.0.len(), span(lk, k.1))?;
        check_len("v", v.0.len(), span(lk, v.1))?;
        check_len("o", o.len(), lq * heads * d)?;
        let i = |x: usize| x as i32;
        let (qs, ks, vs, os) = (i(q.1), i(k.1), i(v.1), i(heads * d));
        let (lqi, lki, di) = (i(lq), i(lk), i(d));
        let cfg = LaunchConfig {
            grid_dim: (lq as u32, heads as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        let mut b = Launch::new(&self.stream, &self.attention);
        b.dev(q.0).val(&qs).dev(k.0).val(&ks).dev(v.0).val(&vs);
        b.dev(o).val(&os).val(&lqi).val(&lki).val(&di).val(&scale);
        // SAFETY: matches ef_attention_f32; every strided row read stays inside its buffer
        // (checked above); the dynamic shared memory holds d + lk floats.
        launched(unsafe { b.launch(cfg) }, "ef_attention_f32")
    }

    /// Row-wise layer norm of `x [rows, cols]`.
    pub fn layer_norm(
        &self,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        beta: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        (rows, cols): (usize, usize),
        eps: f32,
    ) -> Result<(), GpuError> {
        if rows == 0 || cols == 0 {
            return Err(GpuError::Unsupported(
                "layer norm of an empty tensor".into(),
            ));
        }
        check_len("x", x.len(), rows * cols)?;
        check_len("y", y.len(), rows * cols)?;
        check_len("gamma", gamma.len(), cols)?;
        check_len("beta", beta.len(), cols)?;
        let (r, c) = (rows as i32, cols as i32);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = Launch::new(&self.stream, &self.layer_norm);
        b.dev(x)
            .dev(gamma)
            .dev(beta)
            .dev(y)
            .val(&r)
            .val(&c)
            .val(&eps);
        // SAFETY: matches ef_layer_norm; buffers sized above; one block per row.
        launched(unsafe { b.launch(cfg) }, "ef_layer_norm")
    }

    /// `y = a + b`.
    pub fn add(
        &self,
        a: &CudaSlice<f32>,
        bb: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        let n = y.len();
        check_len("a", a.len(), n)?;
        check_len("b", bb.len(), n)?;
        let ni = n as i32;
        let mut b = Launch::new(&self.stream, &self.add);
        b.dev(a).dev(bb).dev(y).val(&ni);
        // SAFETY: matches ef_add; all three buffers hold n values; threads past n exit.
        launched(
            unsafe { b.launch(LaunchConfig::for_num_elems(n as u32)) },
            "ef_add",
        )
    }

    /// `x = act(x)` in place.
    pub fn activation(&self, x: &mut CudaSlice<f32>, act: Activation) -> Result<(), GpuError> {
        let (n, a) = (x.len() as i32, act as i32);
        let cfg = LaunchConfig::for_num_elems(n as u32);
        let mut b = Launch::new(&self.stream, &self.activation);
        b.dev(x).val(&n).val(&a);
        // SAFETY: matches ef_activation; threads past n exit.
        launched(unsafe { b.launch(cfg) }, "ef_activation")
    }

    /// IEEE half bits of `x`.
    pub fn to_f16(&self, x: &CudaSlice<f32>, y: &mut CudaSlice<u16>) -> Result<(), GpuError> {
        check_len("y", y.len(), x.len())?;
        let n = x.len() as i32;
        let cfg = LaunchConfig::for_num_elems(n as u32);
        let mut b = Launch::new(&self.stream, &self.to_f16);
        b.dev(x).dev(y).val(&n);
        // SAFETY: matches ef_f32_to_f16; both buffers hold n values.
        launched(unsafe { b.launch(cfg) }, "ef_f32_to_f16")
    }

    /// Head logits: `clip [labels]` and, with `queries`, `qf [labels]`.
    #[allow(clippy::too_many_arguments)] // the kernel's own parameter list
    pub fn head_logits(
        &self,
        emb: &CudaSlice<f32>,
        queries: Option<(&CudaSlice<f32>, usize)>,
        labels: &CudaSlice<f32>,
        (n_labels, dim): (usize, usize),
        (clip_scale, qf_scale): (f32, f32),
        clip: &mut CudaSlice<f32>,
        qf: &mut CudaSlice<f32>,
    ) -> Result<(), GpuError> {
        if n_labels == 0 || dim == 0 {
            return Err(GpuError::Unsupported(
                "the fusion head needs labels and a width".into(),
            ));
        }
        check_len("embedding", emb.len(), dim)?;
        check_len("labels", labels.len(), n_labels * dim)?;
        check_len("clip", clip.len(), n_labels)?;
        check_len("qf", qf.len(), n_labels)?;
        let nq = match queries {
            Some((q, nq)) => {
                check_len("queries", q.len(), nq * dim)?;
                nq
            }
            None => 0,
        };
        let (nqi, nl, d) = (nq as i32, n_labels as i32, dim as i32);
        let cfg = LaunchConfig {
            grid_dim: (n_labels as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = Launch::new(&self.stream, &self.head_logits);
        b.dev(emb);
        match queries {
            Some((q, _)) => b.dev(q),
            None => b.dev(emb), // never read: nq = 0
        };
        b.val(&nqi).dev(labels).val(&nl).val(&d);
        b.val(&clip_scale).val(&qf_scale).dev(clip).dev(qf);
        // SAFETY: matches ef_head_logits; sizes checked above; one block per label.
        launched(unsafe { b.launch(cfg) }, "ef_head_logits")
    }

    /// Late fusion, softmax and top-k (`method`: 0 CLIP only, 1 weighted logits, 2 weighted
    /// probabilities, 3 max).
    #[allow(clippy::too_many_arguments)] // the kernel's own parameter list
    pub fn fuse_topk(
        &self,
        clip: &CudaSlice<f32>,
        qf: &CudaSlice<f32>,
        method: i32,
        (cw, qw): (f32, f32),
        probs: &mut CudaSlice<f32>,
        tmp: &mut CudaSlice<f32>,
        top: (&mut CudaSlice<i32>, &mut CudaSlice<f32>),
    ) -> Result<(), GpuError> {
        let n = clip.len();
        if n == 0 || top.0.is_empty() {
            return Err(GpuError::Unsupported(
                "the fusion head needs labels and k >= 1".into(),
            ));
        }
        check_len("qf", qf.len(), n)?;
        check_len("probs", probs.len(), n)?;
        check_len("tmp", tmp.len(), n)?;
        let k = top.0.len().min(n);
        check_len("top probabilities", top.1.len(), k)?;
        let (ni, ki) = (n as i32, k as i32);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = Launch::new(&self.stream, &self.fuse_topk);
        b.dev(clip).dev(qf).val(&ni).val(&method).val(&cw).val(&qw);
        b.dev(probs).dev(tmp).val(&ki).dev(top.0).dev(top.1);
        // SAFETY: matches ef_fuse_topk; n-long inputs/scratch and k-long outputs checked.
        launched(unsafe { b.launch(cfg) }, "ef_fuse_topk")
    }
}
