//! The auxiliary-velocity MH chain with an exact proposal density reproduces the quadrature
//! reference, single and batched.

use timewarp::mh::{run_chain, GaussianDrift, MhConfig, Proposal};
use timewarp::potential::{quadrature_marginal, DoubleWell};
use timewarp::rng;

use crate::support::check_histogram;

fn chain_xs(batch: usize, seed: u64, trials: usize, lie: bool) -> (Vec<f64>, f64) {
    chain_xs_adapt(batch, false, seed, trials, lie)
}

fn chain_xs_adapt(batch: usize, adapt: bool, seed: u64, trials: usize, lie: bool) -> (Vec<f64>, f64) {
    let pot = DoubleWell::default();
    let prop = GaussianDrift { pot: &pot, h: 0.1, s: 0.6, c: 0.5 };
    let cfg = MhConfig { kt: 1.0, batch, adapt };
    let mut r = rng::stream(seed, rng::CHAIN, 0);
    let mut xs = Vec::with_capacity(trials);
    let (stats, _) = if lie {
        // Claims the proposal is symmetric (reverse density = forward density): biased.
        let liar = Symmetric(prop);
        run_chain(&pot, &liar, &cfg, &[1.0, 0.0], trials, &mut r, |x| xs.push(x[0]))
    } else {
        run_chain(&pot, &prop, &cfg, &[1.0, 0.0], trials, &mut r, |x| xs.push(x[0]))
    };
    assert_eq!(stats.trials, trials);
    assert_eq!(xs.len(), trials);
    (xs, stats.acceptance())
}

struct Symmetric<'a>(GaussianDrift<'a>);

impl Proposal for Symmetric<'_> {
    fn propose(&self, x: &[f64], count: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<timewarp::mh::Move> {
        let mut m = self.0.propose(x, count, rng);
        m.iter_mut().for_each(|m| m.log_q_forward = 0.0);
        m
    }
    fn log_density(&self, cases: &[(&[f64], &[f64], &[f64])]) -> Vec<f64> {
        vec![0.0; cases.len()]
    }
}

fn reference() -> Vec<f64> {
    quadrature_marginal(&DoubleWell::default(), 1.0, [(-2.4, 2.4), (-4.0, 4.0)], 24 * 40, 0, 24)
}

#[test]
fn mh_chain_with_exact_proposal_density_matches_quadrature() {
    let (xs, acc) = chain_xs(1, 11, 200_000, false);
    assert!(acc > 0.2 && acc < 0.95, "acceptance {acc}");
    check_histogram(&xs, -2.4, 2.4, &reference(), 4.5);
}

#[test]
fn batched_proposals_keep_the_stationary_distribution() {
    let (x1, a1) = chain_xs(1, 12, 200_000, false);
    let (x8, a8) = chain_xs(8, 13, 200_000, false);
    check_histogram(&x8, -2.4, 2.4, &reference(), 4.5);
    // Same per-trial acceptance: the batch is a sequence of independent trials from one state.
    assert!((a1 - a8).abs() < 0.02, "acceptance B=1 {a1}, B=8 {a8}");
    // And the two chains agree with each other on the well populations.
    let right = |x: &[f64]| x.iter().filter(|&&v| v > 0.0).count() as f64 / x.len() as f64;
    assert!((right(&x1) - right(&x8)).abs() < 0.03);
}

#[test]
fn mh_with_a_wrong_reverse_density_fails_the_check() {
    let (xs, _) = chain_xs(1, 14, 200_000, true);
    let failed = std::panic::catch_unwind(|| check_histogram(&xs, -2.4, 2.4, &reference(), 4.5)).is_err();
    assert!(failed, "an MH chain ignoring the proposal asymmetry passed");
}

#[test]
fn forward_log_density_matches_evaluation() {
    let pot = DoubleWell::default();
    let prop = GaussianDrift { pot: &pot, h: 0.1, s: 0.6, c: 0.5 };
    let mut r = rng::stream(1, rng::CHAIN, 9);
    let x = [0.4, -0.3];
    for m in prop.propose(&x, 5, &mut r) {
        let again = prop.log_density(&[(&x, &m.x, &m.v)])[0];
        assert!((again - m.log_q_forward).abs() < 1e-12);
    }
}

#[test]
fn adaptive_batch_size_keeps_the_stationary_distribution() {
    use timewarp::mh::adaptive_batch;
    assert_eq!(adaptive_batch(0.5, 64), 4);
    assert_eq!(adaptive_batch(0.01, 64), 64);
    assert_eq!(adaptive_batch(0.0, 16), 16);
    assert_eq!(adaptive_batch(0.95, 16), 1);
    let (xs, _) = chain_xs_adapt(16, true, 15, 200_000, false);
    check_histogram(&xs, -2.4, 2.4, &reference(), 4.5);
}

