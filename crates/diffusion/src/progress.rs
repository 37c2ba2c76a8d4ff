//! What the binaries share: the error policy and, with the `cli` feature, an indicatif progress
//! bar behind [`foundation::progress::Progress`] (library code only sees the trait).

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

#[cfg(feature = "cli")]
pub use bar::Bar;

#[cfg(feature = "cli")]
mod bar {
    use indicatif::{ProgressBar, ProgressStyle};

    /// A terminal progress bar (hidden automatically when stderr is not a terminal): each
    /// [`Progress::start`](foundation::progress::Progress::start) resets it to a new stage.
    pub struct Bar(ProgressBar);

    impl Bar {
        /// A bar with no stage yet.
        pub fn new() -> Self {
            let pb = ProgressBar::new(0);
            pb.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            Self(pb)
        }
    }

    impl Default for Bar {
        fn default() -> Self {
            Self::new()
        }
    }

    impl foundation::progress::Progress for Bar {
        fn start(&self, label: &str, total: u64) {
            self.0.reset();
            self.0.set_prefix(label.to_string());
            self.0.set_length(total);
            self.0.set_position(0);
            self.0.set_message("");
        }

        fn advance(&self, units: u64) {
            self.0.inc(units);
        }

        fn message(&self, text: &str) {
            self.0.set_message(text.to_string());
        }

        fn finish(&self) {
            self.0.finish();
        }
    }
}

/// Progress of long, resumable jobs as log lines on stderr: every message becomes one line
/// `[elapsed s] message`; stages and units are not shown (each stage of such a job logs what it
/// finished instead).
pub struct LogLines {
    started: std::time::Instant,
}

impl LogLines {
    /// A log whose clock starts now.
    pub fn new() -> Self {
        Self { started: std::time::Instant::now() }
    }
}

impl Default for LogLines {
    fn default() -> Self {
        Self::new()
    }
}

impl foundation::progress::Progress for LogLines {
    fn start(&self, _label: &str, _total: u64) {}

    fn advance(&self, _units: u64) {}

    fn message(&self, text: &str) {
        eprintln!("[{:7.1} s] {text}", self.started.elapsed().as_secs_f64());
    }
}
