//! Whole-model checks on tiny configurations: gradients of every parameter against finite
//! differences of the mean loss, and causality (a future token never changes earlier logits).

use super::attention::{AttentionConfig, AttentionStyle};
use super::lstm::LstmConfig;
use super::*;
use crate::backend::cpu::CpuBackend;

fn tiny_configs() -> Vec<ModelConfig> {
    let att = |style, pos_emb, n_layers, n_heads, dropout| {
        ModelConfig::Attention(AttentionConfig {
            style,
            vocab_size: 11,
            seq_len: 7,
            d_model: 6,
            n_layers,
            n_heads,
            pos_emb,
            dropout,
            attention: Default::default(),
        })
    };
    vec![
        att(AttentionStyle::Seed, false, 1, 1, 0.0),
        att(AttentionStyle::Seed, true, 2, 2, 0.2),
        att(AttentionStyle::Gpt, true, 2, 3, 0.0),
        att(AttentionStyle::Gpt, true, 1, 2, 0.3),
        ModelConfig::Lstm(LstmConfig {
            vocab_size: 11,
            seq_len: 7,
            embed: 5,
            hidden: 6,
            n_layers: 2,
        }),
    ]
}

fn setup(
    cfg: &ModelConfig,
    batch: usize,
    seed: u64,
) -> (Box<dyn Model>, CpuBackend, Vec<u32>, Vec<u32>) {
    let model = build(cfg, batch);
    let mut be = CpuBackend::new(model.table().clone());
    let mut rng = Rng::new(seed);
    for (id, v) in init_params(model.as_ref(), &mut rng) {
        // Training init plus N(0, 0.3) noise: every path carries a visible gradient, and no
        // tensor is so small that the finite-difference step (1e-2) distorts it.
        let v: Vec<f32> = v.iter().map(|x| x + 0.3 * rng.normal() as f32).collect();
        be.write(id, &v);
    }
    let (b, t) = model.batch_shape();
    let v = cfg.vocab_size() as u64;
    let inputs: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let mut targets: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    targets[1] = crate::ops::IGNORE;
    model.set_batch(&mut be, &inputs, &targets);
    (model, be, inputs, targets)
}

#[test]
fn whole_model_gradients_match_finite_differences() {
    for cfg in tiny_configs() {
        for p in crate::diagnostics::gradcheck::whole_model_fd(&cfg, 3, 1) {
            assert!(
                p.nonzero,
                "{}: {} has an all-zero gradient",
                cfg.describe(),
                p.name
            );
            let w = p.worst;
            assert!(
                w.ratio <= 1.0,
                "{} / {}[{}]: analytic {:.6e}, finite difference {:.6e} (tolerance {:.1e})",
                cfg.describe(),
                p.name,
                w.index,
                w.analytic,
                w.finite_difference,
                w.tolerance
            );
        }
    }
}

#[test]
fn a_future_token_never_changes_earlier_logits() {
    for cfg in tiny_configs() {
        let (model, mut be, inputs, targets) = setup(&cfg, 2, 3);
        let d = Some(DropoutCtx { seed: 5, step: 2 });
        model.forward(&mut be, d);
        let before = be.read(model.logits());
        let (b, t) = model.batch_shape();
        let pos = 4;
        let mut changed = inputs.clone();
        for bi in 0..b {
            changed[bi * t + pos] = (changed[bi * t + pos] + 1) % cfg.vocab_size() as u32;
        }
        model.set_batch(&mut be, &changed, &targets);
        model.forward(&mut be, d);
        let after = be.read(model.logits());
        let v = cfg.vocab_size();
        let mut later_changed = false;
        for bi in 0..b {
            for ti in 0..t {
                let r = model.logits_row(bi, ti);
                let same = before[r * v..(r + 1) * v] == after[r * v..(r + 1) * v];
                if ti < pos {
                    assert!(
                        same,
                        "{}: logits at (b {bi}, t {ti}) changed when the token at t {pos} did",
                        cfg.describe()
                    );
                } else if !same {
                    later_changed = true;
                }
            }
        }
        assert!(
            later_changed,
            "{}: no logits at or after t {pos} saw the token change",
            cfg.describe()
        );
    }
}
