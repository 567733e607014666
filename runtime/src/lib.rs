//! edgefuse runtime, the library of the data path: camera frames → preprocessing → CLIP image
//! encoder → Q-Former → fusion → decision → actuation, on the CPU with tract or on an NVIDIA
//! GPU (feature `cuda-jp5`/`cuda-jp6`/`cuda-jp7`) with the CPU as the fallback.
//!
//! Modules in the order of the data path: [`capture`] (frame sources by URI, [`frame`]) →
//! [`ring`] → [`trigger`] → [`preprocess`] → the models behind one backend seam ([`engine`] on
//! the CPU with tract, [`gpu`] with CUDA) → [`fusion`] (and the [`rerank`]er) → [`decision`] → [`actuate`] (GPIO
//! actuators, status LED, GPIO triggers). [`pipeline`] wires them with per-stage timing;
//! [`alloc`] counts heap allocations per stage scope, [`stats`] keeps latency histograms,
//! [`cpu`] checks the CPU features a binary was built for, [`duration`] is the one duration
//! grammar of every option. The command line lives in the `edgefuse-cli` crate; calibration in
//! `edgefuse-calibration`.

#![deny(missing_docs)]

pub mod actuate;
pub mod alloc;
pub mod backend;
pub mod capture;
pub mod cpu;
pub mod decision;
pub mod duration;
pub mod engine;
pub mod frame;
pub mod fusion;
pub mod gpu;
pub mod pipeline;
pub mod plan;
pub mod preprocess;
pub mod rerank;
pub mod ring;
pub mod stats;
pub mod trigger;

pub use edgefuse_models as models;
