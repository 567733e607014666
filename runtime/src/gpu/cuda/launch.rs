//! Kernel launches with the argument list on the stack, and the host-side argument checks.

use cudarc::driver::{
    result::DriverError, sys as dsys, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
};

use super::device::driver_err;
use crate::gpu::GpuError;

/// A kernel launch whose argument list lives on the stack: cudarc's launch builder allocates a
/// vector per launch, which would put heap allocations on the per-frame path.
pub(super) struct Launch<'a> {
    stream: &'a CudaStream,
    f: &'a CudaFunction,
    args: heapless::Vec<Arg, 24>,
}

#[derive(Clone, Copy)]
pub(super) enum Arg {
    /// A device pointer, passed by value.
    Dev(dsys::CUdeviceptr),
    /// A host value the kernel takes by value (scalar or #[repr(C)] struct).
    Host(*const std::ffi::c_void),
}

impl<'a> Launch<'a> {
    pub(super) fn new(stream: &'a CudaStream, f: &'a CudaFunction) -> Self {
        Self {
            stream,
            f,
            args: heapless::Vec::new(),
        }
    }

    pub(super) fn push(&mut self, a: Arg) -> &mut Self {
        // 24 is more than any kernel here takes (the largest, ef_preprocess_*, takes 20).
        assert!(self.args.push(a).is_ok(), "more than 24 kernel arguments");
        self
    }

    /// A device buffer.
    pub(super) fn dev<T>(&mut self, s: &CudaSlice<T>) -> &mut Self {
        use cudarc::driver::DevicePtr;
        let (p, _sync) = s.device_ptr(self.stream);
        self.push(Arg::Dev(p))
    }

    /// A value the kernel takes by value; it must outlive the launch.
    pub(super) fn val<T: DeviceRepr>(&mut self, v: &'a T) -> &mut Self {
        self.push(Arg::Host(v as *const T as *const std::ffi::c_void))
    }

    /// # Safety
    /// The arguments must match the kernel's parameter list in number, order and type, and every
    /// index the kernel computes from them must stay inside the buffers passed.
    pub(super) unsafe fn launch(&self, cfg: LaunchConfig) -> Result<(), DriverError> {
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
pub(super) fn launched(r: Result<(), DriverError>, kernel: &str) -> Result<(), GpuError> {
    r.map_err(|e| driver_err(&format!("launching {kernel}"))(e))
}

pub(super) fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

pub(super) fn check_exact(what: &str, have: usize, need: usize) -> Result<(), GpuError> {
    if have != need {
        return Err(GpuError::Unsupported(format!(
            "{what}: buffer holds {have} values, expected {need}"
        )));
    }
    Ok(())
}

pub(super) fn check_len(what: &str, have: usize, need: usize) -> Result<(), GpuError> {
    if have < need {
        return Err(GpuError::Unsupported(format!(
            "{what}: device buffer holds {have} values, the launch needs {need}"
        )));
    }
    Ok(())
}
