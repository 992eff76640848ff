//! The training step as a unit on the CUDA backend over the emulated device: what one step
//! issues (launches, memsets, copies, host syncs: exact counts, so budgets are asserted), a step
//! replayed as a CUDA graph against the same step launched eagerly (bit for bit, with dropout),
//! and the emulated stream capture refusing what the driver refuses.

mod common;
use robo_poet::backend::cuda::CudaBackend;
use robo_poet::backend::{Backend, StepRecord};
use robo_poet::gpu::{
    Device, DeviceCounts, DeviceExt, EmuDevice, GpuError, KernelArgs, LaunchConfig,
};
use robo_poet::model::attention::{AttentionConfig, AttentionStyle};
use robo_poet::model::lstm::LstmConfig;
use robo_poet::model::{self, ModelConfig};
use robo_poet::rng::Rng;
use robo_poet::train::{queue_step, TrainConfig};

fn tcfg() -> TrainConfig {
    robo_poet::diagnostics::parity::parity_train_config(1, 5)
}

/// The presets' model structures (what the launch counts depend on) at a short context and
/// batch 1, so the emulator runs them quickly; an attention step's launch count does not depend
/// on B or T, an LSTM's grows with T (one gate GEMM and one cell kernel per timestep each way).
fn seed(t: usize) -> ModelConfig {
    ModelConfig::Attention(AttentionConfig {
        style: AttentionStyle::Seed,
        vocab_size: 78,
        seq_len: t,
        d_model: 256,
        n_layers: 1,
        n_heads: 1,
        pos_emb: false,
        dropout: 0.1,
        attention: Default::default(),
    })
}

fn gpt(t: usize, d: usize) -> ModelConfig {
    ModelConfig::Attention(AttentionConfig {
        style: AttentionStyle::Gpt,
        vocab_size: 78,
        seq_len: t,
        d_model: d,
        n_layers: 4,
        n_heads: 4,
        pos_emb: true,
        dropout: 0.1,
        attention: Default::default(),
    })
}

fn lstm(t: usize) -> ModelConfig {
    ModelConfig::Lstm(LstmConfig {
        vocab_size: 78,
        seq_len: t,
        embed: 64,
        hidden: 256,
        n_layers: 1,
    })
}

/// A backend with initialised parameters and a run of `steps` steps; returns what the last step
/// issued, every step's record and the final parameters.
fn run(
    cfg: &ModelConfig,
    graphs: bool,
    steps: u64,
) -> (DeviceCounts, Vec<StepRecord>, Vec<Vec<f32>>) {
    run_lstm_path(cfg, graphs, steps, true)
}

/// [`run`] with the LSTM's recurrence on the persistent kernels or per timestep.
fn run_lstm_path(
    cfg: &ModelConfig,
    graphs: bool,
    steps: u64,
    persistent: bool,
) -> (DeviceCounts, Vec<StepRecord>, Vec<Vec<f32>>) {
    let m = model::build(cfg, 2);
    let mut be = CudaBackend::new(Box::new(common::emu_h200()), m.table().clone()).unwrap();
    be.set_cuda_graph(graphs);
    be.set_lstm_persistent(persistent);
    let mut rng = Rng::derive(3, "init");
    for (id, v) in model::init_params(m.as_ref(), &mut rng) {
        be.write(id, &v);
    }
    let (b, t) = m.batch_shape();
    let v = cfg.vocab_size() as u64;
    let mut data = Rng::derive(3, "batches");
    let tc = tcfg();
    let mut last = DeviceCounts::default();
    let mut records = Vec::new();
    for step in 1..=steps {
        let inputs: Vec<u32> = (0..b * t).map(|_| data.below(v) as u32).collect();
        let targets: Vec<u32> = inputs.iter().map(|&x| (x * 5 + 1) % v as u32).collect();
        let before = be.device_counts().unwrap();
        queue_step(m.as_ref(), &mut be, &tc, step, &inputs, &targets);
        last = be.device_counts().unwrap() - before;
        if step % 2 == 0 || step == steps {
            records.extend(be.take_step_records());
        }
    }
    let params = m.params().iter().map(|p| be.read(p.ids.param)).collect();
    assert!(
        be.graph_note().is_none() || !graphs,
        "{:?}",
        be.graph_note()
    );
    (last, records, params)
}

