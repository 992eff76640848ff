//! Finite-difference gradient checks: of any scalar function of a vector (the ops' tests), and of
//! a whole model's mean loss with respect to every parameter (`robo-poet check`, model tests).
//!
//! The ops are f32, so central differences cannot be exact. One input is perturbed by ±eps
//! (eps = 1e-2 · max(1, |x|)) and (L+ − L−)/2eps is compared with the analytic gradient, the
//! objective L accumulated in f64. Two error terms bound the difference: truncation,
//! eps²·|L'''|/6 ≈ 1e-4 for these smooth functions, and f32 rounding of the outputs, about
//! 6e-8·Σ|out·w|/eps ≈ 1e-4..1e-3 for the sizes used. The tolerance 3e-3 + 3e-2·|g| sits above
//! both with margin, while a wrong gradient (a missing term, a wrong index, a factor of 2) is off
//! by far more.

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::model::{self, scored, DropoutCtx, Model, ModelConfig};
use crate::rng::Rng;
use crate::tensor::Category;

/// The worst position of a finite-difference check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FdWorst {
    pub index: usize,
    pub analytic: f64,
    pub finite_difference: f64,
    pub tolerance: f64,
    /// |analytic − finite difference| / tolerance: the check passes when ≤ 1.
    pub ratio: f64,
    /// Positions compared (up to 150, spread over x).
    pub checked: usize,
}

/// Compares `analytic` = d objective / d x with central differences at up to 150 positions
/// spread over x; returns the worst one.
pub fn fd_check(x: &[f32], analytic: &[f32], objective: impl Fn(&[f32]) -> f64) -> FdWorst {
    assert_eq!(x.len(), analytic.len(), "gradient length");
    let n = x.len();
    let stride = (n / 150).max(1);
    let mut xp = x.to_vec();
    let mut worst = FdWorst {
        index: 0,
        analytic: 0.0,
        finite_difference: 0.0,
        tolerance: 0.0,
        ratio: 0.0,
        checked: 0,
    };
    for i in (0..n).step_by(stride) {
        let eps = 1e-2f32 * x[i].abs().max(1.0);
        xp[i] = x[i] + eps;
        let lp = objective(&xp);
        xp[i] = x[i] - eps;
        let lm = objective(&xp);
        xp[i] = x[i];
        // The step actually taken, after f32 rounding of x ± eps.
        let h = ((x[i] + eps) as f64) - ((x[i] - eps) as f64);
        let fd = (lp - lm) / h;
        let g = analytic[i] as f64;
        let tol = 3e-3 + 3e-2 * g.abs().max(fd.abs());
        // A NaN gradient or difference is the worst possible position.
        let ratio = match (g - fd).abs() / tol {
            r if r.is_nan() => f64::INFINITY,
            r => r,
        };
        worst.checked += 1;
        if worst.checked == 1 || ratio > worst.ratio {
            worst = FdWorst {
                index: i,
                analytic: g,
                finite_difference: fd,
                tolerance: tol,
                ratio,
                checked: worst.checked,
            };
        }
    }
    worst
}

/// One parameter of a whole-model check.
#[derive(Clone, Debug)]
pub struct ParamFd {
    pub name: String,
    pub worst: FdWorst,
    /// Whether any entry of the analytic gradient is non-zero.
    pub nonzero: bool,
}

/// Checks the gradient of the mean loss of `cfg` (a tiny configuration: every parameter is probed
/// at up to 150 positions, two forward passes each) with respect to every parameter, on the CPU
/// backend, with dropout on (a fixed mask). Parameters are the training initialisation plus
/// N(0, 0.3) noise, so every path carries a visible gradient and no tensor is so small that the
/// finite-difference step distorts it. One target is IGNORE.
pub fn whole_model_fd(cfg: &ModelConfig, batch: usize, seed: u64) -> Vec<ParamFd> {
    let model = model::build(cfg, batch);
    let mut be = CpuBackend::new(model.table().clone());
    let mut rng = Rng::new(seed);
    for (id, v) in model::init_params(model.as_ref(), &mut rng) {
        let v: Vec<f32> = v.iter().map(|x| x + 0.3 * rng.normal() as f32).collect();
        be.write(id, &v);
    }
    let (b, t) = model.batch_shape();
    let vocab = cfg.vocab_size() as u64;
    let inputs: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
    let mut targets: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
    let ignored = 1.min(targets.len() - 1);
    targets[ignored] = crate::ops::IGNORE;
    model.set_batch(&mut be, &inputs, &targets);

    let d = Some(DropoutCtx { seed: 5, step: 2 });
    mean_loss(model.as_ref(), &mut be, d);
    be.zero_category(Category::Gradient);
    be.zero_category(Category::Workspace);
    model.backward(&mut be, 1.0 / scored(&targets).max(1) as f32, d);

    let mut out = Vec::new();
    for p in model.params() {
        let x = be.read(p.ids.param);
        let g = be.read(p.ids.grad);
        // A second backend holding the same parameters and batch, where one tensor is perturbed.
        let mut probe = CpuBackend::new(model.table().clone());
        for q in model.params() {
            probe.write(q.ids.param, &be.read(q.ids.param));
        }
        model.set_batch(&mut probe, &inputs, &targets);
        let probe = std::cell::RefCell::new(probe);
        let id = p.ids.param;
        let worst = fd_check(&x, &g, |v| {
            let mut pb = probe.borrow_mut();
            pb.write(id, v);
            mean_loss(model.as_ref(), &mut *pb, d)
        });
        out.push(ParamFd {
            name: p.name.clone(),
            worst,
            nonzero: g.iter().any(|&v| v != 0.0),
        });
    }
    out
}

fn mean_loss(model: &dyn Model, be: &mut dyn Backend, d: Option<DropoutCtx>) -> f64 {
    model.forward(be, d);
    let (s, n) = be.loss_sum(model.losses(), model.targets());
    s / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_gradient_is_the_worst_position() {
        // L = Σ x_i², dL/dx = 2x; position 3 gets a wrong analytic value.
        let x: Vec<f32> = (0..10).map(|i| i as f32 * 0.3 - 1.0).collect();
        let mut g: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
        let objective = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>();
        let ok = fd_check(&x, &g, objective);
        assert_eq!(ok.checked, 10);
        assert!(ok.ratio < 0.05, "{ok:?}");
        g[3] *= 1.5;
        let bad = fd_check(&x, &g, objective);
        assert_eq!(bad.index, 3);
        assert!(bad.ratio > 1.0, "{bad:?}");
        g[3] = f32::NAN;
        assert!(fd_check(&x, &g, objective).ratio.is_infinite());
    }
}
