//! Attention vs LSTM at the same width (the seed configuration: d_model = hidden = embed = 256,
//! batch 4, character vocabulary 78) as the sequence grows: forward, forward + backward, and a
//! full training step, in tokens per second (criterion's "elem/s").
//!
//! `cargo bench --bench attention_vs_lstm`. On a machine with a working GPU the CUDA backend is
//! timed, otherwise the CPU backend; the first line printed says which. GPU timings are CUDA
//! events recorded around each batch of iterations (benches/common/cuda_timer.rs); the forward
//! and forward+backward iterations read nothing back, so the host never waits inside them (the
//! training step reads back its loss and gradient norm, as training does). CPU timings are the
//! host clock. A table closes the run (benches/common/speed_table.rs): per seq_len, tokens/s of
//! both models for the three measurements, the attention/LSTM ratios and each model's memory
//! per training step, also written as attention_vs_lstm.csv / .json under target/criterion.
//!
//! `ROBO_POET_BENCH_PRECISION=tf32` (or bf16) runs the linear layers' GEMMs on the tensor cores
//! (as `train --precision`; GPU only): the group and the files get the precision in their names
//! (attention_vs_lstm-tf32.csv), so criterion never compares one precision with another.

use criterion::{BenchmarkId, Criterion, Throughput};
use robo_poet::backend::cpu::CpuBackend;
use robo_poet::backend::cuda::CudaBackend;
use robo_poet::backend::Backend;
use robo_poet::diagnostics::parity::parity_train_config;
use robo_poet::gpu::kernels::Precision;
use robo_poet::gpu::CudaDevice;
use robo_poet::model::attention::{AttentionConfig, AttentionStyle};
use robo_poet::model::lstm::LstmConfig;
use robo_poet::model::{self, DropoutCtx, Model, ModelConfig};
use robo_poet::rng::Rng;
use robo_poet::tensor::Category;
use robo_poet::train::train_step;
use std::time::{Duration, Instant};

#[path = "common/cuda_timer.rs"]
mod cuda_timer;
use cuda_timer::CudaTimer;
#[path = "common/speed_table.rs"]
mod speed_table;
use speed_table::{Measure, Records};
use std::cell::RefCell;

/// Criterion's measurement samples per benchmark (the group's sample size).
const SAMPLES: usize = 10;

const VOCAB: usize = 78;
const WIDTH: usize = 256;
const BATCH: usize = 4;
const SEQ_LENS: [usize; 4] = [64, 128, 256, 512];

