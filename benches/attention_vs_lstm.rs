//! Attention vs LSTM at the same width (the seed configuration: d_model = hidden = embed = 256,
//! batch 4, character vocabulary 78) as the sequence grows: forward, forward + backward, and a
//! full training step, in tokens per second (criterion's "elem/s").
//!
//! `cargo bench --bench attention_vs_lstm`. On a machine with a working GPU the CUDA backend is
//! timed, otherwise the CPU backend; the first line printed says which. GPU timings are CUDA
//! events recorded around each batch of iterations (benches/common/cuda_timer.rs); the forward
//! and forward+backward iterations read nothing back, so the host never waits inside them (the
//! training step reads back its loss and gradient norm, as training does). CPU timings are the
//! host clock.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use robo_poet::backend::cpu::CpuBackend;
use robo_poet::backend::cuda::CudaBackend;
use robo_poet::backend::Backend;
use robo_poet::diagnostics::parity::parity_train_config;
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

/// The backend to time (the GPU when one works, else the CPU) and, on the GPU, its event timer
/// (created after the backend, whose device made the context current).
fn backend(m: &dyn Model) -> (Box<dyn Backend>, Option<CudaTimer>) {
    match CudaDevice::open() {
        Ok(dev) => {
            let be = Box::new(CudaBackend::new(Box::new(dev), m.table().clone()).unwrap());
            (be, Some(CudaTimer::new().expect("CUDA events")))
        }
        Err(_) => (Box::new(CpuBackend::new(m.table().clone())), None),
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

fn bench(c: &mut Criterion) {
    let on = match CudaDevice::open() {
        Ok(d) => format!("cuda ({})", robo_poet::gpu::Device::name(&d)),
        Err(why) => format!(
            "cpu ({} threads; no GPU: {why})",
            rayon::current_num_threads()
        ),
    };
    println!("attention_vs_lstm: timing the {on} backend");
    let mut g = c.benchmark_group("attention vs lstm");
    let quick = criterion_config::quick();
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(if quick { 300 } else { 1000 }))
        .measurement_time(Duration::from_millis(if quick { 1200 } else { 4000 }));
    for t in SEQ_LENS {
        for (name, cfg) in models(t) {
            let m = model::build(&cfg, BATCH);
            let (mut be, timer) = backend(m.as_ref());
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
            g.throughput(Throughput::Elements((b * tt) as u64));
            g.bench_function(BenchmarkId::new(format!("{name} forward"), t), |bench| {
                bench.iter_custom(|iters| timed(timer, iters, || m.forward(be.as_mut(), drop)))
            });
            g.bench_function(
                BenchmarkId::new(format!("{name} forward+backward"), t),
                |bench| {
                    bench.iter_custom(|iters| {
                        timed(timer, iters, || {
                            m.forward(be.as_mut(), drop);
                            be.zero_category(Category::Gradient);
                            be.zero_category(Category::Workspace);
                            m.backward(be.as_mut(), 1.0 / (b * tt) as f32, drop);
                        })
                    })
                },
            );
            let tc = parity_train_config(BATCH, 1);
            let mut step = 0;
            g.bench_function(BenchmarkId::new(format!("{name} train step"), t), |bench| {
                bench.iter_custom(|iters| {
                    timed(timer, iters, || {
                        step += 1;
                        train_step(m.as_ref(), be.as_mut(), &tc, step, &inputs, &targets);
                    })
                })
            });
        }
    }
    g.finish();
}

#[path = "common/criterion_config.rs"]
mod criterion_config;

criterion_group! {
    name = benches;
    config = criterion_config::criterion();
    targets = bench
}
criterion_main!(benches);