/// Budgets of one training step (issue: a launch-light step): the eager launches, one memset
/// (the gradient and workspace arena), at most two copies (the batch and the step's values, both
/// asynchronous uploads) and no host synchronisation; with a CUDA graph, one graph launch.
fn assert_budget(what: &str, eager: DeviceCounts, graph: DeviceCounts, max_launches: u64) {
    eprintln!("{what} eager: {eager}");
    eprintln!("{what} graph: {graph}");
    assert!(
        eager.launches <= max_launches,
        "{what}: {} eager launches, budget {max_launches}",
        eager.launches
    );
    assert_eq!(eager.memsets, 1, "{what}: one arena clear");
    for (mode, c) in [("eager", eager), ("graph", graph)] {
        assert!(c.copies() <= 2 && c.htod <= 2, "{what} {mode}: {c}");
        assert_eq!(
            (c.dtoh, c.dtod, c.host_syncs),
            (0, 0, 0),
            "{what} {mode}: {c}"
        );
    }
    assert_eq!(
        (graph.launches, graph.graph_launches, graph.memsets),
        (0, 1, 0),
        "{what}: the step is one graph launch"
    );
}

#[test]
fn emu_step_seed_model_fits_its_launch_budget() {
    let (eager, _, _) = run(&seed(9), false, 2);
    let (graph, _, _) = run(&seed(9), true, 2);
    // materialized attention: 3 forward and 5 backward launches of the 20
    assert_budget("seed", eager, graph, 24);
}

#[test]
fn emu_step_seed_model_with_fused_attention_fits_its_budget() {
    let cfg = match seed(9) {
        ModelConfig::Attention(c) => ModelConfig::Attention(AttentionConfig {
            attention: robo_poet::model::attention::AttentionImpl::Fused,
            ..c
        }),
        other => other,
    };
    let (eager, _, _) = run(&cfg, false, 2);
    let (graph, _, _) = run(&cfg, true, 2);
    // fused attention: 1 forward and 3 backward launches of the 16
    assert_budget("seed, fused attention", eager, graph, 20);
}

#[test]
fn emu_step_default_gpt_fits_its_launch_budget() {
    let (eager, _, _) = run(&gpt(9, 16), false, 2);
    let (graph, _, _) = run(&gpt(9, 16), true, 2);
    assert_budget("default GPT (4 layers, 4 heads)", eager, graph, 120);
}

#[test]
fn emu_step_lstm_launches_do_not_grow_with_its_timesteps() {
    // The persistent recurrence: one cooperative launch forward and one backward per layer
    // whatever T, so the step is 15 launches at any T. The per-timestep path (the fallback): 4
    // launches per timestep (gate GEMM and cell forward, cell backward and recurrence GEMM
    // backward) plus 11 for the rest of the step.
    for t in [5usize, 8] {
        let (eager, _, _) = run(&lstm(t), false, 2);
        let (graph, _, _) = run(&lstm(t), true, 2);
        assert_budget(&format!("LSTM T={t}"), eager, graph, 15);
        assert_eq!(eager.launches, 15, "T={t}");
        let (eager, _, _) = run_lstm_path(&lstm(t), false, 2, false);
        let (graph, _, _) = run_lstm_path(&lstm(t), true, 2, false);
        assert_budget(
            &format!("LSTM T={t} per timestep"),
            eager,
            graph,
            4 * t as u64 + 11,
        );
        assert_eq!(eager.launches, 4 * t as u64 + 11, "T={t} per timestep");
    }
}

