//! The NVIDIA GPU path: our own CUDA kernels (compiled at run time by NVRTC, cached on disk),
//! the lowered model graphs, device selection, and the CUDA [`Backend`] the pipeline hands frames
//! to (with the CPU backend as its fallback).
//!
//! * [`KERNELS`]: the `.cu` sources, each compiled as `common.cuh` + the file, with no CUDA
//!   headers, so a Jetson needs only the driver and `libnvrtc` at run time.
//! * the plan ([`crate::plan`]): the encoder and Q-Former lowered to one kernel per step, the
//!   same steps the CPU executes.
//! * [`reference`](mod@reference): a CPU implementation of every kernel with its stated
//!   tolerance; the GPU parity tests compare against these (and against the production CPU
//!   preprocessor and fusion head).
//! * [`cache`]: compiled cubins on disk keyed by source hash, `sm` and driver version.
//! * [`DeviceChoice`] / [`select`]: `--device` ([`DEVICE_HELP`]) and the backend it builds.
//! * `cuda` (cargo feature `cuda-jp5`, `cuda-jp6` or `cuda-jp7`, one of them): cudarc with
//!   dynamic loading; the binary builds without a CUDA toolkit and starts on machines without
//!   one. Without a CUDA feature every entry point here returns [`GpuError::NotBuilt`].

use crate::backend::Backend;

pub mod cache;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod reference;

/// One kernel source file.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File name under `runtime/src/gpu/kernels/`.
    pub file: &'static str,
    /// The file's text (without the shared prelude).
    pub text: &'static str,
    /// Its `extern "C"` entry points.
    pub entry_points: &'static [&'static str],
}

/// Helpers prepended to every kernel file.
pub const PRELUDE: &str = include_str!("kernels/common.cuh");

/// Every kernel edgefuse compiles (`edgefuse kernels`). A frame uses `preprocess.cu`, `graph.cu`
/// and `linear.cu`; `attention.cu`, `norm.cu` and `fusion.cu` are loaded only by the kernel
/// benchmark and the parity tests (`cuda::UnwiredKernels`).
pub const KERNELS: &[KernelSource] = &[
    KernelSource {
        file: "preprocess.cu",
        text: include_str!("kernels/preprocess.cu"),
        entry_points: &["ef_preprocess_f32", "ef_preprocess_f16"],
    },
    KernelSource {
        file: "linear.cu",
        text: include_str!("kernels/linear.cu"),
        entry_points: &[
            "ef_linear_f32",
            "ef_quantize_i8",
            "ef_linear_i8_dp4a",
            "ef_linear_i8_mma",
        ],
    },
    KernelSource {
        file: "attention.cu",
        text: include_str!("kernels/attention.cu"),
        entry_points: &["ef_attention_f32"],
    },
    KernelSource {
        file: "norm.cu",
        text: include_str!("kernels/norm.cu"),
        entry_points: &["ef_layer_norm", "ef_add", "ef_activation", "ef_f32_to_f16"],
    },
    KernelSource {
        file: "graph.cu",
        text: include_str!("kernels/graph.cu"),
        entry_points: &[
            "ef_binary",
            "ef_unary",
            "ef_reduce",
            "ef_rms_norm",
            "ef_softmax",
            "ef_permute",
            "ef_gather",
            "ef_concat_part",
            "ef_matmul",
            "ef_conv2d",
        ],
    },
    KernelSource {
        file: "fusion.cu",
        text: include_str!("kernels/fusion.cu"),
        entry_points: &["ef_head_logits", "ef_fuse_topk"],
    },
];

impl KernelSource {
    /// The text NVRTC compiles: the prelude, then the file.
    pub fn full_source(&self) -> String {
        format!(
            "// ---- common.cuh ----\n{PRELUDE}\n// ---- {} ----\n{}",
            self.file, self.text
        )
    }
}

/// Look a kernel file up by name.
pub fn kernel(file: &str) -> Option<&'static KernelSource> {
    KERNELS.iter().find(|k| k.file == file)
}

/// Oldest GPU the kernels support: sm_53 (Jetson Nano). dp4a needs sm_61 (a byte-wise path
/// replaces it below), the int8 tensor-core kernel sm_80.
pub const MIN_SM: u32 = 53;
/// Smallest `sm` for [`KernelSource`] `ef_linear_i8_mma` (mma.sync m16n8k32 int8).
pub const MMA_SM: u32 = 80;

