//! Progress of long, resumable jobs as log lines ([`LogLines`]); terminal bars and the binaries'
//! error policy are in `foundation::cli`.

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
