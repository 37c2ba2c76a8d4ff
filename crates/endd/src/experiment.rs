//! One experiment, whatever the data: train (or resume) the ensemble, save its outputs on the
//! distillation inputs as teacher files, distil the students (EnD, EnD², EnD²+AUX and optionally
//! EnD²+AUX without annealing), evaluate every model and write `report.md`, `summary.json` and the
//! PNGs into the output directory.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use burn::prelude::Device;
use foundation::plot::write_png;
use foundation::progress::Progress;
use serde::Serialize;

use crate::loss::Anneal;
use crate::metrics::{
    argmax, aupr, auroc, ece_percent, error_percent, nll, prediction_rejection_ratio, spearman,
};
use crate::model::{Arch, Net};
use crate::plot::{heatmaps, histogram};
use crate::train::{
    load_ensemble, load_teacher, logits, save_teacher, train_ensemble, train_student, EnsembleSpec, Inputs,
    Labeled, Shard, StudentKind, StudentSpec, Teacher, TrainSettings,
};
use crate::uncertainty::{dirichlet_uncertainty, ensemble_uncertainty, entropy, Uncertainty};
use crate::EndError;

/// The settings of an experiment.
#[derive(Clone, Debug, Serialize)]
pub struct ExperimentConfig {
    /// Architecture of members and students.
    pub arch: Arch,
    /// Ensemble size `M`.
    pub members: usize,
    /// Member training.
    pub member_train: TrainSettings,
    /// Student training.
    pub student_train: TrainSettings,
    /// Temperature schedule of the students.
    pub anneal: Anneal,
    /// Base seed.
    pub seed: u64,
    /// Also distil EnD²+AUX without annealing (the ablation).
    pub ablation: bool,
    /// Local worker threads for the ensemble.
    pub jobs: usize,
    /// Train only this shard of the ensemble, then stop.
    #[serde(skip)]
    pub shard: Option<Shard>,
}

/// The data of an experiment.
pub struct ExperimentData {
    /// Name shown in the report.
    pub name: String,
    /// Training data (members, and the students' inputs).
    pub train: Labeled,
    /// Test data.
    pub test: Labeled,
    /// Auxiliary distillation inputs (+AUX).
    pub aux: Inputs,
    /// Out-of-distribution test inputs and their name.
    pub ood: Option<(String, Inputs)>,
    /// Input-plane grid (side, points) for the knowledge-uncertainty pictures.
    pub grid: Option<(usize, Inputs)>,
}

/// The figures of one model.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Model name.
    pub model: String,
    /// Test error, percent.
    pub error: f64,
    /// Test NLL.
    pub nll: f64,
    /// Expected calibration error, percent (15 bins).
    pub ece: f64,
    /// Misclassification detection by total uncertainty: AUROC, percent.
    pub misc_auroc: f64,
    /// Misclassification detection by total uncertainty: AUPR, percent.
    pub misc_aupr: f64,
    /// Prediction-rejection ratio by total uncertainty, percent.
    pub prr: f64,
    /// OOD detection AUROC (percent) by total, data and knowledge uncertainty.
    pub ood_auroc: [f64; 3],
    /// Median knowledge uncertainty on the test and OOD inputs.
    pub median_ku: [f64; 2],
}

/// What an experiment measured.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// One row per model.
    pub rows: Vec<Row>,
    /// Spearman correlation over the grid of the ensemble's knowledge uncertainty with EnD²+AUX's
    /// and with EnD²'s (no AUX).
    pub grid_spearman: Option<[f64; 2]>,
    /// Wall-clock seconds: ensemble, students, evaluation.
    pub seconds: [f64; 3],
}

/// Predictive probabilities and uncertainties of one model on a set of inputs.
struct Eval {
    probs: Vec<f64>,
    unc: Vec<Uncertainty>,
}

fn eval_categorical(net: &Net, x: &Inputs, k: usize) -> Eval {
    let z = logits(net, x, k);
    let mut probs = Vec::with_capacity(z.len());
    let mut unc = Vec::with_capacity(x.n);
    for row in z.chunks_exact(k) {
        let p = crate::loss::softmax_t(row, 1.0);
        let h = entropy(&p);
        unc.push(Uncertainty {
            total: h,
            data: h,
            knowledge: f64::NAN,
            epkl: f64::NAN,
            diff_entropy: f64::NAN,
        });
        probs.extend(p);
    }
    Eval { probs, unc }
}

