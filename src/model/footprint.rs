//! A model's tensor table in numbers, computed from its configuration without building the table.
//!
//! `model::build` declares one named tensor per buffer; for an absurd configuration (a million
//! layers, a width of 65536) that table alone is gigabytes of names and takes seconds, and the
//! element counts can overflow `usize`. The figures here are the same sums in `u128`, cheap for
//! any configuration, so a run can be refused before anything big exists. They mirror
//! `AttentionModel::new` and `LstmModel::new` tensor for tensor; a test checks them against the
//! built table for every style and option.

use super::attention::{AttentionConfig, AttentionImpl, AttentionStyle};
use super::lstm::LstmConfig;
use super::ModelConfig;
use crate::tensor::Category;

/// Element counts of a model's tensor table, per category (every dtype is 4 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Trainable scalars; the table also holds a gradient and two AdamW moments of each.
    pub parameters: u128,
    pub activations: u128,
    pub workspace: u128,
    pub inputs: u128,
}

/// Bytes per element of every tensor of a table (f32 and u32).
const ELEM: u128 = 4;

/// An element count that saturates at `u128::MAX` instead of overflowing: beyond 2^64 bytes
/// the exact figure no longer matters, only that it is too much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct N(u128);

impl std::ops::Add for N {
    type Output = N;
    fn add(self, o: N) -> N {
        N(self.0.saturating_add(o.0))
    }
}

impl std::ops::Mul for N {
    type Output = N;
    fn mul(self, o: N) -> N {
        N(self.0.saturating_mul(o.0))
    }
}

impl std::ops::Mul<u128> for N {
    type Output = N;
    fn mul(self, o: u128) -> N {
        self.mul(N(o))
    }
}

impl std::ops::Mul<N> for u128 {
    type Output = N;
    fn mul(self, o: N) -> N {
        N(self).mul(o)
    }
}

impl Footprint {
    pub fn of(cfg: &ModelConfig, batch: usize) -> Footprint {
        match cfg {
            ModelConfig::Attention(c) => attention(c, batch),
            ModelConfig::Lstm(c) => lstm(c, batch),
        }
    }

    /// Bytes of one category, as `TensorTable::bytes_by_category` would report them.
    pub fn bytes(&self, c: Category) -> u128 {
        let n = match c {
            Category::Parameter | Category::Gradient => self.parameters,
            Category::OptimizerState => self.parameters.saturating_mul(2),
            Category::Activation => self.activations,
            Category::Workspace => self.workspace,
            Category::Input => self.inputs,
        };
        n.saturating_mul(ELEM)
    }

    /// The whole table, as `TensorTable::total_bytes` would report it.
    pub fn total_bytes(&self) -> u128 {
        Category::ALL
            .iter()
            .fold(0u128, |s, &c| s.saturating_add(self.bytes(c)))
    }

    /// The bytes of the parameters alone (one copy).
    pub fn parameter_bytes(&self) -> u128 {
        self.parameters.saturating_mul(ELEM)
    }
}

fn attention(c: &AttentionConfig, batch: usize) -> Footprint {
    let [b, t, d, v, nh, layers] = [
        batch,
        c.seq_len,
        c.d_model,
        c.vocab_size,
        c.n_heads,
        c.n_layers,
    ]
    .map(|x| N(x as u128));
    let gpt = N(u128::from(c.style == AttentionStyle::Gpt));
    let pos = N(u128::from(c.pos_emb));
    // Per layer, the attention saves the probabilities (B,NH,T,T) materialized or the row
    // logsumexp (B,NH,T) fused, and its shared scratch is T×T or a value per row.
    let fused = c.attention == AttentionImpl::Fused;
    let (btd, bt) = (b * t * d, b * t);
    let tt = if fused { b * nh * t } else { b * nh * t * t };
    // A layernorm: weight and bias; out, mean, rstd saved; the gradient of out as workspace.
    let (norm_p, norm_a, norm_w) = (2 * d, btd + 2 * bt, btd);
    let linear = |o: N, i: N| o * i + o;

    let layer_p =
        3 * linear(d, d) + gpt * (2 * norm_p + linear(d, d) + linear(4 * d, d) + linear(d, 4 * d));
    // q, k, v, attention out, probs; GPT: res1, res2, the MLP's hidden before and after GELU.
    let layer_a = 4 * btd + tt + gpt * (2 * norm_a + 2 * btd + 2 * 4 * btd);
    // d.q, d.k, d.v, d.attn.out; GPT: the two projection outputs, d.res1, d.res2, the MLP grads.
    let layer_w = 4 * btd + gpt * (2 * norm_w + 4 * btd + 2 * 4 * btd);
    Footprint {
        parameters: (v * d + pos * t * d + layers * layer_p + gpt * norm_p + linear(v, d)).0,
        // emb, logits, losses
        activations: (btd + layers * layer_a + gpt * norm_a + b * t * v + bt).0,
        // d.emb, the shared T×T scratch, d.logits
        workspace: (btd + tt + layers * layer_w + gpt * norm_w + b * t * v).0,
        inputs: (2 * bt).0,
    }
}

