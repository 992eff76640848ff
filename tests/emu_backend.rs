//! The CUDA backend's host code (src/backend/cuda.rs) over the emulated device: whole training
//! steps of both models against the CPU backend, determinism, memory accounting, and its errors
//! (shape checks: tests/emu_shapes.rs).

mod common;

use robo_poet::backend::cuda::CudaBackend;
use robo_poet::backend::Backend;
use robo_poet::diagnostics::parity::{training_parity, Parity};
use robo_poet::gpu::EmuDevice;
use robo_poet::model::attention::{AttentionConfig, AttentionImpl, AttentionStyle};
use robo_poet::model::lstm::LstmConfig;
use robo_poet::model::{self, ModelConfig};

/// Ragged on purpose: no dimension is a multiple of a tile or a warp. Small, because the
/// emulator runs every CUDA thread on the CPU.
fn gpt(dropout: f32) -> ModelConfig {
    ModelConfig::Attention(AttentionConfig {
        style: AttentionStyle::Gpt,
        vocab_size: 19,
        seq_len: 13,
        d_model: 12,
        n_layers: 1,
        n_heads: 3,
        pos_emb: true,
        dropout,
        attention: Default::default(),
    })
}

fn seed_style() -> ModelConfig {
    ModelConfig::Attention(AttentionConfig {
        style: AttentionStyle::Seed,
        vocab_size: 23,
        seq_len: 35,
        d_model: 10,
        n_layers: 1,
        n_heads: 1,
        pos_emb: false,
        dropout: 0.1,
        attention: Default::default(),
    })
}

fn lstm() -> ModelConfig {
    ModelConfig::Lstm(LstmConfig {
        vocab_size: 19,
        seq_len: 9,
        embed: 7,
        hidden: 10,
        n_layers: 2,
    })
}

/// The tolerances of a few emulated steps. The kernels sum in f32 in their own order where the
/// CPU reference sums long reductions in f64, so single values differ by a few f32 ulps of the
/// sums they come from: losses agree to ~1e-6 relative, gradients to ~1e-5 of each tensor's
/// largest entry. An indexing bug is off by O(1) of that scale (or NaN). Later steps also carry
/// the first steps' rounding through AdamW, which normalises tiny gradient differences.
fn assert_parity(what: &str, p: &Parity, loss_tol: f64, grad_tol: f64) {
    for s in &p.steps {
        eprintln!(
            "{what} step {}: loss cpu {:.6} emu {:.6} (rel {:.1e}), worst gradient {} rel {:.1e}, norms {:.4} / {:.4}",
            s.step,
            s.cpu_loss,
            s.dev_loss,
            s.loss_rel_err(),
            s.worst_grad,
            s.grad_rel_err,
            s.cpu_grad_norm,
            s.dev_grad_norm
        );
    }
    assert!(
        p.max_loss_rel_err() <= loss_tol,
        "{what}: loss differs by {:.2e} relative (tolerance {loss_tol:.0e})",
        p.max_loss_rel_err()
    );
    let first = &p.steps[0];
    assert!(
        first.grad_rel_err <= grad_tol,
        "{what}: first-step gradient {} differs by {:.2e} of its largest entry (tolerance {grad_tol:.0e})",
        first.worst_grad,
        first.grad_rel_err
    );
}

#[test]
fn emu_backend_gpt_training_steps_match_the_cpu_backend() {
    let p = training_parity(&gpt(0.1), 2, 2, 11, Box::new(EmuDevice::new())).unwrap();
    assert_parity("gpt, dropout 0.1", &p, 1e-5, 1e-4);
}

#[test]
fn emu_backend_seed_attention_training_steps_match_the_cpu_backend() {
    let p = training_parity(&seed_style(), 2, 2, 12, Box::new(EmuDevice::new())).unwrap();
    assert_parity("seed attention, dropout 0.1", &p, 1e-5, 1e-4);
}

#[test]
fn emu_backend_lstm_training_steps_match_the_cpu_backend() {
    let p = training_parity(&lstm(), 3, 2, 13, Box::new(EmuDevice::new())).unwrap();
    assert_parity("lstm", &p, 1e-5, 1e-4);
}

