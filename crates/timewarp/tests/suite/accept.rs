//! Acceptance-loss fine-tuning and hop oversampling: the energy term has the potential's value
//! and gradient, the loss's E is the sampler's MH energy, fine-tuning raises the acceptance of
//! the flow's own proposals, and the hop fraction draws that share of every batch from the
//! flagged pairs.

use burn::prelude::*;
use rand::Rng;
use rand_distr::StandardNormal;
use timewarp::accept::{energy_surrogate, finetune_acceptance, proposal_mh_energy, AcceptanceConfig};
use timewarp::flow::{one_hot, Conditioning, FlowConfig};
use timewarp::lj::LjCluster;
use timewarp::mh::{mh_energy, Move, Proposal};
use timewarp::potential::{DoubleWell, Potential};
use timewarp::rng;
use timewarp::train::{train_flow, FlowObjective, FlowProposal, FlowTrainConfig, PairSet};

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().try_into_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

/// `b` perturbed copies of the cluster's initial positions, flat.
fn states(cluster: &LjCluster, b: usize, noise: f64, seed: u64) -> Vec<f64> {
    let mut r = rng::stream(seed, rng::INIT, 3);
    let x0 = cluster.initial_positions();
    (0..b)
        .flat_map(|_| x0.iter().map(|&a| a + noise * r.sample::<f64, _>(StandardNormal)).collect::<Vec<_>>())
        .collect()
}

#[test]
fn energy_surrogate_has_the_potentials_value_and_gradient() {
    let cluster = LjCluster::parse("A3B2").unwrap();
    let (b, n, kt) = (3, 5, 0.15);
    let x = states(&cluster, b, 0.05, 1);
    let dev = Device::flex().autodiff();
    let xf: Vec<f32> = x.iter().map(|&a| a as f32).collect();
    let y = Tensor::<3>::from_data(TensorData::new(xf.clone(), [b, n, 2]), &dev).require_grad();
    let pots: Vec<&dyn Potential> = vec![&cluster; b];
    let (u, energies) = energy_surrogate(y.clone(), &pots, kt);
    let grads = u.clone().sum().backward();
    let g = vals(y.grad(&grads).unwrap());
    let u = vals(u);
    for e in 0..b {
        // The reference at the f32 point the tensor holds.
        let xe: Vec<f64> = xf[e * 2 * n..(e + 1) * 2 * n].iter().map(|&a| f64::from(a)).collect();
        let mut ge = vec![0.0; 2 * n];
        let ue = cluster.energy_grad(&xe, &mut ge);
        assert!((energies[e] - ue).abs() < 1e-12);
        assert!((u[e] - ue / kt).abs() < 1e-4 * (ue / kt).abs().max(1.0), "value {} vs {}", u[e], ue / kt);
        for k in 0..2 * n {
            let want = ge[k] / kt;
            assert!(
                (g[e * 2 * n + k] - want).abs() < 1e-4 * want.abs().max(1.0),
                "gradient {k}: {} vs {want}",
                g[e * 2 * n + k]
            );
        }
    }
}

#[test]
fn the_losss_energy_is_the_samplers_mh_energy() {
    let cluster = LjCluster::parse("A3B2").unwrap();
    let (b, n, kt) = (4, 5, 0.15);
    let dev = Device::flex();
    let mut r = rng::stream(2, rng::INIT, 9);
    let cfg = FlowConfig { position_log_scale: (0.05f64).ln(), ..FlowConfig::default() };
    let flow = cfg.init_with(&mut r, &dev, 0.3);
    let x = states(&cluster, b, 0.03, 2);
    let mut normals = || -> (Vec<f64>, Tensor<3>) {
        let v: Vec<f32> = (0..b * n * 2).map(|_| r.sample::<f32, _>(StandardNormal)).collect();
        (
            v.iter().map(|&a| f64::from(a)).collect(),
            Tensor::<3>::from_data(TensorData::new(v, [b, n, 2]), &dev),
        )
    };
    let ((_, e_p), (_, e_v), (v0, v0t)) = (normals(), normals(), normals());
    let xf: Vec<f32> = x.iter().map(|&a| a as f32).collect();
    let x: Vec<f64> = xf.iter().map(|&a| f64::from(a)).collect();
    let types = [0, 0, 0, 1, 1];
    let cond = Conditioning {
        x: Tensor::<3>::from_data(TensorData::new(xf, [b, n, 2]), &dev),
        types: one_hot(&types, 2, b, &dev),
    };
    let pots: Vec<&dyn Potential> = vec![&cluster; b];
    let (energy, logq_f, du) = proposal_mh_energy(&flow, &pots, &cond, e_p.clone(), e_v.clone(), v0t, kt);
    let energy = vals(energy);
    let logq_f = vals(logq_f);
    // The sampler's side: the same moves, the reverse density through the MH proposal, E from mh.rs.
    let (y, vy, lf) = flow.sample(&cond, e_p, e_v);
    let (y, vy, lf) = (vals(y), vals(vy), vals(lf));
    let prop = FlowProposal { flow, types: types.to_vec(), n_types: 2, device: dev };
    let d = 2 * n;
    for e in 0..b {
        let (xe, ye, ve, v0e) = (
            &x[e * d..(e + 1) * d],
            &y[e * d..(e + 1) * d],
            &vy[e * d..(e + 1) * d],
            &v0[e * d..(e + 1) * d],
        );
        let rev = prop.log_density(&[(ye, xe, v0e)])[0];
        let mv = Move { x: ye.to_vec(), v: ve.to_vec(), log_q_forward: lf[e] };
        let (ux, uy) = (cluster.energy(xe), cluster.energy(ye));
        let want = mh_energy(kt, ux, uy, v0e, &mv, rev);
        assert!(want.is_finite());
        assert!(
            (energy[e] - want).abs() < 2e-3 * want.abs().max(1.0),
            "example {e}: E {} vs sampler {want}",
            energy[e]
        );
        assert!((logq_f[e] - lf[e]).abs() < 1e-4 * lf[e].abs().max(1.0));
        assert!((du[e] - (uy - ux)).abs() < 1e-3 * (uy - ux).abs().max(1.0));
    }
}