/// Where the models run: `--device` and the configuration file's `device` key, both parsed by
/// [`FromStr`](std::str::FromStr) (case-insensitive; `gpu` is an alias of `cuda`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// `auto`: the GPU as with `cuda` when one works, else the CPU after one warning that says
    /// why.
    #[default]
    Auto,
    /// `cpu`: the CPU only (tract).
    Cpu,
    /// `cuda`: the GPU or fail; the models on our kernels, or on tract-cuda when our graph
    /// executor cannot run the bundle.
    Cuda,
    /// `cuda:ours`: the GPU or fail, the models on our kernels only.
    CudaOurs,
    /// `cuda:tract`: the GPU or fail, the models on tract-cuda only (not in `cuda-jp5` builds).
    CudaTract,
}

/// One line on `--device`'s values, for `--help` and `edgefuse info`.
pub const DEVICE_HELP: &str = "Where the models run: auto (the GPU when one works, else the CPU), \
cpu, cuda (the GPU or fail: our kernels, tract-cuda where they cannot run the bundle), \
cuda:ours (our kernels only), cuda:tract (tract-cuda only)";

impl DeviceChoice {
    /// Every choice, in the order [`DEVICE_HELP`] lists them.
    pub const ALL: [DeviceChoice; 5] = [
        Self::Auto,
        Self::Cpu,
        Self::Cuda,
        Self::CudaOurs,
        Self::CudaTract,
    ];

    /// The name `--device` takes (`cuda:ours`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::CudaOurs => "cuda:ours",
            Self::CudaTract => "cuda:tract",
        }
    }

    /// Which engine runs the models on the GPU; `None` for the CPU.
    pub fn gpu_models(self) -> Option<GpuModels> {
        match self {
            Self::Cpu => None,
            Self::Auto | Self::Cuda => Some(GpuModels::OursElseTract),
            Self::CudaOurs => Some(GpuModels::Ours),
            Self::CudaTract => Some(GpuModels::Tract),
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        let name = match lower.split_once(':') {
            Some(("gpu", engine)) => format!("cuda:{engine}"),
            _ if lower == "gpu" => "cuda".to_string(),
            _ => lower,
        };
        Self::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                format!("unknown device `{s}`: use auto, cpu or cuda (cuda:ours, cuda:tract)")
            })
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Which engine runs the encoder and the Q-Former on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuModels {
    /// Our kernels over the lowered graphs ([`crate::plan`]); tract-cuda when the bundle has a node
    /// our executor cannot run.
    OursElseTract,
    /// Our kernels only.
    Ours,
    /// tract-cuda only.
    Tract,
}

/// Why the GPU cannot be used (or stopped working).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GpuError {
    /// This binary has no CUDA support compiled in.
    #[error("this edgefuse was built without CUDA support; rebuild with `--features cuda-jp6` (JetPack 6, CUDA 12), `cuda-jp5` (JetPack 5, CUDA 11.4) or `cuda-jp7` (CUDA 13), or use --device cpu")]
    NotBuilt,
    /// `libcuda.so` could not be loaded.
    #[error("no NVIDIA driver: libcuda.so could not be loaded (install the driver / JetPack, or use --device cpu)")]
    NoDriver,
    /// `libnvrtc.so` could not be loaded.
    #[error("no NVRTC: libnvrtc.so could not be loaded; install the CUDA runtime compiler (Debian/JetPack package cuda-nvrtc-*), or use --device cpu")]
    NoNvrtc,
    /// The driver loaded but reports no device.
    #[error("the NVIDIA driver reports no CUDA device")]
    NoDevice,
    /// The driver is older than the CUDA version this binary was built for.
    #[error("the NVIDIA driver supports CUDA {have}, this edgefuse was built for CUDA {need}; update the driver (JetPack) or use the package for your JetPack")]
    DriverTooOld {
        /// Driver's CUDA version, e.g. `11.4`.
        have: String,
        /// Needed, e.g. `12.6`.
        need: String,
    },
    /// The GPU is older than the kernels support.
    #[error("GPU {name} is sm_{have}; edgefuse's kernels need sm_{need} or newer")]
    UnsupportedSm {
        /// Device name.
        name: String,
        /// Its compute capability as `major*10+minor`.
        have: u32,
        /// The minimum.
        need: u32,
    },
    /// NVRTC rejected a kernel.
    #[error("kernel {kernel} failed to compile for {arch}: {log} (a bug or an NVRTC too old for the kernels: please report it with this log; --device cpu runs without the GPU)")]
    KernelCompile {
        /// Kernel file.
        kernel: String,
        /// Target, e.g. `sm_87`.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// Device memory ran out while building the pipeline.
    #[error("out of GPU memory while {what}: stop other GPU programs (nvidia-smi / tegrastats show them), use a smaller bundle, or --device cpu")]
    OutOfMemory {
        /// What was being allocated.
        what: String,
    },
    /// A driver call failed (launch error, lost device, ECC error, …).
    #[error("CUDA error in {what}: {message} (check the GPU and driver with nvidia-smi / tegrastats and the kernel log; --device cpu runs without it)")]
    Driver {
        /// The operation.
        what: String,
        /// The driver's message.
        message: String,
    },
    /// The input does not fit the kernels (checked on the host before any launch), or the
    /// bundle's graph has no lowering.
    #[error("{0}")]
    Unsupported(String),
    /// Writing compiled kernels failed (`edgefuse kernels --ptx-dir`).
    #[error("cannot {action} {}: {message}", path.display())]
    Io {
        /// `create` or `write`.
        action: &'static str,
        /// The directory or file.
        path: std::path::PathBuf,
        /// The system's message.
        message: String,
    },
}

