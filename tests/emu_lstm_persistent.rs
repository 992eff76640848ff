//! The persistent LSTM kernels (kernels/lstm.cu: `lstm_persistent_forward` and
//! `lstm_persistent_backward`, one cooperative launch per layer and direction) on the emulated
//! device, through their launchers, against the CPU reference (src/ops/lstm.rs): ragged shapes
//! (H in {1, 7, 256, 300}, B in {1, 3, 32}, T in {1, 2, 129}), bit-identical repeats, the plan's
//! refusal of a layer that does not fit, and whole training steps of 1- and 2-layer LSTMs on the
//! CUDA backend (persistent, and the per-timestep fallback) against the CPU backend, with the
//! launch budget per layer.

#[macro_use]
mod common;

use robo_poet::backend::cuda::CudaBackend;
use robo_poet::backend::Backend;
use robo_poet::diagnostics::parity::{training_parity_with, Parity};
use robo_poet::gpu::{kernels, Device, DeviceExt, DeviceSlice, EmuDevice};
use robo_poet::model::lstm::LstmConfig;
use robo_poet::model::ModelConfig;
use robo_poet::ops;
use robo_poet::ops::lstm::LstmShape;
use robo_poet::rng::Rng;

fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * scale).collect()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// Asserts max |got − want| <= tol · max |want| (the measure: relative to each tensor's
/// largest entry); names the worst index.
#[track_caller]
fn assert_close_scaled(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = max_abs(want).max(1e-30);
    let (mut worst, mut at) = (0.0f32, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        if err.is_nan() || err > worst {
            worst = if err.is_nan() { f32::INFINITY } else { err };
            at = i;
        }
    }
    assert!(
        worst <= tol * scale,
        "{what}: element {at}: got {}, want {} (error {worst:.3e} = {:.2e} of the largest entry {scale:.3e}; tolerance {tol:.0e})",
        got[at],
        want[at],
        worst / scale
    );
}

// Tolerance. Each step's kernels compute the same values as the reference with a different
// summation order (a warp's strided partial sums and a shuffle tree, against the GEMM's order)
// and __expf-based σ/tanh (a few 1e-7 absolute, see tests/emu_lstm.rs): per step a few f32 ulps
// of the largest terms. Through the recurrence those differences are carried, not amplified, at
// these weight scales (1/√H, so the Jacobian of h_t on h_{t−1} has norm below 1): over 129 steps
// the forward agrees to ~1e-6 and the gradients to ~1e-6..1e-5 of their largest entries. 1e-4 (the
// issue's bound) is 10x that; a wrong index or a missing term or barrier is off by O(1).
const TOL: f32 = 1e-4;

/// One layer's inputs and its CPU reference, forward and backward.
struct Layer {
    s: LstmShape,
    w_hh: Vec<f32>,
    /// x·W_ihᵀ + b of every step (T, B, 4H): what the persistent forward starts from.
    pre: Vec<f32>,
    gates: Vec<f32>,
    c: Vec<f32>,
    h: Vec<f32>,
    /// The gradient from above (T, B, H), and the reference's total and dgates.
    dh_top: Vec<f32>,
    dh_total: Vec<f32>,
    dgates: Vec<f32>,
}

