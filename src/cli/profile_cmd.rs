//! `robo-poet profile-step`: one training step of a model, on random tokens, for a profiler.
//!
//! Builds the model from the train command's presets and flags, warms up, then runs exactly one
//! step inside the NVTX range "profile-step" and, on the CUDA backend, between cuProfilerStart and
//! cuProfilerStop, so that `nsys --capture-range=cudaProfilerApi` and `ncu --profile-from-start
//! off` record that step and nothing else (scripts/profile-nsys.sh, scripts/profile-ncu.sh).

use super::presets;
use super::{LstmRecurrence, ProfileStepArgs, TrainArgs};
use crate::backend::{self, Backend};
use crate::gpu::nvtx;
use crate::model;
use crate::rng::Rng;
use crate::train::{queue_step, train_step};
use anyhow::{ensure, Result};
use std::time::Instant;

/// The train command's flags that shape the model and the batch, everything else at its default.
fn train_args(a: &ProfileStepArgs) -> TrainArgs {
    let mut t = TrainArgs::defaults();
    t.model = a.model;
    t.preset = a.preset;
    t.steps = Some(a.warmup + 1);
    t.shape = a.shape.clone();
    t.seed = a.seed;
    t.device = a.device;
    t.no_progress = true;
    t
}

/// Opens or closes the profiler's capture window. A failure is reported, not fatal: the step's
/// timing is still worth having, and a profiler that missed the window shows an empty capture.
fn capture(be: &mut dyn Backend, on: bool) {
    if let Err(e) = be.profiler_capture(on) {
        eprintln!(
            "note: {} failed ({e}); a profiler waiting for that call records nothing",
            if on {
                "cuProfilerStart"
            } else {
                "cuProfilerStop"
            }
        );
    }
}

pub fn run(a: &ProfileStepArgs) -> Result<()> {
    ensure!(
        a.vocab >= 2,
        "--vocab must be at least 2 (78 is the character vocabulary of the two books)"
    );
    let plan = presets::plan(&train_args(a))?;
    let mut tcfg = plan.train;
    tcfg.steps = a.warmup + 1;
    let mut cfg = presets::with_vocab(&plan.model, a.vocab);
    presets::default_attention(&mut cfg, a.shape.attention, a.device);
    cfg.validate()?;
    crate::resources::check_model_size(&cfg, tcfg.batch)?;
    let m = model::build(&cfg, tcfg.batch);
    let mut be = backend::create(a.device, m.table().clone(), false)?;
    be.set_cuda_graph(a.cuda_graph.on());
    be.set_lstm_persistent(a.lstm_recurrence == LstmRecurrence::Persistent);
    be.set_precision(a.precision).map_err(anyhow::Error::msg)?;
    let mut rng = Rng::new(tcfg.seed);
    for (id, v) in model::init_params(m.as_ref(), &mut rng) {
        be.write(id, &v);
    }
    let (b, t) = m.batch_shape();
    let mut batch = || -> Vec<u32> {
        (0..b * t)
            .map(|_| rng.below(a.vocab as u64) as u32)
            .collect()
    };
    let (inputs, targets) = (batch(), batch());
    println!("model:  {}", cfg.describe());
    println!(
        "batch:  {b} x {t} random tokens (vocab {}), {} warm-up step(s), {} linear layers",
        a.vocab, a.warmup, a.precision
    );
    println!("device: {}", be.describe());

    let t0 = Instant::now();
    for step in 1..=a.warmup {
        train_step(m.as_ref(), be.as_mut(), &tcfg, step, &inputs, &targets);
    }
    be.synchronize();
    let warm = t0.elapsed().as_secs_f64();

    // The profiled step is queued as the training loop queues it, then waited for: its counts
    // are what it issues (the wait and the read-back of its loss come after them).
    let step = a.warmup + 1;
    capture(be.as_mut(), true);
    be.range_push("profile-step");
    let before = be.device_counts();
    let t0 = Instant::now();
    queue_step(m.as_ref(), be.as_mut(), &tcfg, step, &inputs, &targets);
    let after = be.device_counts();
    be.synchronize();
    let secs = t0.elapsed().as_secs_f64();
    be.range_pop();
    capture(be.as_mut(), false);
    let loss = be.take_step_records().last().map_or(f64::NAN, |r| r.loss);

    if a.warmup > 0 {
        println!("warm-up: {:.1} ms per step", 1e3 * warm / a.warmup as f64);
    }
    println!(
        "profiled step {step}: {:.2} ms, {:.0} tokens/s, loss {:.4}",
        1e3 * secs,
        (b * t) as f64 / secs.max(1e-12),
        loss
    );
    match (before, after) {
        (Some(b0), Some(b1)) => {
            let c = b1 - b0;
            println!("step counts: {c}");
            if let Some((fwd, bwd)) = be.lstm_layer_launches() {
                println!("lstm:   {fwd} launches per layer forward, {bwd} backward");
            }
            if let Some(note) = be.step_note() {
                println!("note:   {note}");
            }
        }
        _ => println!("step counts: none (the CPU backend has no device to count)"),
    }
    match nvtx::status() {
        Some(Ok(lib)) => println!("nvtx:   ranges sent to {lib}"),
        Some(Err(why)) => println!("nvtx:   off ({why})"),
        None => {} // nothing on this device sends ranges (the CPU, the emulator)
    }
    Ok(())
}
