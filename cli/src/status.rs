//! `run --http`: the status server (page, metrics, health, snapshot, events) as a sink.

use std::sync::Arc;

use anyhow::{Context, Result};

use edgefuse_runtime::trigger::TriggerSpec;
use edgefuse_sinks::http::{read_token, HttpConfig, HttpSink};
use edgefuse_sinks::stats::EventStats;
use edgefuse_sinks::{RunInfo, Sink};

use crate::options::RunOptions;

/// The status server `o` asks for (`--http`), started; `None` without `--http`. The bound
/// address is printed on stderr (`edgefuse: status page at http://ADDR/`), so that a port
/// chosen by the system (port 0) can be found. `events`: the event sink's figures, when one
/// runs (shown on `/metrics`).
pub fn sink(
    o: &RunOptions,
    info: &RunInfo,
    events: Option<Arc<EventStats>>,
) -> Result<Option<Box<dyn Sink>>> {
    let Some(addr) = o.http else {
        if let Some(f) = &o.http_token_file {
            log::warn!(
                "--http-token-file {} is ignored without --http",
                f.display()
            );
        }
        return Ok(None);
    };
    let mut cfg = HttpConfig::new(addr, info.max_frame_bytes);
    cfg.events = events;
    if let Some(f) = &o.http_token_file {
        cfg.token = Some(read_token(f)?);
    }
    // A run triggered by motion or a pin classifies rarely by design: no stall there.
    if !matches!(o.trigger(), TriggerSpec::Continuous) {
        cfg.stall_after = None;
    }
    let sink = HttpSink::start(cfg, info).context("cannot start the status server")?;
    eprintln!("edgefuse: status page at http://{}/", sink.addr());
    Ok(Some(Box::new(sink)))
}
