//! The CUDA backend (cargo feature `cuda-jp5`, `cuda-jp6` or `cuda-jp7`): NVRTC compilation, the device,
//! kernel launches, and the accelerator the pipeline uses.
//!
//! cudarc opens `libcuda`/`libnvrtc` at run time. Its calls panic when a library is missing, so
//! every entry point here checks presence first and returns a [`GpuError`] instead.

#[cfg(any(
    all(feature = "cuda-jp5", feature = "cuda-jp6"),
    all(feature = "cuda-jp5", feature = "cuda-jp7"),
    all(feature = "cuda-jp6", feature = "cuda-jp7")
))]
compile_error!(
    "enable one of the features cuda-jp5, cuda-jp6, cuda-jp7: each selects a CUDA version"
);
#[cfg(not(any(feature = "cuda-jp5", feature = "cuda-jp6", feature = "cuda-jp7")))]
compile_error!("enable CUDA through the feature cuda-jp5 (JetPack 5), cuda-jp6 (JetPack 6) or cuda-jp7 (CUDA 13)");

use std::ffi::CString;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{
    result::DriverError, sys as dsys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream,
    DeviceRepr, LaunchConfig, PinnedHostSlice, ValidAsZeroBits,
};
use cudarc::nvrtc::{result as nres, sys as nsys, Ptx};

use edgefuse_models::Bundle;

use super::cache::{default_dir, CacheKey, KernelCache, Outcome};
use super::reference::Activation;
use super::{
    kernel, AccelTimes, Accelerator, GpuError, KernelSource, KernelTiming, MIN_SM, MMA_SM,
};
use crate::engine::TractEngine;
use crate::frame::{Frame, PixelFormat};
use crate::preprocess::Preprocessor;

/// The CUDA version the bindings were generated for; the driver must support at least this.
pub const BUILT_FOR: i32 = if cfg!(feature = "cuda-jp7") {
    13000
} else if cfg!(feature = "cuda-jp6") {
    12060
} else {
    11040
};

fn version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

fn driver_err(what: &str) -> impl Fn(DriverError) -> GpuError + '_ {
    move |e| {
        if e.0 == dsys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            GpuError::OutOfMemory {
                what: what.to_string(),
            }
        } else {
            let msg = e
                .error_string()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|_| format!("{:?}", e.0));
            GpuError::Driver {
                what: what.to_string(),
                message: msg,
            }
        }
    }
}

/// What NVRTC produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Machine code for `sm_XY` (what the runtime loads: no driver JIT needed).
    Cubin(u32),
    /// PTX for `compute_XY` (the fallback, and what `scripts/check-kernels` assembles).
    Ptx(u32),
}

impl Target {
    /// `sm_87` / `compute_87`.
    pub fn arch(self) -> String {
        match self {
            Target::Cubin(sm) => format!("sm_{sm}"),
            Target::Ptx(sm) => format!("compute_{sm}"),
        }
    }
}

/// NVRTC options for `target`; part of the cache key.
pub fn options(target: Target) -> Vec<String> {
    vec![
        format!("--gpu-architecture={}", target.arch()),
        "--std=c++14".into(),
        "--fmad=true".into(),
    ]
}

/// One compiled kernel file.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Cubin, or PTX text without the trailing NUL.
    pub binary: Vec<u8>,
    /// NVRTC's log (warnings); empty when clean.
    pub log: String,
}

/// Whether `libnvrtc` can be loaded.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { nsys::is_culib_present() }
}

