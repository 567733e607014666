//! edgefuse runtime: camera frames → CLIP image encoder → Q-Former → late-fusion zero-shot →
//! decision, on the CPU with tract.
//!
//! Stage modules follow the data path: [`capture`] (frame sources by URI) → [`ring`] →
//! [`trigger`] → [`preprocess`] → [`engine`] (tract) → [`fusion`] → [`decision`]; [`pipeline`]
//! wires them with per-stage timing, [`alloc`] counts heap allocations per stage scope.

#![deny(missing_docs)]

pub mod alloc;
pub mod calibrate;
pub mod capture;
pub mod config;
pub mod cpu;
pub mod decision;
pub mod engine;
pub mod frame;
pub mod fusion;
pub mod gpio;
pub mod gpu;
pub mod pipeline;
pub mod preprocess;
pub mod ring;
pub mod stats;
pub mod trigger;

pub use edgefuse_models as models;
