//! The progress bar style shared by the binaries.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar of `len` steps labelled `what` (hidden automatically when stderr is not a
/// terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}
