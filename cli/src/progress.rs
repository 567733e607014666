//! Progress of long commands: an `indicatif` bar on a terminal (callers print plain lines when
//! stderr is not one).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `total` steps labelled `what`, drawn on stderr.
pub fn bar(total: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(total);
    let style =
        ProgressStyle::with_template("{msg}: [{bar:30}] {pos}/{len} frames, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    b.set_style(style);
    b.set_message(what.to_string());
    b
}
