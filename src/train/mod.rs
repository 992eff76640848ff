//! Training: one step = forward, backward, global gradient norm, clipping, AdamW with warmup +
//! cosine decay, queued as one unit on the backend (on the GPU: no host wait, one CUDA graph);
//! evaluation of the whole validation split; and around them the run driver every training
//! command shares (`driver`), the files of a run directory (`run_files`), its one-writer lock
//! (`run_lock`) and run budgets (`budget`).

pub mod budget;
pub mod driver;
pub mod run_files;
pub mod run_lock;

use crate::backend::{Backend, StepInfo};
use crate::model::{scored, DropoutCtx, Model};
use crate::ops::adamw::AdamWConfig;
use crate::ops::IGNORE;
use crate::sampler::eval_windows;
use crate::tensor::{ParamIds, TensorId};
use serde::{Deserialize, Serialize};

/// Optimisation settings (saved in checkpoints; resuming uses the saved values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub batch: usize,
    /// Total optimizer steps of the run.
    pub steps: u64,
    /// Peak learning rate.
    pub lr: f32,
    /// The cosine decay ends at lr · min_lr_ratio.
    pub min_lr_ratio: f32,
    /// Linear warmup steps.
    pub warmup: u64,
    pub adamw: AdamWConfig,
    /// Global gradient-norm clipping threshold (0 = off).
    pub clip: f32,
    /// Evaluate (and checkpoint) every this many steps, and at the end.
    pub eval_every: u64,
    pub seed: u64,
    /// The linear layers' GEMM arithmetic on the GPU (fp32, tf32 or bf16 tensor cores);
    /// checkpoints from before the option are fp32.
    #[serde(default)]
    pub precision: crate::gpu::kernels::Precision,
}

impl TrainConfig {
    /// Learning rate at 1-based `step`: linear warmup to `lr`, then cosine down to lr·min_lr_ratio.
    pub fn lr_at(&self, step: u64) -> f32 {
        let lr = self.lr as f64;
        if step <= self.warmup {
            return (lr * step as f64 / self.warmup.max(1) as f64) as f32;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let min = lr * self.min_lr_ratio as f64;
        (min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
    }
}

/// What one training step measured.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f32,
    /// Σ g² of each parameter's gradient, in `model.params()` order (before clipping).
    pub grad_sq: Vec<f64>,
}

/// Ids of all parameter gradients, in parameter order.
pub fn grad_ids(model: &dyn Model) -> Vec<TensorId> {
    model.params().iter().map(|p| p.ids.grad).collect()
}

/// The per-step values of step `step` of a run (what a CUDA graph reads from device memory).
pub fn step_info(cfg: &TrainConfig, step: u64, targets: &[u32]) -> StepInfo {
    StepInfo {
        step,
        lr: cfg.lr_at(step),
        loss_scale: 1.0 / scored(targets).max(1) as f32,
        seed: cfg.seed,
    }
}

/// Queues one optimizer step at 1-based `step` on a batch (B, T) without waiting for it: the
/// batch upload, then one [`Backend::run_step`]: clear the gradients and workspace, forward with
/// the loss's gradient, backward, and [`Backend::finish_step`] (norm, clipping, AdamW; no update
/// for a non-finite step, which halts the run). Its results come back with
/// [`Backend::take_step_records`].
pub fn queue_step(
    model: &dyn Model,
    be: &mut dyn Backend,
    cfg: &TrainConfig,
    step: u64,
    inputs: &[u32],
    targets: &[u32],
) {
    model.set_batch(be, inputs, targets);
    let info = step_info(cfg, step, targets);
    let d = DropoutCtx {
        seed: cfg.seed,
        step,
    };
    let params: Vec<ParamIds> = model.params().iter().map(|p| p.ids).collect();
    be.run_step(&info, &mut |be| {
        be.clear_step_buffers();
        be.range_push("forward+backward");
        model.train_pass(be, d, info.loss_scale);
        be.range_pop();
        be.range_push("optimizer");
        be.finish_step(
            model.losses(),
            model.targets(),
            &params,
            &cfg.adamw,
            cfg.clip,
            &info,
        );
        be.range_pop();
    });
}

/// One optimizer step at 1-based `step` on a batch (B, T), waiting for it: [`queue_step`], then
/// its record and every parameter's Σ g². Returns the loss before the update. A non-finite loss
/// or gradient norm is returned as is and the parameters are NOT updated.
pub fn train_step(
    model: &dyn Model,
    be: &mut dyn Backend,
    cfg: &TrainConfig,
    step: u64,
    inputs: &[u32],
    targets: &[u32],
) -> StepStats {
    queue_step(model, be, cfg, step, inputs, targets);
    let rec = be
        .take_step_records()
        .into_iter()
        .find(|r| r.step == step)
        .unwrap_or_else(|| panic!("step {step} left no record on the {} backend", be.name()));
    StepStats {
        loss: rec.loss,
        grad_norm: rec.grad_norm,
        lr: cfg.lr_at(step),
        grad_sq: be.last_grad_sq(),
    }
}

/// Mean loss over every target of `tokens` (no dropout), batching windows B at a time, and the
/// number of targets scored ([`crate::sampler::eval_targets`]: every token but the first).
pub fn evaluate(model: &dyn Model, be: &mut dyn Backend, tokens: &[u32]) -> (f64, usize) {
    let (b, t) = model.batch_shape();
    let windows = eval_windows(tokens, t);
    let (mut sum, mut count) = (0.0f64, 0usize);
    for chunk in windows.chunks(b) {
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for (i, tg) in chunk {
            inputs.extend_from_slice(i);
            targets.extend_from_slice(tg);
        }
        inputs.resize(b * t, 0);
        targets.resize(b * t, IGNORE);
        model.set_batch(be, &inputs, &targets);
        model.forward(be, None);
        let (s, n) = be.loss_sum(model.losses(), model.targets());
        sum += s;
        count += n;
    }
    (sum / count.max(1) as f64, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let cfg = TrainConfig {
            batch: 1,
            steps: 110,
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup: 10,
            adamw: AdamWConfig::default(),
            clip: 1.0,
            eval_every: 10,
            seed: 0,
            precision: Default::default(),
        };
        assert!((cfg.lr_at(1) - 1e-4).abs() < 1e-9);
        assert!((cfg.lr_at(10) - 1e-3).abs() < 1e-9);
        assert!((cfg.lr_at(60) - 0.55e-3).abs() < 1e-8, "{}", cfg.lr_at(60));
        assert!((cfg.lr_at(110) - 1e-4).abs() < 1e-9);
        assert!(cfg.lr_at(30) > cfg.lr_at(31));
    }
}
