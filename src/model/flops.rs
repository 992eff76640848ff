//! Floating-point operation counts of one training step (forward + backward), analytic, for the
//! two models as this crate computes them.
//!
//! Conventions:
//! - A multiply-add is 2 FLOPs; every other add, subtract, multiply, divide, compare, and every
//!   transcendental (exp, tanh, sigmoid) is 1 FLOP.
//! - Matmul out (N, OC) = inp (N, IC) · Wᵀ + b: forward 2·N·IC·OC + N·OC (bias); backward
//!   2·N·IC·OC for dinp, 2·N·IC·OC for dW, N·OC for db (both models always compute dinp).
//! - Attention, per batch row and head (R = B·NH rows of T×T, head size HS): scores q·kᵀ
//!   2·T²·HS and weighted values 2·T²·HS forward; backward dv, dweights, dq, dk 2·T²·HS each.
//!   The matmuls are counted over the full T×T, because that is what the GEMMs compute (the
//!   causal mask does not halve them here). The causal softmax touches only the T(T+1)/2 entries
//!   on and below the diagonal: 5 FLOPs each forward (max, subtract, exp, sum, scale), 4 backward
//!   (the p·dp dot product, then p·(dp − dot)).
//! - Fused attention (`--attention fused`): tiles above the diagonal are skipped, so the products
//!   are counted over the T(T+1)/2 live entries: q·kᵀ and weighted values forward; backward the
//!   scores recomputed twice (once per backward kernel), dO·vᵀ twice, and dv, dk, dq: 7 products
//!   of 2·HS per live entry. (The value and gradient products also multiply the zero upper half
//!   of each diagonal tile; that work is not counted.) Its softmax is 5 FLOPs per live entry
//!   forward and 6 backward (the exp recomputed in both backward kernels, then p·(dp − D)).
//! - LayerNorm (per element): 8 forward (mean, variance, normalise, affine), 17 backward (the two
//!   row sums, dW, db, dinp), as in `ops::norm`. Per-row divisions and square roots are ignored.
//! - GELU (tanh form, per element): 9 forward, 20 backward, as in `ops::norm::gelu{,_grad}`.
//! - LSTM layer (T steps, B rows, input E, hidden H): gate pre-activations as matmuls, the input
//!   projection over all T steps, the recurrent one over T − 1 steps (h₋₁ = 0, so step 0 skips it,
//!   as `ops::lstm` does), both also in backward; the cell is 9 FLOPs per (t, b, h) forward
//!   (3 sigmoids, 2 tanh, c = f·c₋₁ + i·g, h = o·tanh(c)) and 23 backward.
//!
//! Ignored, each small next to the counted terms at any useful size: embedding lookups and their
//! gradient (gathers and scatter-adds), the cross-entropy loss and its gradient (B·T·V, identical
//! in both models), attention dropout (1-2 multiplies per T×T entry, against 2·HS per entry for
//! the T×T matmuls), residual adds and gradient accumulation in the GPT blocks (B·T·C each), the
//! 1/sqrt(HS) score scale (folded into the GEMM), AdamW and gradient clipping (~15 FLOPs per
//! parameter, the same order for both models).

use super::attention::{AttentionConfig, AttentionImpl, AttentionStyle};
use super::lstm::LstmConfig;
use super::ModelConfig;
use serde::Serialize;

/// FLOPs of one forward and one backward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Flops {
    pub forward: u64,
    pub backward: u64,
}

impl Flops {
    pub fn total(self) -> u64 {
        self.forward + self.backward
    }
}

impl std::ops::Add for Flops {
    type Output = Flops;
    fn add(self, o: Flops) -> Flops {
        Flops {
            forward: self.forward + o.forward,
            backward: self.backward + o.backward,
        }
    }
}

impl std::iter::Sum for Flops {
    fn sum<I: Iterator<Item = Flops>>(it: I) -> Flops {
        it.fold(Flops::default(), |a, b| a + b)
    }
}