fn layer(t: usize, b: usize, hid: usize, seed: u64) -> Layer {
    let e = 5;
    let s = LstmShape { t, b, e, h: hid };
    let mut rng = Rng::new(seed);
    let k = 1.0 / (hid as f32).sqrt();
    let x = randn(&mut rng, t * b * e, 1.0);
    let w_ih = randn(&mut rng, 4 * hid * e, k);
    let w_hh = randn(&mut rng, 4 * hid * hid, k);
    let bias = randn(&mut rng, 4 * hid, 0.5);
    let mut pre = vec![0.0f32; t * b * 4 * hid];
    for row in 0..t * b {
        for r in 0..4 * hid {
            let mut acc = bias[r] as f64;
            for q in 0..e {
                acc += x[row * e + q] as f64 * w_ih[r * e + q] as f64;
            }
            pre[row * 4 * hid + r] = acc as f32;
        }
    }
    let (mut h, mut c, mut gates) = (
        vec![0.0; t * b * hid],
        vec![0.0; t * b * hid],
        vec![0.0; t * b * 4 * hid],
    );
    ops::lstm::lstm_forward(&mut h, &mut c, &mut gates, &x, &w_ih, &w_hh, &bias, s);
    let dh_top = randn(&mut rng, t * b * hid, 1.0);
    let mut dh_total = dh_top.clone();
    let mut dgates = vec![0.0; t * b * 4 * hid];
    let (mut dw_ih, mut dw_hh, mut dbias) = (
        vec![0.0; 4 * hid * e],
        vec![0.0; 4 * hid * hid],
        vec![0.0; 4 * hid],
    );
    ops::lstm::lstm_backward(
        None,
        &mut dw_ih,
        &mut dw_hh,
        &mut dbias,
        &mut dgates,
        &mut dh_total,
        &h,
        &c,
        &gates,
        &x,
        &w_ih,
        &w_hh,
        s,
    );
    Layer {
        s,
        w_hh,
        pre,
        gates,
        c,
        h,
        dh_top,
        dh_total,
        dgates,
    }
}

/// The persistent kernels' outputs for `l`: forward (gates, c, h), then backward from the
/// reference's forward activations (dgates, dh total), so each direction is checked alone.
struct Outputs {
    gates: Vec<f32>,
    c: Vec<f32>,
    h: Vec<f32>,
    dgates: Vec<f32>,
    dh: Vec<f32>,
}

fn run_persistent(dev: &dyn Device, l: &Layer) -> Outputs {
    let LstmShape { t, b, h: hid, .. } = l.s;
    let plan = kernels::lstm_persistent_plan(dev, b, hid).unwrap();
    let barrier: DeviceSlice<u32> = dev.upload(&[0u32, 0]).unwrap();
    let w_hh = dev.upload(&l.w_hh).unwrap();
    let gates = dev.upload(&l.pre).unwrap();
    let c = dev.upload(&vec![f32::NAN; t * b * hid]).unwrap();
    let h = dev.upload(&vec![f32::NAN; t * b * hid]).unwrap();
    kernels::lstm_persistent_forward(dev, &plan, gates, c, h, w_hh, barrier, t, b, hid).unwrap();
    let ref_gates = dev.upload(&l.gates).unwrap();
    let ref_c = dev.upload(&l.c).unwrap();
    let dh = dev.upload(&l.dh_top).unwrap();
    let dgates = dev.upload(&vec![f32::NAN; t * b * 4 * hid]).unwrap();
    kernels::lstm_persistent_backward(
        dev, &plan, dgates, dh, ref_gates, ref_c, w_hh, barrier, t, b, hid,
    )
    .unwrap();
    let words = dev.download(barrier).unwrap();
    assert_eq!(
        words[0], 0,
        "the barrier's count is back to 0 after the launches"
    );
    Outputs {
        gates: dev.download(gates).unwrap(),
        c: dev.download(c).unwrap(),
        h: dev.download(h).unwrap(),
        dgates: dev.download(dgates).unwrap(),
        dh: dev.download(dh).unwrap(),
    }
}

fn check_layer(dev: &dyn Device, t: usize, b: usize, hid: usize, seed: u64) {
    let l = layer(t, b, hid, seed);
    let got = run_persistent(dev, &l);
    let what = format!("persistent LSTM T={t} B={b} H={hid}");
    assert_close_scaled(&format!("{what}: gates"), &got.gates, &l.gates, TOL);
    assert_close_scaled(&format!("{what}: c"), &got.c, &l.c, TOL);
    assert_close_scaled(&format!("{what}: h"), &got.h, &l.h, TOL);
    assert_close_scaled(&format!("{what}: dgates"), &got.dgates, &l.dgates, TOL);
    assert_close_scaled(&format!("{what}: dh"), &got.dh, &l.dh_total, TOL);
}

