//! The special functions the Dirichlet needs, in f64: `ln Γ` and the digamma function `ψ`.

/// `ln Γ(x)` for `x > 0`: upward recurrence to `x >= 16`, then Stirling's series (absolute error
/// below 1e-13 there). NaN for `x <= 0` or NaN.
pub fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    let mut shift = 0.0;
    let mut y = x;
    while y < 16.0 {
        shift += y.ln();
        y += 1.0;
    }
    let inv = 1.0 / y;
    let inv2 = inv * inv;
    let series = inv
        * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 * (1.0 / 1680.0 - inv2 / 1188.0))));
    (y - 0.5) * y.ln() - y + 0.5 * (2.0 * std::f64::consts::PI).ln() + series - shift
}

/// The digamma function `ψ(x) = d/dx ln Γ(x)` for `x > 0`: upward recurrence to `x >= 16`, then
/// the asymptotic series. NaN for `x <= 0` or NaN.
pub fn digamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    let mut shift = 0.0;
    let mut y = x;
    while y < 16.0 {
        shift -= 1.0 / y;
        y += 1.0;
    }
    let inv = 1.0 / y;
    let inv2 = inv * inv;
    let series = inv2
        * (1.0 / 12.0
            - inv2 * (1.0 / 120.0 - inv2 * (1.0 / 252.0 - inv2 * (1.0 / 240.0 - inv2 * (1.0 / 132.0)))));
    y.ln() - 0.5 * inv - series + shift
}