fn models(t: usize) -> [(&'static str, ModelConfig); 2] {
    [
        (
            "attention",
            ModelConfig::Attention(AttentionConfig {
                style: AttentionStyle::Seed,
                vocab_size: VOCAB,
                seq_len: t,
                d_model: WIDTH,
                n_layers: 1,
                n_heads: 1,
                pos_emb: false,
                dropout: 0.1,
                attention: Default::default(),
            }),
        ),
        (
            "lstm",
            ModelConfig::Lstm(LstmConfig {
                vocab_size: VOCAB,
                seq_len: t,
                embed: WIDTH,
                hidden: WIDTH,
                n_layers: 1,
            }),
        ),
    ]
}

/// The backend to time (the GPU when one works, else the CPU) at `precision` and, on the GPU,
/// its event timer (created after the backend, whose device made the context current).
fn backend(m: &dyn Model, precision: Precision) -> (Box<dyn Backend>, Option<CudaTimer>) {
    let (mut be, timer): (Box<dyn Backend>, _) = match CudaDevice::open() {
        Ok(dev) => {
            let be = Box::new(CudaBackend::new(Box::new(dev), m.table().clone()).unwrap());
            (be, Some(CudaTimer::new().expect("CUDA events")))
        }
        Err(_) => (Box::new(CpuBackend::new(m.table().clone())), None),
    };
    if let Err(e) = be.set_precision(precision) {
        eprintln!("attention_vs_lstm: {PRECISION_ENV}={precision}: {e}");
        std::process::exit(2);
    }
    (be, timer)
}

/// The environment variable that picks the GEMM precision (fp32 when unset).
const PRECISION_ENV: &str = "ROBO_POET_BENCH_PRECISION";

fn precision_from_env() -> Precision {
    use clap::ValueEnum;
    match std::env::var(PRECISION_ENV) {
        Err(_) => Precision::Fp32,
        Ok(v) => Precision::from_str(&v, true).unwrap_or_else(|_| {
            eprintln!("attention_vs_lstm: {PRECISION_ENV}={v:?}: expected fp32, tf32 or bf16");
            std::process::exit(2);
        }),
    }
}

/// Time of `iters` runs of `f`: CUDA events on the GPU, the host clock on the CPU.
fn timed(timer: Option<&CudaTimer>, iters: u64, mut f: impl FnMut()) -> Duration {
    let mut all = || {
        for _ in 0..iters {
            f();
        }
    };
    match timer {
        Some(t) => t.time(all).expect("CUDA event timing"),
        None => {
            let t0 = Instant::now();
            all();
            t0.elapsed()
        }
    }
}

fn bench(c: &mut Criterion, on: &str, precision: Precision, records: &RefCell<Records>) {
    println!("attention_vs_lstm: timing the {on} backend, GEMMs at {precision}");
    let mut g = c.benchmark_group(match precision {
        Precision::Fp32 => "attention vs lstm".to_string(),
        p => format!("attention vs lstm ({p})"),
    });
    let quick = criterion_config::quick();
    g.sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(if quick { 300 } else { 1000 }))
        .measurement_time(Duration::from_millis(if quick { 1200 } else { 4000 }));
    for t in SEQ_LENS {
        for (name, cfg) in models(t) {
            let m = model::build(&cfg, BATCH);
            let (mut be, timer) = backend(m.as_ref(), precision);
            let timer = timer.as_ref();
            let mut rng = Rng::new(1);
            for (id, v) in model::init_params(m.as_ref(), &mut rng) {
                be.write(id, &v);
            }
            let (b, tt) = m.batch_shape();
            let inputs: Vec<u32> = (0..b * tt)
                .map(|_| rng.below(VOCAB as u64) as u32)
                .collect();
            let targets: Vec<u32> = (0..b * tt)
                .map(|_| rng.below(VOCAB as u64) as u32)
                .collect();
            m.set_batch(be.as_mut(), &inputs, &targets);
            let drop = Some(DropoutCtx { seed: 1, step: 1 });
            {
                let mut r = records.borrow_mut();
                r.tokens.insert((t, name), (b * tt) as u64);
                let measured = be.device_memory().map(|d| d.measured_bytes as u64);
                r.memory
                    .insert((t, name), (m.table().total_bytes() as u64, measured));
            }
            // Every sample criterion takes is timed here and recorded for the closing table.
            let sample = |measure: Measure, iters: u64, d: Duration| {
                records
                    .borrow_mut()
                    .record((t, name, measure), iters, d.as_secs_f64());
                d
            };
            g.throughput(Throughput::Elements((b * tt) as u64));
            g.bench_function(BenchmarkId::new(format!("{name} forward"), t), |bench| {
                bench.iter_custom(|iters| {
                    let d = timed(timer, iters, || m.forward(be.as_mut(), drop));
                    sample(Measure::Forward, iters, d)
                })
            });
            g.bench_function(
                BenchmarkId::new(format!("{name} forward+backward"), t),
                |bench| {
                    bench.iter_custom(|iters| {
                        let d = timed(timer, iters, || {
                            m.forward(be.as_mut(), drop);
                            be.zero_category(Category::Gradient);
                            be.zero_category(Category::Workspace);
                            m.backward(be.as_mut(), 1.0 / (b * tt) as f32, drop);
                        });
                        sample(Measure::ForwardBackward, iters, d)
                    })
                },
            );
            let tc = parity_train_config(BATCH, 1);
            let mut step = 0;
            g.bench_function(BenchmarkId::new(format!("{name} train step"), t), |bench| {
                bench.iter_custom(|iters| {
                    let d = timed(timer, iters, || {
                        step += 1;
                        train_step(m.as_ref(), be.as_mut(), &tc, step, &inputs, &targets);
                    });
                    sample(Measure::TrainStep, iters, d)
                })
            });
        }
    }
    g.finish();
}

#[path = "common/criterion_config.rs"]
mod criterion_config;

fn main() {
    let on = match CudaDevice::open() {
        Ok(d) => format!("cuda ({})", robo_poet::gpu::Device::name(&d)),
        Err(why) => format!(
            "cpu ({} threads; no GPU: {})",
            rayon::current_num_threads(),
            robo_poet::backend::short_reason(&why)
        ),
    };
    let precision = precision_from_env();
    let mut c = criterion_config::criterion().configure_from_args();
    let records = RefCell::new(Records::default());
    bench(&mut c, &on, precision, &records);
    c.final_summary();
    let rows = speed_table::rows(&records.borrow(), SAMPLES);
    if rows.is_empty() {
        return;
    }
    let on = match precision {
        Precision::Fp32 => on,
        p => format!("{on}, {p} GEMMs"),
    };
    println!("\n{}", speed_table::markdown(&on, &rows));
    let dir = speed_table::criterion_dir();
    let stem = match precision {
        Precision::Fp32 => "attention_vs_lstm".to_string(),
        p => format!("attention_vs_lstm-{p}"),
    };
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(dir.join(format!("{stem}.csv")), speed_table::csv(&rows))?;
        let json = serde_json::to_string_pretty(&speed_table::json(&on, &rows))?;
        std::fs::write(dir.join(format!("{stem}.json")), json + "\n")
    });
    match written {
        Ok(()) => println!(
            "wrote {} and {stem}.json beside it",
            dir.join(format!("{stem}.csv")).display()
        ),
        Err(e) => eprintln!("could not write the table under {}: {e}", dir.display()),
    }
}