device_tests! {
    fn emu_persistent_lstm_small_hidden_sizes_match_the_reference / gpu_persistent_lstm_small_hidden_sizes_match_the_reference (dev) {
        // H 1 and 7: one unit per block, most of each warp idle; every B and T
        for (seed, &(t, b, hid)) in [
            (1, 1, 1), (2, 3, 1), (129, 32, 1),
            (1, 3, 7), (2, 1, 7), (129, 3, 7), (2, 32, 7),
        ].iter().enumerate() {
            check_layer(&dev, t, b, hid, 100 + seed as u64);
        }
    }

    fn emu_persistent_lstm_wide_layers_match_the_reference / gpu_persistent_lstm_wide_layers_match_the_reference (dev) {
        // H 256 (2 units per block over 128 blocks) and 300 (3 units, the last block 2)
        for (seed, &(t, b, hid)) in [
            (1, 32, 256), (2, 3, 256), (129, 1, 256),
            (2, 32, 300), (129, 3, 300), (1, 1, 300),
        ].iter().enumerate() {
            check_layer(&dev, t, b, hid, 200 + seed as u64);
        }
    }
}

#[test]
fn emu_persistent_lstm_is_bit_identical_across_runs() {
    let l = layer(17, 3, 300, 7);
    let a = run_persistent(&common::emu_h200(), &l);
    let b = run_persistent(&common::emu_h200(), &l);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (what, x, y) in [
        ("gates", &a.gates, &b.gates),
        ("c", &a.c, &b.c),
        ("h", &a.h, &b.h),
        ("dgates", &a.dgates, &b.dgates),
        ("dh", &a.dh, &b.dh),
    ] {
        assert_eq!(
            bits(x),
            bits(y),
            "{what} differs between two identical runs"
        );
    }
}

#[test]
fn persistent_plans_spread_the_units_over_the_sms() {
    // (B, H, SMs) -> (units per block, blocks, parts of a backward dot product: 128 threads over
    // B·U products, 1 to 8)
    for &(b, hid, sms, units, blocks, parts) in &[
        (32, 256, 132, 2, 128, 2),
        (32, 300, 132, 3, 100, 1),
        (3, 7, 132, 1, 7, 8),
        (64, 1024, 132, 8, 128, 1),
        (1, 1, 132, 1, 1, 8),
    ] {
        let p = kernels::PersistentPlan::new(b, hid, sms, 227 * 1024).unwrap();
        assert_eq!(
            (p.units, p.blocks, p.parts),
            (units, blocks, parts),
            "B {b} H {hid} on {sms} SMs"
        );
        // W rows padded to an odd stride forward, columns of 4H + 1 backward, the running dc and
        // (when split) the parts
        assert_eq!(p.forward_shared as usize, 16 * units * (hid | 1));
        let partials = if parts > 1 { b * units * parts } else { 0 };
        assert_eq!(
            p.backward_shared as usize,
            4 * (units * (4 * hid + 1) + b * units + partials)
        );
    }
    // forward shared memory per block is 16·U·(H | 1) bytes with U = ⌈H / 132⌉: H 1320 (10 units,
    // 206 KiB forward, 209 KiB backward at B 64) is the widest layer that fits on an H200's 227 KiB,
    // H 1321 (11 units, 227.05 KiB forward) does not
    assert!(kernels::PersistentPlan::new(64, 1320, 132, 227 * 1024).is_ok());
    let err = kernels::PersistentPlan::new(1, 1321, 132, 227 * 1024).unwrap_err();
    assert!(err.contains("shared memory"), "{err}");
}

