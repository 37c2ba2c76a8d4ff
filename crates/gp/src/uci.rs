//! Regression data: any data set in the `uci_datasets` layout ([`load`], [`load_dir`]), or a
//! plain CSV ([`load_csv`]); [`resolve`] takes a name or a path. The layout:
//! `<dir>/uci/<name>/data.csv.gz` (comma-separated, no header, last column y) and
//! `test_mask.csv.gz` (n rows × 10 columns of 0/1; split k tests on the rows whose column k is 1). Also z-scoring with training statistics and the reference code's
//! "centred" nearest-neighbour subsampling.

use std::io::Read;
use std::path::Path;

use faer::Mat;
use flate2::read::GzDecoder;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{GpError, Result};

/// The data sets of the shared data directory (any other folder in the layout loads too).
pub const SHARED_DATASETS: [&str; 3] = ["pol", "elevators", "bike"];

/// Number of fixed train/test splits in every mask file.
pub const NUM_SPLITS: usize = 10;

/// First 600 rows of pol and of its mask, for runs and tests without the shared data directory.
const EMBEDDED_POL_DATA: &[u8] = include_bytes!("../embedded/pol-data.csv.gz");
const EMBEDDED_POL_MASK: &[u8] = include_bytes!("../embedded/pol-test_mask.csv.gz");

pub use foundation::paths::shared_data_dir;

/// A whole dataset with its split masks.
#[derive(Clone, Debug)]
pub struct UciDataset {
    /// Dataset name.
    pub name: String,
    /// Where it came from (a path, or "embedded").
    pub source: String,
    /// Inputs, n × d.
    pub x: Mat<f64>,
    /// Targets.
    pub y: Vec<f64>,
    /// `test_mask[i][k]`: row i is a test point of split k.
    pub test_mask: Vec<[bool; NUM_SPLITS]>,
}

/// One train/test split (raw or normalised).
#[derive(Clone, Debug)]
pub struct Split {
    /// Training inputs.
    pub x_train: Mat<f64>,
    /// Training targets.
    pub y_train: Vec<f64>,
    /// Test inputs.
    pub x_test: Mat<f64>,
    /// Test targets.
    pub y_test: Vec<f64>,
}

/// Which column of a plain CSV holds the target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetColumn {
    /// The last column (the `uci_datasets` convention).
    #[default]
    Last,
    /// A zero-based column index.
    Index(usize),
    /// A column named in the header line.
    Name(String),
}

impl std::str::FromStr for TargetColumn {
    type Err = GpError;

    /// `last`, a zero-based index, or a header name.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(GpError::InvalidArgument("empty target column".into()));
        }
        Ok(if s == "last" {
            TargetColumn::Last
        } else if let Ok(i) = s.parse::<usize>() {
            TargetColumn::Index(i)
        } else {
            TargetColumn::Name(s.to_string())
        })
    }
}

/// Loads a data set named by `spec`: a path to a CSV file (`.csv` or `.csv.gz`, see
/// [`load_csv`], target column `target`), a path to a folder in the `uci_datasets` layout (see
/// [`load_dir`]), or the name of a folder under `<data_dir>/uci/` (see [`load`]).
pub fn resolve(spec: &str, data_dir: Option<&Path>, target: &TargetColumn) -> Result<UciDataset> {
    let path = Path::new(spec);
    let is_csv = spec.ends_with(".csv") || spec.ends_with(".csv.gz");
    if is_csv || path.is_file() {
        return load_csv(path, target);
    }
    if *target != TargetColumn::Last {
        return Err(GpError::InvalidArgument(format!(
            "a target column applies to plain CSV files only; '{spec}' is in the uci_datasets layout \
             (target: last column)"
        )));
    }
    if path.is_dir() {
        return load_dir(path);
    }
    load(spec, data_dir)
}