/// One named part of a model's count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FlopTerm {
    pub name: &'static str,
    #[serde(flatten)]
    pub flops: Flops,
}

fn u(x: usize) -> u64 {
    x as u64
}

/// out (N, OC) = inp (N, IC) · weight (OC, IC)ᵀ + bias (OC), with dinp, dweight, dbias.
pub fn matmul(n: usize, ic: usize, oc: usize) -> Flops {
    let mac = 2 * u(n) * u(ic) * u(oc);
    let bias = u(n) * u(oc);
    Flops {
        forward: mac + bias,
        backward: 2 * mac + bias,
    }
}

/// The two T×T matmuls of attention (scores q·kᵀ, weighted values) and their gradients.
pub fn attention_matmuls(b: usize, nh: usize, t: usize, hs: usize) -> Flops {
    let one = 2 * u(b) * u(nh) * u(t) * u(t) * u(hs);
    Flops {
        forward: 2 * one,
        backward: 4 * one,
    }
}

/// The products of fused attention, over the live (causal) entries only.
pub fn fused_attention_matmuls(b: usize, nh: usize, t: usize, hs: usize) -> Flops {
    let live = u(t) * (u(t) + 1) / 2;
    let one = 2 * u(b) * u(nh) * live * u(hs);
    Flops {
        forward: 2 * one,
        backward: 7 * one,
    }
}

/// The online softmax of fused attention over R rows, live entries only.
pub fn fused_softmax(r: usize, t: usize) -> Flops {
    let live = u(r) * u(t) * (u(t) + 1) / 2;
    Flops {
        forward: 5 * live,
        backward: 6 * live,
    }
}

/// Causal softmax over R rows of T×T, entries on and below the diagonal only.
pub fn causal_softmax(r: usize, t: usize) -> Flops {
    let live = u(r) * u(t) * (u(t) + 1) / 2;
    Flops {
        forward: 5 * live,
        backward: 4 * live,
    }
}

/// LayerNorm over N rows of C.
pub fn layernorm(n: usize, c: usize) -> Flops {
    Flops {
        forward: 8 * u(n) * u(c),
        backward: 17 * u(n) * u(c),
    }
}

/// GELU over N elements.
pub fn gelu(n: usize) -> Flops {
    Flops {
        forward: 9 * u(n),
        backward: 20 * u(n),
    }
}

/// An LSTM layer's gate pre-activations: input projection (T steps, with bias) and recurrent
/// projection (T − 1 steps), forward and backward (dx, dh₋₁, dW_ih, dW_hh, dbias).
pub fn lstm_matmuls(t: usize, b: usize, e: usize, h: usize) -> Flops {
    let input = 2 * u(t) * u(b) * u(e) * 4 * u(h);
    let bias = u(t) * u(b) * 4 * u(h);
    let recurrent = 2 * u(t.saturating_sub(1)) * u(b) * u(h) * 4 * u(h);
    Flops {
        forward: input + bias + recurrent,
        backward: 2 * input + bias + 2 * recurrent,
    }
}

/// The LSTM cell's elementwise work over T steps of (B, H).
pub fn lstm_cell(t: usize, b: usize, h: usize) -> Flops {
    let n = u(t) * u(b) * u(h);
    Flops {
        forward: 9 * n,
        backward: 23 * n,
    }
}

