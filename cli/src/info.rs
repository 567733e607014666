//! `edgefuse info`: the bundle, the backends, the board's health and a camera's formats.

use std::path::Path;

use anyhow::Result;
use clap::Args;

use edgefuse_board::linux::{read_board, Health};
use edgefuse_runtime::gpu;

use crate::output::{Escaped, Out, StdoutError};
use crate::paths::{open_bundle, ModelArg};

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArg,
    /// A camera device to list the formats of, e.g. /dev/video0.
    #[arg(long, value_name = "DEVICE")]
    camera: Option<String>,
}

pub fn info(a: InfoArgs) -> Result<()> {
    let bundle = open_bundle(a.model.model.as_deref())?;
    let m = bundle.manifest();
    let mut out = Out::lock();
    writeln!(
        out,
        "bundle      {} {} ({})",
        Escaped(&m.name),
        Escaped(&m.version),
        bundle.dir().display()
    )?;
    if !m.description.is_empty() {
        writeln!(out, "            {}", Escaped(&m.description))?;
    }
    writeln!(
        out,
        "input       {}x{} {:?}, mean {:?}, std {:?}, {:?}",
        m.preprocess.image_size[0],
        m.preprocess.image_size[1],
        m.preprocess.resize,
        m.preprocess.mean,
        m.preprocess.std,
        m.preprocess.channel_order
    )?;
    writeln!(
        out,
        "encoder     {} → embedding {}",
        m.encoder.model.file, m.encoder.embedding_dim
    )?;
    match &m.qformer {
        Some(q) => writeln!(out, "q-former    {} ({} queries)", q.model.file, q.queries)?,
        None => writeln!(out, "q-former    none")?,
    }
    writeln!(out, "fusion      {:?}", m.fusion.method)?;
    if let Some(r) = &m.rerank {
        writeln!(
            out,
            "rerank      {} (image-text matching: re-scores the best {} labels, weight {})",
            r.model.file, r.top_k, r.weight
        )?;
    }
    writeln!(
        out,
        "labels      {}: {}",
        m.labels.len(),
        bundle.label_names().collect::<Vec<_>>().join(", ")
    )?;
    for (k, v) in &m.accuracy {
        writeln!(out, "accuracy    {k}: {:.2}%", v * 100.0)?;
    }
    match &m.quantization {
        Some(q) => writeln!(out,
            "precision   int8 linear layers ({} calibration, {} frames, {} kept in float; kernel {:?}), the rest float32",
            q.method,
            q.frames,
            q.skip.len(),
            edgefuse_models::quant::gemm::Kernel::best()
        )?,
        None => writeln!(out, "precision   float32")?,
    }
    writeln!(out, "backends    cpu: tract-onnx (available)")?;
    writeln!(out, "build       {}", gpu::build_variant())?;
    writeln!(out, "devices     {}", gpu::DEVICE_HELP)?;
    match gpu::probe() {
        Ok(d) => writeln!(out, "gpu         {d}")?,
        Err(e) => writeln!(out, "gpu         not used: {e}")?,
    }
    if !m.license.is_empty() {
        writeln!(out, "license     {}", m.license)?;
    }
    board_health(&mut out, Path::new("/"))?;
    if let Some(cam) = a.camera {
        camera_info(&mut out, &cam)?;
    }
    Ok(out.finish()?)
}

/// The board, its temperatures and power mode; a warning when it throttles.
fn board_health(out: &mut Out, root: &Path) -> Result<(), StdoutError> {
    match read_board(root) {
        Ok((b, model)) => writeln!(out, "board       {} ({}) {model}", b.title(), b.name())?,
        Err(_) => writeln!(
            out,
            "board       not a supported Jetson (GPIO pins need --board or line:CHIP:OFFSET)"
        )?,
    }
    let h = Health::read(root);
    if !h.zones.is_empty() {
        let temps: Vec<String> = h
            .zones
            .iter()
            .map(|z| format!("{} {:.1} °C", z.name, z.celsius))
            .collect();
        writeln!(out, "thermal     {}", temps.join(", "))?;
    }
    if let Some(m) = &h.power_mode {
        writeln!(out, "power mode  {m} (nvpmodel)")?;
    }
    for z in h.throttling() {
        let msg = format!(
            "{} is at {:.1} °C, at or above its {:.1} °C trip point: the SoC is throttling and inference slows down; improve cooling or pick a lower nvpmodel mode",
            z.name,
            z.celsius,
            z.throttle_at.unwrap_or(0.0)
        );
        log::warn!("{msg}");
        writeln!(out, "WARNING     {msg}")?;
    }
    Ok(())
}

#[cfg(feature = "v4l")]
fn camera_info(out: &mut Out, cam: &str) -> Result<()> {
    let formats = edgefuse_runtime::capture::v4l2::list_formats(cam)?;
    writeln!(out, "camera      {cam}")?;
    for f in formats {
        writeln!(out, "            {f}")?;
    }
    Ok(())
}

#[cfg(not(feature = "v4l"))]
fn camera_info(_out: &mut Out, cam: &str) -> Result<()> {
    Err(anyhow::anyhow!(
        "cannot list {cam}: this edgefuse was built without V4L2 support (feature `v4l`)"
    ))
}