#[test]
fn acceptance_fine_tuning_raises_the_acceptance_of_the_flows_own_proposals() {
    // One atom in the tilted double well: BAOAB pairs, a short likelihood fit, then the
    // acceptance loss alone (weight 1).
    let pot = DoubleWell::default();
    let lang = timewarp::md::Langevin { dt: 0.02, gamma: 1.0, kt: 1.0 };
    let mut r = rng::stream(3, rng::LANGEVIN, 0);
    let mut state = timewarp::md::MdState::new(&pot, vec![-1.0, 0.0], 1.0, &mut r);
    let traj = timewarp::md::trajectory(&pot, &lang, &mut state, 2_001, 50, &mut r);
    let set = PairSet {
        types: vec![0],
        x0: traj[..traj.len() - 2].to_vec(),
        x1: traj[2..].to_vec(),
        hop: Vec::new(),
    };
    let small = FlowConfig { d_model: 16, hidden: 16, couplings: 2, ..FlowConfig::default() };
    let train =
        FlowTrainConfig { flow: small, steps: 60, batch_size: 32, lr: 3e-3, seed: 4, hop_fraction: 0.0 };
    let sets = [set];
    let (flow, _) = train_flow(&sets, &train, &foundation::progress::NoProgress).unwrap();
    let cfg = AcceptanceConfig {
        steps: 60,
        lr: 3e-3,
        batch_size: 32,
        weight: 1.0,
        beta: 0.2,
        energy_cap_kt: 20.0,
        kt: 1.0,
    };
    let (_, rep) =
        finetune_acceptance(&flow, &sets, vec![&pot], 2, 0.0, &cfg, 4, &foundation::progress::NoProgress)
            .unwrap();
    let (before, after) = rep.acceptance_before_after;
    assert!(after > before + 0.02, "acceptance {before:.3} -> {after:.3}");
    assert!(rep.loss_first_last.1 < rep.loss_first_last.0);
}

#[test]
fn hop_fraction_draws_that_share_of_every_batch_from_the_flagged_pairs() {
    let (m, n) = (100, 2);
    let hop: Vec<bool> = (0..m).map(|i| i % 20 == 3).collect();
    let set = PairSet { types: vec![0; n], x0: vec![0.0; m * 2 * n], x1: vec![0.0; m * 2 * n], hop };
    let sets = [set];
    let plain = FlowObjective::new(&sets, 2, 16, 7).unwrap();
    let zero = FlowObjective::new(&sets, 2, 16, 7).unwrap().with_hop_fraction(0.0);
    let half = FlowObjective::new(&sets, 2, 16, 7).unwrap().with_hop_fraction(0.5);
    let mut seen = std::collections::BTreeSet::new();
    for step in 0..40 {
        // Fraction 0 leaves the epoch order untouched.
        assert_eq!(plain.batch_examples(step), zero.batch_examples(step));
        let ex = half.batch_examples(step);
        assert_eq!(ex.len(), plain.batch_examples(step).len());
        for &(_, i) in &ex[..8.min(ex.len())] {
            assert!(sets[0].hop[i], "step {step}: pair {i} is not a hop");
            seen.insert(i);
        }
    }
    // Every flagged pair is drawn (5 of them, 320 draws).
    assert_eq!(seen.len(), 5);
    let bad = FlowTrainConfig {
        hop_fraction: 1.5,
        ..FlowTrainConfig {
            flow: FlowConfig::default(),
            steps: 1,
            batch_size: 1,
            lr: 1e-3,
            seed: 0,
            hop_fraction: 0.0,
        }
    };
    assert!(bad.validate().unwrap_err().to_string().contains("hop fraction"));
    let bad = AcceptanceConfig { weight: 1.5, ..AcceptanceConfig::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("weight in [0, 1]"));
    assert!(AcceptanceConfig::default().validate().is_ok());
}
