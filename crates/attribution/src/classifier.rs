//! Influence functions for an MNIST classifier: the same K-FAC / EK-FAC machinery and [`Scorer`]
//! as for diffusion models, with softmax cross-entropy as the output loss (GGN^model = the
//! Fisher of the softmax, estimated with labels sampled from the model; GGN^loss = the empirical
//! Fisher with the true labels) and the query's cross-entropy or margin as the measurement.
//!
//! Every training image is one datum (no draws to average over): its gradient is that of its
//! cross-entropy at its true label, without the training-time shifts, in evaluation mode. The
//! sign convention is the crate's: a positive score means removing the training image is
//! predicted to raise the query's measurement (for the cross-entropy: make the prediction worse),
//! so the image is a proponent.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ParamId};
use burn::prelude::*;
use curvature::fit::{fit_correction, fit_factors, CurvatureBatch, CurvatureOutput};
use curvature::precondition::per_datum_gradients;
use curvature::{EigenCurvature, LayerInfo, OutputLoss, SoftmaxCrossEntropy};
use data::{Dataset, Split};
use foundation::atomic::write_bytes;
use foundation::loss::one_hot;
use foundation::progress::Progress;
use foundation::rng::{stream_for, Purpose};
use foundation::tap::{layer_names, Tap};
use mnist_classifier::{
    argmax, load_classifier, predict_proba, save_classifier, train_classifier_with_report,
    ClassifierTrainConfig, MnistClassifier, MnistClassifierConfig, CLASSIFIER_SIDE, NUM_CLASSES,
};
use serde::{Deserialize, Serialize};

use crate::error::{bail, Context, Result};
use crate::fit::CurvatureSettings;
use crate::meta::{fit_meta, ScoreMeta};
use crate::npy::read_matrix;
use crate::scoring::{shard_columns, write_score_grid};
use crate::Scorer;
use curvature::CurvatureMeta;

/// What is attributed on a query (a test image with its true label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassMeasurement {
    /// The query's cross-entropy at its true label (the default).
    CrossEntropy,
    /// The margin `max_{c != y} z_c - z_y` (a loss-like quantity: positive when misclassified).
    Margin,
}

impl std::fmt::Display for ClassMeasurement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClassMeasurement::CrossEntropy => "cross-entropy",
            ClassMeasurement::Margin => "margin",
        })
    }
}

fn images_tensor(rows: &[f32], n: usize, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(rows.to_vec(), [n, 1, CLASSIFIER_SIDE, CLASSIFIER_SIDE]), device)
}

/// A batch of labelled images for the curvature passes (softmax cross-entropy).
pub struct ClassifierCurvatureBatch<'m> {
    model: &'m MnistClassifier,
    x: Tensor<4>,
    y: Tensor<2>,
}

impl<'m> ClassifierCurvatureBatch<'m> {
    /// Images `idx` of `data` with their labels, on `device` (autodiff for fitting).
    pub fn new(model: &'m MnistClassifier, data: &Dataset, idx: &[usize], device: &Device) -> Self {
        let rows: Vec<f32> = idx.iter().flat_map(|&i| data.image(i).iter().copied()).collect();
        let labels: Vec<u8> = idx.iter().map(|&i| data.labels[i]).collect();
        Self { model, x: images_tensor(&rows, idx.len(), device), y: one_hot(&labels, NUM_CLASSES, device) }
    }
}

impl CurvatureBatch for ClassifierCurvatureBatch<'_> {
    fn forward(&self, tap: &mut Tap) -> CurvatureOutput {
        CurvatureOutput::unweighted(self.model.forward_tapped(self.x.clone(), tap), self.y.clone())
    }
    fn len(&self) -> usize {
        self.x.dims()[0]
    }
    fn output_loss(&self) -> &dyn OutputLoss {
        &SoftmaxCrossEntropy
    }
}

