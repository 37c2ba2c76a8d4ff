//! The flow: log-density equals the change-of-variables sum, the inverse inverts, kernel
//! attention and the whole flow are permutation-equivariant, training lowers the NLL.

use burn::prelude::*;
use rand::Rng;
use rand_distr::StandardNormal;
use timewarp::flow::{one_hot, Conditioning, FlowConfig, TimewarpFlow};
use timewarp::mh::Proposal;
use timewarp::reference::{pairs, run_md, MdConfig};
use timewarp::rng;
use timewarp::train::{train_flow, FlowProposal, FlowTrainConfig, PairSet};

const TYPES: [usize; 5] = [0, 1, 0, 0, 1];

fn setup() -> (TimewarpFlow, Conditioning, Tensor<3>, Tensor<3>, Device) {
    let dev = Device::flex();
    let mut r = rng::stream(5, rng::INIT, 77);
    let flow = FlowConfig::default().init_with(&mut r, &dev, 0.5);
    let b = 3;
    let n = TYPES.len();
    let mut t = |scale: f32| {
        let v: Vec<f32> = (0..b * n * 2).map(|_| scale * r.sample::<f32, _>(StandardNormal)).collect();
        Tensor::<3>::from_data(TensorData::new(v, [b, n, 2]), &dev)
    };
    let x = t(1.0);
    let (e_p, e_v) = (t(1.0), t(1.0));
    (flow, Conditioning { x, types: one_hot(&TYPES, 2, b, &dev) }, e_p, e_v, dev)
}

