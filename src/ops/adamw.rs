//! AdamW (decoupled weight decay), global gradient norm and clipping.

use super::check_len;

/// AdamW hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// One AdamW step on one tensor. `step` counts from 1. `grad_scale` multiplies the gradient
/// first (it carries gradient clipping). Weight decay applies only when `decay` is set.
pub fn adamw_update(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    cfg: &AdamWConfig,
    lr: f32,
    step: u64,
    grad_scale: f32,
    decay: bool,
) {
    let n = param.len();
    check_len("adamw_update", "grad", grad.len(), &[n]);
    check_len("adamw_update", "m", m.len(), &[n]);
    check_len("adamw_update", "v", v.len(), &[n]);
    assert!(step >= 1, "adamw_update: step counts from 1");
    let bc1 = 1.0 - (cfg.beta1 as f64).powi(step as i32);
    let bc2 = 1.0 - (cfg.beta2 as f64).powi(step as i32);
    let (bc1, bc2) = (bc1 as f32, bc2 as f32);
    let wd = if decay { cfg.weight_decay } else { 0.0 };
    for i in 0..n {
        let g = grad[i] * grad_scale;
        m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g;
        v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
        let mhat = m[i] / bc1;
        let vhat = v[i] / bc2;
        param[i] -= lr * (mhat / (vhat.sqrt() + cfg.eps) + wd * param[i]);
    }
}

/// Σ x² in f64, in index order (deterministic).
pub fn sum_squares(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}

/// The factor that scales a gradient of global norm `norm` down to `max_norm` (1 if within).
pub fn clip_scale(norm: f64, max_norm: f32) -> f32 {
    if max_norm > 0.0 && norm > max_norm as f64 {
        (max_norm as f64 / norm) as f32
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_matches_the_textbook_update() {
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut p = vec![1.0f32, -2.0, 0.5];
        let g = [0.1f32, -0.3, 0.0];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        let (mut pe, mut me, mut ve) = (vec![1.0f64, -2.0, 0.5], vec![0.0f64; 3], vec![0.0f64; 3]);
        for step in 1..=3u64 {
            adamw_update(&mut p, &g, &mut m, &mut v, &cfg, 0.01, step, 0.5, true);
            for i in 0..3 {
                let gi = g[i] as f64 * 0.5;
                me[i] = 0.9 * me[i] + 0.1 * gi;
                ve[i] = 0.99 * ve[i] + 0.01 * gi * gi;
                let mh = me[i] / (1.0 - 0.9f64.powi(step as i32));
                let vh = ve[i] / (1.0 - 0.99f64.powi(step as i32));
                pe[i] -= 0.01 * (mh / (vh.sqrt() + 1e-8) + 0.1 * pe[i]);
            }
        }
        for i in 0..3 {
            assert!(
                (p[i] as f64 - pe[i]).abs() < 1e-6,
                "param {i}: {} vs {}",
                p[i],
                pe[i]
            );
        }
        // No decay: a zero gradient leaves the parameter alone.
        let mut q = vec![3.0f32];
        adamw_update(
            &mut q,
            &[0.0],
            &mut [0.0],
            &mut [0.0],
            &cfg,
            0.01,
            1,
            1.0,
            false,
        );
        assert_eq!(q[0], 3.0);
    }

    #[test]
    fn clipping_scale() {
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert!((clip_scale(4.0, 1.0) - 0.25).abs() < 1e-7);
        assert_eq!(clip_scale(4.0, 0.0), 1.0);
        assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
    }
}
