//! Sinks: where classified frames go besides the per-frame line on stdout and the GPIO pins.
//!
//! Every consumer of results (the event publishers, snapshots, the status page) is a [`Sink`]:
//! it is built before the run from the run's [`RunInfo`], sees every classified frame on the
//! inference thread through [`Sink::frame`], and is told when the run ends through
//! [`Sink::finish`]. [`Sinks`] fans a frame out to all of them in the order they were added.
//!
//! The inference thread must never wait on a network, a disk or a client: a sink copies what it
//! needs into storage it allocated when it was built (a bounded queue, a preallocated frame
//! buffer) and returns; its own threads do the slow work. `frame` must not allocate after
//! warm-up (the allocation test counts the whole process).

#![deny(missing_docs)]

use edgefuse_runtime::pipeline::{FrameResult, RunSummary};

pub mod http;

// Events out (issue 15): the event type, the hand-off queue, the journal, the publishers.
pub mod dispatch;
pub mod event;
pub mod journal;
pub mod mqtt;
pub mod queue;
pub mod snapshot;
pub mod stats;
pub mod webhook;

/// What every sink knows of the run it serves, fixed for the run.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// Label names in index order (`FrameResult::top` holds indices into this).
    pub labels: Vec<String>,
    /// The source URI as given (`synthetic://`, `file://…`, `v4l2:///dev/video0`).
    pub source: String,
    /// The bundle: its manifest's name and version (`clip-qformer-mnist 1.2.0`).
    pub model: String,
    /// Where the models run (`cpu (plan, 6 threads)`, the GPU's description).
    pub backend: String,
    /// The bundle's precision: `int8` (calibrated) or `float`.
    pub precision: String,
    /// edgefuse's version.
    pub version: String,
    /// Largest frame the source delivers, bytes (what a sink keeping pixels preallocates).
    pub max_frame_bytes: usize,
    /// The region of interest the models see (`x,y,w,h` as given), if any.
    pub roi: Option<String>,
}

/// A sink could not take a frame. The run stops on it (nothing is dropped silently); a sink
/// that can lose its peer (a broker, a client) queues, journals or counts instead of failing.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// I/O failed.
    #[error("{sink}: {source}")]
    Io {
        /// The sink's name.
        sink: &'static str,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Anything else, said in words.
    #[error("{sink}: {reason}")]
    Failed {
        /// The sink's name.
        sink: &'static str,
        /// What went wrong and what to do.
        reason: String,
    },
}

/// A live source's state as the run sees it (a camera unplugged and back, a stream that stalls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// The source failed or stalled; the run keeps trying to reopen it.
    Offline,
    /// The source delivers frames again.
    Online,
}

/// A consumer of classified frames.
pub trait Sink: Send {
    /// Short name for logs and errors (`mqtt`, `http`, `snapshots`).
    fn name(&self) -> &'static str;

    /// One classified frame, on the inference thread: copy what is needed and return without
    /// blocking or allocating.
    fn frame(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError>;

    /// The source went offline or came back (`reason` says why it went: the error, or the
    /// stall). Called on the inference thread, only on a change.
    fn source(&mut self, state: SourceState, reason: &str) -> Result<(), SinkError> {
        let _ = (state, reason);
        Ok(())
    }

    /// The run ended (source exhausted, stop requested, or an error): hand over what is left
    /// and stop the sink's threads. `summary` covers the whole run.
    fn finish(&mut self, summary: &RunSummary) -> Result<(), SinkError> {
        let _ = summary;
        Ok(())
    }

    /// Lines for the run's summary (counters, drops), once `finish` has run; `None` when the
    /// sink has nothing to report.
    fn summary(&self) -> Option<String> {
        None
    }
}

/// Every sink of a run, fed in the order they were added.
#[derive(Default)]
pub struct Sinks(Vec<Box<dyn Sink>>);

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|s| s.name()))
            .finish()
    }
}

impl Sinks {
    /// No sinks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a sink after the others.
    pub fn push(&mut self, sink: Box<dyn Sink>) {
        self.0.push(sink);
    }

    /// Whether there is no sink.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hand one frame to every sink; the first error stops the fan-out and is returned.
    pub fn frame(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError> {
        self.0.iter_mut().try_for_each(|s| s.frame(r))
    }

    /// Tell every sink that the source went offline or came back; the first error stops the
    /// fan-out and is returned.
    pub fn source(&mut self, state: SourceState, reason: &str) -> Result<(), SinkError> {
        self.0.iter_mut().try_for_each(|s| s.source(state, reason))
    }

    /// Every sink's summary lines (see [`Sink::summary`]), in order.
    pub fn summaries(&self) -> Vec<String> {
        self.0.iter().filter_map(|s| s.summary()).collect()
    }

    /// Finish every sink, even after one failed; the first error is returned, the others are
    /// logged.
    pub fn finish(&mut self, summary: &RunSummary) -> Result<(), SinkError> {
        let mut first = None;
        for s in &mut self.0 {
            if let Err(e) = s.finish(summary) {
                if first.is_none() {
                    first = Some(e);
                } else {
                    log::error!("{e}");
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Record(&'static str, Arc<Mutex<Vec<&'static str>>>, bool);

    impl Sink for Record {
        fn name(&self) -> &'static str {
            self.0
        }
        fn frame(&mut self, _: &FrameResult<'_>) -> Result<(), SinkError> {
            self.1.lock().unwrap().push(self.0);
            Ok(())
        }
        fn finish(&mut self, _: &RunSummary) -> Result<(), SinkError> {
            self.1.lock().unwrap().push(self.0);
            if self.2 {
                Err(SinkError::Failed {
                    sink: self.0,
                    reason: "test".into(),
                })
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn finish_reaches_every_sink_and_returns_the_first_error() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut sinks = Sinks::new();
        sinks.push(Box::new(Record("a", log.clone(), true)));
        sinks.push(Box::new(Record("b", log.clone(), true)));
        let err = sinks.finish(&RunSummary::default()).unwrap_err();
        assert_eq!(err.to_string(), "a: test");
        assert_eq!(*log.lock().unwrap(), ["a", "b"]);
        assert_eq!(format!("{sinks:?}"), r#"["a", "b"]"#);
    }
}