/// Loads a dataset by name. With `data_dir = None` only `pol` is available, from the embedded
/// 600-row subset; otherwise the folder `<data_dir>/uci/<name>/` is read with [`load_dir`], so any
/// data set in the `uci_datasets` layout loads, not only [`SHARED_DATASETS`].
pub fn load(name: &str, data_dir: Option<&Path>) -> Result<UciDataset> {
    let has_data = |folder: &Path| folder.join("data.csv.gz").is_file() || folder.join("data.csv").is_file();
    match data_dir {
        Some(dir) => {
            let folder = dir.join("uci").join(name);
            if !has_data(&folder) {
                let mut available: Vec<String> = std::fs::read_dir(dir.join("uci"))
                    .map(|entries| {
                        entries
                            .filter_map(|e| e.ok())
                            .filter(|e| has_data(&e.path()))
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                available.sort();
                return Err(GpError::UnknownDataset(format!(
                    "'{name}': no {}/data.csv.gz (available: {})",
                    folder.display(),
                    if available.is_empty() { "none".to_string() } else { available.join(", ") }
                )));
            }
            let mut dataset = load_dir(&folder)?;
            dataset.name = name.to_string();
            Ok(dataset)
        }
        None if name == "pol" => {
            let data = gunzip(EMBEDDED_POL_DATA, Path::new("embedded pol-data.csv.gz"))?;
            let mask = gunzip(EMBEDDED_POL_MASK, Path::new("embedded pol-test_mask.csv.gz"))?;
            from_text(name, "embedded (first 600 rows of pol)".into(), &data, &mask)
        }
        None => Err(GpError::UnknownDataset(format!(
            "'{name}': without a data directory (--data-dir or SHARED_DATA_DIR) only pol is available, \
             embedded"
        ))),
    }
}

/// Loads a folder in the `uci_datasets` layout: `data.csv.gz` (or `data.csv`: comma-separated, no
/// header, last column the target) and `test_mask.csv.gz` (or `test_mask.csv`: n rows of 10 0/1
/// columns). The data set is named after the folder.
pub fn load_dir(folder: &Path) -> Result<UciDataset> {
    let read = |stem: &str| -> Result<String> {
        let gz = folder.join(format!("{stem}.csv.gz"));
        let plain = folder.join(format!("{stem}.csv"));
        if gz.is_file() {
            read_gz(&gz)
        } else if plain.is_file() {
            std::fs::read_to_string(&plain).map_err(|source| GpError::Io { path: plain, source })
        } else {
            Err(GpError::InvalidArgument(format!(
                "{} is not a data set in the uci_datasets layout (no {stem}.csv.gz or {stem}.csv)",
                folder.display()
            )))
        }
    };
    let (data, mask) = (read("data")?, read("test_mask")?);
    let name =
        folder.file_name().map_or_else(|| folder.display().to_string(), |n| n.to_string_lossy().into_owned());
    from_text(&name, folder.display().to_string(), &data, &mask)
}

/// Loads a plain CSV file (`.csv`, or gzip-compressed `.csv.gz`): comma-separated numbers, an
/// optional header line (taken as one when any of its fields is not a number), the target in
/// column `target`, every other column an input. Splits are fixed and need no random draw: split
/// k tests on the rows `i` with `i % 10 == k` (90/10, every row tested by one split).
///
/// A ragged row, a cell that is not a number, NaN or infinity is a one-line error naming the
/// file and line.
pub fn load_csv(path: &Path, target: &TargetColumn) -> Result<UciDataset> {
    let text = if path.to_string_lossy().ends_with(".gz") {
        read_gz(path)?
    } else {
        std::fs::read_to_string(path).map_err(|source| GpError::Io { path: path.to_path_buf(), source })?
    };
    let what = path.display().to_string();
    let no_rows = || GpError::Parse { what: what.clone(), line: 0, message: "no data rows".into() };
    let first = text.lines().position(|l| !l.trim().is_empty()).ok_or_else(no_rows)?;
    let first_line = text.lines().nth(first).unwrap_or_default();
    let header: Option<Vec<String>> = first_line
        .split(',')
        .any(|f| f.trim().parse::<f64>().is_err())
        .then(|| first_line.split(',').map(|f| f.trim().trim_matches('"').to_string()).collect());
    let skip = if header.is_some() { first + 1 } else { 0 };
    let body = text.lines().skip(skip).collect::<Vec<_>>().join("\n");
    let rows = parse_csv_from(&body, &what, skip)?;
    let cols = rows[0].len();
    if let Some(h) = &header {
        if h.len() != cols {
            return Err(GpError::Parse {
                what,
                line: first + 1,
                message: format!("header has {} columns, data rows {cols}", h.len()),
            });
        }
    }
    if cols < 2 {
        return Err(GpError::Parse {
            what,
            line: skip + 1,
            message: "need at least one input column and the target".into(),
        });
    }
    let t = match target {
        TargetColumn::Last => cols - 1,
        TargetColumn::Index(i) if *i < cols => *i,
        TargetColumn::Index(i) => {
            return Err(GpError::InvalidArgument(format!("{what}: target column {i} out of range 0..{cols}")))
        }
        TargetColumn::Name(name) => match &header {
            Some(h) => h.iter().position(|c| c == name).ok_or_else(|| {
                GpError::InvalidArgument(format!("{what}: no column '{name}' (columns: {})", h.join(", ")))
            })?,
            None => {
                return Err(GpError::InvalidArgument(format!(
                    "{what}: target column '{name}' given by name, but the file has no header line"
                )))
            }
        },
    };
    let inputs: Vec<usize> = (0..cols).filter(|&j| j != t).collect();
    let x = Mat::from_fn(rows.len(), cols - 1, |i, j| rows[i][inputs[j]]);
    let y = rows.iter().map(|r| r[t]).collect();
    let test_mask = (0..rows.len()).map(|i| std::array::from_fn(|k| i % NUM_SPLITS == k)).collect();
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = file_name.trim_end_matches(".gz").trim_end_matches(".csv").to_string();
    Ok(UciDataset { name, source: what, x, y, test_mask })
}

/// A data set from the text of its data and mask files.
fn from_text(name: &str, source: String, data: &str, mask: &str) -> Result<UciDataset> {
    let rows = parse_csv(data, &format!("{source}/data.csv.gz"))?;
    let mask_rows = parse_csv(mask, &format!("{source}/test_mask.csv.gz"))?;
    if rows.len() != mask_rows.len() {
        return Err(GpError::DimensionMismatch {
            what: format!("{name}: mask rows vs data rows"),
            expected: rows.len(),
            found: mask_rows.len(),
        });
    }
    let cols = rows[0].len();
    if cols < 2 {
        return Err(GpError::Parse {
            what: format!("{source}/data.csv.gz"),
            line: 1,
            message: "need at least one input column and the target".into(),
        });
    }
    let x = Mat::from_fn(rows.len(), cols - 1, |i, j| rows[i][j]);
    let y = rows.iter().map(|r| r[cols - 1]).collect();
    let mut test_mask = Vec::with_capacity(mask_rows.len());
    for (line, row) in mask_rows.iter().enumerate() {
        if row.len() != NUM_SPLITS {
            return Err(GpError::Parse {
                what: format!("{source}/test_mask.csv.gz"),
                line: line + 1,
                message: format!("expected {NUM_SPLITS} columns, found {}", row.len()),
            });
        }
        let mut flags = [false; NUM_SPLITS];
        for (k, &v) in row.iter().enumerate() {
            flags[k] = match v {
                0.0 => false,
                1.0 => true,
                other => {
                    return Err(GpError::Parse {
                        what: format!("{source}/test_mask.csv.gz"),
                        line: line + 1,
                        message: format!("mask entries must be 0 or 1, found {other}"),
                    })
                }
            };
        }
        test_mask.push(flags);
    }
    Ok(UciDataset { name: name.to_string(), source, x, y, test_mask })
}

/// Reads a gzip-compressed text file.
pub fn read_gz(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| GpError::Io { path: path.to_path_buf(), source })?;
    gunzip(&bytes, path)
}

fn gunzip(bytes: &[u8], path: &Path) -> Result<String> {
    let mut text = String::new();
    GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|source| GpError::Io { path: path.to_path_buf(), source })?;
    Ok(text)
}

