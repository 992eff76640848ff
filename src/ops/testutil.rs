//! Test helpers: random inputs, tolerant comparison and the finite-difference gradient check.

use crate::rng::Rng;

pub fn rng(seed: usize) -> Rng {
    Rng::new(0x5eed ^ seed as u64)
}

pub fn randn(r: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.normal() as f32).collect()
}

pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

#[track_caller]
pub fn assert_close(got: f32, want: f64, tol: f64, what: &str) {
    let err = (got as f64 - want).abs();
    assert!(
        err <= tol * (1.0 + want.abs()),
        "{what}: got {got}, want {want} (error {err:.3e}, tolerance {tol:.1e} relative)"
    );
}

/// Checks `analytic` = d objective / d x at up to 150 positions spread over x
/// (`diagnostics::gradcheck::fd_check`, whose tolerance is explained there).
#[track_caller]
pub fn grad_check(what: &str, x: &[f32], analytic: &[f32], objective: impl Fn(&[f32]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let w = crate::diagnostics::gradcheck::fd_check(x, analytic, objective);
    assert!(
        w.ratio <= 1.0,
        "{what}[{}] of {}: analytic {:.6e}, finite difference {:.6e} (tolerance {:.1e})",
        w.index,
        x.len(),
        w.analytic,
        w.finite_difference,
        w.tolerance
    );
}
