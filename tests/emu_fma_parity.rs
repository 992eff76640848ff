//! The GPU's rounding, seen on the CPU: 30 training steps of the two default models (the default
//! GPT and the default LSTM, at batch 1) on the CUDA backend over the emulator built with FMA
//! contraction (`ROBO_POET_EMU_FMA=1`, as NVRTC contracts for the GPU), against the CPU backend.
//! The drift it prints is what the GPU parity tolerances are set from (tests/gpu_backend.rs,
//! docs/KERNEL_BENCH.md "Rounding"). Without that build option each test says SKIPPED: .ci/run
//! runs this file in its FMA leg.

mod common;

use robo_poet::diagnostics::parity::{training_parity, Parity};
use robo_poet::gpu::{emu, EmuDevice};
use robo_poet::model::lstm::LstmConfig;
use robo_poet::model::ModelConfig;

const STEPS: u64 = 30;
/// Measured with FMA contraction (2026-12-01, docs/KERNEL_BENCH.md): largest loss drift over the
/// 30 steps 1.7e-7 (GPT) and 1.4e-8 (LSTM); first-step gradients 7.6e-7 and 8.3e-7 of each
/// tensor's largest entry, later steps up to 1.0e-4 (GPT, block 1's MLP weight) and 3.8e-6. The
/// bounds are 10x those, so a change that makes the rounding worse fails here before a GPU sees it.
const LOSS_TOL: f64 = 2e-6;
const FIRST_GRAD_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-3;

fn skipped(test: &str) -> bool {
    if emu::FMA_CONTRACTION {
        return false;
    }
    use std::io::Write as _;
    writeln!(
        std::io::stderr(),
        "SKIPPED {test}: the emulated kernels were built without FMA contraction (ROBO_POET_EMU_FMA=1 cargo test --test emu_fma_parity; .ci/run does)"
    )
    .ok();
    true
}

fn report(what: &str, p: &Parity) {
    for s in &p.steps {
        eprintln!(
            "{what} step {:>2}: loss {:.6} rel {:.2e}, worst gradient {} rel {:.2e}",
            s.step,
            s.cpu_loss,
            s.loss_rel_err(),
            s.worst_grad,
            s.grad_rel_err
        );
    }
    eprintln!(
        "{what}: {} steps, max loss rel diff {:.2e}, first-step gradient {:.2e}, any-step gradient {:.2e}",
        p.steps.len(),
        p.max_loss_rel_err(),
        p.steps[0].grad_rel_err,
        p.max_grad_rel_err()
    );
    assert_eq!(p.steps.len() as u64, STEPS);
    assert!(
        p.max_loss_rel_err() <= LOSS_TOL,
        "{what}: loss drift {:.2e} > {LOSS_TOL:.0e}",
        p.max_loss_rel_err()
    );
    assert!(
        p.steps[0].grad_rel_err <= FIRST_GRAD_TOL,
        "{what}: first-step gradient {} off by {:.2e} > {FIRST_GRAD_TOL:.0e}",
        p.steps[0].worst_grad,
        p.steps[0].grad_rel_err
    );
    assert!(
        p.max_grad_rel_err() <= GRAD_TOL,
        "{what}: a gradient drifted by {:.2e} > {GRAD_TOL:.0e}",
        p.max_grad_rel_err()
    );
}

#[test]
fn emu_fma_parity_default_gpt_30_steps() {
    if skipped("emu_fma_parity_default_gpt_30_steps") {
        return;
    }
    let cfg = common::default_gpt();
    let p = training_parity(&cfg, 1, STEPS, 7, Box::new(EmuDevice::new())).unwrap();
    report("default GPT, FMA", &p);
}

#[test]
fn emu_fma_parity_default_lstm_30_steps() {
    if skipped("emu_fma_parity_default_lstm_30_steps") {
        return;
    }
    let cfg = ModelConfig::Lstm(LstmConfig {
        vocab_size: 78,
        seq_len: 128,
        embed: 64,
        hidden: 256,
        n_layers: 1,
    });
    let p = training_parity(&cfg, 1, STEPS, 7, Box::new(EmuDevice::new())).unwrap();
    report("default LSTM, FMA", &p);
}