fn attention_terms(c: &AttentionConfig, b: usize) -> Vec<FlopTerm> {
    let (t, d, nh, l) = (c.seq_len, c.d_model, c.n_heads, c.n_layers);
    let n = b * t;
    let gpt = c.style == AttentionStyle::Gpt;
    let dd = matmul(n, d, d);
    let proj = if gpt {
        // q, k, v, output projection, MLP up and down.
        dd + dd + dd + dd + matmul(n, d, 4 * d) + matmul(n, 4 * d, d)
    } else {
        dd + dd + dd
    };
    let times = |f: Flops, k: usize| Flops {
        forward: f.forward * u(k),
        backward: f.backward * u(k),
    };
    let fused = c.attention == AttentionImpl::Fused;
    let mut terms = vec![
        FlopTerm {
            name: "projections",
            flops: times(proj, l),
        },
        if fused {
            FlopTerm {
                name: "attention products (fused, causal entries)",
                flops: times(fused_attention_matmuls(b, nh, t, d / nh), l),
            }
        } else {
            FlopTerm {
                name: "attention T×T matmuls",
                flops: times(attention_matmuls(b, nh, t, d / nh), l),
            }
        },
        FlopTerm {
            name: "causal softmax",
            flops: times(
                if fused {
                    fused_softmax(b * nh, t)
                } else {
                    causal_softmax(b * nh, t)
                },
                l,
            ),
        },
    ];
    if gpt {
        terms.push(FlopTerm {
            name: "layernorm",
            // Two per block plus the final one.
            flops: times(layernorm(n, d), 2 * l + 1),
        });
        terms.push(FlopTerm {
            name: "gelu",
            flops: times(gelu(n * 4 * d), l),
        });
    }
    terms.push(FlopTerm {
        name: "lm_head",
        flops: matmul(n, d, c.vocab_size),
    });
    terms
}

fn lstm_terms(c: &LstmConfig, b: usize) -> Vec<FlopTerm> {
    let (t, h) = (c.seq_len, c.hidden);
    let gates: Flops = (0..c.n_layers)
        .map(|l| lstm_matmuls(t, b, if l == 0 { c.embed } else { h }, h))
        .sum();
    let cell: Flops = (0..c.n_layers).map(|_| lstm_cell(t, b, h)).sum();
    vec![
        FlopTerm {
            name: "gate matmuls (input + recurrent)",
            flops: gates,
        },
        FlopTerm {
            name: "lstm cell",
            flops: cell,
        },
        FlopTerm {
            name: "lm_head",
            flops: matmul(b * t, h, c.vocab_size),
        },
    ]
}

/// The counted parts of one training step of `cfg` at batch size `batch`.
pub fn step_flops(cfg: &ModelConfig, batch: usize) -> Vec<FlopTerm> {
    match cfg {
        ModelConfig::Attention(c) => attention_terms(c, batch),
        ModelConfig::Lstm(c) => lstm_terms(c, batch),
    }
}

