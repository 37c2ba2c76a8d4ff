//! What the workspace's binaries share (feature `cli`): the error policy and an indicatif
//! progress bar behind [`Progress`](crate::progress::Progress). Library code only ever sees the
//! trait.

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

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

/// Terminal progress bars (hidden automatically when stderr is not a terminal): each
/// [`Progress::start`](crate::progress::Progress::start) opens a new bar for its stage,
/// the finished ones stay on screen.
pub struct Bar(Mutex<ProgressBar>);

impl Bar {
    /// No bar yet: the first stage opens one.
    pub fn new() -> Self {
        Self(Mutex::new(ProgressBar::hidden()))
    }

    /// Runs `f` with the bar hidden, so that a line printed meanwhile does not tear it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        let pb = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pb.suspend(f)
    }

    fn with(&self, f: impl FnOnce(&mut ProgressBar)) {
        // A poisoned lock only means another thread panicked while drawing: keep drawing.
        let mut pb = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut pb)
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl crate::progress::Progress for Bar {
    fn start(&self, label: &str, total: u64) {
        self.with(|pb| {
            if !pb.is_finished() {
                pb.finish();
            }
            *pb = ProgressBar::new(total);
            pb.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            pb.set_prefix(label.to_string());
        })
    }

    fn advance(&self, units: u64) {
        self.with(|pb| pb.inc(units))
    }

    fn message(&self, text: &str) {
        self.with(|pb| pb.set_message(text.to_string()))
    }

    fn finish(&self) {
        self.with(|pb| {
            if !pb.is_finished() {
                pb.finish()
            }
        })
    }
}
