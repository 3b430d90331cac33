//! One progress bar style for every long command: position, elapsed time and ETA.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` units named `unit` (e.g. "samples"), drawn on stderr.
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit}  {{elapsed}} elapsed, eta {{eta}}  {{msg}}"
        ))
        .expect("valid template"),
    );
    bar
}