fn lstm(c: &LstmConfig, batch: usize) -> Footprint {
    let [b, t, e, h, v] = [batch, c.seq_len, c.embed, c.hidden, c.vocab_size].map(|x| N(x as u128));
    let layers = N(c.n_layers as u128);
    // Layer 0 reads the embedding (E wide), the others the layer below (H wide).
    let w_ih = 4 * h * e + N(c.n_layers.saturating_sub(1) as u128) * 4 * h * h;
    Footprint {
        parameters: (v * e + w_ih + layers * (4 * h * h + 4 * h) + v * h + v).0,
        // emb; per layer h, c, gates; logits, losses
        activations: (t * b * e + layers * (6 * t * b * h) + t * b * v + t * b).0,
        // d.emb; per layer d.h, d.gates; d.logits
        workspace: (t * b * e + layers * (5 * t * b * h) + t * b * v).0,
        inputs: (2 * t * b).0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model;

    fn check(cfg: &ModelConfig, batch: usize) {
        let m = model::build(cfg, batch);
        let f = Footprint::of(cfg, batch);
        for (c, bytes) in m.table().bytes_by_category() {
            assert_eq!(
                f.bytes(c),
                bytes as u128,
                "{c:?} of {cfg:?} at batch {batch}"
            );
        }
        assert_eq!(f.total_bytes(), m.table().total_bytes() as u128, "{cfg:?}");
        assert_eq!(f.parameters, m.table().parameter_count() as u128, "{cfg:?}");
    }

    #[test]
    fn matches_the_built_table_for_every_style_and_option() {
        for style in [AttentionStyle::Seed, AttentionStyle::Gpt] {
            for pos_emb in [false, true] {
                for ((layers, heads), attention) in [(1, 1), (3, 2)].into_iter().flat_map(|lh| {
                    [
                        (lh, AttentionImpl::Materialized),
                        (lh, AttentionImpl::Fused),
                    ]
                }) {
                    let cfg = ModelConfig::Attention(AttentionConfig {
                        style,
                        vocab_size: 11,
                        seq_len: 7,
                        d_model: 12,
                        n_layers: layers,
                        n_heads: heads,
                        pos_emb,
                        dropout: 0.1,
                        attention,
                    });
                    check(&cfg, 3);
                }
            }
        }
        for layers in [1, 2, 4] {
            let cfg = ModelConfig::Lstm(LstmConfig {
                vocab_size: 13,
                seq_len: 5,
                embed: 6,
                hidden: 9,
                n_layers: layers,
            });
            check(&cfg, 2);
        }
    }

    #[test]
    fn absurd_configurations_are_counted_without_overflow() {
        let cfg = ModelConfig::Attention(AttentionConfig {
            style: AttentionStyle::Gpt,
            vocab_size: 78,
            seq_len: usize::MAX / 2,
            d_model: 1 << 40,
            n_layers: 1_000_000,
            n_heads: 4,
            pos_emb: true,
            dropout: 0.1,
            attention: Default::default(),
        });
        let f = Footprint::of(&cfg, 1 << 20);
        assert!(f.total_bytes() > u64::MAX as u128, "{f:?}");
    }
}
