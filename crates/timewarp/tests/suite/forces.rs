//! Forces are minus the finite-difference gradient of the energy.

use timewarp::lj::LjCluster;
use timewarp::potential::{DoubleWell, MuellerBrown, Potential};

fn check_gradient(pot: &dyn Potential, x: &[f64], rel: f64) {
    let mut g = vec![0.0; x.len()];
    let u = pot.energy_grad(x, &mut g);
    assert!((u - pot.energy(x)).abs() < 1e-12 * u.abs().max(1.0));
    let h = 1e-6;
    for i in 0..x.len() {
        let (mut a, mut b) = (x.to_vec(), x.to_vec());
        a[i] += h;
        b[i] -= h;
        let fd = (pot.energy(&a) - pot.energy(&b)) / (2.0 * h);
        let scale = g.iter().map(|v| v.abs()).fold(1.0, f64::max);
        assert!((fd - g[i]).abs() < rel * scale, "coordinate {i}: analytic {}, finite difference {fd}", g[i]);
    }
}

#[test]
fn lj_mixture_gradient_matches_finite_differences_with_confinement_active() {
    let c = LjCluster::parse("A4B3").unwrap();
    let mut x = c.initial_positions();
    for (i, v) in x.iter_mut().enumerate() {
        *v += 0.05 * ((i as f64 * 1.7).sin());
    }
    check_gradient(&c, &x, 1e-6);
    // Pull one atom out past the confinement radius: the flat-bottom term and its centroid
    // coupling are now active.
    x[0] += 3.0;
    x[1] -= 1.0;
    let base = LjCluster::parse("A4B3").unwrap();
    let mut g = vec![0.0; x.len()];
    let u = base.energy_grad(&x, &mut g);
    assert!(u.is_finite());
    check_gradient(&c, &x, 1e-6);
}

#[test]
fn sanity_potential_gradients_match_finite_differences() {
    for x in [[0.3, -0.2], [-1.1, 0.7], [0.9, 0.05]] {
        check_gradient(&DoubleWell::default(), &x, 1e-6);
        check_gradient(&MuellerBrown::default(), &[x[0] * 0.8 - 0.2, x[1] + 0.6], 1e-6);
    }
}

#[test]
fn compositions_parse_and_bad_ones_are_refused() {
    assert_eq!(LjCluster::parse("lj7").unwrap().n_atoms(), 7);
    assert_eq!(LjCluster::parse("A3B2").unwrap().types, vec![0, 0, 0, 1, 1]);
    assert_eq!(LjCluster::parse("A3B2").unwrap().name(), "A3B2");
    for bad in ["", "C3", "A1", "A3x", "A0"] {
        assert!(LjCluster::parse(bad).is_err(), "{bad} accepted");
    }
}
