//! The transformer: causal mask, learning (overfitting one batch), greedy decoding.

use burn::prelude::*;
use meta_ocl::model::ModelConfig;
use meta_ocl::train::{exact_match, greedy_decode, train_stage, StageConfig, Start};
use rand::Rng;

fn tiny() -> ModelConfig {
    ModelConfig { d_model: 16, layers: 2, heads: 2, d_mlp: 32, block: 8, tie_embeddings: false }
}

#[test]
fn changing_a_later_token_never_changes_an_earlier_logit() {
    for tie_embeddings in [false, true] {
        causal(ModelConfig { tie_embeddings, ..tiny() });
    }
}

fn causal(cfg: ModelConfig) {
    let vocab = 20;
    let model = cfg.init_with(vocab, &mut foundation::rng::stream(7, 0, 0), &Device::flex());
    let mut rng = foundation::rng::stream(7, 1, 0);
    let (b, t) = (3, 8);
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.gen_range(0..vocab as u32)).collect();
    let base: Vec<f32> = model.forward_tokens(&tokens, t, &Device::flex()).into_data().try_to_vec().unwrap();
    for j in 0..t {
        let mut changed = tokens.clone();
        for r in 0..b {
            changed[r * t + j] = (changed[r * t + j] + 1 + r as u32) % vocab as u32;
        }
        let out: Vec<f32> =
            model.forward_tokens(&changed, t, &Device::flex()).into_data().try_to_vec().unwrap();
        for r in 0..b {
            for i in 0..t {
                let at = |v: &[f32]| v[(r * t + i) * vocab..(r * t + i + 1) * vocab].to_vec();
                let diff = at(&base).iter().zip(at(&out)).map(|(a, c)| (a - c).abs()).fold(0.0f32, f32::max);
                if i < j {
                    assert!(diff == 0.0, "row {r}: position {i} changed by {diff} when token {j} changed");
                } else if i == j {
                    assert!(diff > 1e-4, "row {r}: position {j} must see its own token (diff {diff})");
                }
            }
        }
    }
}

#[test]
fn overfits_one_batch_and_greedy_decoding_reproduces_it() {
    let vocab = 12;
    let data: Vec<Vec<u32>> = vec![
        vec![1, 3, 5, 7, 9, 2],
        vec![1, 4, 6, 8, 10, 11, 2],
        vec![1, 6, 3, 9, 2],
        vec![1, 5, 4, 11, 10, 7, 8, 2],
    ];
    let cfg = StageConfig { epochs: 150, batch_size: 4, lr: 1e-2, warmup_steps: 5, weight_decay: 0.0 };
    let (model, report) = train_stage(
        &tiny(),
        vocab,
        &data,
        &cfg,
        Start::Fresh,
        3,
        None,
        None,
        &Device::flex(),
        &foundation::progress::NoProgress,
    )
    .expect("trains");
    assert_eq!(report.steps, 150);
    // Everything is memorisable except the token after <bos> (4 equally likely second tokens):
    // the loss floor is 4 ln 4 over the 22 targets.
    let floor = 4.0 * 4f64.ln() / 22.0;
    assert!((report.final_loss - floor).abs() < 0.02, "loss {} vs floor {floor}", report.final_loss);
    // Each sequence is determined by its first two tokens (distinct second tokens): decoding from them gives the rest.
    let prompts: Vec<Vec<u32>> = data.iter().map(|s| s[..2].to_vec()).collect();
    let gens = greedy_decode(&model, &prompts, 8);
    for (s, g) in data.iter().zip(&gens) {
        assert_eq!(g, &s[2..].to_vec(), "decoded {g:?} for {s:?}");
        assert!(exact_match(g, &s[2..s.len() - 1]));
    }
}

#[test]
fn exact_match_stops_at_the_end_token() {
    assert!(exact_match(&[5, 2, 7], &[5]));
    assert!(exact_match(&[5], &[5]));
    assert!(!exact_match(&[5, 6, 2], &[5]));
    assert!(!exact_match(&[2], &[5]));
}

#[test]
fn greedy_decoding_stops_at_the_block() {
    let model = tiny().init_with(10, &mut foundation::rng::stream(1, 0, 0), &Device::flex());
    let gens = greedy_decode(&model, &[vec![1, 3, 4, 5, 6, 7]], 10);
    assert!(gens[0].len() <= 3, "6 prompt tokens + at most 3 new ones up to block 8 positions + 1");
}