/// Parses comma-separated numbers; every row must have the same number of finite fields.
pub fn parse_csv(text: &str, what: &str) -> Result<Vec<Vec<f64>>> {
    parse_csv_from(text, what, 0)
}

/// [`parse_csv`] of text that starts at line `offset + 1` of its file (for line numbers in errors).
fn parse_csv_from(text: &str, what: &str, offset: usize) -> Result<Vec<Vec<f64>>> {
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row = line
            .split(',')
            .map(|field| {
                let value: f64 = field.trim().parse().map_err(|_| GpError::Parse {
                    what: what.to_string(),
                    line: offset + line_index + 1,
                    message: format!("not a number: '{}'", field.trim()),
                })?;
                if value.is_finite() {
                    Ok(value)
                } else {
                    Err(GpError::NonFinite { what: format!("{what}, line {}", offset + line_index + 1) })
                }
            })
            .collect::<Result<Vec<f64>>>()?;
        if let Some(first) = rows.first() {
            if first.len() != row.len() {
                return Err(GpError::Parse {
                    what: what.to_string(),
                    line: offset + line_index + 1,
                    message: format!("expected {} columns, found {}", first.len(), row.len()),
                });
            }
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(GpError::Parse { what: what.to_string(), line: 0, message: "no data rows".into() });
    }
    Ok(rows)
}

