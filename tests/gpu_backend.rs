//! The CUDA backend on a real GPU: training parity of the default models with the CPU backend over
//! 100 steps, determinism, attention row sums. Without a GPU the binary says SKIPPED once (on stderr)
//! and every test returns: these are run by the GPU check bundle (scripts/gpu-bundle.sh, scripts/gpu/run.sh).

mod common;

use robo_poet::backend::cuda::CudaBackend;
use robo_poet::diagnostics::parity::training_parity;
use robo_poet::gpu::CudaDevice;
use robo_poet::model::attention::{AttentionConfig, AttentionStyle};
use robo_poet::model::lstm::LstmConfig;
use robo_poet::model::{self, ModelConfig};

fn gpt(t: usize, d: usize, dropout: f32) -> ModelConfig {
    ModelConfig::Attention(AttentionConfig {
        style: AttentionStyle::Gpt,
        vocab_size: 78,
        seq_len: t,
        d_model: d,
        n_layers: 2,
        n_heads: 4,
        pos_emb: true,
        dropout,
        attention: Default::default(),
    })
}

fn lstm(t: usize) -> ModelConfig {
    ModelConfig::Lstm(LstmConfig {
        vocab_size: 78,
        seq_len: t,
        embed: 32,
        hidden: 96,
        n_layers: 2,
    })
}

/// The default GPT and the default LSTM (the presets' shapes) at batch 8.
fn default_gpt() -> ModelConfig {
    common::default_gpt()
}

fn default_lstm() -> ModelConfig {
    ModelConfig::Lstm(LstmConfig {
        vocab_size: 78,
        seq_len: 128,
        embed: 64,
        hidden: 256,
        n_layers: 1,
    })
}

/// Tolerances of the 100-step parity, set from the drift the emulator shows when it rounds as
/// the GPU does (tests/emu_fma_parity.rs, FMA contraction; docs/KERNEL_BENCH.md "Rounding"): over
/// 30 steps of these models the loss drifted by at most 1.7e-7 relative, with no growth over the
/// steps; first-step gradients by 8.3e-7 of each tensor's largest entry, later steps by up to
/// 1.0e-4. The GPU adds what the emulator does not model (ex2.approx and rsqrt.approx ulps, NVVM's
/// own contraction choices) and 3x the steps: the bounds are ~60x the loss drift and ~25x the
/// first-step gradient drift, and still 1000x below what a wrong kernel does within a step.
const LOSS_TOL: f64 = 1e-5;
const FIRST_GRAD_TOL: f64 = 2e-5;
const GRAD_TOL: f64 = 1e-3;

/// 100 steps from the same parameters, batches and dropout masks on the GPU and the CPU.
fn hundred_steps(test: &str, cfg: &ModelConfig) {
    let Some(dev) = common::gpu_or_skip() else {
        return;
    };
    let p = training_parity(cfg, 8, 100, 7, Box::new(dev)).unwrap();
    for s in p.steps.iter().filter(|s| s.step == 1 || s.step % 10 == 0) {
        eprintln!(
            "{test} step {:>3}: loss cpu {:.6} gpu {:.6} (rel {:.2e}), worst gradient {} rel {:.2e}",
            s.step,
            s.cpu_loss,
            s.dev_loss,
            s.loss_rel_err(),
            s.worst_grad,
            s.grad_rel_err
        );
    }
    eprintln!(
        "{test}: max loss rel diff {:.3e} over {} steps, first-step gradient rel diff {:.3e}, any step {:.3e}",
        p.max_loss_rel_err(),
        p.steps.len(),
        p.steps[0].grad_rel_err,
        p.max_grad_rel_err()
    );
    assert!(p.max_loss_rel_err() <= LOSS_TOL, "losses diverge");
    assert!(
        p.steps[0].grad_rel_err <= FIRST_GRAD_TOL,
        "first-step gradients differ"
    );
    assert!(p.max_grad_rel_err() <= GRAD_TOL, "gradients drift apart");
}

#[test]
fn gpu_backend_attention_training_matches_cpu_for_100_steps() {
    hundred_steps(
        "gpu_backend_attention_training_matches_cpu_for_100_steps",
        &default_gpt(),
    );
}

#[test]
fn gpu_backend_lstm_training_matches_cpu_for_100_steps() {
    hundred_steps(
        "gpu_backend_lstm_training_matches_cpu_for_100_steps",
        &default_lstm(),
    );
}

/// What compute-sanitizer runs: two steps of each model at ragged shapes, with dropout.
#[test]
fn gpu_backend_sanitizer_run() {
    for cfg in [gpt(37, 36, 0.1), lstm(21)] {
        let Some(dev) = common::gpu_or_skip() else {
            return;
        };
        let p = training_parity(&cfg, 3, 2, 3, Box::new(dev)).unwrap();
        assert!(p.max_loss_rel_err() <= 1e-4, "{}", p.max_loss_rel_err());
    }
}

#[test]
fn gpu_backend_is_deterministic() {
    let Some(dev) = common::gpu_or_skip() else {
        return;
    };
    let a = training_parity(&gpt(64, 64, 0.2), 4, 3, 9, Box::new(dev)).unwrap();
    let b = training_parity(
        &gpt(64, 64, 0.2),
        4,
        3,
        9,
        Box::new(CudaDevice::open().unwrap()),
    )
    .unwrap();
    for (x, y) in a.steps.iter().zip(&b.steps) {
        assert_eq!(
            x.dev_loss.to_bits(),
            y.dev_loss.to_bits(),
            "step {}",
            x.step
        );
    }
    assert!(
        a.dev_params == b.dev_params,
        "parameters differ between two identical runs"
    );
}

#[test]
fn gpu_backend_attention_rows_sum_to_one() {
    let Some(dev) = common::gpu_or_skip() else {
        return;
    };
    let model = model::build(&gpt(128, 128, 0.1), 4);
    let mut be = CudaBackend::new(Box::new(dev), model.table().clone()).unwrap();
    let worst = common::attention_row_deviation(&mut be, model.as_ref(), 78, 3);
    eprintln!("gpu_backend_attention_rows_sum_to_one: largest |row sum - 1| = {worst:.2e}");
    assert!(worst <= 1e-5, "a row sums to 1 ± {worst:.2e}");
}