/// Fits the curvature of `model` on all of `data` (softmax cross-entropy): `settings.factor_draws`
/// passes over the data per stage (each with fresh sampled labels for GGN^model), EK-FAC when
/// `settings.ekfac`; `progress` sees the number of data done.
pub fn fit_classifier_curvature(
    model: &MnistClassifier,
    data: &Dataset,
    settings: &CurvatureSettings,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> EigenCurvature {
    let ad = device.clone().autodiff();
    let model = model.clone().fork(&ad);
    let names = layer_names(&model);
    let name = |id: u64| names.get(&ParamId::from(id)).cloned().unwrap_or_default();
    let mut rng = stream_for(settings.seed, Purpose::CurvatureTargets, 0);
    let idx: Vec<usize> = (0..data.n).collect();
    let batches = || {
        let chunks: Vec<Vec<usize>> = (0..settings.factor_draws.max(1))
            .flat_map(|_| idx.chunks(settings.batch.max(1)).map(|c| c.to_vec()).collect::<Vec<_>>())
            .collect();
        let (model, ad) = (&model, &ad);
        chunks.into_iter().map(move |c| ClassifierCurvatureBatch::new(model, data, &c, ad))
    };
    let kfac = fit_factors(batches(), settings.approx, settings.ggn, &mut rng, &name, &mut progress)
        .eigendecompose();
    if settings.ekfac {
        fit_correction(&kfac, batches(), settings.ggn, &mut rng, &mut progress)
    } else {
        kfac
    }
}

/// Per-image gradients `[n, P]` (layer space) on an autodiff `device`: of the cross-entropy at
/// the true labels (`measurement = None`, training examples) or of the query measurement.
pub fn classifier_gradients(
    model: &MnistClassifier,
    rows: &[f32],
    labels: &[u8],
    measurement: Option<ClassMeasurement>,
    device: &Device,
) -> Tensor<2> {
    let n = labels.len();
    let mut tap = Tap::recording();
    let logits = model.forward_tapped(images_tensor(rows, n, device), &mut tap);
    let y = one_hot(labels, NUM_CLASSES, device);
    let per = match measurement {
        None | Some(ClassMeasurement::CrossEntropy) => {
            SoftmaxCrossEntropy.per_datum_loss(&CurvatureOutput::unweighted(logits, y))
        }
        Some(ClassMeasurement::Margin) => {
            let true_logit = (logits.clone() * y.clone()).sum_dim(1);
            // The largest other logit: mask the true class far below every other logit.
            let other = (logits - y.mul_scalar(1e9)).max_dim(1);
            (other - true_logit).reshape([n])
        }
    };
    let grads = per.sum().backward();
    per_datum_gradients(tap.records(), &grads)
}

/// The covered layers of the classifier (names and shapes), from one recording forward pass.
pub fn classifier_layer_infos(model: &MnistClassifier, dev: &Device) -> Vec<LayerInfo> {
    let ad = dev.clone().autodiff();
    let m = model.clone().fork(&ad);
    let names = layer_names(&m);
    let mut tap = Tap::recording();
    let y = m.forward_tapped(Tensor::zeros([1, 1, CLASSIFIER_SIDE, CLASSIFIER_SIDE], &ad), &mut tap);
    let grads = y.sum().backward();
    let mut acc = curvature::factors::FactorAccumulator::new(curvature::KfacApprox::Expand);
    let name = |id: u64| names.get(&ParamId::from(id)).cloned().unwrap_or_default();
    acc.add_activations(tap.records(), &name);
    acc.add_gradients(tap.records(), &grads);
    acc.add_data(1);
    acc.finish().layers.into_iter().map(|l| l.info).collect()
}

/// Scores `[L][Q x range]` (one matrix per damping) of the training images in `range` against
/// the queries (`[Q, 28*28]` images with their labels); `progress` sees one stage, `score`.
#[allow(clippy::too_many_arguments)]
pub fn score_classifier_range(
    model: &MnistClassifier,
    curv: &EigenCurvature,
    queries: &[f32],
    query_labels: &[u8],
    train: &Dataset,
    range: Range<usize>,
    measurement: ClassMeasurement,
    lambdas: &[f64],
    images_per_batch: usize,
    dev: &Device,
    progress: &dyn Progress,
) -> Vec<Vec<f32>> {
    let ad = dev.clone().autodiff();
    let model = model.clone().fork(&ad);
    let qg = classifier_gradients(&model, queries, query_labels, Some(measurement), &ad).inner();
    let scorer = Scorer::new(curv, qg, lambdas.to_vec());
    let scores = scorer.score_range(range, images_per_batch, progress, |chunk| {
        let rows: Vec<f32> = chunk.iter().flat_map(|&i| train.image(i).iter().copied()).collect();
        let labels: Vec<u8> = chunk.iter().map(|&i| train.labels[i]).collect();
        Ok::<_, std::convert::Infallible>(classifier_gradients(&model, &rows, &labels, None, &ad).inner())
    });
    scores.unwrap_or_else(|e| match e {})
}

/// The embedded MNIST subset (5000 training, 1000 test images, 28x28), or the full set from a
/// directory of IDX files.
pub fn classifier_data(dir: Option<&Path>) -> Result<(Dataset, Dataset)> {
    let train = data::load_mnist(dir, Split::Train)?;
    let test = data::load_mnist(dir, Split::Test)?;
    Ok((train, test))
}

/// The first `q` test images and their labels (the queries of `attribute classifier`).
pub fn test_queries(test: &Dataset, q: usize) -> Result<(Vec<f32>, Vec<u8>)> {
    if q == 0 || q > test.n {
        bail!("--queries {q}: need 1..={} (test images)", test.n);
    }
    let rows = (0..q).flat_map(|i| test.image(i).iter().copied()).collect();
    Ok((rows, test.labels[..q].to_vec()))
}

/// What `attribute classifier fit` does: fit the curvature of a trained classifier on its
/// training set and save it with its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierFitJob {
    /// Classifier weights (`mnist_classifier::save_classifier`).
    pub model: PathBuf,
    /// MNIST IDX directory (`None`: the embedded subset).
    pub data: Option<PathBuf>,
    /// Output factor file.
    pub out: PathBuf,
    /// How the curvature is estimated.
    pub curvature: CurvatureSettings,
}