#[test]
fn exploration_takes_every_move_below_the_cap_and_none_above() {
    let pot = DoubleWell::default();
    let prop = GaussianDrift { pot: &pot, h: 0.05, s: 0.5, c: 0.0 };
    let starts = vec![vec![1.0, 0.0], vec![-1.0, 0.5], vec![0.0, 0.0]];
    let cap = 0.3;
    let mut r = rng::stream(11, rng::EXPLORE, 0);
    let mut last: Vec<Vec<f64>> = starts.clone();
    let (mut calls, mut moved_count) = (vec![0usize; 3], 0usize);
    let (accepted, finals) = timewarp::mh::explore(&pot, &prop, cap, &starts, 200, &mut r, |k, x, moved| {
        use timewarp::potential::Potential;
        calls[k] += 1;
        let rise = pot.energy(x) - pot.energy(&last[k]);
        if moved {
            moved_count += 1;
            assert!(rise <= cap + 1e-12, "chain {k}: accepted a rise of {rise}");
        } else {
            assert_eq!(x, last[k].as_slice(), "chain {k}: a rejected move changed the state");
        }
        last[k] = x.to_vec();
        true
    });
    assert_eq!(calls, vec![200; 3]);
    assert_eq!(accepted, moved_count);
    assert!(accepted > 100 && accepted < 600, "accepted {accepted} of 600");
    assert_eq!(finals, last);
    // A record that returns false stops the run after that step.
    let mut r = rng::stream(11, rng::EXPLORE, 1);
    let mut n = 0;
    timewarp::mh::explore(&pot, &prop, cap, &starts, 200, &mut r, |_, _, _| {
        n += 1;
        n < 5
    });
    assert_eq!(n, 6, "the step in which the stop came still records every chain");
}

#[test]
fn mixture_density_is_the_log_sum_exp_of_its_components() {
    use timewarp::mh::Mixture;
    let pot = DoubleWell::default();
    let local = GaussianDrift { pot: &pot, h: 0.1, s: 0.6, c: 0.5 };
    let wide = GaussianDrift { pot: &pot, h: 0.0, s: 1.8, c: -0.3 };
    let w = 0.3;
    let mix = Mixture { a: &wide, b: &local, weight: w };
    let mut r = rng::stream(2, rng::CHAIN, 9);
    let x = [0.7, -0.2];
    let moves = mix.propose(&x, 40, &mut r);
    assert_eq!(moves.len(), 40);
    for m in &moves {
        let case = [(&x[..], m.x.as_slice(), m.v.as_slice())];
        let (la, lb) = (wide.log_density(&case)[0], local.log_density(&case)[0]);
        let direct = (w * la.exp() + (1.0 - w) * lb.exp()).ln();
        assert!((m.log_q_forward - direct).abs() < 1e-10, "forward {} vs {direct}", m.log_q_forward);
        assert!((mix.log_density(&case)[0] - direct).abs() < 1e-10);
    }
    // Weights 0 and 1 are the components themselves, and no overflow far in a tail.
    let far = [(&x[..], &[30.0, -40.0][..], &[5.0, 5.0][..])];
    for (weight, comp) in [(1.0, &wide), (0.0, &local)] {
        let m = Mixture { a: &wide, b: &local, weight };
        let (a, b) = (m.log_density(&far)[0], comp.log_density(&far)[0]);
        assert!((a - b).abs() < 1e-9 && a.is_finite(), "weight {weight}: {a} vs {b}");
    }
}

#[test]
fn mh_with_a_mixture_proposal_matches_quadrature() {
    use timewarp::mh::Mixture;
    let pot = DoubleWell::default();
    let local = GaussianDrift { pot: &pot, h: 0.1, s: 0.6, c: 0.5 };
    // A wide, drift-free component: alone it would be accepted rarely, in the mixture its moves
    // cross the barrier; the mixture density both ways keeps the chain exact.
    let wide = GaussianDrift { pot: &pot, h: 0.0, s: 1.8, c: -0.3 };
    let mix = Mixture { a: &wide, b: &local, weight: 0.3 };
    let mut r = rng::stream(16, rng::CHAIN, 0);
    let mut xs = Vec::with_capacity(200_000);
    let (stats, _) = run_chain(
        &pot,
        &mix,
        &MhConfig { kt: 1.0, batch: 8, adapt: false },
        &[1.0, 0.0],
        200_000,
        &mut r,
        |x| xs.push(x[0]),
    );
    assert!(stats.acceptance() > 0.1, "acceptance {}", stats.acceptance());
    check_histogram(&xs, -2.4, 2.4, &reference(), 4.5);
    // Evaluating only the drawn component's density (a biased shortcut) fails the same check.
    let liar = OwnDensityOnly(mix);
    let mut r = rng::stream(17, rng::CHAIN, 0);
    let mut ys = Vec::with_capacity(200_000);
    run_chain(
        &pot,
        &liar,
        &MhConfig { kt: 1.0, batch: 8, adapt: false },
        &[1.0, 0.0],
        200_000,
        &mut r,
        |x| ys.push(x[0]),
    );
    let failed = std::panic::catch_unwind(|| check_histogram(&ys, -2.4, 2.4, &reference(), 4.5)).is_err();
    assert!(failed, "a mixture chain using the drawn component's density alone passed");
}

/// A mixture that reports the local component's density both ways (as if every move came from
/// it): wrong for the wide moves.
struct OwnDensityOnly<'a>(timewarp::mh::Mixture<'a>);

impl Proposal for OwnDensityOnly<'_> {
    fn propose(&self, x: &[f64], count: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<timewarp::mh::Move> {
        let mut moves = self.0.propose(x, count, rng);
        for m in &mut moves {
            m.log_q_forward = self.0.b.log_density(&[(x, &m.x, &m.v)])[0];
        }
        moves
    }
    fn log_density(&self, cases: &[(&[f64], &[f64], &[f64])]) -> Vec<f64> {
        self.0.b.log_density(cases)
    }
}