#[test]
fn emu_step_graph_replay_matches_eager_launches_bit_for_bit() {
    // Five steps with dropout: every replay must draw its own step's masks, bias corrections and
    // learning rate from device memory. A value baked into the graph at capture would repeat the
    // first step's and differ from the eager run within a step.
    let fused = |c: ModelConfig| match c {
        ModelConfig::Attention(a) => ModelConfig::Attention(AttentionConfig {
            attention: robo_poet::model::attention::AttentionImpl::Fused,
            ..a
        }),
        other => other,
    };
    for cfg in [gpt(7, 12), seed(11), fused(gpt(7, 12)), fused(seed(11))] {
        let (_, eager_r, eager_p) = run(&cfg, false, 5);
        let (_, graph_r, graph_p) = run(&cfg, true, 5);
        assert_eq!(eager_r.len(), 5);
        for (e, g) in eager_r.iter().zip(&graph_r) {
            assert_eq!(e.step, g.step);
            assert_eq!(
                e.loss.to_bits(),
                g.loss.to_bits(),
                "loss of step {}",
                e.step
            );
            assert_eq!(
                e.grad_norm.to_bits(),
                g.grad_norm.to_bits(),
                "norm of step {}",
                e.step
            );
            assert!(e.updated && g.updated);
        }
        let bits = |p: &[Vec<f32>]| -> Vec<Vec<u32>> {
            p.iter()
                .map(|t| t.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        assert!(
            bits(&eager_p) == bits(&graph_p),
            "parameters differ after 5 steps"
        );
        // and the steps did differ from each other (the test would be vacuous otherwise)
        assert_ne!(eager_r[0].loss.to_bits(), eager_r[4].loss.to_bits());
    }
}

/// A kernel with a scalar argument: dlogits += scale · (softmax − onehot).
fn launch_ce_backward(
    dev: &dyn Device,
    dl: u64,
    lg: u64,
    tg: u64,
    scale: f32,
) -> Result<(), GpuError> {
    let mut args = KernelArgs::new()
        .ptr(dl)
        .ptr(lg)
        .ptr(tg)
        .f32(scale)
        .i32(2)
        .i32(3);
    // SAFETY: cross_entropy_backward(float*, const float*, const unsigned*, float, int N, int V)
    // over buffers of 2x3, 2x3 and 2 elements.
    unsafe {
        dev.launch(
            "cross_entropy_backward",
            &LaunchConfig::new(1, 128),
            &mut args.params(),
        )
    }
}

#[test]
fn emu_step_capture_copies_kernel_arguments_and_refuses_what_the_driver_refuses() {
    let dev = EmuDevice::new();
    let logits = dev.upload(&[0.5f32, -1.0, 2.0, 0.0, 1.0, 3.0]).unwrap();
    let targets = dev.upload(&[2u32, 0]).unwrap();
    let dl = dev.upload(&[0.0f32; 6]).unwrap();
    // eager, scale 1: the reference
    launch_ce_backward(&dev, dl.ptr(), logits.ptr(), targets.ptr(), 1.0).unwrap();
    let once = dev.download(dl).unwrap();
    dev.zero(dl).unwrap();
    // captured with scale 1: nothing runs until the graph is launched
    dev.begin_capture().unwrap();
    launch_ce_backward(&dev, dl.ptr(), logits.ptr(), targets.ptr(), 1.0).unwrap();
    // what the driver refuses during capture: a blocking copy, a wait, an upload, an allocation
    let mut host = [0f32; 6];
    assert!(matches!(
        dev.copy_dtoh(bytemuck::cast_slice_mut(&mut host), dl.ptr()),
        Err(GpuError::Unsupported { .. })
    ));
    let g = dev.end_capture();
    assert!(
        matches!(&g, Err(GpuError::Unsupported { reason, .. }) if reason.contains("invalidated")),
        "a refused call invalidates the capture: {g:?}"
    );
    dev.begin_capture().unwrap();
    assert!(dev.synchronize().is_err());
    assert!(dev.upload_async(dl.ptr(), &[0u8; 4]).is_err());
    assert!(dev.alloc(64).is_err());
    assert!(dev.end_capture().is_err());
    // a clean capture: the scale is copied at capture, so a later launch of the graph uses 1.0
    // whatever the host's variables hold by then
    dev.begin_capture().unwrap();
    launch_ce_backward(&dev, dl.ptr(), logits.ptr(), targets.ptr(), 1.0).unwrap();
    let g = dev.end_capture().unwrap();
    assert_eq!(
        dev.download(dl).unwrap(),
        vec![0.0; 6],
        "capture ran nothing"
    );
    let before = dev.counts();
    dev.launch_graph(g).unwrap();
    dev.launch_graph(g).unwrap();
    let c = dev.counts() - before;
    assert_eq!((c.graph_launches, c.launches), (2, 0));
    let twice = dev.download(dl).unwrap();
    for (a, b) in once.iter().zip(&twice) {
        assert_eq!(
            (a + a).to_bits(),
            b.to_bits(),
            "two replays add the step twice"
        );
    }
    // a parameter list of the wrong length is refused at capture, as cuLaunchKernel refuses it
    dev.begin_capture().unwrap();
    let mut short = KernelArgs::new().ptr(dl.ptr());
    // SAFETY: refused before anything runs (the count does not match the kernel's).
    let r = unsafe {
        dev.launch(
            "cross_entropy_backward",
            &LaunchConfig::new(1, 128),
            &mut short.params(),
        )
    };
    assert!(matches!(r, Err(GpuError::InvalidLaunch { .. })), "{r:?}");
    let _ = dev.end_capture();
}
