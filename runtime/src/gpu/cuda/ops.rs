//! The kernels of `linear.cu` (what the graph executor's linear layers run on) behind typed
//! wrappers that check every buffer length on the host before launching.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig};

use super::device::Gpu;
use super::launch::{blocks, check_len, launched, Launch};
use crate::gpu::reference::Activation;
use crate::gpu::{GpuError, MMA_SM};

/// The linear-layer kernels (f32, int8 dp4a, int8 tensor cores), loaded once; launches check
/// their arguments on the host. Cloning shares the loaded functions (no allocation).
#[derive(Clone)]
pub struct Kernels {
    linear_f32: CudaFunction,
    quantize: CudaFunction,
    linear_dp4a: CudaFunction,
    linear_mma: Option<CudaFunction>,
    stream: Arc<CudaStream>,
}

/// Which int8 GEMM kernel to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// `dp4a` (sm_61+; byte-wise below).
    Dp4a,
    /// `mma.sync` int8 tensor cores (sm_80+).
    Mma,
}

impl Kernels {
    /// Load (compile on a cache miss) `linear.cu` on `gpu`.
    pub fn load(gpu: &mut Gpu) -> Result<Self, GpuError> {
        Ok(Self {
            linear_f32: gpu.function("linear.cu", "ef_linear_f32")?,
            quantize: gpu.function("linear.cu", "ef_quantize_i8")?,
            linear_dp4a: gpu.function("linear.cu", "ef_linear_i8_dp4a")?,
            linear_mma: if gpu.sm >= MMA_SM {
                Some(gpu.function("linear.cu", "ef_linear_i8_mma")?)
            } else {
                None
            },
            stream: gpu.stream.clone(),
        })
    }

    /// Whether the tensor-core int8 kernel is available on this GPU.
    pub fn has_mma(&self) -> bool {
        self.linear_mma.is_some()
    }

    /// `y = act(x · wᵀ + bias)`, `x [m, k]`, `w [n, k]`.
    #[allow(clippy::too_many_arguments)] // the kernel's own parameter list
    pub fn linear_f32(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        bias: Option<&CudaSlice<f32>>,
        y: &mut CudaSlice<f32>,
        (m, n, k): (usize, usize, usize),
        act: Activation,
    ) -> Result<(), GpuError> {
        check_len("x", x.len(), m * k)?;
        check_len("w", w.len(), n * k)?;
        check_len("y", y.len(), m * n)?;
        if let Some(b) = bias {
            check_len("bias", b.len(), n)?;
        }
        let (mi, ni, ki, a) = (m as i32, n as i32, k as i32, act as i32);
        let null = 0u64;
        let cfg = LaunchConfig {
            grid_dim: (blocks(n, 64), blocks(m, 64), 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = Launch::new(&self.stream, &self.linear_f32);
        b.dev(x).dev(w);
        match bias {
            Some(bias) => b.dev(bias),
            None => b.val(&null),
        };
        b.dev(y).val(&mi).val(&ni).val(&ki).val(&a);
        // SAFETY: the argument list matches ef_linear_f32's signature; every buffer holds the
        // element count the kernel indexes (checked above); the grid covers m × n.
        launched(unsafe { b.launch(cfg) }, "ef_linear_f32")
    }

    /// Quantize `x [m, k]` into `q [m, kp]` with activation scale `scale`.
    pub fn quantize_i8(
        &self,
        x: &CudaSlice<f32>,
        q: &mut CudaSlice<i8>,
        (m, k, kp): (usize, usize, usize),
        scale: f32,
    ) -> Result<(), GpuError> {
        check_len("x", x.len(), m * k)?;
        check_len("q", q.len(), m * kp)?;
        if kp < k || kp % 32 != 0 {
            return Err(GpuError::Unsupported(format!(
                "int8 row length {kp} must be a multiple of 32 and at least k = {k}"
            )));
        }
        let (mi, ki, kpi, inv) = (m as i32, k as i32, kp as i32, 1.0f32 / scale);
        let cfg = LaunchConfig::for_num_elems((m * kp) as u32);
        let mut b = Launch::new(&self.stream, &self.quantize);
        b.dev(x).dev(q).val(&mi).val(&ki).val(&kpi).val(&inv);
        // SAFETY: matches ef_quantize_i8; x holds m·k and q m·kp values; threads past m·kp exit.
        launched(unsafe { b.launch(cfg) }, "ef_quantize_i8")
    }

    /// `y = act(acc · x_scale · w_scale[n] + bias)` with `acc = q · wᵀ` exactly in i32.
    #[allow(clippy::too_many_arguments)] // the kernel's own parameter list
    pub fn linear_i8(
        &self,
        which: Int8Kernel,
        q: &CudaSlice<i8>,
        w: &CudaSlice<i8>,
        w_scale: &CudaSlice<f32>,
        x_scale: f32,
        bias: Option<&CudaSlice<f32>>,
        y: &mut CudaSlice<f32>,
        (m, n, kp): (usize, usize, usize),
        act: Activation,
    ) -> Result<(), GpuError> {
        if kp % 32 != 0 {
            return Err(GpuError::Unsupported(format!(
                "int8 row length {kp} must be a multiple of 32"
            )));
        }
        check_len("q", q.len(), m * kp)?;
        check_len("w", w.len(), n * kp)?;
        check_len("w_scale", w_scale.len(), n)?;
        check_len("y", y.len(), m * n)?;
        if let Some(b) = bias {
            check_len("bias", b.len(), n)?;
        }
        let (f, cfg, name) = match which {
            Int8Kernel::Mma => (
                self.linear_mma.as_ref().ok_or_else(|| {
                    GpuError::Unsupported(format!(
                        "the int8 tensor-core kernel needs sm_{MMA_SM} or newer"
                    ))
                })?,
                LaunchConfig {
                    grid_dim: (blocks(n, 32), blocks(m, 64), 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                },
                "ef_linear_i8_mma",
            ),
            Int8Kernel::Dp4a => (
                &self.linear_dp4a,
                LaunchConfig {
                    grid_dim: (blocks(n, 64), blocks(m, 64), 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                },
                "ef_linear_i8_dp4a",
            ),
        };
        let (mi, ni, kpi, a) = (m as i32, n as i32, kp as i32, act as i32);
        let null = 0u64;
        let mut b = Launch::new(&self.stream, f);
        b.dev(q).dev(w).dev(w_scale).val(&x_scale);
        match bias {
            Some(bias) => b.dev(bias),
            None => b.val(&null),
        };
        b.dev(y).val(&mi).val(&ni).val(&kpi).val(&a);
        // SAFETY: matches the kernel's signature; q is m·kp, w n·kp (kp % 32 == 0, so every
        // 32-bit load is aligned and in bounds), scales/bias n, y m·n; the grid covers m × n.
        launched(unsafe { b.launch(cfg) }, name)
    }
}