#[test]
fn emu_persistent_plan_refuses_a_layer_that_does_not_fit_the_device() {
    // 4 SMs: 64 units of H 256 per block need 257 KiB of shared memory forward (64·4 rows of
    // 257 floats) and 265 KiB backward (64 columns of 1025 floats, the running dc of B 32), over
    // the 227 KiB opt-in
    let dev = EmuDevice::new().with_sms(4);
    let err = kernels::lstm_persistent_plan(&dev, 32, 256).unwrap_err();
    assert!(err.contains("265 KiB") && err.contains("227 KiB"), "{err}");
    // and a grid the device cannot hold at once is refused by the launch itself, as
    // cuLaunchCooperativeKernel refuses it: a plan made for 132 SMs (100 blocks of H 300) on a
    // device of one SM (14 blocks of 128 threads and 14.4 KiB of shared memory at most)
    let dev = EmuDevice::new().with_sms(1);
    let wide = kernels::PersistentPlan::new(1, 300, 132, 227 * 1024).unwrap();
    assert_eq!(wide.blocks, 100);
    let l = layer(2, 1, 300, 4);
    let barrier: DeviceSlice<u32> = dev.upload(&[0u32, 0]).unwrap();
    let w_hh = dev.upload(&l.w_hh).unwrap();
    let gates = dev.upload(&l.pre).unwrap();
    let c = dev.alloc_slice::<f32>(2 * 300).unwrap();
    let h = dev.alloc_slice::<f32>(2 * 300).unwrap();
    let err = kernels::lstm_persistent_forward(&dev, &wide, gates, c, h, w_hh, barrier, 2, 1, 300)
        .unwrap_err()
        .to_string();
    assert!(err.contains("COOPERATIVE_LAUNCH_TOO_LARGE"), "{err}");
    // the plan for that device says why instead of launching
    let err = kernels::lstm_persistent_plan(&dev, 1, 300).unwrap_err();
    assert!(err.contains("shared memory"), "{err}");
}

// ----------------------------------------------------------------------------------------------
// whole training steps on the CUDA backend

fn lstm(vocab: usize, seq_len: usize, embed: usize, hidden: usize, n_layers: usize) -> ModelConfig {
    ModelConfig::Lstm(LstmConfig {
        vocab_size: vocab,
        seq_len,
        embed,
        hidden,
        n_layers,
    })
}

/// See tests/emu_backend.rs: losses to 1e-5 relative, first-step gradients to 1e-4 of each
/// tensor's largest entry.
fn assert_parity(what: &str, p: &Parity) {
    for s in &p.steps {
        eprintln!(
            "{what} step {}: loss cpu {:.6} emu {:.6} (rel {:.1e}), worst gradient {} rel {:.1e}",
            s.step,
            s.cpu_loss,
            s.dev_loss,
            s.loss_rel_err(),
            s.worst_grad,
            s.grad_rel_err
        );
    }
    assert!(
        p.max_loss_rel_err() <= 1e-5,
        "{what}: loss differs by {:.2e} relative",
        p.max_loss_rel_err()
    );
    assert!(
        p.steps[0].grad_rel_err <= TOL as f64,
        "{what}: first-step gradient {} differs by {:.2e} of its largest entry",
        p.steps[0].worst_grad,
        p.steps[0].grad_rel_err
    );
}

#[test]
fn emu_persistent_lstm_training_steps_match_the_cpu_backend() {
    // two layers (the second's input is the first's h), ragged sizes, a long sequence
    let p = training_parity_with(
        &lstm(19, 129, 7, 7, 2),
        3,
        2,
        21,
        Box::new(common::emu_h200()),
        |_| {},
    )
    .unwrap();
    assert_parity("2-layer LSTM H 7, T 129, B 3", &p);
    let p = training_parity_with(
        &lstm(23, 2, 5, 300, 2),
        32,
        2,
        22,
        Box::new(common::emu_h200()),
        |_| {},
    )
    .unwrap();
    assert_parity("2-layer LSTM H 300, T 2, B 32", &p);
}

