//! What the workspace's binaries share (feature `cli`): the error policy and an indicatif
//! progress bar behind [`Progress`](crate::progress::Progress). Library code only ever sees the
//! trait.

/// Tells the C allocator to keep freed memory for reuse; binaries call it first thing in `main`.
///
/// burn's CPU backend allocates a fresh buffer for every tensor op. With glibc's defaults, buffers
/// above a dynamic threshold are `mmap`ed and handed back to the kernel on free, and the top of
/// the heap is trimmed, so every op page-faults and zeroes new memory: about a fifth of a
/// one-pass U-Net training step (`../shared/specs/rust-stack.md`). Serving buffers of up to 32 MiB
/// (glibc's largest allowed threshold) from the heap and never trimming it keeps them for reuse.
/// Elsewhere than Linux with glibc this does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// The compute device named by a binary's `--device` flag: `cpu` (burn's flex backend, always
/// built), `cuda` (feature `cuda`: the first CUDA GPU) or `wgpu` (feature `wgpu`: the default
/// adapter). Anything else, or a GPU backend the binary was built without, is an error naming the
/// devices it has.
pub fn device(name: &str) -> anyhow::Result<burn::prelude::Device> {
    use burn::prelude::Device;
    match name {
        "cpu" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        other => anyhow::bail!(
            "--device {other}: unknown or not built in (this binary has: cpu{}{}; GPU backends are the cargo features `cuda` and `wgpu`)",
            if cfg!(feature = "cuda") { ", cuda" } else { "" },
            if cfg!(feature = "wgpu") { ", wgpu" } else { "" }
        ),
    }
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
