//! The CUDA code (cargo feature `cuda-jp5`, `cuda-jp6` or `cuda-jp7`), one file per job: NVRTC
//! compilation ([`compile`]), the [`Gpu`] device and its memory, stack-allocated kernel launches, the linear-layer op wrappers ([`Kernels`]) and the ones no frame uses
//! ([`UnwiredKernels`]), [`GpuPreprocess`], the graph executor ([`GraphExec`]), the backend the
//! pipeline uses ([`CudaBackend`]) and the kernel benchmark.
//!
//! cudarc opens `libcuda`/`libnvrtc` at run time. Its calls panic when a library is missing, so
//! every entry point here checks presence first and returns a [`GpuError`](crate::gpu::GpuError) instead.

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

mod backend;
mod bench;
mod device;
mod exec;
mod launch;
mod nvrtc;
mod ops;
mod preprocess;
mod unwired;

pub use backend::CudaBackend;
pub use bench::bench_kernels;
pub use device::{Gpu, BUILT_FOR};
pub use exec::GraphExec;
pub use nvrtc::{
    compile, nvrtc_available, nvrtc_version, options, supported_archs, Compiled, Target,
};
pub use ops::{Int8Kernel, Kernels};
pub use preprocess::GpuPreprocess;
pub use unwired::UnwiredKernels;