fn eval_dirichlet(net: &Net, x: &Inputs, k: usize) -> Eval {
    let z = logits(net, x, k);
    let mut probs = Vec::with_capacity(z.len());
    let mut unc = Vec::with_capacity(x.n);
    for row in z.chunks_exact(k) {
        let alpha: Vec<f64> = row.iter().map(|&v| (v as f64).exp()).collect();
        let a0: f64 = alpha.iter().sum();
        probs.extend(alpha.iter().map(|a| a / a0));
        unc.push(dirichlet_uncertainty(&alpha));
    }
    Eval { probs, unc }
}

fn eval_ensemble(members: &[Net], x: &Inputs, k: usize) -> Eval {
    let m = members.len();
    let per: Vec<Vec<f32>> = members.iter().map(|n| logits(n, x, k)).collect();
    let mut probs = Vec::with_capacity(x.n * k);
    let mut unc = Vec::with_capacity(x.n);
    let mut all = vec![0.0; m * k];
    for i in 0..x.n {
        for (j, z) in per.iter().enumerate() {
            let p = crate::loss::softmax_t(&z[i * k..(i + 1) * k], 1.0);
            all[j * k..(j + 1) * k].copy_from_slice(&p);
        }
        let mut mean = vec![0.0; k];
        for j in 0..m {
            for c in 0..k {
                mean[c] += all[j * k + c] / m as f64;
            }
        }
        probs.extend(mean);
        unc.push(ensemble_uncertainty(&all, m, k));
    }
    Eval { probs, unc }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn row(model: &str, test: &Eval, ood: Option<&Eval>, data: &Labeled, k: usize) -> Row {
    let labels = &data.labels;
    let errors: Vec<bool> = test.probs.chunks_exact(k).zip(labels).map(|(p, &y)| argmax(p) != y).collect();
    let tu: Vec<f64> = test.unc.iter().map(|u| u.total).collect();
    let pct = |v: Option<f64>| v.map_or(f64::NAN, |x| 100.0 * x);
    let mut ood_auroc = [f64::NAN; 3];
    let mut median_ku = [median(&mut test.unc.iter().map(|u| u.knowledge).collect::<Vec<_>>()), f64::NAN];
    if let Some(o) = ood {
        let pick: [fn(&Uncertainty) -> f64; 3] = [|u| u.total, |u| u.data, |u| u.knowledge];
        for (slot, f) in ood_auroc.iter_mut().zip(pick) {
            let scores: Vec<f64> = test.unc.iter().chain(&o.unc).map(f).collect();
            if scores.iter().all(|s| s.is_finite()) {
                let is_ood: Vec<bool> = (0..scores.len()).map(|i| i >= test.unc.len()).collect();
                *slot = pct(auroc(&scores, &is_ood));
            }
        }
        median_ku[1] = median(&mut o.unc.iter().map(|u| u.knowledge).collect::<Vec<_>>());
    }
    Row {
        model: model.to_string(),
        error: error_percent(&test.probs, k, labels),
        nll: nll(&test.probs, k, labels),
        ece: ece_percent(&test.probs, k, labels, 15),
        misc_auroc: pct(auroc(&tu, &errors)),
        misc_aupr: pct(aupr(&tu, &errors)),
        prr: pct(prediction_rejection_ratio(&tu, &errors)),
        ood_auroc,
        median_ku,
    }
}

/// Runs the experiment into `out`, training and evaluating on `device` (not part of `cfg`: the
/// settings written to the output directory, and compared on resume, do not name a device).
/// Returns `None` when only a shard of the ensemble was trained (run the other shards, then again
/// without `--shard`).
pub fn run(
    out: &Path,
    cfg: &ExperimentConfig,
    d: &ExperimentData,
    device: &Device,
    progress: &dyn Progress,
) -> Result<Option<Summary>, EndError> {
    let k = cfg.arch.classes();
    let spec = EnsembleSpec {
        arch: cfg.arch.clone(),
        train: cfg.member_train.clone(),
        members: cfg.members,
        seed: cfg.seed,
    };
    let ens_dir = out.join("ensemble");
    let t0 = Instant::now();
    train_ensemble(&ens_dir, &spec, &d.train, cfg.shard.unwrap_or(Shard::ALL), cfg.jobs, device, progress)?;
    if cfg.shard.is_some_and(|s| s.count > 1) {
        return Ok(None);
    }
    let members = load_ensemble(&ens_dir, &spec, device)?;
    let t_ens = t0.elapsed().as_secs_f64();

    // Teacher outputs go through their files, so a student is always distilled from a checked file.
    let t1 = Instant::now();
    let teacher_for = |name: &str, x: &Inputs| -> Result<Teacher, EndError> {
        let path = out.join(format!("teacher-{name}.safetensors"));
        if !path.exists() {
            save_teacher(&path, &crate::train::teacher_logits(&members, x, k)?)?;
        }
        load_teacher(&path, cfg.members, k, x.n)
    };
    let t_train = teacher_for("train", &d.train.inputs)?;
    let t_aux = teacher_for("aux", &d.aux)?;
    let both = d.train.inputs.concat(&d.aux);
    let mut t_both = t_train.clone();
    t_both.logits.extend_from_slice(&t_aux.logits);
    t_both.n += t_aux.n;

    let student = |name: &str, kind, anneal, inputs: &Inputs, teacher: &Teacher, s: u64| {
        let spec = StudentSpec {
            arch: cfg.arch.clone(),
            train: cfg.student_train.clone(),
            kind,
            anneal,
            seed: cfg.seed.wrapping_add(1_000_000 + s),
            inputs: inputs.n,
        };
        train_student(
            &out.join("students").join(format!("{name}.safetensors")),
            &spec,
            inputs,
            teacher,
            device,
            progress,
        )
    };
    let end = student("end", StudentKind::End, cfg.anneal, &d.train.inputs, &t_train, 0)?;
    let end2 = student("end2", StudentKind::End2, cfg.anneal, &d.train.inputs, &t_train, 1)?;
    let end2_aux = student("end2-aux", StudentKind::End2, cfg.anneal, &both, &t_both, 2)?;
    let ablation = if cfg.ablation {
        Some(student("end2-aux-no-anneal", StudentKind::End2, Anneal::OFF, &both, &t_both, 2)?)
    } else {
        None
    };
    let t_students = t1.elapsed().as_secs_f64();

    let t2 = Instant::now();
    let test = &d.test.inputs;
    let ood = d.ood.as_ref().map(|(_, x)| x);
    type Evaluator<'a> = Box<dyn Fn(&Inputs) -> Eval + 'a>;
    let mut models: Vec<(&str, Evaluator)> = vec![
        ("Single model", Box::new(|x: &Inputs| eval_categorical(&members[0], x, k))),
        ("Ensemble", Box::new(|x: &Inputs| eval_ensemble(&members, x, k))),
        ("EnD", Box::new(|x: &Inputs| eval_categorical(&end, x, k))),
        ("EnD²", Box::new(|x: &Inputs| eval_dirichlet(&end2, x, k))),
        ("EnD²+AUX", Box::new(|x: &Inputs| eval_dirichlet(&end2_aux, x, k))),
    ];
    if let Some(a) = &ablation {
        models.push(("EnD²+AUX, no annealing", Box::new(move |x: &Inputs| eval_dirichlet(a, x, k))));
    }
    let mut rows = Vec::new();
    let mut ku_sets = Vec::new();
    for (name, f) in &models {
        let e_test = f(test);
        let e_ood = ood.map(f);
        rows.push(row(name, &e_test, e_ood.as_ref(), &d.test, k));
        if *name == "Ensemble" || *name == "EnD²+AUX" {
            if let Some(o) = &e_ood {
                let ku = |e: &Eval| e.unc.iter().map(|u| u.knowledge).collect::<Vec<f64>>();
                ku_sets.push((name.to_string(), ku(&e_test), ku(o)));
            }
        }
    }
    let mut grid_spearman = None;
    let mut grid_max = Vec::new();
    if let Some((side, g)) = &d.grid {
        let ku = |e: Eval| e.unc.iter().map(|u| u.knowledge).collect::<Vec<f64>>();
        let (ens, e2, e2a) = (
            ku(eval_ensemble(&members, g, k)),
            ku(eval_dirichlet(&end2, g, k)),
            ku(eval_dirichlet(&end2_aux, g, k)),
        );
        grid_spearman = Some([spearman(&ens, &e2a), spearman(&ens, &e2)]);
        let (img, maxes) = heatmaps(&[&ens, &e2, &e2a], *side);
        write_png(&out.join("ku-grid.png"), &img)?;
        grid_max = maxes;
    }
    let mut hist_ranges = Vec::new();
    for (name, ind, o) in &ku_sets {
        let (img, range) = histogram(ind, o, 60);
        let file = if name == "Ensemble" { "ku-hist-ensemble.png" } else { "ku-hist-end2-aux.png" };
        write_png(&out.join(file), &img)?;
        hist_ranges.push((file, range));
    }
    let summary = Summary { rows, grid_spearman, seconds: [t_ens, t_students, t2.elapsed().as_secs_f64()] };
    write_report(out, cfg, d, &summary, &grid_max, &hist_ranges)?;
    Ok(Some(summary))
}

fn fmt(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "—".into()
    }
}