impl ClassifierFitJob {
    /// Fits and writes the factor file; returns the number of layers.
    pub fn run(&self, dev: &Device, progress: &dyn Progress) -> Result<usize> {
        if self.curvature.factor_draws == 0 || self.curvature.batch == 0 {
            bail!("--factor-draws and --batch must be at least 1");
        }
        let model = load_classifier(&self.model, dev)
            .map_err(|e| crate::error::AttributionError::Invalid(e.to_string()))?;
        let (train, _) = classifier_data(self.data.as_deref())?;
        let stages = if self.curvature.ekfac { 2 } else { 1 };
        progress.start("factors", stages * train.n as u64 * self.curvature.factor_draws);
        let curv =
            fit_classifier_curvature(&model, &train, &self.curvature, dev, |n| progress.advance(n as u64));
        progress.finish();
        let curv = curv.with_meta(fit_meta(&self.curvature, curvature::LossKind::CrossEntropy));
        curv.save(&self.out)?;
        Ok(curv.layers.len())
    }
}

/// What `attribute classifier score` does: score (a shard of) the training set against the first
/// `queries` test images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierScoreJob {
    /// Classifier weights.
    pub model: PathBuf,
    /// MNIST IDX directory (`None`: the embedded subset).
    pub data: Option<PathBuf>,
    /// Factor file from [`ClassifierFitJob`].
    pub factors: PathBuf,
    /// Number of queries (the first test images).
    pub queries: usize,
    /// Output .npy (`[queries x columns]` for the first damping; the others beside it).
    pub out: PathBuf,
    /// Shard `(i, n)` of the training set.
    pub shard: (usize, usize),
    /// What is attributed.
    pub measurement: ClassMeasurement,
    /// Damping values (absolute, mean-loss GGN units); the first is the one written at `out`.
    pub lambdas: Vec<f64>,
    /// Training images per gradient pass (shards are aligned to it).
    pub images_per_batch: usize,
    /// Settings the factor file must have been fitted with (`None`: accept any).
    pub expect: Option<CurvatureMeta>,
}

impl ClassifierScoreJob {
    /// Scores and writes the matrices; returns `(queries, columns)`.
    pub fn run(&self, dev: &Device, progress: &dyn Progress) -> Result<(usize, usize)> {
        let (i, n) = self.shard;
        if n == 0 || i >= n {
            bail!("--shard {i}/{n}: need 0 <= i < n");
        }
        crate::scoring::validate_lambdas(&self.lambdas)?;
        let model = load_classifier(&self.model, dev)
            .map_err(|e| crate::error::AttributionError::Invalid(e.to_string()))?;
        let infos = classifier_layer_infos(&model, dev);
        let curv = EigenCurvature::load(&self.factors, Some(&infos))?;
        curv.meta.check(&self.factors, curvature::LossKind::CrossEntropy, self.expect.as_ref())?;
        let (train, test) = classifier_data(self.data.as_deref())?;
        let (queries, labels) = test_queries(&test, self.queries)?;
        let range = shard_columns(train.n, self.images_per_batch, self.shard);
        let cols = range.len();
        let scores = score_classifier_range(
            &model,
            &curv,
            &queries,
            &labels,
            &train,
            range,
            self.measurement,
            &self.lambdas,
            self.images_per_batch,
            dev,
            progress,
        );
        let meta = ScoreMeta {
            curvature: curv.meta.clone(),
            measurement: self.measurement.to_string(),
            shard: self.shard,
        };
        write_score_grid(&self.out, &self.lambdas, &scores, self.queries, cols)?;
        meta.write_beside(&self.out, &self.lambdas)?;
        Ok((self.queries, cols))
    }
}

