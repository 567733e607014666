//! `edgefuse kernels`: compile every CUDA kernel with NVRTC for given architectures (no GPU
//! needed), or time them on this machine's GPU.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use edgefuse_runtime::gpu;

use crate::output::Out;
use crate::UsageError;

#[derive(Args, Debug)]
pub struct KernelsArgs {
    /// Target architectures, comma separated [default: the Jetsons' and the H100/H200's].
    #[arg(long, value_delimiter = ',', default_value = "sm_53,sm_72,sm_87,sm_90")]
    arch: Vec<String>,
    /// Write each kernel file's PTX as DIR/<file>.<arch>.ptx (for ptxas).
    #[arg(long, value_name = "DIR")]
    ptx_dir: Option<PathBuf>,
    /// Instead of compiling for --arch: time every kernel on this machine's GPU (ViT-B/32 and
    /// BLIP-2 Q-Former shapes at batch 1) against the device's peaks.
    #[arg(long)]
    bench: bool,
}

/// `sm_87`, `compute_87` or `87` → 87, within the supported range.
fn parse_arch(s: &str) -> Result<u32, UsageError> {
    let t = s.trim();
    t.strip_prefix("sm_")
        .or_else(|| t.strip_prefix("compute_"))
        .unwrap_or(t)
        .parse::<u32>()
        .ok()
        .filter(|v| (gpu::MIN_SM..200).contains(v))
        .ok_or_else(|| {
            UsageError(format!(
                "--arch `{s}`: expected sm_XY with XY between {} and 199, e.g. sm_87",
                gpu::MIN_SM
            ))
        })
}

pub fn kernels(a: KernelsArgs) -> Result<()> {
    let archs = a
        .arch
        .iter()
        .map(|s| parse_arch(s))
        .collect::<Result<Vec<u32>, _>>()?;
    let mut out = Out::lock();
    if a.bench {
        let (device, timings) = gpu::bench_kernels()?;
        writeln!(out, "{device}")?;
        for t in &timings {
            let peak = t
                .peak
                .map(|p| format!("  {:5.1}% of {p:.0} {}", 100.0 * t.rate / p, t.unit))
                .unwrap_or_default();
            writeln!(
                out,
                "{:<52} {:>9.2} us  {:>9.1} {}{peak}",
                t.name, t.median_us, t.rate, t.unit
            )?;
        }
        return Ok(out.finish()?);
    }
    let builds = gpu::build_all(&archs, a.ptx_dir.as_deref())?;
    for b in &builds {
        writeln!(
            out,
            "ok  {:<14} sm_{}  ptx {:>7} B  cubin {:>7} B{}",
            b.file,
            b.sm,
            b.ptx_bytes,
            b.cubin_bytes,
            b.ptx_path
                .as_ref()
                .map(|p| format!("  -> {}", p.display()))
                .unwrap_or_default()
        )?;
    }
    writeln!(
        out,
        "{} kernel files x {} architectures compiled clean with NVRTC",
        builds.len() / archs.len().max(1),
        archs.len()
    )?;
    Ok(out.finish()?)
}
