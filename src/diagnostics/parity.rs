//! Parity of the CUDA backend with the CPU reference: the same model, the same initial parameters
//! and the same batches trained side by side, step by step, comparing losses and every gradient.
//! Used by the emulated tests (`tests/emu_backend.rs`), the GPU tests (`tests/gpu_backend.rs`) and
//! the GPU check bundle. It lives with the other checks, not in backend/, which knows nothing of
//! models or training.

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::Backend;
use crate::gpu::Device;
use crate::model::{self, ModelConfig};
use crate::rng::Rng;
use crate::train::{train_step, TrainConfig};

/// How one step compared.
#[derive(Clone, Debug)]
pub struct StepParity {
    pub step: u64,
    pub cpu_loss: f64,
    pub dev_loss: f64,
    /// Largest over parameters of max |g_dev − g_cpu| / max |g_cpu| (per tensor; the scale is at
    /// least 1e-3 of the model's largest gradient entry).
    pub grad_rel_err: f64,
    /// The parameter where that happened.
    pub worst_grad: String,
    pub cpu_grad_norm: f64,
    pub dev_grad_norm: f64,
}

impl StepParity {
    pub fn loss_rel_err(&self) -> f64 {
        (self.dev_loss - self.cpu_loss).abs() / self.cpu_loss.abs().max(1e-12)
    }
}

/// Every step's comparison, plus both backends' final parameters.
pub struct Parity {
    pub steps: Vec<StepParity>,
    pub cpu_params: Vec<Vec<f32>>,
    pub dev_params: Vec<Vec<f32>>,
}

impl Parity {
    pub fn max_loss_rel_err(&self) -> f64 {
        self.steps
            .iter()
            .map(|s| s.loss_rel_err())
            .fold(0.0, f64::max)
    }
    pub fn max_grad_rel_err(&self) -> f64 {
        self.steps
            .iter()
            .map(|s| s.grad_rel_err)
            .fold(0.0, f64::max)
    }
}

/// A training configuration for parity runs: default AdamW, clipping at 1, no warmup.
pub fn parity_train_config(batch: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        batch,
        steps: 1000,
        lr: 1e-3,
        min_lr_ratio: 0.1,
        warmup: 0,
        adamw: Default::default(),
        clip: 1.0,
        eval_every: 1000,
        seed,
        precision: Default::default(),
    }
}

/// Trains `cfg` for `steps` steps on the CPU and on `dev` from the same initial parameters
/// and random batches (token ids drawn from `seed`), with dropout as the config says.
pub fn training_parity(
    cfg: &ModelConfig,
    batch: usize,
    steps: u64,
    seed: u64,
    dev: Box<dyn Device>,
) -> anyhow::Result<Parity> {
    training_parity_with(cfg, batch, steps, seed, dev, |_| {})
}

/// [`training_parity`] with the CUDA backend configured by `configure` before the first step
/// (e.g. the LSTM's per-timestep path instead of the persistent kernels).
pub fn training_parity_with(
    cfg: &ModelConfig,
    batch: usize,
    steps: u64,
    seed: u64,
    dev: Box<dyn Device>,
    configure: impl FnOnce(&mut CudaBackend),
) -> anyhow::Result<Parity> {
    let model = model::build(cfg, batch);
    let mut cpu = CpuBackend::new(model.table().clone());
    let mut gpu = CudaBackend::new(dev, model.table().clone())?;
    configure(&mut gpu);
    let mut rng = Rng::derive(seed, "init");
    for (id, v) in model::init_params(model.as_ref(), &mut rng) {
        cpu.write(id, &v);
        gpu.write(id, &v);
    }
    let tcfg = parity_train_config(batch, seed);
    let (b, t) = model.batch_shape();
    let v = cfg.vocab_size() as u64;
    let mut data = Rng::derive(seed, "batches");
    let mut out = Vec::new();
    for step in 1..=steps {
        // A stream with structure (each target is a function of its input) so the loss falls.
        let inputs: Vec<u32> = (0..b * t).map(|_| data.below(v) as u32).collect();
        let targets: Vec<u32> = inputs.iter().map(|&x| (x * 7 + 3) % v as u32).collect();
        let c = train_step(model.as_ref(), &mut cpu, &tcfg, step, &inputs, &targets);
        let g = train_step(model.as_ref(), &mut gpu, &tcfg, step, &inputs, &targets);
        let (mut worst, mut worst_name) = (0.0f64, String::new());
        let grads: Vec<(Vec<f32>, Vec<f32>)> = model
            .params()
            .iter()
            .map(|p| (cpu.read(p.ids.grad), gpu.read(p.ids.grad)))
            .collect();
        let max_abs = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
        // A gradient that is zero in exact arithmetic (the key bias: softmax ignores a constant
        // added to a whole row of scores) is pure rounding on both sides; measure every tensor
        // against at least 1e-3 of the largest gradient entry of the model.
        let floor = 1e-3 * grads.iter().map(|(c, _)| max_abs(c)).fold(0.0, f64::max);
        for (p, (gc, gg)) in model.params().iter().zip(&grads) {
            let scale = max_abs(gc).max(floor).max(1e-30);
            let err = gc
                .iter()
                .zip(gg)
                .map(|(a, b)| {
                    let d = (a - b).abs() as f64;
                    if d.is_nan() {
                        f64::INFINITY
                    } else {
                        d
                    }
                })
                .fold(0.0, f64::max)
                / scale;
            if err > worst || worst_name.is_empty() {
                worst = err;
                worst_name = model.table().name(p.ids.grad).to_string();
            }
        }
        out.push(StepParity {
            step,
            cpu_loss: c.loss,
            dev_loss: g.loss,
            grad_rel_err: worst,
            worst_grad: worst_name,
            cpu_grad_norm: c.grad_norm,
            dev_grad_norm: g.grad_norm,
        });
    }
    let cpu_params = model
        .params()
        .iter()
        .map(|p| cpu.read(p.ids.param))
        .collect();
    let dev_params = model
        .params()
        .iter()
        .map(|p| gpu.read(p.ids.param))
        .collect();
    Ok(Parity {
        steps: out,
        cpu_params,
        dev_params,
    })
}
