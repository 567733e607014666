//! Fused preprocessing on the GPU (`preprocess.cu`): the frame staged in pinned memory, one
//! kernel to the model's input tensor.

use std::sync::Arc;

use cudarc::driver::{
    sys as dsys, CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice,
};

use super::device::{driver_err, Gpu};
use super::launch::{blocks, check_exact, launched, Launch};
use crate::frame::{Frame, PixelFormat};
use crate::gpu::GpuError;
use crate::preprocess::Preprocessor;

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
    pub(super) out: CudaSlice<f32>,
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

    /// Read only this region of each frame (`None`: whole frames).
    pub fn set_roi(&mut self, roi: Option<crate::preprocess::Roi>) {
        self.taps.set_roi(roi);
        self.geometry = None;
    }

    fn prepare(&mut self, frame: &Frame) -> Result<(), GpuError> {
        let key = (frame.width, frame.height, frame.format);
        if self.geometry == Some(key) {
            return Ok(());
        }
        // Whatever fails below must not leave buffers of one geometry under another's key.
        self.geometry = None;
        let (tx, ty, wx, wy) = self
            .taps
            .filter_taps(frame.width, frame.height)
            .map_err(|e| GpuError::Unsupported(e.to_string()))?;
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
    pub(super) fn launch(&mut self, frame: &Frame, half: bool) -> Result<(), GpuError> {
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
    pub(super) fn relaunch(&mut self, half: bool) -> Result<(), GpuError> {
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