#[test]
fn fast_gelu_matches_burns_gelu_in_value_and_gradient() {
    use burn::tensor::activation;
    let device = Device::flex().autodiff();
    let mut rng = foundation::rng::stream(11, 0, 0);
    // Wide enough to span several parallel chunks, with tails where erf saturates and exp underflows.
    let mut v: Vec<f32> = (0..40_000).map(|_| rng.gen_range(-7.0f32..7.0)).collect();
    v[..6].copy_from_slice(&[0.0, -0.0, 15.0, -15.0, 1e-30, -40.0]);
    let up: Vec<f32> = (0..v.len()).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let run = |f: &dyn Fn(Tensor<2>) -> Tensor<2>| {
        let x = Tensor::<2>::from_data(TensorData::new(v.clone(), [200, 200]), &device).require_grad();
        let w = Tensor::<2>::from_data(TensorData::new(up.clone(), [200, 200]), &device);
        let y = f(x.clone());
        let grads = (y.clone() * w).sum().backward();
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
        (y.into_data().try_to_vec::<f32>().unwrap(), g)
    };
    let (y_fast, g_fast) = run(&|x| meta_ocl::model::gelu(x));
    let (y_ref, g_ref) = run(&|x| activation::gelu(x));
    for i in 0..v.len() {
        // GELU's value is at most |x| and its derivative at most 1.13: a few f32 ulp of those.
        let scale = v[i].abs().max(1e-3);
        assert!(
            (y_fast[i] - y_ref[i]).abs() <= 4e-7 * scale,
            "value at x = {}: {} vs {}",
            v[i],
            y_fast[i],
            y_ref[i]
        );
        assert!(
            (g_fast[i] - g_ref[i]).abs() <= 4e-7 * up[i].abs().max(1e-3),
            "gradient at x = {}: {} vs {}",
            v[i],
            g_fast[i],
            g_ref[i]
        );
    }
    // Without autodiff: the same values.
    let x = Tensor::<2>::from_data(TensorData::new(v.clone(), [200, 200]), &Device::flex());
    let a: Vec<f32> = meta_ocl::model::gelu(x.clone()).into_data().try_to_vec().unwrap();
    assert_eq!(a, y_fast);
}

#[test]
fn branch_free_erf_is_within_a_few_ulp_of_f64() {
    let mut worst = 0.0f64;
    for i in -200_000i32..=200_000 {
        let x = i as f32 * 5e-5; // [-10, 10]
        let erf_ref = libm::erf(f64::from(x));
        let e = (f64::from(meta_ocl::model::erf_f32(x)) - erf_ref).abs();
        worst = worst.max(e / erf_ref.abs().max(1e-6));
    }
    assert!(worst < 5e-7, "erf: largest relative error {worst}");
}

#[test]
fn microbatches_give_the_loss_and_gradient_of_one_pass_on_padded_rows() {
    use foundation::train::{Objective, OptimConfig, Trainer};
    use meta_ocl::train::LmObjective;
    let vocab = 12;
    // Sequences of different lengths: the microbatches hold different numbers of target tokens.
    let data: Vec<Vec<u32>> = vec![
        vec![1, 3, 5, 7, 9, 2],
        vec![1, 4, 2],
        vec![1, 6, 3, 9, 10, 11, 8, 2],
        vec![1, 5, 2],
        vec![1, 7, 7, 7, 2],
        vec![1, 8, 9, 10, 11, 3, 2],
    ];
    let optim = |microbatches| OptimConfig {
        steps: 1,
        lr: 1e-3,
        warmup_steps: 0,
        min_lr_ratio: 1.0,
        weight_decay: 0.0,
        grad_clip: None,
        ema_decay: 0.0,
        seed: 0,
        microbatches,
    };
    let run = |microbatches| {
        let objective = LmObjective { data: &data, batch_size: 6, order_seed: 0, vocab, block: 8 };
        let trainer = Trainer::new(optim(microbatches), objective, &Device::flex());
        let state = trainer.init_state(|rng, d| tiny().init_with(vocab, rng, d));
        let batch = trainer.objective.batch(0, &trainer.device);
        let (loss, grads) = trainer.gradients(&state.model, batch, 0);
        struct Collect<'g>(&'g burn::optim::GradientsParams, Vec<f32>);
        impl burn::module::ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                let g = self.0.get::<D>(param.id).expect("every parameter has a gradient");
                self.1.extend(g.into_data().try_into_vec::<f32>().unwrap());
            }
        }
        let mut c = Collect(&grads, Vec::new());
        burn::module::Module::visit(&state.model, &mut c);
        (loss, c.1)
    };
    let (loss1, g1) = run(1);
    let (loss3, g3) = run(3);
    assert!((loss1 - loss3).abs() <= 1e-6 * loss1.abs(), "loss {loss1} vs {loss3}");
    let scale = g1.iter().fold(0.0f32, |m, g| m.max(g.abs()));
    for (i, (a, b)) in g1.iter().zip(&g3).enumerate() {
        assert!((a - b).abs() <= 1e-5 * scale, "gradient {i}: {a} vs {b}");
    }
}

#[test]
fn one_hot_rows_and_token_ids_give_the_same_logits() {
    let vocab = 20;
    let model = tiny().init_with(vocab, &mut foundation::rng::stream(5, 0, 0), &Device::flex());
    let mut rng = foundation::rng::stream(5, 1, 0);
    let (b, t) = (3, 7);
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.gen_range(0..vocab as u32)).collect();
    let by_ids: Vec<f32> =
        model.forward_tokens(&tokens, t, &Device::flex()).into_data().try_to_vec().unwrap();
    let one_hot = meta_ocl::model::one_hot(&tokens, vocab, &Device::flex());
    let by_rows: Vec<f32> = model.forward(one_hot, b, t).into_data().try_to_vec().unwrap();
    assert_eq!(by_ids, by_rows);
}
