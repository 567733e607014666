//! NVRTC: compile a kernel file to PTX or a cubin (no GPU needed), and what this NVRTC supports.

use std::ffi::CString;

use cudarc::nvrtc::{result as nres, sys as nsys};

use crate::gpu::{GpuError, KernelSource};

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