/// The classifier demo: train a small CNN on the embedded MNIST subset, fit EK-FAC on its
/// training set, score the training set against test queries, report how often proponents share
/// the query's label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierDemoConfig {
    /// Output directory.
    pub out: PathBuf,
    /// Queries: the first this many test images.
    pub queries: usize,
    /// Proponents and opponents shown per query.
    pub top_k: usize,
    /// Training epochs of the demo classifier.
    pub epochs: usize,
    /// Curvature fitting.
    pub curvature: CurvatureSettings,
    /// What is attributed.
    pub measurement: ClassMeasurement,
    /// Damping grid; the first is the one shown.
    pub lambdas: Vec<f64>,
}

impl ClassifierDemoConfig {
    /// The demo classifier: the project's CNN, narrowed (8 and 16 channels, 32 features:
    /// 30k parameters) so that the whole demo fits in minutes on two cores.
    pub fn model(&self) -> MnistClassifierConfig {
        MnistClassifierConfig::new().with_channels_1(8).with_channels_2(16).with_feature_dim(32)
    }

    /// Runs the demo; returns the path of `report.md`.
    pub fn run(&self, dev: &Device, progress: &dyn Progress) -> Result<PathBuf> {
        crate::scoring::validate_lambdas(&self.lambdas)?;
        if self.epochs == 0 || self.curvature.factor_draws == 0 || self.curvature.batch == 0 {
            bail!("--epochs, --factor-draws and --batch must be at least 1");
        }
        let started = Instant::now();
        std::fs::create_dir_all(&self.out).with_context(|| self.out.display().to_string())?;
        let (train, test) = classifier_data(None)?;
        let (queries, qlabels) = test_queries(&test, self.queries)?;
        let q = qlabels.len();

        // 1. Train (or reuse) the classifier.
        let t0 = Instant::now();
        let weights = self.out.join("classifier.safetensors");
        let settings_file = self.out.join("classifier-settings.json");
        let cfg = ClassifierTrainConfig::new().with_model(self.model()).with_epochs(self.epochs);
        let wanted = serde_json::to_string(&cfg)?;
        let reuse = weights.is_file() && std::fs::read_to_string(&settings_file).is_ok_and(|s| s == wanted);
        let (model, accuracy) = if reuse {
            let m = load_classifier(&weights, dev)
                .map_err(|e| crate::error::AttributionError::Invalid(e.to_string()))?;
            let acc = mnist_classifier::accuracy(&m, &test, dev);
            (m, acc)
        } else {
            let (m, report) = train_classifier_with_report(&train, &test, &cfg, 0, progress)
                .map_err(|e| crate::error::AttributionError::Invalid(e.to_string()))?;
            progress.finish();
            save_classifier(&m, &weights)
                .map_err(|e| crate::error::AttributionError::Invalid(e.to_string()))?;
            write_bytes(&settings_file, wanted.as_bytes())?;
            (m, report.accuracy)
        };
        let train_secs = t0.elapsed().as_secs_f64();

        // 2. EK-FAC on the training set.
        let t0 = Instant::now();
        let stages = if self.curvature.ekfac { 2 } else { 1 };
        progress.start("factors", stages * train.n as u64 * self.curvature.factor_draws);
        let curv =
            fit_classifier_curvature(&model, &train, &self.curvature, dev, |n| progress.advance(n as u64))
                .with_meta(fit_meta(&self.curvature, curvature::LossKind::CrossEntropy));
        progress.finish();
        curv.save(&self.out.join("ekfac.safetensors"))?;
        let fit_secs = t0.elapsed().as_secs_f64();
        let ev = curv.eigenvalues();
        let mean_ev = ev.iter().sum::<f64>() / ev.len() as f64;

        // 3. Scores for the damping grid.
        let t0 = Instant::now();
        let scores = score_classifier_range(
            &model,
            &curv,
            &queries,
            &qlabels,
            &train,
            0..train.n,
            self.measurement,
            &self.lambdas,
            100,
            dev,
            progress,
        );
        let score_secs = t0.elapsed().as_secs_f64();
        let scores_path = self.out.join("scores.npy");
        write_score_grid(&scores_path, &self.lambdas, &scores, q, train.n)?;
        ScoreMeta { curvature: curv.meta.clone(), measurement: self.measurement.to_string(), shard: (0, 1) }
            .write_beside(&scores_path, &self.lambdas)?;

        // 4. Report: label agreement of proponents and opponents, and image rows.
        let proba = predict_proba(&model, &queries, q, dev);
        let predicted: Vec<usize> = proba.iter().map(argmax).collect();
        let n = train.n;
        let order = |li: usize, qi: usize| -> Vec<usize> {
            let row = &scores[li][qi * n..(qi + 1) * n];
            let mut o: Vec<usize> = (0..n).collect();
            o.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            o
        };
        let top = 10.min(n / 2);
        let chance: f64 = qlabels
            .iter()
            .map(|&l| train.labels.iter().filter(|&&t| t == l).count() as f64 / n as f64)
            .sum::<f64>()
            / q as f64;
        let mut md = String::new();
        md.push_str("# Classifier attribution demo\n\n");
        md.push_str(&format!(
            "A {}-parameter MNIST CNN ({} epochs on the embedded N = {n} training images, test accuracy {:.3}); \
             queries: the first {q} test images with their true labels, measurement: {}.\n\
             EK-FAC: softmax cross-entropy, GGN {:?}, {:?}, {} label draws per example per pass; mean eigenvalue {mean_ev:.3e}.\n\
             Positive score = removing the training image is predicted to raise the query's {} (a proponent).\n\n",
            model.num_params(), self.epochs, accuracy, self.measurement, self.curvature.ggn, self.curvature.approx,
            self.curvature.factor_draws, self.measurement
        ));
        md.push_str("| stage | seconds |\n|---|---|\n");
        md.push_str(&format!(
            "| train{} | {train_secs:.1} |\n| fit EK-FAC | {fit_secs:.1} |\n| score | {score_secs:.1} |\n\n",
            if reuse { " (reused)" } else { "" }
        ));
        md.push_str(&format!(
            "Share of each query's top-{top} proponents / opponents with the query's label (chance: {chance:.3}, the share of the query's class in the training set):\n\n\
             | lambda | proponents | opponents |\n|---|---|---|\n"
        ));
        for (li, l) in self.lambdas.iter().enumerate() {
            let (mut pro, mut opp) = (0usize, 0usize);
            for (qi, &label) in qlabels.iter().enumerate() {
                let o = order(li, qi);
                pro += o[..top].iter().filter(|&&i| train.labels[i] == label).count();
                opp += o[n - top..].iter().filter(|&&i| train.labels[i] == label).count();
            }
            let (ps, os) = (pro as f64 / (top * q) as f64, opp as f64 / (top * q) as f64);
            md.push_str(&format!("| {l:e} | {ps:.3} | {os:.3} |\n"));
        }
        md.push_str("\n| query | label | predicted | top proponents (index: label) |\n|---|---|---|---|\n");
        let k = self.top_k.min(n / 2);
        let d = CLASSIFIER_SIDE * CLASSIFIER_SIDE;
        let mut grid = Vec::new();
        for qi in 0..q {
            let o = order(0, qi);
            grid.extend_from_slice(&queries[qi * d..(qi + 1) * d]);
            for &i in &o[..k] {
                grid.extend_from_slice(train.image(i));
            }
            for &i in o.iter().rev().take(k) {
                grid.extend_from_slice(train.image(i));
            }
            let listed: Vec<String> =
                o[..5.min(n)].iter().map(|&i| format!("{i}: {}", train.labels[i])).collect();
            md.push_str(&format!("| {qi} | {} | {} | {} |\n", qlabels[qi], predicted[qi], listed.join(", ")));
        }
        let row_labels: Vec<String> = (0..q).map(|qi| format!("q{qi}\nlabel {}", qlabels[qi])).collect();
        let layout = crate::plot::RowsLayout { rows: q, k, height: CLASSIFIER_SIDE, width: CLASSIFIER_SIDE };
        crate::plot::write_attribution_rows(&self.out.join("rows.png"), &grid, &layout, &row_labels)?;
        md.push_str(&format!(
            "\nRows in `rows.png`: query, its top {k} proponents, its top {k} opponents.\n\nTotal {:.1} s.\n",
            started.elapsed().as_secs_f64()
        ));
        let path = self.out.join("report.md");
        write_bytes(&path, md.as_bytes())?;
        Ok(path)
    }
}

/// Reads a score matrix written by [`ClassifierScoreJob`] (for tests and tools).
pub fn read_scores(path: &Path) -> Result<(Vec<f32>, usize, usize)> {
    read_matrix(path).with_context(|| path.display().to_string())
}