/// NVRTC's version.
pub fn nvrtc_version() -> Result<(i32, i32), GpuError> {
    if !nvrtc_available() {
        return Err(GpuError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: libnvrtc is loadable (checked above); both pointers are valid for the call.
    unsafe { nsys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| GpuError::Driver {
            what: "nvrtcVersion".into(),
            message: format!("{e:?}"),
        })?;
    Ok((major, minor))
}

/// The real architectures this NVRTC can target, ascending.
pub fn supported_archs() -> Result<Vec<u32>, GpuError> {
    if !nvrtc_available() {
        return Err(GpuError::NoNvrtc);
    }
    let err = |e: nres::NvrtcError| GpuError::Driver {
        what: "nvrtcGetSupportedArchs".into(),
        message: format!("{e:?}"),
    };
    let mut n = 0;
    // SAFETY: libnvrtc is loadable; `n` is a valid out-pointer.
    unsafe { nsys::nvrtcGetNumSupportedArchs(&mut n) }
        .result()
        .map_err(err)?;
    let mut v = vec![0i32; n.max(0) as usize];
    // SAFETY: `v` has room for the `n` entries NVRTC writes.
    unsafe { nsys::nvrtcGetSupportedArchs(v.as_mut_ptr()) }
        .result()
        .map_err(err)?;
    Ok(v.into_iter().map(|a| a as u32).collect())
}

/// Turn NVRTC's NUL-terminated buffer into text.
fn c_text(buf: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .map(|c| *c as u8)
        .take_while(|b| *b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// Compile one kernel file for `target` with NVRTC (no GPU needed).
pub fn compile(k: &KernelSource, target: Target) -> Result<Compiled, GpuError> {
    if !nvrtc_available() {
        return Err(GpuError::NoNvrtc);
    }
    let fail = |log: String| GpuError::KernelCompile {
        kernel: k.file.to_string(),
        arch: target.arch(),
        log,
    };
    let src =
        CString::new(k.full_source()).map_err(|_| fail("source contains a NUL byte".into()))?;
    let name = CString::new(k.file).map_err(|_| fail("name contains a NUL byte".into()))?;
    let prog = nres::create_program(&src, Some(&name)).map_err(|e| fail(format!("{e:?}")))?;
    struct Program(nsys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
            let _ = unsafe { nres::destroy_program(self.0) };
        }
    }
    let prog = Program(prog);
    let opts = options(target);
    // SAFETY: `prog` is a live program; the options are valid strings without NULs.
    let status = unsafe { nres::compile_program(prog.0, &opts) };
    // SAFETY: `prog` is live; the log is copied out before the program is destroyed.
    let log = unsafe { nres::get_program_log(prog.0) }
        .map(|l| c_text(&l))
        .unwrap_or_default();
    if let Err(e) = status {
        return Err(fail(if log.is_empty() {
            format!("{e:?}")
        } else {
            log
        }));
    }
    let binary = match target {
        Target::Ptx(_) => {
            // SAFETY: `prog` compiled successfully.
            let ptx = unsafe { nres::get_ptx(prog.0) }.map_err(|e| fail(format!("{e:?}")))?;
            c_text(&ptx).into_bytes()
        }
        Target::Cubin(_) => {
            let mut size = 0usize;
            // SAFETY: `prog` compiled successfully for a real architecture; `size` is valid.
            unsafe { nsys::nvrtcGetCUBINSize(prog.0, &mut size) }
                .result()
                .map_err(|e| fail(format!("{e:?}")))?;
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` holds the `size` bytes NVRTC reported.
            unsafe { nsys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr().cast()) }
                .result()
                .map_err(|e| fail(format!("{e:?}")))?;
            buf
        }
    };
    Ok(Compiled { binary, log })
}

/// An open GPU with a stream and the kernels loaded on demand.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Device name.
    pub name: String,
    /// Compute capability, `major*10+minor`.
    pub sm: u32,
    /// Driver's CUDA version (`cuDriverGetVersion`, e.g. 12060).
    pub driver: i32,
    /// Integrated GPU sharing DRAM with the CPU (Jetson).
    pub integrated: bool,
    nvrtc: (i32, i32),
    cache: KernelCache,
    modules: Vec<(&'static str, Arc<CudaModule>)>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Gpu {
    /// Open device `ordinal`, checking driver, device, compute capability and NVRTC.
    pub fn open(ordinal: usize) -> Result<Self, GpuError> {
        // SAFETY: only tries to dlopen libcuda by its candidate names.
        if !unsafe { dsys::is_culib_present() } {
            return Err(GpuError::NoDriver);
        }
        cudarc::driver::result::init().map_err(|e| {
            if e.0 == dsys::CUresult::CUDA_ERROR_NO_DEVICE {
                GpuError::NoDevice
            } else {
                driver_err("cuInit")(e)
            }
        })?;
        let mut driver = 0;
        // SAFETY: libcuda is loaded and initialised; `driver` is a valid out-pointer.
        unsafe { dsys::cuDriverGetVersion(&mut driver) }
            .result()
            .map_err(driver_err("cuDriverGetVersion"))?;
        if driver < BUILT_FOR {
            return Err(GpuError::DriverTooOld {
                have: version(driver),
                need: version(BUILT_FOR),
            });
        }
        let count = CudaContext::device_count().map_err(driver_err("cuDeviceGetCount"))?;
        if count <= ordinal as i32 {
            return Err(GpuError::NoDevice);
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err("creating the CUDA context"))?;
        // SAFETY: called before any allocation on this context; edgefuse uses one stream, in
        // which launches and copies are ordered anyway, so cudarc's per-buffer events (two driver
        // calls per kernel argument) only cost time.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver_err("cuDeviceGetAttribute"))?;
        let sm = (major * 10 + minor) as u32;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        if sm < MIN_SM {
            return Err(GpuError::UnsupportedSm {
                name,
                have: sm,
                need: MIN_SM,
            });
        }
        let integrated = ctx
            .attribute(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED)
            .map_err(driver_err("cuDeviceGetAttribute"))?
            == 1;
        let nvrtc = nvrtc_version()?;
        let stream = ctx
            .new_stream()
            .map_err(driver_err("creating the stream"))?;
        Ok(Self {
            ctx,
            stream,
            name,
            sm,
            driver,
            integrated,
            nvrtc,
            cache: KernelCache::new(default_dir()),
            modules: Vec::new(),
        })
    }

    /// `cuda:0 NVIDIA H200 (sm_90, driver 12.6, discrete)`.
    pub fn describe(&self) -> String {
        format!(
            "cuda:{} {} (sm_{}, driver {}, NVRTC {}.{}, {})",
            self.ctx.ordinal(),
            self.name,
            self.sm,
            version(self.driver),
            self.nvrtc.0,
            self.nvrtc.1,
            if self.integrated {
                "integrated, shared DRAM"
            } else {
                "discrete"
            }
        )
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Wait for the stream.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream
            .synchronize()
            .map_err(driver_err("synchronising the stream"))
    }

    /// Compile (or load from the cache) and load the module of kernel file `file`.
    pub fn module(&mut self, file: &'static str) -> Result<Arc<CudaModule>, GpuError> {
        if let Some((_, m)) = self.modules.iter().find(|(f, _)| *f == file) {
            return Ok(m.clone());
        }
        let k =
            kernel(file).ok_or_else(|| GpuError::Unsupported(format!("no kernel file {file}")))?;
        let archs = supported_archs()?;
        let ptx = if archs.contains(&self.sm) {
            let target = Target::Cubin(self.sm);
            let key = CacheKey::new(
                file,
                &k.full_source(),
                &options(target),
                self.nvrtc,
                self.sm,
                self.driver,
            );
            let (bin, outcome) = self.cache.get_or_build(&key, || {
                let c = compile(k, target)?;
                if !c.log.is_empty() {
                    log::warn!("{file} for {}: {}", target.arch(), c.log);
                }
                Ok::<_, GpuError>(c.binary)
            })?;
            log::debug!("{file}: sm_{} cubin ({outcome:?})", self.sm);
            if outcome != Outcome::Hit {
                log::info!("compiled {file} for sm_{}", self.sm);
            }
            Ptx::from_binary(bin)
        } else {
            // This NVRTC predates the GPU: PTX for the newest architecture it knows, JIT-compiled
            // by the driver (needs the driver's PTX JIT, which Jetson images may lack).
            let Some(&arch) = archs.iter().filter(|a| **a <= self.sm).max() else {
                return Err(GpuError::UnsupportedSm {
                    name: self.name.clone(),
                    have: self.sm,
                    need: archs.first().copied().unwrap_or(MIN_SM),
                });
            };
            log::warn!(
                "NVRTC {}.{} cannot build sm_{} code; using compute_{arch} PTX and the driver's JIT",
                self.nvrtc.0,
                self.nvrtc.1,
                self.sm
            );
            let c = compile(k, Target::Ptx(arch))?;
            Ptx::from_src(String::from_utf8_lossy(&c.binary).into_owned())
        };
        let module = self
            .ctx
            .load_module(ptx)
            .map_err(driver_err("loading a kernel module"))?;
        self.modules.push((file, module.clone()));
        Ok(module)
    }

    /// Entry point `name` of kernel file `file`.
    pub fn function(&mut self, file: &'static str, name: &str) -> Result<CudaFunction, GpuError> {
        self.module(file)?
            .load_function(name)
            .map_err(driver_err("loading a kernel function"))
    }

    /// Device buffer of `len` zeros.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, GpuError> {
        self.stream
            .alloc_zeros(len.max(1))
            .map_err(driver_err("allocating device memory"))
    }

    /// Copy `host` to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, GpuError> {
        self.stream
            .clone_htod(host)
            .map_err(driver_err("copying to the device"))
    }

    /// Copy `dev` to `host` and wait.
    pub fn download_into<T: DeviceRepr>(
        &self,
        dev: &CudaSlice<T>,
        host: &mut [T],
    ) -> Result<(), GpuError> {
        self.stream
            .memcpy_dtoh(dev, host)
            .map_err(driver_err("copying from the device"))?;
        self.synchronize()
    }

    /// Copy `dev` to a new vector.
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        dev: &CudaSlice<T>,
    ) -> Result<Vec<T>, GpuError> {
        let mut v = vec![T::default(); dev.len()];
        self.download_into(dev, &mut v)?;
        Ok(v)
    }
}

/// A kernel launch whose argument list lives on the stack: cudarc's launch builder allocates a
/// vector per launch, which would put heap allocations on the per-frame path.
struct Launch<'a> {
    stream: &'a CudaStream,
    f: &'a CudaFunction,
    args: heapless::Vec<Arg, 24>,
}

#[derive(Clone, Copy)]
enum Arg {
    /// A device pointer, passed by value.
    Dev(dsys::CUdeviceptr),
    /// A host value the kernel takes by value (scalar or #[repr(C)] struct).
    Host(*const std::ffi::c_void),
}

impl<'a> Launch<'a> {
    fn new(stream: &'a CudaStream, f: &'a CudaFunction) -> Self {
        Self {
            stream,
            f,
            args: heapless::Vec::new(),
        }
    }

    fn push(&mut self, a: Arg) -> &mut Self {
        // 24 is more than any kernel here takes (the largest, ef_preprocess_*, takes 20).
        assert!(self.args.push(a).is_ok(), "more than 24 kernel arguments");
        self
    }

    /// A device buffer.
    fn dev<T>(&mut self, s: &CudaSlice<T>) -> &mut Self {
        use cudarc::driver::DevicePtr;
        let (p, _sync) = s.device_ptr(self.stream);
        self.push(Arg::Dev(p))
    }

    /// A value the kernel takes by value; it must outlive the launch.
    fn val<T: DeviceRepr>(&mut self, v: &'a T) -> &mut Self {
        self.push(Arg::Host(v as *const T as *const std::ffi::c_void))
    }

    /// # Safety
    /// The arguments must match the kernel's parameter list in number, order and type, and every
    /// index the kernel computes from them must stay inside the buffers passed.
    unsafe fn launch(&self, cfg: LaunchConfig) -> Result<(), DriverError> {
        self.stream.context().bind_to_thread()?;
        let mut devs = [0 as dsys::CUdeviceptr; 24];
        let mut params = [std::ptr::null_mut::<std::ffi::c_void>(); 24];
        for (i, a) in self.args.iter().enumerate() {
            if let Arg::Dev(p) = a {
                devs[i] = *p;
            }
        }
        for (i, a) in self.args.iter().enumerate() {
            params[i] = match a {
                Arg::Dev(_) => (&mut devs[i]) as *mut dsys::CUdeviceptr as *mut std::ffi::c_void,
                Arg::Host(p) => *p as *mut std::ffi::c_void,
            };
        }
        let n = self.args.len();
        // SAFETY: the caller guarantees the argument list; `params` points at `devs` and at
        // values that outlive this call; the function and stream belong to the same context.
        unsafe {
            cudarc::driver::result::launch_kernel(
                self.f.cu_function(),
                cfg.grid_dim,
                cfg.block_dim,
                cfg.shared_mem_bytes,
                self.stream.cu_stream(),
                &mut params[..n],
            )
        }
    }
}

/// Launch helper: map the launch error.
fn launched(r: Result<(), DriverError>, kernel: &str) -> Result<(), GpuError> {
    r.map_err(|e| driver_err(&format!("launching {kernel}"))(e))
}

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

/// The non-preprocessing kernels, loaded once; launches check their arguments on the host.
/// Cloning shares the loaded functions (no allocation).
#[derive(Clone)]
pub struct Kernels {
    linear_f32: CudaFunction,
    quantize: CudaFunction,
    linear_dp4a: CudaFunction,
    linear_mma: Option<CudaFunction>,
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

/// Which int8 GEMM kernel to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// `dp4a` (sm_61+; byte-wise below).
    Dp4a,
    /// `mma.sync` int8 tensor cores (sm_80+).
    Mma,
}

impl Kernels {
    /// Load every kernel on `gpu`.
    pub fn load(gpu: &mut Gpu) -> Result<Self, GpuError> {
        let max_shared = gpu
            .ctx
            .attribute(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)
            .map_err(driver_err("cuDeviceGetAttribute"))? as usize;
        Ok(Self {
            linear_f32: gpu.function("linear.cu", "ef_linear_f32")?,
            quantize: gpu.function("linear.cu", "ef_quantize_i8")?,
            linear_dp4a: gpu.function("linear.cu", "ef_linear_i8_dp4a")?,
            linear_mma: if gpu.sm >= MMA_SM {
                Some(gpu.function("linear.cu", "ef_linear_i8_mma")?)
            } else {
                None
            },
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

fn check_exact(what: &str, have: usize, need: usize) -> Result<(), GpuError> {
    if have != need {
        return Err(GpuError::Unsupported(format!(
            "{what}: buffer holds {have} values, expected {need}"
        )));
    }
    Ok(())
}

fn check_len(what: &str, have: usize, need: usize) -> Result<(), GpuError> {
    if have < need {
        return Err(GpuError::Unsupported(format!(
            "{what}: device buffer holds {have} values, the launch needs {need}"
        )));
    }
    Ok(())
}

/// Fused preprocessing on the GPU for one bundle's input spec. Buffers are (re)allocated only
/// when the source geometry changes; per frame there is one host copy into pinned memory the GPU
/// maps (read in place on an integrated GPU, copied asynchronously on a discrete one), one launch
/// and one copy of the tensor back.
pub struct GpuPreprocess {
    f32_fn: CudaFunction,
    f16_fn: CudaFunction,
    taps: Preprocessor,
    spec: [(i32, f32, f32); 3],
    out_w: usize,
    out_h: usize,
    geometry: Option<(u32, u32, PixelFormat)>,
    tx: Option<CudaSlice<i32>>,
    ty: Option<CudaSlice<i32>>,
    wx: Option<CudaSlice<f32>>,
    wy: Option<CudaSlice<f32>>,
    pinned: Option<PinnedHostSlice<u8>>,
    mapped: u64,
    staged: Option<CudaSlice<u8>>,
    out: CudaSlice<f32>,
    out16: CudaSlice<u16>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    integrated: bool,
}

fn fmt_code(f: PixelFormat) -> i32 {
    match f {
        PixelFormat::Yuyv => 0,
        PixelFormat::Nv12 => 1,
        PixelFormat::Grey => 2,
        PixelFormat::Rgb => 3,
        PixelFormat::Bgr => 4,
    }
}

impl GpuPreprocess {
    /// For `spec` on `gpu`.
    pub fn new(
        gpu: &mut Gpu,
        spec: &edgefuse_models::manifest::Preprocess,
    ) -> Result<Self, GpuError> {
        let taps = Preprocessor::new(spec);
        let chan = taps.channel_map();
        let out_w = spec.image_size[0] as usize;
        let out_h = spec.image_size[1] as usize;
        Ok(Self {
            f32_fn: gpu.function("preprocess.cu", "ef_preprocess_f32")?,
            f16_fn: gpu.function("preprocess.cu", "ef_preprocess_f16")?,
            spec: chan.map(|(c, s, b)| (c as i32, s, b)),
            taps,
            out_w,
            out_h,
            geometry: None,
            tx: None,
            ty: None,
            wx: None,
            wy: None,
            pinned: None,
            mapped: 0,
            staged: None,
            out: gpu.zeros(3 * out_w * out_h)?,
            out16: gpu.zeros(3 * out_w * out_h)?,
            stream: gpu.stream.clone(),
            ctx: gpu.ctx.clone(),
            integrated: gpu.integrated,
        })
    }

    fn prepare(&mut self, frame: &Frame) -> Result<(), GpuError> {
        let key = (frame.width, frame.height, frame.format);
        if self.geometry == Some(key) {
            return Ok(());
        }
        // Whatever fails below must not leave buffers of one geometry under another's key.
        self.geometry = None;
        let (tx, ty, wx, wy) = self.taps.filter_taps(frame.width, frame.height);
        let upload_i = |v: &[i32]| {
            self.stream
                .clone_htod(v)
                .map_err(driver_err("uploading filter taps"))
        };
        self.tx = Some(upload_i(&tx)?);
        self.ty = Some(upload_i(&ty)?);
        let upload_f = |v: &[f32]| {
            self.stream
                .clone_htod(v)
                .map_err(driver_err("uploading filter taps"))
        };
        self.wx = Some(upload_f(&wx)?);
        self.wy = Some(upload_f(&wy)?);
        let len = frame.data.len().max(1);
        let flags = dsys::CU_MEMHOSTALLOC_DEVICEMAP | dsys::CU_MEMHOSTALLOC_WRITECOMBINED;
        self.pinned = None;
        // SAFETY: the buffer is fully written (copy_from_slice of the frame) before any read.
        let pinned = unsafe { self.ctx.alloc_pinned_with_flags::<u8>(len, flags) }
            .map_err(driver_err("allocating pinned frame memory"))?;
        self.mapped = 0;
        self.staged = None;
        if self.integrated {
            let host = pinned
                .as_ptr()
                .map_err(driver_err("mapping pinned frame memory"))?;
            let mut dptr: dsys::CUdeviceptr = 0;
            // SAFETY: `host` is a live allocation from cuMemHostAlloc with DEVICEMAP; the
            // returned device address aliases it for as long as `pinned` lives (kept in self).
            unsafe { dsys::cuMemHostGetDevicePointer_v2(&mut dptr, host as *mut _, 0) }
                .result()
                .map_err(driver_err("mapping pinned frame memory"))?;
            self.mapped = dptr;
        } else {
            self.staged = Some(
                self.stream
                    .alloc_zeros::<u8>(len)
                    .map_err(driver_err("allocating the frame buffer"))?,
            );
        }
        self.pinned = Some(pinned);
        self.geometry = Some(key);
        Ok(())
    }

    /// Preprocess `frame` into `out` (`[3, h, w]` f32) on the host.
    pub fn run(&mut self, frame: &Frame, out: &mut [f32]) -> Result<(), GpuError> {
        check_exact("preprocess output", out.len(), 3 * self.out_w * self.out_h)?;
        self.launch(frame, false)?;
        self.stream
            .memcpy_dtoh(&self.out, out)
            .map_err(driver_err("copying the preprocessed tensor"))?;
        self.stream
            .synchronize()
            .map_err(driver_err("preprocessing"))
    }

    /// Same, half precision (IEEE bits).
    pub fn run_f16(&mut self, frame: &Frame, out: &mut [u16]) -> Result<(), GpuError> {
        check_exact("preprocess output", out.len(), 3 * self.out_w * self.out_h)?;
        self.launch(frame, true)?;
        self.stream
            .memcpy_dtoh(&self.out16, out)
            .map_err(driver_err("copying the preprocessed tensor"))?;
        self.stream
            .synchronize()
            .map_err(driver_err("preprocessing"))
    }

    /// Stage `frame` and launch the kernel into the device tensor (asynchronous).
    pub(crate) fn launch(&mut self, frame: &Frame, half: bool) -> Result<(), GpuError> {
        // Never hand the kernel a frame shorter than its geometry says.
        Preprocessor::check(frame).map_err(|e| GpuError::Unsupported(e.to_string()))?;
        self.prepare(frame)?;
        // The kernel reads the pinned frame through a raw mapped pointer on integrated GPUs,
        // which cudarc's slice events do not track: wait for earlier launches before rewriting it.
        self.stream
            .synchronize()
            .map_err(driver_err("waiting for the previous frame"))?;
        let Some(pinned) = self.pinned.as_mut() else {
            return Err(GpuError::Unsupported("frame buffer not prepared".into()));
        };
        pinned
            .as_mut_slice()
            .map_err(driver_err("writing pinned frame memory"))?[..frame.data.len()]
            .copy_from_slice(&frame.data);
        if let Some(staged) = self.staged.as_mut() {
            self.stream
                .memcpy_htod(&*pinned, staged)
                .map_err(driver_err("copying the frame to the device"))?;
        }
        self.relaunch(half)
    }

    /// Launch the kernel again on the frame the last launch staged (benchmarks).
    fn relaunch(&mut self, half: bool) -> Result<(), GpuError> {
        let Some((width, height, format)) = self.geometry else {
            return Err(GpuError::Unsupported("no frame staged".into()));
        };
        let (fmt, w, h) = (fmt_code(format), width as i32, height as i32);
        let (ow, oh) = (self.out_w as i32, self.out_h as i32);
        let [(c0, s0, b0), (c1, s1, b1), (c2, s2, b2)] = self.spec;
        let cfg = LaunchConfig {
            grid_dim: (blocks(self.out_w, 16), blocks(self.out_h, 16), 1),
            block_dim: (16, 16, 1),
            shared_mem_bytes: 0,
        };
        let f = if half { &self.f16_fn } else { &self.f32_fn };
        let mut b = Launch::new(&self.stream, f);
        match self.staged.as_ref() {
            Some(s) => b.dev(s),
            None => b.val(&self.mapped),
        };
        b.val(&fmt).val(&w).val(&h);
        b.dev(self.tx.as_ref().expect("prepared"))
            .dev(self.ty.as_ref().expect("prepared"))
            .dev(self.wx.as_ref().expect("prepared"))
            .dev(self.wy.as_ref().expect("prepared"));
        b.val(&ow).val(&oh);
        b.val(&c0)
            .val(&c1)
            .val(&c2)
            .val(&s0)
            .val(&s1)
            .val(&s2)
            .val(&b0)
            .val(&b1)
            .val(&b2);
        if half {
            b.dev(&self.out16);
        } else {
            b.dev(&self.out);
        }
        // SAFETY: matches ef_preprocess_*; the source holds a whole frame of this geometry and
        // format (length checked by the caller), the taps were computed for this geometry and
        // only index source pixels inside it, the output holds 3·out_w·out_h values.
        launched(unsafe { b.launch(cfg) }, "ef_preprocess")
    }
}

/// How the accelerator runs the encoder and the Q-Former.
enum Models {
    /// Our kernels over the lowered graphs ([`super::graph`]): everything stays on the GPU
    /// from the frame to the embeddings; int8 bundles run their linear layers in int8.
    Ours {
        enc: Box<GraphExec>,
        qf: Option<Box<GraphExec>>,
    },
    /// tract (tract-cuda on the GPU, or tract on the CPU) from the host tensor.
    Tract {
        engine: Box<TractEngine>,
        on_gpu: bool,
        input: Vec<f32>,
    },
}

/// Which engine runs the models: `$EDGEFUSE_GPU_MODELS` = `ours` (default), `tract-cuda` or
/// `cpu`. Until measured on the target, `ours` is the default: it is the only path that keeps
/// int8 bundles in int8 and works on JetPack 5; `scripts/gpu-check` times each.
fn models_choice() -> String {
    std::env::var("EDGEFUSE_GPU_MODELS").unwrap_or_else(|_| "ours".into())
}

/// The CUDA accelerator: fused preprocessing on the GPU, then the encoder and Q-Former on our
/// kernels (or tract-cuda / the CPU: `$EDGEFUSE_GPU_MODELS`), with per-stage CUDA-event timing.
pub struct CudaAccelerator {
    gpu: Gpu,
    pre: GpuPreprocess,
    models: Models,
    events: [cudarc::driver::CudaEvent; 4],
}

impl CudaAccelerator {
    /// Open device 0 and prepare everything for `bundle`: kernels compiled (or loaded from the
    /// cache), weights uploaded, every buffer allocated.
    pub fn new(bundle: &Bundle) -> Result<Self, GpuError> {
        let mut gpu = Gpu::open(0)?;
        let pre = GpuPreprocess::new(&mut gpu, &bundle.manifest().preprocess)?;
        let choice = models_choice();
        let models = match choice.as_str() {
            "ours" => match ours(&mut gpu, bundle) {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("our GPU graph executor cannot run this bundle ({e}); trying tract");
                    tract_models(bundle, true)?
                }
            },
            "tract-cuda" => tract_models(bundle, true)?,
            "cpu" => tract_models(bundle, false)?,
            other => {
                return Err(GpuError::Unsupported(format!(
                    "EDGEFUSE_GPU_MODELS=`{other}`: use ours, tract-cuda or cpu"
                )))
            }
        };
        let event = || {
            gpu.ctx
                .new_event(Some(dsys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(driver_err("creating a CUDA event"))
        };
        let events = [event()?, event()?, event()?, event()?];
        Ok(Self {
            gpu,
            pre,
            models,
            events,
        })
    }
}

fn ours(gpu: &mut Gpu, bundle: &Bundle) -> Result<Models, GpuError> {
    let (enc, qf) = super::graph::lower_bundle(bundle)?;
    let enc = Box::new(GraphExec::new(gpu, enc)?);
    let qf = match qf {
        Some(p) => Some(Box::new(GraphExec::new(gpu, p)?)),
        None => None,
    };
    Ok(Models::Ours { enc, qf })
}

fn tract_models(bundle: &Bundle, gpu: bool) -> Result<Models, GpuError> {
    let (engine, on_gpu) = if gpu {
        models_engine(bundle)?
    } else {
        cpu_engine(bundle)?
    };
    let [w, h] = bundle.manifest().preprocess.image_size;
    Ok(Models::Tract {
        engine: Box::new(engine),
        on_gpu,
        input: vec![0.0; 3 * w as usize * h as usize],
    })
}

#[cfg(any(feature = "cuda-jp6", feature = "cuda-jp7"))]
fn models_engine(bundle: &Bundle) -> Result<(TractEngine, bool), GpuError> {
    // Referencing the crate links it, which registers its `cuda` runtime with tract.
    let _ = std::any::type_name::<tract_cuda::CudaTransform>();
    use tract_onnx::tract_core::runtime::runtime_for_name;
    let rt = runtime_for_name("cuda").ok().flatten();
    let why = match rt {
        None => "tract-cuda's runtime is not registered".to_string(),
        Some(rt) => match rt.check() {
            Err(e) => format!("tract-cuda cannot start: {e:#}"),
            Ok(()) => {
                let mut b = bundle.clone();
                b.set_runtime(Some(rt));
                match TractEngine::new(&b) {
                    Ok(e) => return Ok((e, true)),
                    Err(e) => format!("tract-cuda cannot run the models: {e}"),
                }
            }
        },
    };
    log::warn!("{why}; the encoder and Q-Former run on the CPU, preprocessing on the GPU");
    cpu_engine(bundle)
}

#[cfg(not(any(feature = "cuda-jp6", feature = "cuda-jp7")))]
fn models_engine(bundle: &Bundle) -> Result<(TractEngine, bool), GpuError> {
    log::warn!("this build has no tract-cuda (JetPack 5): tract runs the models on the CPU");
    cpu_engine(bundle)
}

fn cpu_engine(bundle: &Bundle) -> Result<(TractEngine, bool), GpuError> {
    TractEngine::new(bundle)
        .map(|e| (e, false))
        .map_err(|e| GpuError::Unsupported(e.to_string()))
}

impl Accelerator for CudaAccelerator {
    fn describe(&self) -> String {
        let models = match &self.models {
            Models::Ours { enc, .. } if enc.plan().host_nodes.is_empty() => {
                "our kernels".to_string()
            }
            Models::Ours { enc, .. } => format!(
                "our kernels ({} nodes on the host)",
                enc.plan().host_nodes.len()
            ),
            Models::Tract { on_gpu: true, .. } => "tract-cuda".into(),
            Models::Tract { .. } => "the CPU (tract)".into(),
        };
        format!(
            "{}: preprocessing on our kernel, encoder and Q-Former on {models}",
            self.gpu.describe()
        )
    }

    fn run(
        &mut self,
        frame: &Frame,
        embedding: &mut [f32],
        queries: &mut [f32],
        times: &mut AccelTimes,
    ) -> Result<(), GpuError> {
        let stream = self.gpu.stream().clone();
        let rec = |e: &cudarc::driver::CudaEvent| {
            e.record(&stream).map_err(driver_err("recording an event"))
        };
        let t0 = Instant::now();
        match &mut self.models {
            Models::Ours { enc, qf } => {
                rec(&self.events[0])?;
                self.pre.launch(frame, false)?;
                rec(&self.events[1])?;
                enc.set_input_from(&self.pre.out)?;
                enc.run()?;
                rec(&self.events[2])?;
                if let Some(qf) = qf {
                    qf.set_input_from(enc.output(1))?;
                    qf.run()?;
                }
                rec(&self.events[3])?;
                check_exact("embedding", embedding.len(), enc.output(0).len())?;
                stream
                    .memcpy_dtoh(enc.output(0), embedding)
                    .map_err(driver_err("copying the embedding"))?;
                if let Some(qf) = qf {
                    check_exact("queries", queries.len(), qf.output(0).len())?;
                    stream
                        .memcpy_dtoh(qf.output(0), queries)
                        .map_err(driver_err("copying the queries"))?;
                }
                self.gpu.synchronize()?;
                let ms = |a: usize, b: usize| {
                    self.events[a]
                        .elapsed_ms(&self.events[b])
                        .map(|v| std::time::Duration::from_secs_f64(f64::from(v.max(0.0)) / 1e3))
                        .unwrap_or_default()
                };
                *times = [ms(0, 1), ms(1, 2), ms(2, 3)];
            }
            Models::Tract { engine, input, .. } => {
                self.pre.run(frame, input)?;
                let t1 = Instant::now();
                let model_err = |e: crate::engine::EngineError| GpuError::Driver {
                    what: "running the models".into(),
                    message: e.to_string(),
                };
                engine.run_encoder(input, embedding).map_err(model_err)?;
                let t2 = Instant::now();
                if engine.has_qformer() {
                    engine.run_qformer(queries).map_err(model_err)?;
                }
                *times = [t1 - t0, t2 - t1, t2.elapsed()];
            }
        }
        Ok(())
    }
}

/// Dense int8 tensor-core operations per clock per SM (2 per multiply-add), from NVIDIA's
/// published peaks divided by SM count and boost clock.
fn int8_ops_per_clock_per_sm(sm: u32) -> Option<f64> {
    match sm {
        72 | 75 | 86 | 89 => Some(2048.0),
        80 | 87 => Some(4096.0),
        90 => Some(8192.0),
        _ => None,
    }
}

impl Gpu {
    fn attr(&self, a: dsys::CUdevice_attribute) -> Result<f64, GpuError> {
        self.ctx
            .attribute(a)
            .map(f64::from)
            .map_err(driver_err("cuDeviceGetAttribute"))
    }

    /// Theoretical DRAM bandwidth in GB/s (memory clock × bus width × 2).
    pub fn peak_bandwidth_gbs(&self) -> Result<f64, GpuError> {
        use dsys::CUdevice_attribute as A;
        let khz = self.attr(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)?;
        let bits = self.attr(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?;
        Ok(2.0 * khz * 1e3 * bits / 8.0 / 1e9)
    }

    /// Dense int8 tensor-core peak in TOPS, when the architecture's rate is known.
    pub fn peak_int8_tops(&self) -> Result<Option<f64>, GpuError> {
        use dsys::CUdevice_attribute as A;
        let sms = self.attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let khz = self.attr(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)?;
        Ok(int8_ops_per_clock_per_sm(self.sm).map(|o| o * sms * khz * 1e3 / 1e12))
    }

    /// Median microseconds per call of `f` (`reps` calls between two events, 7 batches).
    fn time(
        &self,
        reps: usize,
        mut f: impl FnMut() -> Result<(), GpuError>,
    ) -> Result<f64, GpuError> {
        let ev = || {
            self.ctx
                .new_event(Some(dsys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(driver_err("creating an event"))
        };
        let (a, b) = (ev()?, ev()?);
        f()?; // warm-up (and module load)
        let mut samples = Vec::new();
        for _ in 0..7 {
            a.record(&self.stream).map_err(driver_err("event"))?;
            for _ in 0..reps {
                f()?;
            }
            b.record(&self.stream).map_err(driver_err("event"))?;
            b.synchronize().map_err(driver_err("event"))?;
            samples.push(a.elapsed_ms(&b).map_err(driver_err("event"))? as f64 * 1e3 / reps as f64);
        }
        samples.sort_by(f64::total_cmp);
        Ok(samples[3])
    }
}

/// Time every kernel on the ViT-B/32 + BLIP-2 Q-Former shapes at batch 1.
pub fn bench_kernels(gpu: &mut Gpu) -> Result<Vec<KernelTiming>, GpuError> {
    use crate::capture::synthetic::render;
    let k = Kernels::load(gpu)?;
    let bw = gpu.peak_bandwidth_gbs()?;
    let tops = gpu.peak_int8_tops()?;
    let mut out = Vec::new();
    let reps = 50;

    // Preprocessing: bytes read once (frame) + written (tensor) over time.
    let spec = edgefuse_models::manifest::Preprocess {
        image_size: [224, 224],
        resize: edgefuse_models::manifest::ResizePolicy::ShortestSideCenterCrop,
        mean: [0.481, 0.458, 0.408],
        std: [0.269, 0.261, 0.276],
        channel_order: edgefuse_models::manifest::ChannelOrder::Rgb,
    };
    let mut pre = GpuPreprocess::new(gpu, &spec)?;
    for (w, h, fmt) in [
        (640, 480, PixelFormat::Yuyv),
        (1920, 1080, PixelFormat::Nv12),
    ] {
        let frame = render(w, h, fmt, 0, "synthetic://");
        pre.launch(&frame, false)?;
        // The kernel alone (the frame is already in device-visible memory).
        let us = gpu.time(reps, || pre.relaunch(false))?;
        let bytes = frame.data.len() + 3 * 224 * 224 * 4;
        out.push(KernelTiming {
            name: format!("preprocess {w}x{h} {} -> 224 f32", fmt.name()),
            median_us: us,
            rate: bytes as f64 / (us * 1e-6) / 1e9,
            unit: "GB/s",
            peak: Some(bw),
        });
    }

    for (m, n, kk) in [
        (50, 2304, 768),
        (50, 3072, 768),
        (50, 768, 3072),
        (32, 768, 768),
    ] {
        let (x, w) = (
            gpu.upload(&vec![0.5f32; m * kk])?,
            gpu.upload(&vec![0.25f32; n * kk])?,
        );
        let mut y = gpu.zeros::<f32>(m * n)?;
        let us = gpu.time(reps, || {
            k.linear_f32(&x, &w, None, &mut y, (m, n, kk), Activation::None)
        })?;
        let flop = 2.0 * (m * n * kk) as f64;
        out.push(KernelTiming {
            name: format!("linear_f32 {m}x{n}x{kk}"),
            median_us: us,
            rate: flop / (us * 1e-6) / 1e9,
            unit: "GFLOP/s",
            peak: None,
        });
        let kp = kk.div_ceil(32) * 32;
        let (q, wq, ws) = (
            gpu.upload(&vec![3i8; m * kp])?,
            gpu.upload(&vec![-2i8; n * kp])?,
            gpu.upload(&vec![0.01f32; n])?,
        );
        let mut kinds = vec![Int8Kernel::Dp4a];
        if k.has_mma() {
            kinds.push(Int8Kernel::Mma);
        }
        for which in kinds {
            let us = gpu.time(reps, || {
                k.linear_i8(
                    which,
                    &q,
                    &wq,
                    &ws,
                    0.02,
                    None,
                    &mut y,
                    (m, n, kp),
                    Activation::None,
                )
            })?;
            out.push(KernelTiming {
                name: format!("linear_i8 {which:?} {m}x{n}x{kk}"),
                median_us: us,
                rate: flop / (us * 1e-6) / 1e12,
                unit: "TOPS",
                peak: tops,
            });
        }
    }

    let (l, heads, d) = (50, 12, 64);
    let qkv = gpu.upload(&vec![0.1f32; l * 3 * heads * d])?;
    let mut o = gpu.zeros::<f32>(l * heads * d)?;
    let st = 3 * heads * d;
    let us = gpu.time(reps, || {
        k.attention(
            (&qkv, st),
            (&qkv, st),
            (&qkv, st),
            &mut o,
            (l, l, heads, d),
            0.125,
        )
    })?;
    out.push(KernelTiming {
        name: "attention 50x50 12 heads x 64".into(),
        median_us: us,
        rate: (4 * l * l * heads * d) as f64 / (us * 1e-6) / 1e9,
        unit: "GFLOP/s",
        peak: None,
    });

    let x = gpu.upload(&vec![1.0f32; 50 * 768])?;
    let g1 = gpu.upload(&vec![1.0f32; 768])?;
    let b0 = gpu.zeros::<f32>(768)?;
    let mut y = gpu.zeros::<f32>(50 * 768)?;
    let us = gpu.time(reps, || k.layer_norm(&x, &g1, &b0, &mut y, (50, 768), 1e-5))?;
    out.push(KernelTiming {
        name: "layer_norm 50x768".into(),
        median_us: us,
        rate: (2 * 50 * 768 * 4) as f64 / (us * 1e-6) / 1e9,
        unit: "GB/s",
        peak: Some(bw),
    });

    let (labels, dim, nq) = (1000, 256, 32);
    let t = gpu.upload(&vec![0.0625f32; labels * dim])?;
    let e = gpu.upload(&vec![1.0f32; dim])?;
    let qq = gpu.upload(&vec![1.0f32; nq * dim])?;
    let (mut c, mut qf) = (gpu.zeros::<f32>(labels)?, gpu.zeros::<f32>(labels)?);
    let (mut p, mut tmp) = (gpu.zeros::<f32>(labels)?, gpu.zeros::<f32>(labels)?);
    let (mut ti, mut tp) = (gpu.zeros::<i32>(5)?, gpu.zeros::<f32>(5)?);
    let us = gpu.time(reps, || {
        k.head_logits(
            &e,
            Some((&qq, nq)),
            &t,
            (labels, dim),
            (100.0, 100.0),
            &mut c,
            &mut qf,
        )?;
        k.fuse_topk(&c, &qf, 1, (0.5, 0.5), &mut p, &mut tmp, (&mut ti, &mut tp))
    })?;
    out.push(KernelTiming {
        name: "fusion head 1000 labels x 256, 32 queries, top-5".into(),
        median_us: us,
        rate: ((nq + 1) * labels * dim * 4) as f64 / (us * 1e-6) / 1e9,
        unit: "GB/s",
        peak: Some(bw),
    });
    Ok(out)
}

// SAFETY: plain #[repr(C)] structs of i32 arrays, laid out exactly like graph.cu's EfBroadcast,
// EfPermute, EfMatMul and EfConv (4-byte fields, no padding); passed to kernels by value.
unsafe impl DeviceRepr for super::graph::Broadcast {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::graph::Permute {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::graph::MatMul {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::graph::Conv2d {}

struct GraphFns {
    binary: CudaFunction,
    unary: CudaFunction,
    reduce: CudaFunction,
    rms_norm: CudaFunction,
    softmax: CudaFunction,
    permute: CudaFunction,
    gather: CudaFunction,
    concat: CudaFunction,
    matmul: CudaFunction,
    conv: CudaFunction,
}

/// Per-step device data prepared once.
enum StepData {
    None,
    Indices(CudaSlice<i32>),
    Int8 {
        w: CudaSlice<i8>,
        scales: CudaSlice<f32>,
        q: CudaSlice<i8>,
    },
}

/// A lowered graph ([`super::graph::Plan`]) resident on the GPU: every buffer allocated and
/// every constant uploaded when it is built; [`GraphExec::run`] only launches kernels (and, for
/// `Step::Host` nodes, copies through the host).
pub struct GraphExec {
    plan: super::graph::Plan,
    bufs: Vec<CudaSlice<f32>>,
    data: Vec<StepData>,
    fns: GraphFns,
    kernels: Kernels,
    int8: Int8Kernel,
    stream: Arc<CudaStream>,
}

impl GraphExec {
    /// Allocate and upload `plan` on `gpu`.
    /// Refuses a plan with host steps: those would copy through the host and allocate every
    /// frame, which the GPU path does not do.
    pub fn new(gpu: &mut Gpu, plan: super::graph::Plan) -> Result<Self, GpuError> {
        use super::graph::Step;
        if !plan.host_nodes.is_empty() {
            return Err(GpuError::Unsupported(format!(
                "{} graph nodes have no GPU kernel: {:?}",
                plan.host_nodes.len(),
                plan.host_nodes
            )));
        }
        let f = |gpu: &mut Gpu, name: &str| gpu.function("graph.cu", name);
        let fns = GraphFns {
            binary: f(gpu, "ef_binary")?,
            unary: f(gpu, "ef_unary")?,
            reduce: f(gpu, "ef_reduce")?,
            rms_norm: f(gpu, "ef_rms_norm")?,
            softmax: f(gpu, "ef_softmax")?,
            permute: f(gpu, "ef_permute")?,
            gather: f(gpu, "ef_gather")?,
            concat: f(gpu, "ef_concat_part")?,
            matmul: f(gpu, "ef_matmul")?,
            conv: f(gpu, "ef_conv2d")?,
        };
        let kernels = Kernels::load(gpu)?;
        let int8 = if kernels.has_mma() {
            Int8Kernel::Mma
        } else {
            Int8Kernel::Dp4a
        };
        let mut bufs = Vec::with_capacity(plan.buffers.len());
        for b in &plan.buffers {
            bufs.push(match &b.init {
                Some(d) => gpu.upload(d)?,
                None => gpu.zeros::<f32>(b.len())?,
            });
        }
        let mut data = Vec::with_capacity(plan.steps.len());
        for s in &plan.steps {
            data.push(match s {
                Step::Gather { indices, .. } => StepData::Indices(gpu.upload(indices)?),
                Step::Int8Linear { m, weights, .. } => StepData::Int8 {
                    w: gpu.upload(&weights.q)?,
                    scales: gpu.upload(&weights.scales)?,
                    q: gpu.zeros::<i8>(m * weights.kp)?,
                },
                _ => StepData::None,
            });
        }
        Ok(Self {
            plan,
            bufs,
            data,
            fns,
            kernels,
            int8,
            stream: gpu.stream.clone(),
        })
    }

    /// The plan.
    pub fn plan(&self) -> &super::graph::Plan {
        &self.plan
    }

    /// Output `i` of the model.
    pub fn output(&self, i: usize) -> &CudaSlice<f32> {
        &self.bufs[self.plan.outputs[i]]
    }

    /// Copy `src` (device) into the input buffer.
    pub fn set_input_from(&mut self, src: &CudaSlice<f32>) -> Result<(), GpuError> {
        let i = self.plan.input;
        check_len("graph input", src.len(), self.bufs[i].len())?;
        let n = self.bufs[i].len();
        self.stream
            .memcpy_dtod(&src.slice(..n), &mut self.bufs[i])
            .map_err(driver_err("copying the model input"))
    }

    /// Launch every step on the stream (asynchronous). No host or device allocation.
    pub fn run(&mut self) -> Result<(), GpuError> {
        /// Puts the steps back even if a step panics.
        struct Taken<'a> {
            exec: &'a mut GraphExec,
            steps: Vec<super::graph::Step>,
            data: Vec<StepData>,
        }
        impl Drop for Taken<'_> {
            fn drop(&mut self) {
                self.exec.plan.steps = std::mem::take(&mut self.steps);
                self.exec.data = std::mem::take(&mut self.data);
            }
        }
        let steps = std::mem::take(&mut self.plan.steps);
        let data = std::mem::take(&mut self.data);
        let mut t = Taken {
            exec: self,
            steps,
            data,
        };
        for i in 0..t.steps.len() {
            let (steps, data) = (&t.steps, &mut t.data);
            t.exec.step(&steps[i], &mut data[i])?;
        }
        Ok(())
    }

    fn step(&mut self, step: &super::graph::Step, data: &mut StepData) -> Result<(), GpuError> {
        use super::graph::Step;
        // A step producing no element launches nothing (a zero grid is a launch error).
        let out_len = |o: usize| self.plan.buffers[o].len();
        let empty = match step {
            Step::Binary { out, .. }
            | Step::Unary { out, .. }
            | Step::Reduce { out, .. }
            | Step::RmsNorm { out, .. }
            | Step::Softmax { out, .. }
            | Step::Permute { out, .. }
            | Step::Gather { out, .. }
            | Step::MatMul { out, .. }
            | Step::Conv { out, .. }
            | Step::Int8Linear { out, .. } => out_len(*out) == 0,
            Step::ConcatPart { dims, .. } => dims.iter().product::<usize>() == 0,
            Step::Host { .. } => false,
        };
        if empty {
            return Ok(());
        }
        let Self {
            plan,
            bufs,
            fns,
            kernels,
            int8,
            stream,
            ..
        } = self;
        let (plan, fns, kernels, stream): (&super::graph::Plan, &GraphFns, &Kernels, &CudaStream) =
            (plan, fns, kernels, stream);
        let launch1d = |n: usize| LaunchConfig::for_num_elems(n as u32);
        let rows = |n: usize| LaunchConfig {
            grid_dim: (n.max(1) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        match step {
            &Step::Binary {
                op,
                a,
                b,
                out,
                shape,
            } => {
                let n = plan.buffers[out].len() as i32;
                let opc = op as i32;
                let (ins, y) = io(bufs, [a, b, 0], 2, out);
                let mut l = Launch::new(stream, &fns.binary);
                l.val(&opc)
                    .dev(ins[0])
                    .dev(ins[1])
                    .dev(y)
                    .val(&n)
                    .val(&shape);
                // SAFETY: matches ef_binary; broadcast strides were computed from the buffers'
                // shapes, so every index is inside its buffer; n = output length.
                launched(unsafe { l.launch(launch1d(n as usize)) }, "ef_binary")
            }
            &Step::Unary { op, x, out } => {
                let n = plan.buffers[out].len() as i32;
                let opc = op as i32;
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.unary);
                l.val(&opc).dev(ins[0]).dev(y).val(&n);
                // SAFETY: matches ef_unary; input and output hold n values.
                launched(unsafe { l.launch(launch1d(n as usize)) }, "ef_unary")
            }
            &Step::Reduce { op, x, out, dims } => {
                let [o, len, inner] = dims.map(|v| v as i32);
                let opc = op as i32;
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.reduce);
                l.val(&opc).dev(ins[0]).dev(y).val(&o).val(&len).val(&inner);
                // SAFETY: matches ef_reduce; one block of 128 threads per output row.
                launched(unsafe { l.launch(rows(dims[0] * dims[2])) }, "ef_reduce")
            }
            &Step::RmsNorm { x, out, dims, eps } => {
                let [o, len, inner] = dims.map(|v| v as i32);
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.rms_norm);
                l.dev(ins[0]).dev(y).val(&o).val(&len).val(&inner).val(&eps);
                // SAFETY: matches ef_rms_norm; one block per row.
                launched(unsafe { l.launch(rows(dims[0] * dims[2])) }, "ef_rms_norm")
            }
            &Step::Softmax { x, out, dims } => {
                let [o, len, inner] = dims.map(|v| v as i32);
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.softmax);
                l.dev(ins[0]).dev(y).val(&o).val(&len).val(&inner);
                // SAFETY: matches ef_softmax; one block per row.
                launched(unsafe { l.launch(rows(dims[0] * dims[2])) }, "ef_softmax")
            }
            &Step::Permute { x, out, shape } => {
                let n = plan.buffers[out].len() as i32;
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.permute);
                l.dev(ins[0]).dev(y).val(&n).val(&shape);
                // SAFETY: matches ef_permute; source strides come from the input's shape.
                launched(unsafe { l.launch(launch1d(n as usize)) }, "ef_permute")
            }
            Step::Gather {
                x,
                out,
                dims,
                indices,
            } => {
                let (x, out, dims) = (*x, *out, *dims);
                let [o, len, inner] = dims.map(|v| v as i32);
                let count = indices.len() as i32;
                let n = (dims[0] * indices.len() * dims[2]) as u32;
                let StepData::Indices(idx) = data else {
                    return Err(GpuError::Unsupported("gather indices missing".into()));
                };
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.gather);
                l.dev(ins[0])
                    .dev(y)
                    .dev(&*idx)
                    .val(&o)
                    .val(&len)
                    .val(&inner)
                    .val(&count);
                // SAFETY: matches ef_gather; indices were checked to be < len when lowered.
                launched(
                    unsafe { l.launch(LaunchConfig::for_num_elems(n)) },
                    "ef_gather",
                )
            }
            &Step::ConcatPart {
                x,
                out,
                dims,
                total,
                offset,
            } => {
                let [o, len, inner] = dims.map(|v| v as i32);
                let (t, off) = (total as i32, offset as i32);
                let n = dims.iter().product::<usize>();
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                let mut l = Launch::new(stream, &fns.concat);
                l.dev(ins[0])
                    .dev(y)
                    .val(&o)
                    .val(&len)
                    .val(&inner)
                    .val(&t)
                    .val(&off);
                // SAFETY: matches ef_concat_part; offset + len <= total by construction.
                launched(unsafe { l.launch(launch1d(n)) }, "ef_concat_part")
            }
            &Step::MatMul { a, b, out, shape } => {
                let s = shape;
                // A linear layer (x [m,k] · W[n,k]ᵀ) goes to the tiled linear kernel.
                let linear = s.is_linear();
                let (ins, y) = io(bufs, [a, b, 0], 2, out);
                if linear {
                    return kernels.linear_f32(
                        ins[0],
                        ins[1],
                        None,
                        y,
                        (s.m as usize, s.n as usize, s.k as usize),
                        Activation::None,
                    );
                }
                let cfg = LaunchConfig {
                    grid_dim: (
                        blocks(s.n as usize, 16),
                        blocks(s.m as usize, 16),
                        (s.batch[0] * s.batch[1]) as u32,
                    ),
                    block_dim: (16, 16, 1),
                    shared_mem_bytes: 0,
                };
                let mut l = Launch::new(stream, &fns.matmul);
                l.dev(ins[0]).dev(ins[1]).dev(y).val(&s);
                // SAFETY: matches ef_matmul; strides come from the operands' shapes.
                launched(unsafe { l.launch(cfg) }, "ef_matmul")
            }
            &Step::Conv {
                x,
                w,
                bias,
                out,
                shape,
            } => {
                let n = plan.buffers[out].len();
                let null = 0u64;
                let (ins, y) = io(
                    bufs,
                    [x, w, bias.unwrap_or(x)],
                    2 + bias.is_some() as usize,
                    out,
                );
                let mut l = Launch::new(stream, &fns.conv);
                l.dev(ins[0]).dev(ins[1]);
                match bias {
                    Some(_) => l.dev(ins[2]),
                    None => l.val(&null),
                };
                l.dev(y).val(&shape);
                // SAFETY: matches ef_conv2d; geometry from the node's facts; padding checked.
                launched(unsafe { l.launch(launch1d(n)) }, "ef_conv2d")
            }
            Step::Int8Linear {
                x,
                out,
                m,
                weights,
                act_scale,
            } => {
                let (x, out, m, act_scale) = (*x, *out, *m, *act_scale);
                let which = *int8;
                let StepData::Int8 { w, scales, q } = data else {
                    return Err(GpuError::Unsupported("int8 weights missing".into()));
                };
                let (ins, y) = io(bufs, [x, 0, 0], 1, out);
                kernels.quantize_i8(ins[0], q, (m, weights.k, weights.kp), act_scale)?;
                kernels.linear_i8(
                    which,
                    q,
                    w,
                    scales,
                    act_scale,
                    None,
                    y,
                    (m, weights.n, weights.kp),
                    Activation::None,
                )
            }
            // GraphExec::new refuses plans with host steps.
            Step::Host { node, .. } => Err(GpuError::Unsupported(format!(
                "graph node `{}` has no GPU kernel",
                node.name
            ))),
        }
    }
}

/// Split-borrow up to three input buffers and one output buffer (outputs are fresh buffers,
/// never an input of their own step).
fn io(
    bufs: &mut [CudaSlice<f32>],
    ins: [usize; 3],
    n: usize,
    out: usize,
) -> ([&CudaSlice<f32>; 3], &mut CudaSlice<f32>) {
    let (left, right) = bufs.split_at_mut(out);
    let (o, rest) = right.split_first_mut().expect("output buffer");
    let pick = |i: usize| -> &CudaSlice<f32> {
        if i < out {
            &left[i]
        } else {
            &rest[i - out - 1]
        }
    };
    let first = pick(ins[0]);
    let get = |j: usize| if j < n { pick(ins[j]) } else { first };
    ([first, get(1), get(2)], o)
}