fn write_report(
    out: &Path,
    cfg: &ExperimentConfig,
    d: &ExperimentData,
    s: &Summary,
    grid_max: &[f64],
    hist: &[(&str, (f64, f64))],
) -> Result<(), EndError> {
    let mut r = String::new();
    let _ = writeln!(r, "# Ensemble distribution distillation: {}\n", d.name);
    let _ = writeln!(
        r,
        "{} training inputs, {} auxiliary (AUX) inputs, {} test inputs{}; ensemble of {} members; seed {}.\n",
        d.train.inputs.n,
        d.aux.n,
        d.test.inputs.n,
        d.ood.as_ref().map_or(String::new(), |(n, x)| format!(", {} OOD inputs ({n})", x.n)),
        cfg.members,
        cfg.seed
    );
    let _ = writeln!(
        r,
        "Members: {} epochs, batch {}, lr {}. Students: {} epochs, batch {}, lr {}, annealing T0 = {} held {} \
         epochs then linear to 1 over {} epochs, loss × T².\n",
        cfg.member_train.epochs,
        cfg.member_train.batch_size,
        cfg.member_train.lr,
        cfg.student_train.epochs,
        cfg.student_train.batch_size,
        cfg.student_train.lr,
        cfg.anneal.t0,
        cfg.anneal.hold_epochs,
        cfg.anneal.decay_epochs
    );
    let _ = writeln!(
        r,
        "| model | error % | NLL | ECE % | misc. AUROC % (TU) | misc. AUPR % (TU) | PRR % (TU) | OOD AUROC % TU | \
         OOD AUROC % DU | OOD AUROC % KU | median KU test | median KU OOD |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &s.rows {
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.model,
            fmt(row.error, 2),
            fmt(row.nll, 3),
            fmt(row.ece, 2),
            fmt(row.misc_auroc, 1),
            fmt(row.misc_aupr, 1),
            fmt(row.prr, 1),
            fmt(row.ood_auroc[0], 1),
            fmt(row.ood_auroc[1], 1),
            fmt(row.ood_auroc[2], 1),
            if row.median_ku[0].is_finite() { format!("{:.2e}", row.median_ku[0]) } else { "—".into() },
            if row.median_ku[1].is_finite() { format!("{:.2e}", row.median_ku[1]) } else { "—".into() },
        );
    }
    let _ = writeln!(
        r,
        "\nTU: total uncertainty (entropy of the predictive), DU: expected data uncertainty, KU: knowledge \
         uncertainty (mutual information; undefined for one categorical model). Misclassification detection and \
         PRR rank test inputs by TU. OOD AUROC: test inputs negative, OOD inputs positive.\n"
    );
    if let Some([with_aux, without]) = s.grid_spearman {
        let _ = writeln!(
            r,
            "Spearman correlation of knowledge uncertainty over the {0}×{0} input grid: ensemble vs EnD²+AUX \
             **{with_aux:.3}**, ensemble vs EnD² (no AUX) **{without:.3}**.\n",
            d.grid.as_ref().map_or(0, |g| g.0)
        );
        let _ = writeln!(
            r,
            "![KU over the input plane](ku-grid.png)\n\n`ku-grid.png`: knowledge uncertainty over the grid, left to \
             right ensemble, EnD², EnD²+AUX; each panel coloured by sqrt(KU / its maximum), dark 0 to yellow maximum; maxima {}.\n",
            grid_max.iter().map(|m| format!("{m:.3}")).collect::<Vec<_>>().join(", ")
        );
    }
    for (file, (lo, hi)) in hist {
        let _ = writeln!(
            r,
            "![KU histogram]({file})\n\n`{file}`: histogram of ln KU, test inputs blue, OOD orange (overlap dark), each \
             scaled to its own peak; horizontal axis ln KU from {lo:.2} to {hi:.2}.\n"
        );
    }
    let _ = writeln!(
        r,
        "Wall time: ensemble {:.0} s, teacher files + students {:.0} s, evaluation {:.0} s.",
        s.seconds[0], s.seconds[1], s.seconds[2]
    );
    foundation::atomic::write_bytes(&out.join("report.md"), r.as_bytes())?;
    let json = serde_json::to_string_pretty(&serde_json::json!({ "config": cfg, "summary": s }))
        .expect("JSON values serialise");
    foundation::atomic::write_bytes(&out.join("summary.json"), json.as_bytes())?;
    Ok(())
}
