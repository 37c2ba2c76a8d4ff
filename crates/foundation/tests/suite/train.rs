//! The generic trainer on a least-squares objective with a closed-form gradient.

use std::ops::Range;

use burn::module::{Module, Param};
use burn::prelude::*;
use foundation::progress::NoProgress;
use foundation::rng::{normals, stream};
use foundation::train::{clip_global_norm, Event, Objective, OptimConfig, Trainer};

#[derive(Module, Debug)]
struct Linear {
    w: Param<Tensor<1>>,
}

/// `mean_i (x_i . w - y_i)^2` over fixed rows; every step uses all of them.
struct LeastSquares {
    x: Vec<f32>,
    y: Vec<f32>,
    n: usize,
    d: usize,
}

#[derive(Clone)]
struct Rows {
    x: Tensor<2>,
    y: Tensor<1>,
}

impl Objective<Linear> for LeastSquares {
    type Batch = Rows;
    fn batch(&self, _step: usize, device: &Device) -> Rows {
        Rows {
            x: Tensor::from_data(TensorData::new(self.x.clone(), [self.n, self.d]), device),
            y: Tensor::from_data(TensorData::new(self.y.clone(), [self.n]), device),
        }
    }
    fn batch_len(&self, b: &Rows) -> usize {
        b.y.dims()[0]
    }
    fn slice(&self, b: &Rows, r: Range<usize>) -> Rows {
        let len = r.end - r.start;
        Rows { x: b.x.clone().narrow(0, r.start, len), y: b.y.clone().narrow(0, r.start, len) }
    }
    fn loss(&self, model: &Linear, b: Rows) -> Tensor<1> {
        let n = b.y.dims()[0];
        let d = self.d;
        let pred = b.x.matmul(model.w.val().reshape([d, 1])).reshape([n]);
        (pred - b.y).square().mean()
    }
}

fn problem() -> (LeastSquares, Vec<f32>) {
    let (n, d) = (10, 3);
    let mut rng = stream(1, 0, 0);
    let x = normals(&mut rng, n * d);
    let y = normals(&mut rng, n);
    let w = vec![0.5f32, -1.0, 2.0];
    (LeastSquares { x, y, n, d }, w)
}

/// `2/n X^T (X w - y)` in f64.
fn closed_form_gradient(p: &LeastSquares, w: &[f32]) -> Vec<f64> {
    let r: Vec<f64> = (0..p.n)
        .map(|i| (0..p.d).map(|j| p.x[i * p.d + j] as f64 * w[j] as f64).sum::<f64>() - p.y[i] as f64)
        .collect();
    (0..p.d)
        .map(|j| (0..p.n).map(|i| 2.0 * p.x[i * p.d + j] as f64 * r[i]).sum::<f64>() / p.n as f64)
        .collect()
}

fn config(microbatches: usize) -> OptimConfig {
    OptimConfig {
        steps: 5,
        lr: 0.1,
        warmup_steps: 0,
        min_lr_ratio: 1.0,
        weight_decay: 0.0,
        grad_clip: None,
        ema_decay: 0.0,
        seed: 0,
        microbatches,
    }
}

#[test]
fn microbatch_gradients_and_clipping_match_the_closed_form() {
    let (p, w) = problem();
    let want = closed_form_gradient(&p, &w);
    let want_norm = want.iter().map(|g| g * g).sum::<f64>().sqrt();
    for parts in [1, 3] {
        let trainer = Trainer::new(
            config(parts),
            LeastSquares { x: p.x.clone(), y: p.y.clone(), n: p.n, d: p.d },
            &Device::flex(),
        );
        let state =
            trainer.init_state(|_, d| Linear { w: Param::from_data(TensorData::new(w.clone(), [3]), d) });
        let batch = trainer.objective.batch(0, &trainer.device);
        let (_, mut grads) = trainer.gradients(&state.model, batch, 0);
        let got: Vec<f32> = grads.get::<1>(state.model.w.id).unwrap().into_data().try_into_vec().unwrap();
        for (g, e) in got.iter().zip(&want) {
            assert!((*g as f64 - e).abs() < 1e-5 * want_norm, "{parts} parts: {got:?} vs {want:?}");
        }
        // Clipping to half the norm halves every component and reports the norm before.
        let norm = clip_global_norm(&state.model, &mut grads, want_norm / 2.0);
        assert!((norm - want_norm).abs() < 1e-5 * want_norm);
        let clipped: Vec<f32> = grads.get::<1>(state.model.w.id).unwrap().into_data().try_into_vec().unwrap();
        for (c, g) in clipped.iter().zip(&got) {
            assert!((c - g / 2.0).abs() < 1e-6, "{clipped:?} vs {got:?}");
        }
    }
}

#[test]
fn run_takes_the_steps_and_reports_them() {
    let (p, w) = problem();
    let trainer = Trainer::new(config(1), p, &Device::flex());
    let mut state =
        trainer.init_state(|_, d| Linear { w: Param::from_data(TensorData::new(w.clone(), [3]), d) });
    let mut losses = Vec::new();
    trainer
        .run(&mut state, 5, None, &NoProgress, |e| {
            if let Event::Step { loss, .. } = e {
                losses.push(loss);
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(state.step, 5);
    assert_eq!(losses.len(), 5);
    assert!(losses[4] < losses[0], "{losses:?}");
    // ema_decay 0: the EMA is the model.
    let ema: Vec<f32> = state.ema.w.val().into_data().try_into_vec().unwrap();
    let model: Vec<f32> = state.model.w.val().into_data().try_into_vec().unwrap();
    assert_eq!(ema, model);
}