fn vec3(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn vec1(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn inverse_inverts_and_log_density_is_the_change_of_variables_sum() {
    let (flow, cond, e_p, e_v, _) = setup();
    let (y, v, logq_fwd) = flow.sample(&cond, e_p.clone(), e_v.clone());
    let (logq_inv, rp, rv) = flow.log_density(&cond, y, v);
    for (a, b) in vec3(e_p.clone()).iter().zip(vec3(rp)).chain(vec3(e_v.clone()).iter().zip(vec3(rv))) {
        assert!((a - b).abs() < 1e-5, "inverse: {a} vs {b}");
    }
    let (f, i) = (vec1(logq_fwd), vec1(logq_inv));
    // The change-of-variables sum by hand: log N(e; 0, 1) − log σ per coordinate − Σ s.
    let [lp, lv] = flow.prior_log_scales();
    let s_total: Vec<f32> = flow
        .forward_log_scales(&cond, e_p.clone(), e_v.clone())
        .into_iter()
        .map(|s| vec1(s.sum_dims(&[1, 2]).reshape([3])))
        .fold(vec![0.0; 3], |acc, s| acc.iter().zip(s).map(|(a, b)| a + b).collect());
    let ep = vec3(e_p);
    let ev = vec3(e_v);
    let per = ep.len() / 3;
    let mut any_s = false;
    for k in 0..3 {
        let quad: f32 =
            ep[k * per..(k + 1) * per].iter().chain(&ev[k * per..(k + 1) * per]).map(|a| a * a).sum();
        let by_hand = -0.5 * quad
            - per as f32 * (lp + lv)
            - per as f32 * (2.0 * std::f32::consts::PI).ln()
            - s_total[k];
        assert!((by_hand - f[k]).abs() < 1e-3, "forward {} vs sum {by_hand}", f[k]);
        assert!((f[k] - i[k]).abs() < 1e-3, "forward {} vs inverse {}", f[k], i[k]);
        any_s |= s_total[k].abs() > 1e-2;
    }
    assert!(any_s, "the couplings are trivial: the test would not see a wrong log-determinant");
}

fn permute(t: Tensor<3>, perm: &[usize]) -> Tensor<3> {
    let idx = Tensor::<1, Int>::from_data(
        TensorData::new(perm.iter().map(|&p| p as i64).collect::<Vec<_>>(), [perm.len()]),
        &t.device(),
    );
    t.select(1, idx)
}

#[test]
fn kernel_attention_and_the_flow_are_permutation_equivariant() {
    let (flow, cond, e_p, e_v, dev) = setup();
    let perm = [3, 0, 4, 1, 2];
    let ptypes: Vec<usize> = perm.iter().map(|&p| TYPES[p]).collect();
    // Kernel attention alone.
    let mut r = rng::stream(1, rng::INIT, 3);
    let h: Vec<f32> = (0..3 * 5 * 32).map(|_| r.sample::<f32, _>(StandardNormal)).collect();
    let h = Tensor::<3>::from_data(TensorData::new(h, [3, 5, 32]), &dev);
    let diff = cond.x.clone().unsqueeze_dim::<4>(2) - cond.x.clone().unsqueeze_dim::<4>(1);
    let d2 = diff.powi_scalar(2).sum_dim(3).reshape([3, 5, 5]);
    let a = flow.coupling(0).kernel_attention(h.clone(), d2.clone());
    let pd2 = permute(d2, &perm).swap_dims(1, 2);
    let pd2 = permute(pd2, &perm).swap_dims(1, 2);
    let b = flow.coupling(0).kernel_attention(permute(h, &perm), pd2);
    for (u, w) in vec3(permute(a, &perm)).iter().zip(vec3(b)) {
        assert!((u - w).abs() < 1e-5);
    }
    // The whole flow: permuting atoms (with their types) permutes the sample, keeps log q.
    let pcond = Conditioning { x: permute(cond.x.clone(), &perm), types: one_hot(&ptypes, 2, 3, &dev) };
    let (y, _, lq) = flow.sample(&cond, e_p.clone(), e_v.clone());
    let (py, _, plq) = flow.sample(&pcond, permute(e_p, &perm), permute(e_v, &perm));
    for (u, w) in vec3(permute(y, &perm)).iter().zip(vec3(py)) {
        assert!((u - w).abs() < 1e-4);
    }
    for (u, w) in vec1(lq).iter().zip(vec1(plq)) {
        assert!((u - w).abs() < 1e-3);
    }
}

#[test]
fn training_learns_a_conditional_map_and_the_proposal_is_consistent() {
    // Synthetic pairs with a known conditional: x(t+τ) = ½ x(t) + 0.05 ξ (5 atoms, x(t) centred
    // standard normals). An isotropic Gaussian displacement cannot express it; the flow must
    // learn the shift from its x(t) tokens.
    let mut r = rng::stream(4, rng::INIT, 5);
    let n_pairs = 2000;
    let mut x0 = Vec::new();
    let mut x1 = Vec::new();
    for _ in 0..n_pairs {
        let mut x: Vec<f64> = (0..10).map(|_| r.sample::<f64, _>(StandardNormal)).collect();
        let (cx, cy) = timewarp::lj::centroid(&x);
        x.chunks_exact_mut(2).for_each(|p| {
            p[0] -= cx;
            p[1] -= cy;
        });
        x1.extend(x.iter().map(|a| 0.5 * a + 0.05 * r.sample::<f64, _>(StandardNormal)));
        x0.extend(x);
    }
    let sets = [PairSet { types: vec![0; 5], x0, x1, hop: Vec::new() }];
    let cfg = FlowTrainConfig {
        flow: FlowConfig::default(),
        steps: 150,
        batch_size: 32,
        lr: 3e-3,
        seed: 2,
        hop_fraction: 0.0,
    };
    let (flow, report) = train_flow(&sets, &cfg, &foundation::progress::NoProgress).unwrap();
    let (first, last) = report.nll_first_last;
    let d = 10.0;
    let sigma = sets[0].rms_displacement();
    // The best isotropic Gaussian displacement (σ = RMS displacement), velocities N(0, I).
    let gaussian = d * 0.5 * (1.0 + (2.0 * std::f64::consts::PI * sigma * sigma).ln())
        + d * 0.5 * (1.0 + (2.0 * std::f64::consts::PI).ln());
    assert!(
        last < first - 2.0 && last < gaussian - 2.0,
        "NLL first {first}, last {last}, Gaussian {gaussian}"
    );
    let prop = FlowProposal { flow, types: vec![0; 5], n_types: 2, device: Device::flex() };
    let mut r = rng::stream(3, rng::CHAIN, 0);
    let x = &sets[0].x0[..10];
    let moves = prop.propose(x, 4, &mut r);
    let cases: Vec<(&[f64], &[f64], &[f64])> =
        moves.iter().map(|m| (x, m.x.as_slice(), m.v.as_slice())).collect();
    for (m, l) in moves.iter().zip(prop.log_density(&cases)) {
        assert!((m.log_q_forward - l).abs() < 1e-3, "{} vs {l}", m.log_q_forward);
    }
}

#[test]
fn md_pairs_align_rigidly() {
    let md = MdConfig {
        composition: "A5".into(),
        langevin: timewarp::md::Langevin { dt: 0.005, gamma: 1.0, kt: 0.15 },
        stride: 20,
        frames: 50,
        runs: 1,
        burn_in: 100,
        seed: 1,
    };
    let frames = run_md(&md).unwrap();
    let (x0, x1) = pairs(&frames, 5);
    let raw = PairSet { types: vec![0; 5], x0, x1, hop: Vec::new() };
    let al = raw.aligned();
    assert!(al.rms_displacement() <= raw.rms_displacement());
    for (a, b) in raw.x1.chunks_exact(10).zip(al.x1.chunks_exact(10)) {
        // Rigid: every interatomic distance is kept.
        let d = |x: &[f64], i: usize, j: usize| {
            ((x[2 * i] - x[2 * j]).powi(2) + (x[2 * i + 1] - x[2 * j + 1]).powi(2)).sqrt()
        };
        for i in 0..5 {
            for j in i + 1..5 {
                assert!((d(a, i, j) - d(b, i, j)).abs() < 1e-12);
            }
        }
    }
    // Aligning an aligned set changes nothing.
    let again = al.aligned();
    assert!(again.x1.iter().zip(&al.x1).all(|(a, b)| (a - b).abs() < 1e-12));
}

#[test]
fn assignment_is_the_cheapest_permutation() {
    use timewarp::train::assignment;
    // Every 5 × 5 cost matrix of a seeded draw against brute force over all 120 permutations.
    let mut r = timewarp::rng::stream(3, timewarp::rng::CHAIN, 0);
    let n = 5;
    fn perms(k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>, n: usize) {
        if k == n {
            out.push(cur.clone());
            return;
        }
        for j in 0..n {
            if !cur[..k].contains(&j) {
                cur[k] = j;
                perms(k + 1, cur, out, n);
            }
        }
    }
    let mut all = Vec::new();
    perms(0, &mut vec![0; n], &mut all, n);
    assert_eq!(all.len(), 120);
    for _ in 0..50 {
        let cost: Vec<f64> = (0..n * n).map(|_| rand::Rng::gen::<f64>(&mut r)).collect();
        let total = |p: &[usize]| p.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum::<f64>();
        let best = all.iter().map(|p| total(p)).fold(f64::INFINITY, f64::min);
        let got = assignment(&cost, n);
        let mut seen = got.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>(), "not a permutation: {got:?}");
        assert!((total(&got) - best).abs() < 1e-12, "{} vs {best}", total(&got));
    }
}

#[test]
fn permutation_alignment_undoes_relabelling_and_rigid_motion_within_types() {
    use timewarp::train::align_permuted_onto;
    // A7 hexagon plus a perturbation, types A4B3; b = the same cluster with the atoms of each
    // type exchanged, rotated by 1.1 rad and translated.
    let types = [0, 1, 0, 1, 0, 1, 0];
    let cluster = timewarp::lj::LjCluster::new(types.to_vec()).unwrap();
    let mut a = cluster.initial_positions();
    a.iter_mut().enumerate().for_each(|(k, x)| *x += 0.05 * ((k * 7 % 5) as f64 - 2.0));
    let relabel = [4, 5, 6, 3, 0, 1, 2]; // 0 -> 4 etc.: A to A, B to B
    let (c, s) = (1.1f64.cos(), 1.1f64.sin());
    let mut b = vec![0.0; a.len()];
    for (i, &j) in relabel.iter().enumerate() {
        assert_eq!(types[i], types[j]);
        b[2 * j] = c * a[2 * i] - s * a[2 * i + 1] + 3.0;
        b[2 * j + 1] = s * a[2 * i] + c * a[2 * i + 1] - 1.0;
    }
    align_permuted_onto(&a, &mut b, &types);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
    }
    // On MD pairs: never farther than the rigid alignment, and each aligned x(t + tau) is a
    // relabelling within types of a rigid motion of the original (same sorted distances per
    // type pair, same energy).
    let md = MdConfig {
        composition: "A4B3".into(),
        langevin: timewarp::md::Langevin { dt: 0.005, gamma: 1.0, kt: 0.25 },
        stride: 50,
        frames: 60,
        runs: 1,
        burn_in: 100,
        seed: 2,
    };
    let frames = run_md(&md).unwrap();
    let (x0, x1) = pairs(&frames, 20);
    let raw = PairSet { types: frames.cluster.types.clone(), x0, x1, hop: Vec::new() };
    let (rigid, perm) = (raw.aligned(), raw.aligned_permuted());
    assert!(perm.rms_displacement() <= rigid.rms_displacement() + 1e-12);
    use timewarp::potential::Potential;
    let dim = 2 * raw.types.len();
    for (orig, al) in raw.x1.chunks_exact(dim).zip(perm.x1.chunks_exact(dim)) {
        let (u0, u1) = (frames.cluster.energy(orig), frames.cluster.energy(al));
        assert!((u0 - u1).abs() < 1e-9 * u0.abs().max(1.0), "{u0} vs {u1}");
    }
}
