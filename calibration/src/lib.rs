//! edgefuse int8 calibration, in one home: from frames to a checked int8 bundle and its report.
//!
//! * [`calibrators`]: streaming |activation| histograms in bounded memory and the range
//!   calibrators (min/max, percentile, TensorRT entropy/KL, MSE), the TensorRT cache format.
//! * [`collect`]: runs the float models over real frames with every linear layer's input tapped
//!   and feeds the histograms.
//! * [`stage`]: writes the int8 bundle (tables, TensorRT cache, manifest) next to its
//!   destination, checks that it loads, and renames it into place.
//! * [`fidelity`]: the float and int8 pipelines side by side → `fidelity.json`.
//! * [`truth`]: the `labels.csv` ground truth of a folder of frames.
//!
//! The int8 operator and its kernels live in `edgefuse-models` (`quant`), where the bundle is
//! loaded; `edgefuse calibrate` (the `edgefuse-cli` crate) drives these steps.

#![deny(missing_docs)]

pub mod calibrators;
pub mod collect;
pub mod fidelity;
pub mod stage;
pub mod truth;

pub use calibrators::{
    trt_cache_header, trt_cache_line, AbsHistogram, CalibrationError, Method, BINS, LEVELS,
};
pub use collect::{collect, CalibrateError, Calibration, LayerStats, MIN_FRAMES};
pub use fidelity::{evaluate, FidelityReport, LayerReport};
pub use stage::{remove_stale_staging, stage_bundle, staging_dir, Staged, StaleStaging};