impl UciDataset {
    /// Raw (unnormalised) train/test split `k` (0..10).
    pub fn split(&self, k: usize) -> Result<Split> {
        if k >= NUM_SPLITS {
            return Err(GpError::InvalidArgument(format!("split must be 0..{}, got {k}", NUM_SPLITS - 1)));
        }
        let test: Vec<usize> = (0..self.y.len()).filter(|&i| self.test_mask[i][k]).collect();
        let train: Vec<usize> = (0..self.y.len()).filter(|&i| !self.test_mask[i][k]).collect();
        if train.is_empty() || test.is_empty() {
            return Err(GpError::InvalidArgument(format!(
                "split {k} of {} has an empty train or test set",
                self.name
            )));
        }
        Ok(Split {
            x_train: gather_rows(&self.x, &train),
            y_train: train.iter().map(|&i| self.y[i]).collect(),
            x_test: gather_rows(&self.x, &test),
            y_test: test.iter().map(|&i| self.y[i]).collect(),
        })
    }
}

fn gather_rows(x: &Mat<f64>, rows: &[usize]) -> Mat<f64> {
    Mat::from_fn(rows.len(), x.ncols(), |i, j| x[(rows[i], j)])
}

/// The training statistics used to z-score a split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    /// Per-column input means.
    pub x_mean: Vec<f64>,
    /// Per-column input standard deviations (1 for constant columns).
    pub x_std: Vec<f64>,
    /// Target mean.
    pub y_mean: f64,
    /// Target standard deviation.
    pub y_std: f64,
}

fn mean_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = values.clone().count().max(1) as f64;
    let mean = values.clone().sum::<f64>() / n;
    let var = values.map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    // A constant column would divide by zero; leave it centred but unscaled.
    let std = if var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
    (mean, std)
}

/// Z-scores inputs and targets of train and test with the **training** means and standard
/// deviations (population std, as numpy's default).
pub fn normalise(split: &Split) -> (Split, Normalisation) {
    let d = split.x_train.ncols();
    let (mut x_mean, mut x_std) = (vec![0.0; d], vec![1.0; d]);
    for j in 0..d {
        let (m, s) = mean_std((0..split.x_train.nrows()).map(|i| split.x_train[(i, j)]));
        x_mean[j] = m;
        x_std[j] = s;
    }
    let (y_mean, y_std) = mean_std(split.y_train.iter().copied());
    let scale_x = |x: &Mat<f64>| Mat::from_fn(x.nrows(), d, |i, j| (x[(i, j)] - x_mean[j]) / x_std[j]);
    let out = Split {
        x_train: scale_x(&split.x_train),
        y_train: split.y_train.iter().map(|y| (y - y_mean) / y_std).collect(),
        x_test: scale_x(&split.x_test),
        y_test: split.y_test.iter().map(|y| (y - y_mean) / y_std).collect(),
    };
    (out, Normalisation { x_mean, x_std, y_mean, y_std })
}