/// The same configuration with fused attention.
fn fused(cfg: ModelConfig) -> ModelConfig {
    match cfg {
        ModelConfig::Attention(c) => ModelConfig::Attention(AttentionConfig {
            attention: AttentionImpl::Fused,
            ..c
        }),
        other => other,
    }
}

#[test]
fn emu_backend_fused_attention_training_steps_match_the_cpu_and_the_materialized_path() {
    // Both attention presets' styles, with dropout: the fused kernels against the CPU backend's
    // fused reference (the same tolerances as the materialized path), and against the
    // materialized kernels on the same device (the same math, the same masks: losses equal to
    // rounding, which would not hold if a mask bit or a tile differed).
    for (what, cfg, seed) in [("gpt", gpt(0.1), 21), ("seed attention", seed_style(), 22)] {
        let f =
            training_parity(&fused(cfg.clone()), 2, 3, seed, Box::new(EmuDevice::new())).unwrap();
        assert_parity(&format!("{what}, fused"), &f, 1e-5, 1e-4);
        let m = training_parity(&cfg, 2, 3, seed, Box::new(EmuDevice::new())).unwrap();
        for (a, b) in f.steps.iter().zip(&m.steps) {
            let rel = (a.dev_loss - b.dev_loss).abs() / b.dev_loss.abs();
            assert!(
                rel <= 1e-5,
                "{what} step {}: fused loss {} vs materialized {} ({rel:.1e})",
                a.step,
                a.dev_loss,
                b.dev_loss
            );
        }
    }
}

#[test]
fn emu_backend_is_deterministic() {
    let a = training_parity(&gpt(0.2), 2, 1, 5, Box::new(EmuDevice::new())).unwrap();
    let b = training_parity(&gpt(0.2), 2, 1, 5, Box::new(EmuDevice::new())).unwrap();
    for (x, y) in a.steps.iter().zip(&b.steps) {
        assert_eq!(
            x.dev_loss.to_bits(),
            y.dev_loss.to_bits(),
            "loss of step {}",
            x.step
        );
        assert_eq!(x.dev_grad_norm.to_bits(), y.dev_grad_norm.to_bits());
    }
    for (x, y) in a.dev_params.iter().zip(&b.dev_params) {
        let (x, y): (Vec<u32>, Vec<u32>) = (
            x.iter().map(|v| v.to_bits()).collect(),
            y.iter().map(|v| v.to_bits()).collect(),
        );
        assert_eq!(x, y, "parameters after a step");
    }
}

#[test]
fn emu_backend_attention_rows_sum_to_one_and_are_causal() {
    let model = model::build(&gpt(0.0), 2);
    let mut be = CudaBackend::new(Box::new(EmuDevice::new()), model.table().clone()).unwrap();
    let worst = common::attention_row_deviation(&mut be, model.as_ref(), 19, 3);
    assert!(worst <= 1e-5, "a row sums to 1 ± {worst:.2e}");
}

#[test]
fn emu_backend_allocates_exactly_its_table_and_measures_it() {
    let model = model::build(&lstm(), 4);
    let be = CudaBackend::new(Box::new(EmuDevice::new()), model.table().clone()).unwrap();
    let m = be.memory();
    assert_eq!(m.analytic_bytes, be.table().total_bytes());
    assert!(
        be.table().total_bytes() > model.table().total_bytes(),
        "the backend's workspace is in its table"
    );
    // The emulated driver counts each allocation rounded up to 256 bytes.
    let n = be.table().len();
    assert!(
        m.measured_bytes >= m.analytic_bytes && m.measured_bytes < m.analytic_bytes + 256 * n,
        "measured {} for analytic {} over {n} tensors",
        m.measured_bytes,
        m.analytic_bytes
    );
    assert_eq!(m.free_bytes + m.measured_bytes, m.total_bytes);
}

#[test]
fn emu_backend_out_of_memory_says_what_the_config_needs() {
    let model = model::build(&gpt(0.1), 8);
    let need = model.table().total_bytes();
    let dev = EmuDevice::new().with_capacity(need / 2);
    let err = CudaBackend::new(Box::new(dev), model.table().clone())
        .err()
        .expect("half the memory it needs must not be enough")
        .to_string();
    for want in ["out of device memory", "needs", "--batch", "--seq-len"] {
        assert!(err.contains(want), "{err}");
    }
}
