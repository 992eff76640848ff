//! FLOPs and memory traffic of one call of the kernel-level ops, for the per-kernel benchmarks'
//! GFLOP/s and GB/s (benches/kernels.rs). The counts are the same for the CPU reference and the
//! CUDA kernels: they describe the op, not an implementation.
//!
//! Conventions (those of [`crate::model::flops`]): a multiply-add is 2 FLOPs, any other
//! arithmetic operation or transcendental 1. The attention matmuls count the full T×T (what the
//! kernels compute); the causal softmax counts the T(T+1)/2 entries on and below the diagonal,
//! 5 FLOPs each forward, 4 backward; dropout 1 per kept-or-dropped entry (the multiply).
//!
//! Bytes are the compulsory traffic of the op as written: every input read once, every output
//! written once, an accumulated output (the backward ops' `+=`) read and written, f32 = 4 bytes.
//! A T×T intermediate that the op's kernels pass through memory (scores, probabilities, their
//! gradients) counts once written and once read. Caches can make real traffic lower (small
//! operands re-read from L2) and tiling makes it higher; the figure is a yardstick, not a counter.

/// What one call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cost {
    pub flops: u64,
    pub bytes: u64,
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            flops: self.flops + o.flops,
            bytes: self.bytes + o.bytes,
        }
    }
}

const F32: u64 = 4;

fn u(v: usize) -> u64 {
    v as u64
}

/// out (N, OC) = inp (N, IC) · weight (OC, IC)ᵀ (+ bias (OC)).
pub fn matmul_forward(n: usize, ic: usize, oc: usize, bias: bool) -> Cost {
    let (n, ic, oc) = (u(n), u(ic), u(oc));
    let b = if bias { 1 } else { 0 };
    Cost {
        flops: 2 * n * ic * oc + b * n * oc,
        bytes: F32 * (n * ic + oc * ic + b * oc + n * oc),
    }
}

/// dinp (N, IC) += dout · weight and dweight (OC, IC) += doutᵀ · inp (no bias gradient).
pub fn matmul_backward(n: usize, ic: usize, oc: usize) -> Cost {
    let (n, ic, oc) = (u(n), u(ic), u(oc));
    Cost {
        flops: 4 * n * ic * oc,
        // reads dout, inp, weight; dinp and dweight read and written
        bytes: F32 * (n * oc + n * ic + oc * ic + 2 * n * ic + 2 * oc * ic),
    }
}

/// Causal entries (on and below the diagonal) of R rows of T×T.
fn causal(r: usize, t: usize) -> u64 {
    u(r) * u(t) * (u(t) + 1) / 2
}

/// probs (R, T, T) = causal softmax of scores; with dropout also weights (R, T, T) = probs ⊙ mask.
pub fn causal_softmax_dropout_forward(r: usize, t: usize, dropout: bool) -> Cost {
    let tt = u(r) * u(t) * u(t);
    let d = if dropout { 1 } else { 0 };
    Cost {
        flops: 5 * causal(r, t) + d * causal(r, t),
        // reads scores; writes probs (and weights)
        bytes: F32 * (tt + tt + d * tt),
    }
}

/// Attention forward for q, k, v, out (B, T, NH·HS): scores = q·kᵀ (R = B·NH rows of T×T),
/// causal softmax (+ dropout), out = weights · v.
pub fn attention_forward(b: usize, t: usize, nh: usize, hs: usize, dropout: bool) -> Cost {
    let r = b * nh;
    let (tt, btc) = (u(r) * u(t) * u(t), u(b) * u(t) * u(nh) * u(hs));
    let products = Cost {
        flops: 2 * 2 * tt * u(hs),
        // scores: reads q, k, writes scores; values: reads weights, v, writes out
        bytes: F32 * (2 * btc + tt + tt + 2 * btc),
    };
    products + causal_softmax_dropout_forward(r, t, dropout)
}

/// Attention backward: dv, dweights, dq, dk (4 products over the T×T), the dropout and softmax
/// backward; dq, dk, dv (B, T, NH·HS) accumulated.
pub fn attention_backward(b: usize, t: usize, nh: usize, hs: usize, dropout: bool) -> Cost {
    let r = b * nh;
    let (tt, btc) = (u(r) * u(t) * u(t), u(b) * u(t) * u(nh) * u(hs));
    let d = if dropout { 1 } else { 0 };
    Cost {
        flops: 4 * 2 * tt * u(hs) + 4 * causal(r, t) + d * causal(r, t),
        bytes: F32
            * (
                // values backward: reads dout, v, the weights; writes dweights; dv += …
                btc + btc + tt + tt + 2 * btc
                // softmax (+ dropout) backward: reads dweights, probs; writes dscores
                + tt + tt + tt
                // scores backward: reads dscores, q, k; dq, dk += …
                + tt + 2 * btc + 4 * btc
            ),
    }
}

/// Tiles of 32 rows (kernels/attention_fused.cu's FA_TILE) covering T.
fn fused_tiles(t: usize) -> u64 {
    u(t.div_ceil(32))
}