#[test]
fn emu_default_lstm_step_on_the_persistent_kernels_matches_the_cpu_backend() {
    // the default LSTM (1 layer of 256, embedding 64, T 128, B 32), one step
    let p = training_parity_with(
        &lstm(78, 128, 64, 256, 1),
        32,
        1,
        23,
        Box::new(common::emu_h200()),
        |_| {},
    )
    .unwrap();
    assert_parity("default LSTM", &p);
}

#[test]
fn emu_lstm_fallback_runs_per_timestep_with_a_note_and_matches_the_cpu_backend() {
    // on 2 SMs, H 192 is 96 units per block: 96 · 192 · 16 B = 288 KiB of W_hh slice, over the
    // 227 KiB opt-in
    let cfg = lstm(17, 5, 6, 192, 1);
    let mut note = None;
    let p = training_parity_with(
        &cfg,
        3,
        2,
        24,
        Box::new(EmuDevice::new().with_sms(2)),
        |be| {
            note = be.step_note();
        },
    )
    .unwrap();
    assert_parity("LSTM fallback H 192 on 2 SMs", &p);
    let note = note.expect("a note for the fallback");
    assert!(
        note.contains("(B 3, H 192) runs per timestep") && note.contains("shared memory"),
        "{note}"
    );
    assert!(!note.contains('\n'), "one line: {note}");
}

/// Launches of one queued training step of `cfg` at batch `b` on the emulated CUDA backend, and
/// the last LSTM layer's forward and backward launches.
fn step_launches(cfg: &ModelConfig, b: usize, persistent: bool) -> (u64, (u64, u64)) {
    use robo_poet::model;
    use robo_poet::train::queue_step;
    let m = model::build(cfg, b);
    let mut be = CudaBackend::new(Box::new(common::emu_h200()), m.table().clone()).unwrap();
    be.set_cuda_graph(false);
    be.set_lstm_persistent(persistent);
    let mut rng = Rng::new(1);
    for (id, v) in model::init_params(m.as_ref(), &mut rng) {
        be.write(id, &v);
    }
    let (bb, t) = m.batch_shape();
    let v = cfg.vocab_size() as u64;
    let inputs: Vec<u32> = (0..bb * t).map(|_| rng.below(v) as u32).collect();
    let tcfg = robo_poet::diagnostics::parity::parity_train_config(b, 1);
    queue_step(m.as_ref(), &mut be, &tcfg, 1, &inputs, &inputs);
    be.synchronize();
    let c0 = be.device_counts().unwrap();
    queue_step(m.as_ref(), &mut be, &tcfg, 2, &inputs, &inputs);
    let c1 = be.device_counts().unwrap();
    ((c1 - c0).launches, be.lstm_layer_launches().unwrap())
}

#[test]
fn emu_lstm_layers_launch_within_budget() {
    // per layer: ≤ 3 forward (input GEMM, the recurrence), ≤ 4 backward (the recurrence, dW_ih +
    // db, dW_hh, dx); the per-timestep path issues 2T forward (input GEMM, T cells, T − 1
    // recurrence GEMMs) and 2T + 2 backward
    for layers in [1, 2] {
        let cfg = lstm(19, 9, 7, 10, layers);
        let (persistent, (fwd, bwd)) = step_launches(&cfg, 3, true);
        assert!(
            fwd <= 3 && bwd <= 4,
            "{layers} layer(s): {fwd} forward, {bwd} backward"
        );
        assert_eq!((fwd, bwd), (2, 4));
        let (stepwise, (f, b)) = step_launches(&cfg, 3, false);
        assert_eq!(
            (f, b),
            (2 * 9, 2 * 9 + 2),
            "{layers} layer(s), per timestep"
        );
        assert_eq!(
            stepwise - persistent,
            layers as u64 * ((f + b) - (fwd + bwd)),
            "{layers} layer(s): the step differs by the layers' launches only"
        );
    }
}
