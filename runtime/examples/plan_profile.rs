//! Where a frame's time goes in the CPU plan: `cargo run --release -p edgefuse-runtime --example
//! plan_profile -- BUNDLE [THREADS]` prints each kind of step's total over 10 runs, slowest first.

use edgefuse_models::Bundle;
use edgefuse_runtime::engine::PlanEngine;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: plan_profile BUNDLE [THREADS]")?;
    let threads: usize = args.next().map_or(Ok(1), |t| t.parse())?;
    let bundle = Bundle::open(&path)?;
    let mut engine = PlanEngine::new(&bundle, threads)?;
    let [w, h] = bundle.manifest().preprocess.image_size;
    let image: Vec<f32> = (0..3 * w as usize * h as usize)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
        .collect();
    let mut total: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for _ in 0..10 {
        for (k, d, n) in engine.profile(&image)? {
            let e = total.entry(k).or_default();
            e.0 += d.as_secs_f64() * 100.0; // ms per run (÷10 runs × 1000)
            e.1 = n;
        }
    }
    let mut v: Vec<_> = total.into_iter().collect();
    v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let sum: f64 = v.iter().map(|(_, (ms, _))| ms).sum();
    // Written, not printed: `| head` closes the pipe, which ends the listing quietly.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{path}, {threads} thread(s): {sum:.2} ms per frame");
    for (k, (ms, n)) in v {
        if writeln!(out, "{ms:9.3} ms  {n:4}x  {k}").is_err() {
            break;
        }
    }
    Ok(())
}
