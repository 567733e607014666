//! `edgefuse info`: the bundle, the backends, the board's health and a camera's formats.

use std::path::Path;

use anyhow::Result;
use clap::Args;

use edgefuse_board::linux::{read_board, Health};
use edgefuse_runtime::gpu;

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
    println!(
        "bundle      {} {} ({})",
        m.name,
        m.version,
        bundle.dir().display()
    );
    if !m.description.is_empty() {
        println!("            {}", m.description);
    }
    println!(
        "input       {}x{} {:?}, mean {:?}, std {:?}, {:?}",
        m.preprocess.image_size[0],
        m.preprocess.image_size[1],
        m.preprocess.resize,
        m.preprocess.mean,
        m.preprocess.std,
        m.preprocess.channel_order
    );
    println!(
        "encoder     {} → embedding {}",
        m.encoder.model.file, m.encoder.embedding_dim
    );
    match &m.qformer {
        Some(q) => println!("q-former    {} ({} queries)", q.model.file, q.queries),
        None => println!("q-former    none"),
    }
    println!("fusion      {:?}", m.fusion.method);
    println!(
        "labels      {}: {}",
        m.labels.len(),
        bundle.label_names().collect::<Vec<_>>().join(", ")
    );
    for (k, v) in &m.accuracy {
        println!("accuracy    {k}: {:.2}%", v * 100.0);
    }
    match &m.quantization {
        Some(q) => println!(
            "precision   int8 linear layers ({} calibration, {} frames, {} kept in float; kernel {:?}), the rest float32",
            q.method,
            q.frames,
            q.skip.len(),
            edgefuse_models::quant::gemm::Kernel::best()
        ),
        None => println!("precision   float32"),
    }
    println!("backends    cpu: tract-onnx (available)");
    println!("build       {}", gpu::build_variant());
    println!("devices     {}", gpu::DEVICE_HELP);
    match gpu::probe() {
        Ok(d) => println!("gpu         {d}"),
        Err(e) => println!("gpu         not used: {e}"),
    }
    if !m.license.is_empty() {
        println!("license     {}", m.license);
    }
    board_health(Path::new("/"));
    if let Some(cam) = a.camera {
        camera_info(&cam)?;
    }
    Ok(())
}

/// The board, its temperatures and power mode; a warning when it throttles.
fn board_health(root: &Path) {
    match read_board(root) {
        Ok((b, model)) => println!("board       {} ({}) {model}", b.title(), b.name()),
        Err(_) => println!(
            "board       not a supported Jetson (GPIO pins need --board or line:CHIP:OFFSET)"
        ),
    }
    let h = Health::read(root);
    if !h.zones.is_empty() {
        let temps: Vec<String> = h
            .zones
            .iter()
            .map(|z| format!("{} {:.1} °C", z.name, z.celsius))
            .collect();
        println!("thermal     {}", temps.join(", "));
    }
    if let Some(m) = &h.power_mode {
        println!("power mode  {m} (nvpmodel)");
    }
    for z in h.throttling() {
        let msg = format!(
            "{} is at {:.1} °C, at or above its {:.1} °C trip point: the SoC is throttling and inference slows down; improve cooling or pick a lower nvpmodel mode",
            z.name,
            z.celsius,
            z.throttle_at.unwrap_or(0.0)
        );
        log::warn!("{msg}");
        println!("WARNING     {msg}");
    }
}

#[cfg(feature = "v4l")]
fn camera_info(cam: &str) -> Result<()> {
    let formats = edgefuse_runtime::capture::v4l2::list_formats(cam)?;
    println!("camera      {cam}");
    for f in formats {
        println!("            {f}");
    }
    Ok(())
}

#[cfg(not(feature = "v4l"))]
fn camera_info(cam: &str) -> Result<()> {
    Err(anyhow::anyhow!(
        "cannot list {cam}: this edgefuse was built without V4L2 support (feature `v4l`)"
    ))
}
