//! BAOAB samples the Boltzmann distribution; quenches find the known LJ-7 minimum.

use timewarp::isomers::{coordination_moments, quench, IsomerTable};
use timewarp::lj::LjCluster;
use timewarp::md::{trajectory, Langevin, MdState};
use timewarp::potential::{quadrature_marginal, DoubleWell, Potential};
use timewarp::rng;

use crate::support::check_histogram;

#[test]
fn baoab_samples_the_double_well_boltzmann_marginal() {
    let pot = DoubleWell::default();
    let lang = Langevin { dt: 0.02, gamma: 1.0, kt: 1.0 };
    let mut r = rng::stream(7, rng::LANGEVIN, 0);
    let mut state = MdState::new(&pot, vec![-1.0, 0.0], lang.kt, &mut r);
    let traj = trajectory(&pot, &lang, &mut state, 100_000, 10, &mut r);
    let xs: Vec<f64> = traj.chunks_exact(2).map(|p| p[0]).collect();
    let bins = 24;
    let reference = quadrature_marginal(&pot, lang.kt, [(-2.4, 2.4), (-4.0, 4.0)], 24 * 40, 0, bins);
    let worst = check_histogram(&xs, -2.4, 2.4, &reference, 4.5);
    assert!(worst > 0.0);
    // Kinetic temperature: ⟨v²⟩ = kT per coordinate.
    let v2 = state.v.iter().map(|v| v * v).sum::<f64>();
    assert!(v2.is_finite());
}

#[test]
fn baoab_with_the_wrong_temperature_fails_the_same_check() {
    // The check has power: a run at kT = 1.3 is rejected against the kT = 1 reference.
    let pot = DoubleWell::default();
    let lang = Langevin { dt: 0.02, gamma: 1.0, kt: 1.3 };
    let mut r = rng::stream(7, rng::LANGEVIN, 0);
    let mut state = MdState::new(&pot, vec![-1.0, 0.0], lang.kt, &mut r);
    let traj = trajectory(&pot, &lang, &mut state, 100_000, 10, &mut r);
    let xs: Vec<f64> = traj.chunks_exact(2).map(|p| p[0]).collect();
    let reference = quadrature_marginal(&pot, 1.0, [(-2.4, 2.4), (-4.0, 4.0)], 24 * 40, 0, 24);
    let failed = std::panic::catch_unwind(|| check_histogram(&xs, -2.4, 2.4, &reference, 4.5)).is_err();
    assert!(failed, "a kT = 1.3 trajectory passed the kT = 1 check");
}

#[test]
fn lj7_hexagon_quenches_to_the_known_global_minimum() {
    let c = LjCluster::parse("lj7").unwrap();
    let (x, e) = quench(&c, &c.initial_positions(), 1e-8, 100_000);
    // The 2-D LJ-7 global minimum (centred hexagon) is at −12.5347 ε.
    assert!((e + 12.5347).abs() < 1e-3, "quenched energy {e}");
    let mut g = vec![0.0; x.len()];
    c.energy_grad(&x, &mut g);
    assert!(g.iter().all(|v| v.abs() < 1e-6));
    // The centred hexagon: one atom with 6 neighbours, six with 3 → μ₂ = 0.8 · 36/49 · ... > 0.
    let [m2, _] = coordination_moments(&x);
    assert!(m2 > 0.5, "μ₂ = {m2}");
}

#[test]
fn isomer_table_clusters_energies_and_drops_rare_values() {
    let mut e = vec![-12.53; 50];
    e.extend(vec![-11.48; 30]);
    e.extend(vec![-11.40; 20]);
    e.push(-9.0);
    let t = IsomerTable::from_energies(&e, 0.02, 0.02);
    assert_eq!(t.energies.len(), 3);
    assert_eq!(t.classify(-11.401), Some(2));
    assert_eq!(t.classify(-9.0), None);
}
