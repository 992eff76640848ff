//! Test helpers: random inputs, tolerant comparison and the finite-difference gradient check.
//!
//! The ops are f32, so central differences cannot be exact. The check perturbs one input by
//! ±eps (eps = 1e-2 · max(1, |x|)), evaluates a scalar objective L = Σ out·w (accumulated in f64
//! by the callers, with random weights w) and compares (L+ − L−)/2eps with the analytic gradient.
//! Two error terms bound the difference: truncation, eps²·|L'''|/6 ≈ 1e-4 for these smooth
//! functions, and f32 rounding of the outputs, about 6e-8·Σ|out·w|/eps ≈ 1e-4..1e-3 for the
//! sizes used. The tolerance 3e-3 + 3e-2·|g| sits above both with margin, while a wrong
//! gradient (a missing term, a wrong index, a factor of 2) is off by far more.

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

/// Checks `analytic` = d objective / d x at up to 150 positions spread over x.
#[track_caller]
pub fn grad_check(what: &str, x: &[f32], analytic: &[f32], objective: impl Fn(&[f32]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let n = x.len();
    let stride = (n / 150).max(1);
    let mut xp = x.to_vec();
    let mut i = 0;
    while i < n {
        let eps = 1e-2f32 * x[i].abs().max(1.0);
        xp[i] = x[i] + eps;
        let lp = objective(&xp);
        xp[i] = x[i] - eps;
        let lm = objective(&xp);
        xp[i] = x[i];
        let h = ((x[i] + eps) as f64) - ((x[i] - eps) as f64);
        let fd = (lp - lm) / h;
        let g = analytic[i] as f64;
        let tol = 3e-3 + 3e-2 * g.abs().max(fd.abs());
        assert!((g - fd).abs() <= tol, "{what}[{i}] of {n}: analytic {g:.6e}, finite difference {fd:.6e} (tolerance {tol:.1e})");
        i += stride;
    }
}