impl From<crate::plan::PlanError> for GpuError {
    fn from(e: crate::plan::PlanError) -> Self {
        GpuError::Unsupported(e.to_string())
    }
}

/// What the CUDA build variant supports, for `edgefuse info`.
pub fn build_variant() -> &'static str {
    if cfg!(feature = "cuda-jp7") {
        "cuda-jp7 (CUDA 13.0 bindings, our kernels + tract-cuda)"
    } else if cfg!(feature = "cuda-jp6") {
        "cuda-jp6 (CUDA 12.6 bindings, our kernels + tract-cuda)"
    } else if cfg!(feature = "cuda-jp5") {
        "cuda-jp5 (CUDA 11.4 bindings, our kernels)"
    } else {
        "cpu only (no cuda feature)"
    }
}

/// Build the GPU backend for `choice`: `Ok(None)` means run on the CPU. `auto` returns
/// `Ok(None)` after one `warn!` naming the reason when the GPU cannot be used; `cuda`,
/// `cuda:ours` and `cuda:tract` return the error.
pub fn select(
    choice: DeviceChoice,
    bundle: &edgefuse_models::Bundle,
) -> Result<Option<Box<dyn Backend>>, GpuError> {
    let Some(models) = choice.gpu_models() else {
        return Ok(None);
    };
    match (choice, build(bundle, models)) {
        (_, Ok(backend)) => {
            log::info!("inference on {}", backend.describe());
            Ok(Some(backend))
        }
        (DeviceChoice::Auto, Err(GpuError::NotBuilt)) => {
            log::info!("this build has no CUDA support; inference on the CPU");
            Ok(None)
        }
        (DeviceChoice::Auto, Err(e)) => {
            log::warn!("GPU not used: {e}; inference on the CPU");
            Ok(None)
        }
        (_, Err(e)) => Err(e),
    }
}

/// One kernel file compiled for one architecture by `edgefuse kernels`.
#[derive(Debug, Clone)]
pub struct KernelBuild {
    /// Kernel file.
    pub file: &'static str,
    /// Architecture, `major*10+minor`.
    pub sm: u32,
    /// Bytes of PTX (`compute_XY`).
    pub ptx_bytes: usize,
    /// Bytes of cubin (`sm_XY`, what the runtime loads).
    pub cubin_bytes: usize,
    /// Where the PTX was written, if asked.
    pub ptx_path: Option<std::path::PathBuf>,
}

