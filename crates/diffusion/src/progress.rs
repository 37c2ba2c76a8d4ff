//! What the binaries share: the progress-bar style and the error policy.

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

/// The binaries' error policy: success, or the whole error chain on one line of stderr
/// (`error: ...`) and a non-zero exit code.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
