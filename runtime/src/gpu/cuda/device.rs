//! The device: opening it (driver, compute capability, NVRTC), loading kernel modules through
//! the cubin cache, device memory, and the device's peak figures.

use std::sync::Arc;

use cudarc::driver::{
    result::DriverError, sys as dsys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream,
    DeviceRepr, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::nvrtc::{compile, nvrtc_version, options, supported_archs, Target};
use crate::gpu::cache::{default_dir, CacheKey, KernelCache, Outcome};
use crate::gpu::{kernel, GpuError, MIN_SM};

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

pub(super) fn driver_err(what: &str) -> impl Fn(DriverError) -> GpuError + '_ {
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

/// An open GPU with a stream and the kernels loaded on demand.
pub struct Gpu {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
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
}
