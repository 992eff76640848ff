//! One training step (forward + backward + AdamW) on the CPU backend, in tokens per second, for
//! the seed preset, the default attention preset and the default LSTM (character level, vocab 78
//! as on the two books). `cargo bench --bench train_step`; criterion reports "elem/s" = tokens/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use robo_poet::backend::cpu::CpuBackend;
use robo_poet::model::attention::{AttentionConfig, AttentionStyle};
use robo_poet::model::lstm::LstmConfig;
use robo_poet::model::{self, ModelConfig};
use robo_poet::ops::adamw::AdamWConfig;
use robo_poet::rng::Rng;
use robo_poet::train::{train_step, TrainConfig};
use std::time::Duration;

const VOCAB: usize = 78;

fn configs() -> Vec<(&'static str, ModelConfig, usize)> {
    let att = |style, d_model, n_layers, n_heads, pos_emb| {
        ModelConfig::Attention(AttentionConfig {
            style,
            vocab_size: VOCAB,
            seq_len: 128,
            d_model,
            n_layers,
            n_heads,
            pos_emb,
            dropout: 0.1,
            attention: Default::default(),
        })
    };
    vec![
        (
            "seed preset (+pos emb), B=4",
            att(AttentionStyle::Seed, 256, 1, 1, true),
            4,
        ),
        (
            "GPT 4L 4H d128, B=32",
            att(AttentionStyle::Gpt, 128, 4, 4, true),
            32,
        ),
        (
            "LSTM 1x256 (emb 64), B=32",
            ModelConfig::Lstm(LstmConfig {
                vocab_size: VOCAB,
                seq_len: 128,
                embed: 64,
                hidden: 256,
                n_layers: 1,
            }),
            32,
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu train step");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(12));
    for (name, cfg, batch) in configs() {
        let m = model::build(&cfg, batch);
        let mut be = CpuBackend::new(m.table().clone());
        let mut rng = Rng::new(1);
        for (id, v) in model::init_params(m.as_ref(), &mut rng) {
            robo_poet::backend::Backend::write(&mut be, id, &v);
        }
        let (b, t) = m.batch_shape();
        let inputs: Vec<u32> = (0..b * t).map(|_| rng.below(VOCAB as u64) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|_| rng.below(VOCAB as u64) as u32).collect();
        let tc = TrainConfig {
            batch,
            steps: 1_000_000,
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup: 10,
            adamw: AdamWConfig::default(),
            clip: 1.0,
            eval_every: 1000,
            seed: 1,
            precision: Default::default(),
        };
        let mut step = 0u64;
        g.throughput(Throughput::Elements((b * t) as u64));
        g.bench_function(name, |bencher| {
            bencher.iter(|| {
                step += 1;
                train_step(m.as_ref(), &mut be, &tc, step, &inputs, &targets)
            })
        });
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