/// Centred subsample (the reference's `subsample`): keeps the `size` training points nearest
/// (Euclidean, in the given — normally z-scored — input space) to one training point chosen at
/// random, and the test points inside the same ball (at least min(10, all) nearest test points, so
/// that metrics exist). Returns the split unchanged when `size` ≥ n_train.
pub fn centred_subsample<R: Rng>(split: &Split, size: usize, rng: &mut R) -> Result<Split> {
    let n = split.x_train.nrows();
    if size == 0 {
        return Err(GpError::InvalidArgument("subsample size must be positive".into()));
    }
    if size >= n {
        return Ok(split.clone());
    }
    let (train_rows, test_rows) = centred_subsample_rows(split, size, rng.gen_range(0..n))?;
    Ok(Split {
        x_train: gather_rows(&split.x_train, &train_rows),
        y_train: train_rows.iter().map(|&i| split.y_train[i]).collect(),
        x_test: gather_rows(&split.x_test, &test_rows),
        y_test: test_rows.iter().map(|&i| split.y_test[i]).collect(),
    })
}

/// The rows kept by [`centred_subsample`] around training point `centre_index`: (training rows,
/// test rows), both sorted ascending.
pub fn centred_subsample_rows(
    split: &Split,
    size: usize,
    centre_index: usize,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let n = split.x_train.nrows();
    if size == 0 || size > n {
        return Err(GpError::InvalidArgument(format!("subsample size must be in 1..={n}, got {size}")));
    }
    if centre_index >= n {
        return Err(GpError::InvalidArgument(format!("centre index {centre_index} out of range 0..{n}")));
    }
    let d = split.x_train.ncols();
    let centre: Vec<f64> = (0..d).map(|j| split.x_train[(centre_index, j)]).collect();
    let dist = |x: &Mat<f64>, i: usize| (0..d).map(|j| (x[(i, j)] - centre[j]).powi(2)).sum::<f64>();
    let mut train: Vec<(f64, usize)> = (0..n).map(|i| (dist(&split.x_train, i), i)).collect();
    train.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let radius = train[size - 1].0;
    let mut train_rows: Vec<usize> = train[..size].iter().map(|&(_, i)| i).collect();
    train_rows.sort_unstable();
    let mut test: Vec<(f64, usize)> =
        (0..split.x_test.nrows()).map(|i| (dist(&split.x_test, i), i)).collect();
    test.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let inside = test.iter().filter(|(d2, _)| *d2 <= radius).count();
    let keep = inside.max(10.min(test.len()));
    let mut test_rows: Vec<usize> = test[..keep].iter().map(|&(_, i)| i).collect();
    test_rows.sort_unstable();
    Ok((train_rows, test_rows))
}

/// Loads, splits, z-scores and optionally subsamples: z-score with the full training statistics,
/// take the centred subsample in that space, then z-score again with the subset's own training
/// statistics so that the model sees zero-mean, unit-variance targets.
pub fn prepare<R: Rng>(
    dataset: &UciDataset,
    split_index: usize,
    subsample: Option<usize>,
    rng: &mut R,
) -> Result<(Split, Normalisation)> {
    let raw = dataset.split(split_index)?;
    let (normalised, stats) = normalise(&raw);
    match subsample {
        None => Ok((normalised, stats)),
        Some(size) => {
            let subset = centred_subsample(&normalised, size, rng)?;
            Ok(normalise(&subset))
        }
    }
}
