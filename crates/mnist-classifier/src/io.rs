//! Weight files: safetensors with the architecture config in the metadata, written atomically.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use data::{load_mnist, shared_data_dir, Split};
use foundation::progress::NoProgress;

use crate::model::{MnistClassifier, MnistClassifierConfig};
use crate::train::{train_classifier_with_report, ClassifierTrainConfig};
use crate::{ClassifierError, DEFAULT_CLASSIFIER_SEED};

/// Key of the safetensors metadata entry holding the JSON model config.
const CONFIG_METADATA_KEY: &str = "mnist_classifier_config";

fn file_error(path: &Path, message: impl std::fmt::Display) -> ClassifierError {
    ClassifierError::File { path: path.to_path_buf(), message: message.to_string() }
}

/// Saves the classifier weights to `path` (safetensors, with the architecture config stored as
/// metadata), atomically (`foundation::atomic`); creates missing parent directories.
pub fn save_classifier(model: &MnistClassifier, path: &Path) -> Result<(), ClassifierError> {
    let config = serde_json::to_string(&model.config()).map_err(|e| file_error(path, e))?;
    foundation::atomic::write_atomic_with(
        path,
        |tmp| {
            let mut store =
                SafetensorsStore::from_file(tmp).overwrite(true).metadata(CONFIG_METADATA_KEY, config);
            model.valid().save_into(&mut store).map_err(|e| file_error(path, e))?;
            // The store creates its file with mode 0600; make it readable like an ordinary file
            // (best effort).
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o644));
            }
            Ok(())
        },
        file_error,
    )
}

/// Reads the architecture config stored in the safetensors header of `path` (the default config
/// if the file has none).
fn read_config(path: &Path) -> Result<MnistClassifierConfig, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("opening the file: {e}"))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| "file too short for a safetensors header".to_string())?;
    let len = u64::from_le_bytes(len);
    let file_len = f.metadata().map_err(|e| format!("reading file metadata: {e}"))?.len();
    if len == 0 || len > 100_000_000 || len + 8 > file_len {
        return Err(format!("invalid safetensors header length {len} (file has {file_len} bytes)"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| format!("reading the safetensors header: {e}"))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|_| "the safetensors header is not valid JSON".to_string())?;
    match header.get("__metadata__").and_then(|m| m.get(CONFIG_METADATA_KEY)).and_then(|c| c.as_str()) {
        Some(c) => serde_json::from_str(c).map_err(|e| format!("invalid classifier config in metadata: {e}")),
        None => Ok(MnistClassifierConfig::new()),
    }
}

/// Loads classifier weights saved by [`save_classifier`] onto `device` (the returned model is in
/// validation mode).
///
/// A missing, truncated, corrupt or mismatched file (wrong tensor names or shapes) gives an error
/// that names the file; this never panics.
pub fn load_classifier(path: &Path, device: &Device) -> Result<MnistClassifier, ClassifierError> {
    let fail = |message: String| file_error(path, format!("loading MNIST classifier weights: {message}"));
    if !path.is_file() {
        return Err(fail("file not found".into()));
    }
    let config = read_config(path).map_err(fail)?;
    let device = device.clone().without_autodiff();
    let path_buf = path.to_path_buf();
    let loaded = std::panic::catch_unwind(move || -> Result<MnistClassifier, String> {
        let mut model = config.init(&device);
        let mut store = SafetensorsStore::from_file(&path_buf);
        let result = model.load_from(&mut store).map_err(|e| e.to_string())?;
        if !result.errors.is_empty() {
            return Err(format!("tensor errors: {:?}", result.errors));
        }
        if !result.missing.is_empty() {
            return Err(format!("missing tensors: {:?}", result.missing));
        }
        // Touch every parameter so lazy loading failures surface here.
        let mut ok = true;
        for t in [
            model.conv1.weight.val(),
            model.conv2.weight.val(),
            model.conv3.weight.val(),
            model.conv4.weight.val(),
        ] {
            ok &= t.is_finite().all().into_scalar::<bool>();
        }
        for t in [model.fc1.weight.val(), model.fc2.weight.val()] {
            ok &= t.is_finite().all().into_scalar::<bool>();
        }
        if !ok {
            return Err("weights contain non-finite values".into());
        }
        Ok(model.valid())
    });
    match loaded {
        Ok(r) => r.map_err(fail),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(fail(format!("panic while loading: {}", msg.lines().next().unwrap_or(""))))
        }
    }
}

/// Loads the classifier cached at `path`, or, if there is no file there, trains one on full MNIST
/// and caches it (weights at `path`, a training report as JSON next to it with the extension
/// `.json`).
///
/// Training data come from `data_dir` (a directory with the four MNIST IDX files); with `None`,
/// `shared_data_dir()/mnist` is used if it exists, else the small embedded subset (which will not
/// reach 99 % accuracy). Training uses [`ClassifierTrainConfig::new`] and
/// [`DEFAULT_CLASSIFIER_SEED`] and takes a few minutes on 2 CPU cores. The model is returned on
/// the plain flex device, in validation mode.
///
/// An existing but unreadable/corrupt file is an error (it is not silently overwritten).
pub fn load_or_train_classifier(
    path: &Path,
    data_dir: Option<&Path>,
) -> Result<MnistClassifier, ClassifierError> {
    let device = Device::flex();
    if path.exists() {
        return load_classifier(path, &device);
    }
    let dir: Option<PathBuf> = match data_dir {
        Some(d) => Some(d.to_path_buf()),
        None => shared_data_dir().map(|d| d.join("mnist")).filter(|d| d.is_dir()),
    };
    let train = load_mnist(dir.as_deref(), Split::Train)?;
    let test = load_mnist(dir.as_deref(), Split::Test)?;
    let cfg = ClassifierTrainConfig::new();
    let (model, report) =
        train_classifier_with_report(&train, &test, &cfg, DEFAULT_CLASSIFIER_SEED, &NoProgress)?;
    save_classifier(&model, path)?;
    let json_path = path.with_extension("json");
    let json = serde_json::to_string_pretty(&report).map_err(|e| file_error(&json_path, e))? + "\n";
    foundation::atomic::write_bytes(&json_path, json.as_bytes())
        .map_err(|e| file_error(&json_path, e.source))?;
    Ok(model)
}