/// Fused attention forward (kernels/attention_fused.cu): the two products over the causal entries
/// only (tiles above the diagonal skipped), the online softmax (5 FLOPs per causal entry) and
/// dropout; bytes: q read and out written once, k and v read by every query tile up to the
/// diagonal (nt(nt+1)/2 tile loads each, nt = ceil(T/32)), the row logsumexp written. Nothing
/// T×T goes through memory.
pub fn fused_attention_forward(b: usize, t: usize, nh: usize, hs: usize, dropout: bool) -> Cost {
    let r = b * nh;
    let (btc, nt) = (u(b) * u(t) * u(nh) * u(hs), fused_tiles(t));
    let d = if dropout { 1 } else { 0 };
    let kv_loads = u(r) * nt * (nt + 1) / 2 * 32 * u(hs);
    Cost {
        flops: 2 * 2 * causal(r, t) * u(hs) + 5 * causal(r, t) + d * causal(r, t),
        bytes: F32 * (btc + btc + 2 * kv_loads + u(r) * u(t)),
    }
}

/// Fused attention backward: D = rowsum(dO ⊙ O), then dk and dv over key tiles and dq over query
/// tiles, recomputing the probabilities: 7 products over the causal entries (the scores and
/// dO·vᵀ in both kernels; dv, dk, dq) and 6 FLOPs per causal entry of softmax backward (+ the
/// mask); bytes: dO and O read for D; each key tile reads its k, v once and q, dO, lse, D of every
/// query tile from the diagonal on; each query tile reads q, dO, lse, D once and k, v of every
/// key tile up to the diagonal; dq, dk, dv accumulated (read and written).
pub fn fused_attention_backward(b: usize, t: usize, nh: usize, hs: usize, dropout: bool) -> Cost {
    let r = b * nh;
    let (btc, nt) = (u(b) * u(t) * u(nh) * u(hs), fused_tiles(t));
    let d = if dropout { 1 } else { 0 };
    let pair_loads = u(r) * nt * (nt + 1) / 2 * 32 * u(hs); // one (32, HS) tile per pair
    let rows = u(r) * u(t);
    Cost {
        flops: 7 * 2 * causal(r, t) * u(hs) + 6 * causal(r, t) + 2 * d * causal(r, t) + 2 * btc,
        bytes: F32
            * (2 * btc + rows
                // dk/dv kernel: k, v once; q, dO per pair; lse, D per pair's rows
                + 2 * btc + 2 * pair_loads + 2 * u(r) * nt * (nt + 1) / 2 * 32
                // dq kernel: q, dO, lse, D once; k, v per pair
                + 2 * btc + 2 * rows + 2 * pair_loads
                // dq, dk, dv read and written
                + 6 * btc),
    }
}

/// One LSTM cell step over gates (B, 4H): 3 sigmoids, 2 tanh, c = f·c₋₁ + i·g, h = o·tanh(c)
/// (9 FLOPs per (b, h)); reads gates and c₋₁, writes the activated gates back, c and h.
pub fn lstm_cell_forward(b: usize, hid: usize) -> Cost {
    let bh = u(b) * u(hid);
    Cost {
        flops: 9 * bh,
        bytes: F32 * (4 * bh + bh + 4 * bh + bh + bh),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_counts_match_hand_computed_values() {
        // N=2, IC=3, OC=4: 2·2·3·4 = 48 FLOPs + 8 bias adds; floats 6 + 12 + 4 + 8 = 30.
        assert_eq!(
            matmul_forward(2, 3, 4, true),
            Cost {
                flops: 56,
                bytes: 120
            }
        );
        assert_eq!(
            matmul_forward(2, 3, 4, false),
            Cost {
                flops: 48,
                bytes: 104
            }
        );
        // 96 FLOPs; floats dout 8 + inp 6 + W 12 + dinp 2·6 + dW 2·12 = 62.
        assert_eq!(
            matmul_backward(2, 3, 4),
            Cost {
                flops: 96,
                bytes: 248
            }
        );
    }

    #[test]
    fn attention_counts_match_hand_computed_values() {
        // R = 1, T = 2: 3 causal entries; scores, probs (and weights) 4 floats each.
        assert_eq!(
            causal_softmax_dropout_forward(1, 2, false),
            Cost {
                flops: 15,
                bytes: 32
            }
        );
        assert_eq!(
            causal_softmax_dropout_forward(1, 2, true),
            Cost {
                flops: 18,
                bytes: 48
            }
        );
        // B=1, T=2, NH=1, HS=3: products 2·2·4·3 = 48, softmax 15; q, k, v, out 6 floats each.
        // floats: 2·6 + 4 + 4 + 2·6 = 32 (products) + 8 (softmax) = 40.
        assert_eq!(
            attention_forward(1, 2, 1, 3, false),
            Cost {
                flops: 63,
                bytes: 160
            }
        );
        // 8·4·3 = 96 + 4·3 = 12 (+ 3 dropout) FLOPs;
        // floats 6 + 6 + 4 + 4 + 12 (values) + 12 (softmax) + 4 + 12 + 24 (scores) = 84.
        assert_eq!(
            attention_backward(1, 2, 1, 3, false),
            Cost {
                flops: 108,
                bytes: 336
            }
        );
        assert_eq!(attention_backward(1, 2, 1, 3, true).flops, 111);
        // Two heads of half the width: the same products, twice the T×T rows.
        let two = attention_forward(1, 2, 2, 3, false);
        assert_eq!(two.flops, 2 * 48 + 2 * 15);
    }

    #[test]
    fn lstm_cell_counts_match_hand_computed_values() {
        // B=2, H=3: 6 cells · 9 FLOPs; floats 24 + 6 + 24 + 6 + 6 = 66.
        assert_eq!(
            lstm_cell_forward(2, 3),
            Cost {
                flops: 54,
                bytes: 264
            }
        );
    }
}
