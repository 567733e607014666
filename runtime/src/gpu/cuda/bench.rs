//! `edgefuse kernels --bench`: every kernel timed with CUDA events on the ViT-B/32 and BLIP-2
//! Q-Former shapes at batch 1, against the device's peaks.

use cudarc::driver::sys as dsys;

use super::device::{driver_err, Gpu};
use super::ops::{Int8Kernel, Kernels};
use super::preprocess::GpuPreprocess;
use super::unwired::UnwiredKernels;
use crate::frame::{Frame, PixelFormat};
use crate::gpu::reference::Activation;
use crate::gpu::{GpuError, KernelTiming};

/// Median microseconds per call of `f` (`reps` calls between two events, 7 batches).
fn time(
    gpu: &Gpu,
    reps: usize,
    mut f: impl FnMut() -> Result<(), GpuError>,
) -> Result<f64, GpuError> {
    let ev = || {
        gpu.ctx
            .new_event(Some(dsys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver_err("creating an event"))
    };
    let (a, b) = (ev()?, ev()?);
    f()?; // warm-up (and module load)
    let mut samples = Vec::new();
    for _ in 0..7 {
        a.record(gpu.stream()).map_err(driver_err("event"))?;
        for _ in 0..reps {
            f()?;
        }
        b.record(gpu.stream()).map_err(driver_err("event"))?;
        b.synchronize().map_err(driver_err("event"))?;
        samples.push(a.elapsed_ms(&b).map_err(driver_err("event"))? as f64 * 1e3 / reps as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[3])
}

/// A `w × h` frame in `format` whose bytes vary (a diagonal ramp): the preprocessing kernel's
/// time does not depend on the picture, only on the geometry and format.
fn test_pattern(w: u32, h: u32, format: PixelFormat) -> Frame {
    let len = format.frame_len(w, h).unwrap_or(0);
    let mut f = Frame::with_capacity(len);
    f.reshape(w, h, format);
    for (i, b) in f.data.iter_mut().enumerate() {
        *b = (i % w as usize + i / w as usize) as u8;
    }
    f
}

/// Time every kernel on the ViT-B/32 + BLIP-2 Q-Former shapes at batch 1.
pub fn bench_kernels(gpu: &mut Gpu) -> Result<Vec<KernelTiming>, GpuError> {
    let k = Kernels::load(gpu)?;
    let u = UnwiredKernels::load(gpu)?;
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
        let frame = test_pattern(w, h, fmt);
        pre.launch(&frame, false)?;
        // The kernel alone (the frame is already in device-visible memory).
        let us = time(gpu, reps, || pre.relaunch(false))?;
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
        let us = time(gpu, reps, || {
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
            let us = time(gpu, reps, || {
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
    let us = time(gpu, reps, || {
        u.attention(
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
    let us = time(gpu, reps, || {
        u.layer_norm(&x, &g1, &b0, &mut y, (50, 768), 1e-5)
    })?;
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
    let us = time(gpu, reps, || {
        u.head_logits(
            &e,
            Some((&qq, nq)),
            &t,
            (labels, dim),
            (100.0, 100.0),
            &mut c,
            &mut qf,
        )?;
        u.fuse_topk(&c, &qf, 1, (0.5, 0.5), &mut p, &mut tmp, (&mut ti, &mut tp))
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