/// Compile every kernel file with NVRTC for every `sm` in `archs`, to PTX and to a cubin; write
/// the PTX under `ptx_dir` as `<file>.sm_XY.ptx`. Any NVRTC warning is an error: the kernels
/// must compile clean. Needs `libnvrtc`, not a GPU.
#[cfg(feature = "cuda")]
pub fn build_all(
    archs: &[u32],
    ptx_dir: Option<&std::path::Path>,
) -> Result<Vec<KernelBuild>, GpuError> {
    use cuda::{compile, Target};
    let mut out = Vec::new();
    if let Some(d) = ptx_dir {
        std::fs::create_dir_all(d).map_err(|e| GpuError::Io {
            action: "create",
            path: d.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    for k in KERNELS {
        for &sm in archs {
            let mut sizes = [0usize; 2];
            let mut ptx = Vec::new();
            for (i, target) in [Target::Ptx(sm), Target::Cubin(sm)].into_iter().enumerate() {
                let c = compile(k, target)?;
                if !c.log.is_empty() {
                    return Err(GpuError::KernelCompile {
                        kernel: k.file.to_string(),
                        arch: target.arch(),
                        log: format!("warnings (the kernels must compile clean): {}", c.log),
                    });
                }
                sizes[i] = c.binary.len();
                if i == 0 {
                    ptx = c.binary;
                }
            }
            let ptx_path = match ptx_dir {
                Some(d) => {
                    let p = d.join(format!("{}.sm_{sm}.ptx", k.file.trim_end_matches(".cu")));
                    std::fs::write(&p, &ptx).map_err(|e| GpuError::Io {
                        action: "write",
                        path: p.clone(),
                        message: e.to_string(),
                    })?;
                    Some(p)
                }
                None => None,
            };
            out.push(KernelBuild {
                file: k.file,
                sm,
                ptx_bytes: sizes[0],
                cubin_bytes: sizes[1],
                ptx_path,
            });
        }
    }
    Ok(out)
}

/// Without the `cuda` feature: [`GpuError::NotBuilt`].
#[cfg(not(feature = "cuda"))]
pub fn build_all(
    _archs: &[u32],
    _ptx_dir: Option<&std::path::Path>,
) -> Result<Vec<KernelBuild>, GpuError> {
    Err(GpuError::NotBuilt)
}

/// One kernel's measured speed (`edgefuse kernels --bench`).
#[derive(Debug, Clone)]
pub struct KernelTiming {
    /// Kernel and shape.
    pub name: String,
    /// Median time per launch, microseconds (CUDA events around a batch of launches).
    pub median_us: f64,
    /// Achieved rate in `unit`.
    pub rate: f64,
    /// `GB/s`, `GFLOP/s` or `TOPS`.
    pub unit: &'static str,
    /// The device's peak in the same unit, when known.
    pub peak: Option<f64>,
}

/// Open the GPU and time every kernel (`edgefuse kernels --bench`): the device description,
/// its peak DRAM bandwidth and int8 peak, and the timings.
pub fn bench_kernels() -> Result<(String, Vec<KernelTiming>), GpuError> {
    #[cfg(feature = "cuda")]
    {
        let mut g = cuda::Gpu::open(0)?;
        let t = cuda::bench_kernels(&mut g)?;
        Ok((g.describe(), t))
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(GpuError::NotBuilt)
    }
}

/// What `edgefuse info` says about the GPU: the device, or why none is used.
pub fn probe() -> Result<String, GpuError> {
    #[cfg(feature = "cuda")]
    {
        cuda::Gpu::open(0).map(|g| g.describe())
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(GpuError::NotBuilt)
    }
}

#[cfg(feature = "cuda")]
fn build(
    bundle: &edgefuse_models::Bundle,
    models: GpuModels,
) -> Result<Box<dyn Backend>, GpuError> {
    Ok(Box::new(cuda::CudaBackend::new(bundle, models)?))
}

#[cfg(not(feature = "cuda"))]
fn build(
    _bundle: &edgefuse_models::Bundle,
    _models: GpuModels,
) -> Result<Box<dyn Backend>, GpuError> {
    Err(GpuError::NotBuilt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_is_defined_in_its_file() {
        for k in KERNELS {
            for e in k.entry_points {
                assert!(
                    k.text.contains(&format!("void {e}(")) || k.text.contains(&format!("\n{e}(")),
                    "{} does not define {e}",
                    k.file
                );
            }
            let defined = k.text.matches("extern \"C\" __global__").count();
            assert_eq!(
                defined,
                k.entry_points.len(),
                "{}: entry point list",
                k.file
            );
        }
    }

    #[test]
    fn kernels_need_no_cuda_headers() {
        for src in KERNELS.iter().map(|k| k.text).chain([PRELUDE]) {
            assert!(
                !src.contains("#include"),
                "kernels must compile with NVRTC alone"
            );
        }
    }

    #[test]
    fn device_choice_parses_and_prints_its_names() {
        let p = |s: &str| s.parse::<DeviceChoice>();
        assert_eq!(p("AUTO"), Ok(DeviceChoice::Auto));
        assert_eq!(p("cpu"), Ok(DeviceChoice::Cpu));
        assert_eq!(p("gpu"), Ok(DeviceChoice::Cuda));
        assert_eq!(p("Cuda:Ours"), Ok(DeviceChoice::CudaOurs));
        assert_eq!(p("gpu:tract"), Ok(DeviceChoice::CudaTract));
        for c in DeviceChoice::ALL {
            assert_eq!(p(&c.to_string()), Ok(c));
            assert!(
                DEVICE_HELP.contains(c.name()),
                "{c} missing from DEVICE_HELP"
            );
        }
        for bad in ["tpu", "cuda:", "cuda:cpu", "cpu:ours", ""] {
            assert!(p(bad).unwrap_err().contains("auto, cpu or cuda"), "{bad}");
        }
    }

    #[test]
    fn device_choice_deserializes_through_the_same_parser() {
        use serde::de::{value::Error, Deserialize, IntoDeserializer};
        let de = |v: &str| {
            DeviceChoice::deserialize(
                v.into_deserializer() as serde::de::value::StrDeserializer<'_, Error>
            )
        };
        assert_eq!(de("GPU:ours").unwrap(), DeviceChoice::CudaOurs);
        assert_eq!(de("cuda:tract").unwrap(), DeviceChoice::CudaTract);
        let e = de("tpu").unwrap_err().to_string();
        assert!(
            e.contains("unknown device `tpu`: use auto, cpu or cuda"),
            "{e}"
        );
    }
}