/// The whole count of one training step.
pub fn total_flops(cfg: &ModelConfig, batch: usize) -> Flops {
    step_flops(cfg, batch).iter().map(|t| t.flops).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(forward: u64, backward: u64) -> Flops {
        Flops { forward, backward }
    }

    #[test]
    fn kernels_match_hand_counts() {
        // (2, 3) · (4, 3)ᵀ: 2·3·4 = 24 multiply-adds = 48, + 8 bias adds; backward 2 · 48 + 8.
        assert_eq!(matmul(2, 3, 4), f(56, 104));
        // B 1, NH 1, T 2, HS 3: 4 score entries × 3 MACs = 24 FLOPs, values the same.
        assert_eq!(attention_matmuls(1, 1, 2, 3), f(48, 96));
        // T 2: 3 live entries (1 + 2).
        assert_eq!(causal_softmax(1, 2), f(15, 12));
        // fused, B 1, NH 1, T 2, HS 3: 3 live entries × 3 MACs = 18 FLOPs per product
        assert_eq!(fused_attention_matmuls(1, 1, 2, 3), f(36, 126));
        assert_eq!(fused_softmax(1, 2), f(15, 18));
        assert_eq!(layernorm(2, 5), f(80, 170));
        assert_eq!(gelu(3), f(27, 60));
        // T 2, B 1, E 1, H 1: input 2·2·1·4 = 16, bias 8, recurrent (1 step) 2·1·4 = 8.
        assert_eq!(lstm_matmuls(2, 1, 1, 1), f(32, 56));
        assert_eq!(
            lstm_matmuls(1, 2, 3, 1),
            f(2 * 2 * 3 * 4 + 8, 4 * 2 * 3 * 4 + 8)
        );
        assert_eq!(lstm_cell(2, 3, 4), f(9 * 24, 23 * 24));
        assert_eq!(f(1, 2) + f(3, 4), f(4, 6));
        assert_eq!(f(1, 2).total(), 3);
    }

    #[test]
    fn one_seed_attention_layer_by_hand() {
        // V 5, T 2, D 3, one head, B 1 (N 2).
        let cfg = ModelConfig::Attention(AttentionConfig {
            style: AttentionStyle::Seed,
            vocab_size: 5,
            seq_len: 2,
            d_model: 3,
            n_layers: 1,
            n_heads: 1,
            pos_emb: false,
            dropout: 0.1,
            attention: Default::default(),
        });
        // q, k, v: 3 × (2·2·3·3 + 2·3) = 3 × 42 = 126 forward, 3 × (72 + 6) = 234 backward.
        // T×T matmuls 48 / 96, softmax 15 / 12, head 2·2·3·5 + 10 = 70 / 130.
        let want = f(126 + 48 + 15 + 70, 234 + 96 + 12 + 130);
        assert_eq!(total_flops(&cfg, 1), want);
        // Batch scales everything linearly.
        assert_eq!(total_flops(&cfg, 3), f(3 * want.forward, 3 * want.backward));
    }

    #[test]
    fn one_gpt_block_by_hand() {
        // V 5, T 2, D 4, 2 heads (HS 2), B 1 (N 2).
        let cfg = ModelConfig::Attention(AttentionConfig {
            style: AttentionStyle::Gpt,
            vocab_size: 5,
            seq_len: 2,
            d_model: 4,
            n_layers: 1,
            n_heads: 2,
            pos_emb: true,
            dropout: 0.0,
            attention: Default::default(),
        });
        let dd = f(2 * 2 * 4 * 4 + 8, 4 * 2 * 4 * 4 + 8); // q, k, v, proj: 72 / 136
        let fc = f(2 * 2 * 4 * 16 + 32, 4 * 2 * 4 * 16 + 32); // 288 / 544, and fc_proj alike
        let fc_proj = f(2 * 2 * 16 * 4 + 8, 4 * 2 * 16 * 4 + 8); // 264 / 520
        let tt = f(2 * 2 * 2 * 2 * 2 * 2, 4 * 2 * 2 * 2 * 2 * 2); // R 2, T 2, HS 2: 64 / 128
        let sm = f(5 * 2 * 3, 4 * 2 * 3);
        let ln = f(3 * 8 * 2 * 4, 3 * 17 * 2 * 4); // ln1, ln2, ln_f
        let ge = f(9 * 2 * 16, 20 * 2 * 16);
        let head = f(2 * 2 * 4 * 5 + 10, 4 * 2 * 4 * 5 + 10);
        let want = dd + dd + dd + dd + fc + fc_proj + tt + sm + ln + ge + head;
        assert_eq!(total_flops(&cfg, 1), want);
    }

    #[test]
    fn one_lstm_layer_by_hand() {
        // V 5, T 2, E 1, H 1, B 1.
        let cfg = ModelConfig::Lstm(LstmConfig {
            vocab_size: 5,
            seq_len: 2,
            embed: 1,
            hidden: 1,
            n_layers: 1,
        });
        // gates 32 / 56, cell 18 / 46, head 2·2·1·5 + 10 = 30 / 50.
        assert_eq!(total_flops(&cfg, 1), f(32 + 18 + 30, 56 + 46 + 50));
        // A second layer takes H inputs and adds the same gate and cell work again.
        let ModelConfig::Lstm(mut c) = cfg else {
            unreachable!()
        };
        c.n_layers = 2;
        let two = total_flops(&ModelConfig::Lstm(c), 1);
        assert_eq!(two, f(2 * 32 + 2 * 18 + 30, 2 * 56 + 2 * 46 + 50));
    }
}
