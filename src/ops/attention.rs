//! Causal scaled-dot-product attention, the seed's layer:
//!   scores = q kᵀ / sqrt(HS)  →  causal mask + softmax  →  dropout (AFTER softmax)  →  · v
//!
//! q, k, v and out are (B, T, C) with C = NH · HS; head h owns channels h·HS .. (h+1)·HS.
//! The saved activation is `probs` (B, NH, T, T): the softmax output BEFORE dropout, zero above
//! the diagonal. The dropout mask is not stored: backward regenerates it from Philox with the
//! same (seed, step, tensor) key; element index = ((b·NH + h)·T + i)·T + j.
//!
//! Two forms live here. The step-by-step ops (`attention_scores_forward`, `causal_softmax_*`,
//! `dropout_*`, `attention_values_*`, `attention_scores_backward`) are plain loops over whole
//! tensors: each is one CUDA kernel's oracle. `attention_forward` / `attention_backward` compose
//! the same math per batch row with strided GEMMs and a T×T scratch, for training speed; tests
//! check the composite against the chain of plain ops.

use super::check_len;
use super::gemm::{sgemm, Mat, MatMut};
use crate::philox::DropoutKey;
use rayon::prelude::*;

/// Geometry of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub hs: usize,
}

impl AttnShape {
    pub fn c(&self) -> usize {
        self.nh * self.hs
    }
    pub fn scale(&self) -> f32 {
        1.0 / (self.hs as f32).sqrt()
    }
    fn check_qkv(&self, op: &str, arg: &str, len: usize) {
        check_len(op, arg, len, &[self.b, self.t, self.c()]);
    }
    fn check_tt(&self, op: &str, arg: &str, len: usize) {
        check_len(op, arg, len, &[self.b, self.nh, self.t, self.t]);
    }
}

// ----------------------------------------------------------------------------------------------
// Step-by-step reference ops (plain loops)

/// scores (B, NH, T, T) = q · kᵀ · scale, for every (i, j) (the mask is the softmax's job).
pub fn attention_scores_forward(scores: &mut [f32], q: &[f32], k: &[f32], s: AttnShape) {
    let op = "attention_scores_forward";
    s.check_tt(op, "scores", scores.len());
    s.check_qkv(op, "q", q.len());
    s.check_qkv(op, "k", k.len());
    let (t, c, hs) = (s.t, s.c(), s.hs);
    for b in 0..s.b {
        for h in 0..s.nh {
            for i in 0..t {
                for j in 0..t {
                    let qi = &q[(b * t + i) * c + h * hs..][..hs];
                    let kj = &k[(b * t + j) * c + h * hs..][..hs];
                    let dot: f64 = qi.iter().zip(kj).map(|(&x, &y)| x as f64 * y as f64).sum();
                    scores[((b * s.nh + h) * t + i) * t + j] = dot as f32 * s.scale();
                }
            }
        }
    }
}

/// dq += dscores · k · scale; dk += dscoresᵀ · q · scale (dscores zero above the diagonal).
pub fn attention_scores_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dscores: &[f32],
    q: &[f32],
    k: &[f32],
    s: AttnShape,
) {
    let op = "attention_scores_backward";
    s.check_qkv(op, "dq", dq.len());
    s.check_qkv(op, "dk", dk.len());
    s.check_tt(op, "dscores", dscores.len());
    s.check_qkv(op, "q", q.len());
    s.check_qkv(op, "k", k.len());
    let (t, c, hs) = (s.t, s.c(), s.hs);
    for b in 0..s.b {
        for h in 0..s.nh {
            for i in 0..t {
                for j in 0..t {
                    let g = dscores[((b * s.nh + h) * t + i) * t + j] * s.scale();
                    for d in 0..hs {
                        dq[(b * t + i) * c + h * hs + d] += g * k[(b * t + j) * c + h * hs + d];
                        dk[(b * t + j) * c + h * hs + d] += g * q[(b * t + i) * c + h * hs + d];
                    }
                }
            }
        }
    }
}

/// Softmax of row `i` of a causal score matrix, in place: entries j ≤ i are normalised (the sum
/// is taken in f64, so a row sums to 1 within a few f32 ulps), entries j > i become exactly 0.
#[inline]
pub fn causal_softmax_row(row: &mut [f32], i: usize) {
    let (live, masked) = row.split_at_mut(i + 1);
    let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for x in live.iter_mut() {
        *x = (*x - max).exp();
        sum += *x as f64;
    }
    let inv = 1.0 / sum;
    for x in live.iter_mut() {
        *x = (*x as f64 * inv) as f32;
    }
    masked.fill(0.0);
}

/// probs (R, T, T) = causal softmax of scores (R, T, T) row by row, R = B·NH.
pub fn causal_softmax_forward(probs: &mut [f32], scores: &[f32], r: usize, t: usize) {
    check_len("causal_softmax_forward", "probs", probs.len(), &[r, t, t]);
    check_len("causal_softmax_forward", "scores", scores.len(), &[r, t, t]);
    probs.copy_from_slice(scores);
    for (n, row) in probs.chunks_exact_mut(t).enumerate() {
        causal_softmax_row(row, n % t);
    }
}

/// dscores += P ⊙ (dP − Σ_j P·dP) per row (zero above the diagonal, where P is 0).
pub fn causal_softmax_backward(
    dscores: &mut [f32],
    dprobs: &[f32],
    probs: &[f32],
    r: usize,
    t: usize,
) {
    let op = "causal_softmax_backward";
    check_len(op, "dscores", dscores.len(), &[r, t, t]);
    check_len(op, "dprobs", dprobs.len(), &[r, t, t]);
    check_len(op, "probs", probs.len(), &[r, t, t]);
    for ((ds, dp), p) in dscores
        .chunks_exact_mut(t)
        .zip(dprobs.chunks_exact(t))
        .zip(probs.chunks_exact(t))
    {
        let dot: f64 = p.iter().zip(dp).map(|(&a, &b)| a as f64 * b as f64).sum();
        for j in 0..t {
            ds[j] += p[j] * (dp[j] - dot as f32);
        }
    }
}

/// out = inp ⊙ mask / (1 − p), mask from Philox; `first` is the element index of inp[0].
pub fn dropout_forward(out: &mut [f32], inp: &[f32], key: DropoutKey, first: u64) {
    check_len("dropout_forward", "inp", inp.len(), &[out.len()]);
    key.fill_mask(first, out);
    for (o, &x) in out.iter_mut().zip(inp) {
        *o *= x;
    }
}

/// dinp += dout ⊙ mask / (1 − p), the same mask as the forward (regenerated, not stored).
pub fn dropout_backward(dinp: &mut [f32], dout: &[f32], key: DropoutKey, first: u64) {
    check_len("dropout_backward", "dout", dout.len(), &[dinp.len()]);
    let mut mask = vec![0.0; dinp.len()];
    key.fill_mask(first, &mut mask);
    for ((d, &g), &m) in dinp.iter_mut().zip(dout).zip(&mask) {
        *d += g * m;
    }
}

/// out (B, T, C) = weights (B, NH, T, T) · v, per head.
pub fn attention_values_forward(out: &mut [f32], weights: &[f32], v: &[f32], s: AttnShape) {
    let op = "attention_values_forward";
    s.check_qkv(op, "out", out.len());
    s.check_tt(op, "weights", weights.len());
    s.check_qkv(op, "v", v.len());
    let (t, c, hs) = (s.t, s.c(), s.hs);
    for b in 0..s.b {
        for h in 0..s.nh {
            for i in 0..t {
                for d in 0..hs {
                    let acc: f64 = (0..t)
                        .map(|j| {
                            weights[((b * s.nh + h) * t + i) * t + j] as f64
                                * v[(b * t + j) * c + h * hs + d] as f64
                        })
                        .sum();
                    out[(b * t + i) * c + h * hs + d] = acc as f32;
                }
            }
        }
    }
}

/// dweights += dout · vᵀ per head; dv += weightsᵀ · dout per head.
pub fn attention_values_backward(
    dweights: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    weights: &[f32],
    v: &[f32],
    s: AttnShape,
) {
    let op = "attention_values_backward";
    s.check_tt(op, "dweights", dweights.len());
    s.check_qkv(op, "dv", dv.len());
    s.check_qkv(op, "dout", dout.len());
    s.check_tt(op, "weights", weights.len());
    s.check_qkv(op, "v", v.len());
    let (t, c, hs) = (s.t, s.c(), s.hs);
    for b in 0..s.b {
        for h in 0..s.nh {
            for i in 0..t {
                for j in 0..t {
                    let w = weights[((b * s.nh + h) * t + i) * t + j];
                    let mut acc = 0.0f64;
                    for d in 0..hs {
                        let g = dout[(b * t + i) * c + h * hs + d];
                        acc += g as f64 * v[(b * t + j) * c + h * hs + d] as f64;
                        dv[(b * t + j) * c + h * hs + d] += w * g;
                    }
                    dweights[((b * s.nh + h) * t + i) * t + j] += acc as f32;
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Composite forward / backward used for training

/// The dropout mask of one (T, T) head, generated only on and below the diagonal (above it the
/// probabilities are 0, so the mask there does not matter and is set to 0).
fn causal_mask(key: DropoutKey, first: u64, t: usize, mask: &mut [f32]) {
    for (i, row) in mask.chunks_exact_mut(t).enumerate() {
        key.fill_mask(first + (i * t) as u64, &mut row[..=i]);
        row[i + 1..].fill(0.0);
    }
}

/// out (B,T,C), probs (B,NH,T,T) saved = causal softmax(q kᵀ · scale); out = dropout(probs) · v.
pub fn attention_forward(
    out: &mut [f32],
    probs: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    dropout: Option<DropoutKey>,
) {
    let op = "attention_forward";
    s.check_qkv(op, "out", out.len());
    s.check_tt(op, "probs", probs.len());
    s.check_qkv(op, "q", q.len());
    s.check_qkv(op, "k", k.len());
    s.check_qkv(op, "v", v.len());
    let (t, c, hs, nh) = (s.t, s.c(), s.hs, s.nh);
    let dropout = dropout.filter(|d| d.p > 0.0);
    out.par_chunks_mut(t * c)
        .zip(probs.par_chunks_mut(nh * t * t))
        .zip(
            q.par_chunks(t * c)
                .zip(k.par_chunks(t * c))
                .zip(v.par_chunks(t * c)),
        )
        .enumerate()
        .for_each(|(b, ((out_b, probs_b), ((q_b, k_b), v_b)))| {
            let mut scratch = if dropout.is_some() {
                vec![0.0f32; t * t]
            } else {
                Vec::new()
            };
            for h in 0..nh {
                let p = &mut probs_b[h * t * t..(h + 1) * t * t];
                sgemm(
                    MatMut::rm(p, t, t),
                    Mat::strided(q_b, h * hs, t, hs, c),
                    Mat::strided(k_b, h * hs, t, hs, c).t(),
                    s.scale(),
                    false,
                    false,
                );
                for (i, row) in p.chunks_exact_mut(t).enumerate() {
                    causal_softmax_row(row, i);
                }
                let weights: &[f32] = match dropout {
                    Some(key) => {
                        causal_mask(key, ((b * nh + h) * t * t) as u64, t, &mut scratch);
                        for (m, &x) in scratch.iter_mut().zip(p.iter()) {
                            *m *= x;
                        }
                        &scratch
                    }
                    None => p,
                };
                sgemm(
                    MatMut::strided(out_b, h * hs, t, hs, c),
                    Mat::rm(weights, t, t),
                    Mat::strided(v_b, h * hs, t, hs, c),
                    1.0,
                    false,
                    false,
                );
            }
        });
}

/// dq, dk, dv (B,T,C) += gradients of attention_forward given dout (B,T,C) and the saved probs.
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    s: AttnShape,
    dropout: Option<DropoutKey>,
) {
    let op = "attention_backward";
    for (arg, len) in [
        ("dq", dq.len()),
        ("dk", dk.len()),
        ("dv", dv.len()),
        ("dout", dout.len()),
        ("q", q.len()),
        ("k", k.len()),
        ("v", v.len()),
    ] {
        s.check_qkv(op, arg, len);
    }
    s.check_tt(op, "probs", probs.len());
    let (t, c, hs, nh) = (s.t, s.c(), s.hs, s.nh);
    let dropout = dropout.filter(|d| d.p > 0.0);
    dq.par_chunks_mut(t * c)
        .zip(dk.par_chunks_mut(t * c))
        .zip(dv.par_chunks_mut(t * c))
        .zip(dout.par_chunks(t * c).zip(probs.par_chunks(nh * t * t)))
        .zip(
            q.par_chunks(t * c)
                .zip(k.par_chunks(t * c))
                .zip(v.par_chunks(t * c)),
        )
        .enumerate()
        .for_each(
            |(b, ((((dq_b, dk_b), dv_b), (dout_b, probs_b)), ((q_b, k_b), v_b)))| {
                let mut mask = if dropout.is_some() {
                    vec![0.0f32; t * t]
                } else {
                    Vec::new()
                };
                let mut weights = if dropout.is_some() {
                    vec![0.0f32; t * t]
                } else {
                    Vec::new()
                };
                let mut dp = vec![0.0f32; t * t];
                for h in 0..nh {
                    let p = &probs_b[h * t * t..(h + 1) * t * t];
                    let w: &[f32] = match dropout {
                        Some(key) => {
                            causal_mask(key, ((b * nh + h) * t * t) as u64, t, &mut mask);
                            for ((wv, &m), &x) in weights.iter_mut().zip(&mask).zip(p) {
                                *wv = m * x;
                            }
                            &weights
                        }
                        None => p,
                    };
                    let dout_h = Mat::strided(dout_b, h * hs, t, hs, c);
                    // dv_h += wᵀ · dout_h ; dw = dout_h · v_hᵀ
                    sgemm(
                        MatMut::strided(dv_b, h * hs, t, hs, c),
                        Mat::rm(w, t, t).t(),
                        dout_h,
                        1.0,
                        true,
                        false,
                    );
                    sgemm(
                        MatMut::rm(&mut dp, t, t),
                        dout_h,
                        Mat::strided(v_b, h * hs, t, hs, c).t(),
                        1.0,
                        false,
                        false,
                    );
                    // Through dropout, then softmax: ds = p ⊙ (dp − Σ p·dp), zero above the diagonal.
                    for i in 0..t {
                        let row = &mut dp[i * t..(i + 1) * t];
                        if dropout.is_some() {
                            for (g, &m) in row.iter_mut().zip(&mask[i * t..(i + 1) * t]) {
                                *g *= m;
                            }
                        }
                        let prow = &p[i * t..(i + 1) * t];
                        let dot: f64 = prow[..=i]
                            .iter()
                            .zip(&row[..=i])
                            .map(|(&a, &g)| a as f64 * g as f64)
                            .sum();
                        let dot = dot as f32;
                        for j in 0..=i {
                            row[j] = prow[j] * (row[j] - dot);
                        }
                        row[i + 1..].fill(0.0);
                    }
                    // dq_h += scale · ds · k_h ; dk_h += scale · dsᵀ · q_h
                    sgemm(
                        MatMut::strided(dq_b, h * hs, t, hs, c),
                        Mat::rm(&dp, t, t),
                        Mat::strided(k_b, h * hs, t, hs, c),
                        s.scale(),
                        true,
                        false,
                    );
                    sgemm(
                        MatMut::strided(dk_b, h * hs, t, hs, c),
                        Mat::rm(&dp, t, t).t(),
                        Mat::strided(q_b, h * hs, t, hs, c),
                        s.scale(),
                        true,
                        false,
                    );
                }
            },
        );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    const SHAPES: [AttnShape; 4] = [
        AttnShape {
            b: 1,
            t: 1,
            nh: 1,
            hs: 3,
        },
        AttnShape {
            b: 3,
            t: 37,
            nh: 2,
            hs: 5,
        },
        AttnShape {
            b: 2,
            t: 19,
            nh: 3,
            hs: 7,
        },
        AttnShape {
            b: 1,
            t: 64,
            nh: 1,
            hs: 13,
        },
    ];

    fn inputs(s: AttnShape, seed: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut r = rng(seed);
        let n = s.b * s.t * s.c();
        (
            randn(&mut r, n),
            randn(&mut r, n),
            randn(&mut r, n),
            randn(&mut r, n),
        )
    }

    fn key(p: f32) -> Option<DropoutKey> {
        Some(DropoutKey {
            p,
            seed: 99,
            step: 5,
            tensor: 1,
        })
    }

    /// The plain-op chain: scores → causal softmax → dropout → values.
    fn chain_forward(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        s: AttnShape,
        d: Option<DropoutKey>,
    ) -> (Vec<f32>, Vec<f32>) {
        let tt = s.b * s.nh * s.t * s.t;
        let mut scores = vec![0.0; tt];
        attention_scores_forward(&mut scores, q, k, s);
        let mut probs = vec![0.0; tt];
        causal_softmax_forward(&mut probs, &scores, s.b * s.nh, s.t);
        let mut w = probs.clone();
        if let Some(key) = d {
            dropout_forward(&mut w, &probs, key, 0);
        }
        let mut out = vec![0.0; q.len()];
        attention_values_forward(&mut out, &w, v, s);
        (out, probs)
    }

    #[test]
    fn scores_and_softmax_match_naive_formula_rows_sum_to_one() {
        for (n, &s) in SHAPES.iter().enumerate() {
            let (q, k, _, _) = inputs(s, n);
            let (_, probs) = chain_forward(&q, &k, &q, s, None);
            let (t, c, hs) = (s.t, s.c(), s.hs);
            for b in 0..s.b {
                for h in 0..s.nh {
                    for i in 0..t {
                        let sc: Vec<f64> = (0..=i)
                            .map(|j| {
                                (0..hs)
                                    .map(|d| {
                                        q[(b * t + i) * c + h * hs + d] as f64
                                            * k[(b * t + j) * c + h * hs + d] as f64
                                    })
                                    .sum::<f64>()
                                    / (hs as f64).sqrt()
                            })
                            .collect();
                        let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                        let row = &probs[((b * s.nh + h) * t + i) * t..][..t];
                        for j in 0..t {
                            let want = if j <= i { (sc[j] - m).exp() / z } else { 0.0 };
                            assert_close(
                                row[j],
                                want,
                                1e-5,
                                &format!("{s:?} probs[{b},{h},{i},{j}]"),
                            );
                        }
                        let sum: f64 = row.iter().map(|&x| x as f64).sum();
                        assert!(
                            (sum - 1.0).abs() <= 1e-6,
                            "{s:?} row ({b},{h},{i}) sums to {sum}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn composite_forward_matches_chain_with_and_without_dropout() {
        for (n, &s) in SHAPES.iter().enumerate() {
            let (q, k, v, _) = inputs(s, 10 + n);
            for d in [None, key(0.3)] {
                let (want, want_probs) = chain_forward(&q, &k, &v, s, d);
                let mut out = vec![0.0; q.len()];
                let mut probs = vec![0.0; want_probs.len()];
                attention_forward(&mut out, &mut probs, &q, &k, &v, s, d);
                for i in 0..out.len() {
                    assert_close(
                        out[i],
                        want[i] as f64,
                        1e-4,
                        &format!("{s:?} dropout {d:?} out[{i}]"),
                    );
                }
                for i in 0..probs.len() {
                    assert_close(
                        probs[i],
                        want_probs[i] as f64,
                        1e-5,
                        &format!("{s:?} probs[{i}]"),
                    );
                }
            }
        }
    }

    #[test]
    fn step_ops_backward_match_finite_differences() {
        let s = AttnShape {
            b: 3,
            t: 5,
            nh: 2,
            hs: 3,
        };
        let (q, k, v, _) = inputs(s, 77);
        let tt = s.b * s.nh * s.t * s.t;
        let mut r = rng(78);
        let g_tt = randn(&mut r, tt);
        let g_qkv = randn(&mut r, q.len());
        // scores
        let (mut dq, mut dk) = (vec![0.0; q.len()], vec![0.0; k.len()]);
        attention_scores_backward(&mut dq, &mut dk, &g_tt, &q, &k, s);
        let f = |q: &[f32], k: &[f32]| {
            let mut sc = vec![0.0; tt];
            attention_scores_forward(&mut sc, q, k, s);
            dot(&sc, &g_tt)
        };
        grad_check("scores dq", &q, &dq, |x| f(x, &k));
        grad_check("scores dk", &k, &dk, |x| f(&q, x));
        // softmax
        let mut scores = vec![0.0; tt];
        attention_scores_forward(&mut scores, &q, &k, s);
        let mut probs = vec![0.0; tt];
        causal_softmax_forward(&mut probs, &scores, s.b * s.nh, s.t);
        let mut ds = vec![0.0; tt];
        causal_softmax_backward(&mut ds, &g_tt, &probs, s.b * s.nh, s.t);
        // Above the diagonal the score does not matter: its gradient must be exactly zero.
        for (n, &x) in ds.iter().enumerate() {
            if n % s.t > (n / s.t) % s.t {
                assert_eq!(x, 0.0, "masked score gradient {n}");
            }
        }
        grad_check("softmax dscores", &scores, &ds, |x| {
            let mut p = vec![0.0; tt];
            causal_softmax_forward(&mut p, x, s.b * s.nh, s.t);
            dot(&p, &g_tt)
        });
        // values
        let (mut dw, mut dv) = (vec![0.0; tt], vec![0.0; v.len()]);
        attention_values_backward(&mut dw, &mut dv, &g_qkv, &probs, &v, s);
        let f = |w: &[f32], v: &[f32]| {
            let mut o = vec![0.0; q.len()];
            attention_values_forward(&mut o, w, v, s);
            dot(&o, &g_qkv)
        };
        grad_check("values dweights", &probs, &dw, |x| f(x, &v));
        grad_check("values dv", &v, &dv, |x| f(&probs, x));
        // dropout
        let k3 = key(0.4).unwrap();
        let mut dd = vec![0.0; tt];
        dropout_backward(&mut dd, &g_tt, k3, 0);
        grad_check("dropout dinp", &probs, &dd, |x| {
            let mut o = vec![0.0; tt];
            dropout_forward(&mut o, x, k3, 0);
            dot(&o, &g_tt)
        });
    }

    #[test]
    fn composite_backward_matches_finite_differences() {
        for (n, &s) in SHAPES.iter().enumerate() {
            let (q, k, v, dout) = inputs(s, 20 + n);
            for d in [None, key(0.25)] {
                let mut out = vec![0.0; q.len()];
                let mut probs = vec![0.0; s.b * s.nh * s.t * s.t];
                attention_forward(&mut out, &mut probs, &q, &k, &v, s, d);
                let (mut dq, mut dk, mut dv) =
                    (vec![0.0; q.len()], vec![0.0; q.len()], vec![0.0; q.len()]);
                attention_backward(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &probs, s, d);
                let f = |q: &[f32], k: &[f32], v: &[f32]| {
                    let mut o = vec![0.0; q.len()];
                    let mut p = vec![0.0; s.b * s.nh * s.t * s.t];
                    attention_forward(&mut o, &mut p, q, k, v, s, d);
                    dot(&o, &dout)
                };
                grad_check(&format!("{s:?} {d:?} dq"), &q, &dq, |x| f(x, &k, &v));
                grad_check(&format!("{s:?} {d:?} dk"), &k, &dk, |x| f(&q, x, &v));
                grad_check(&format!("{s:?} {d:?} dv"), &v, &dv, |x| f(&q, &k, x));
            }
        }
    }

    #[test]
    fn changing_a_future_token_leaves_earlier_outputs_unchanged() {
        let s = AttnShape {
            b: 2,
            t: 37,
            nh: 2,
            hs: 5,
        };
        let (q, k, v, _) = inputs(s, 5);
        let mut out = vec![0.0; q.len()];
        let mut probs = vec![0.0; s.b * s.nh * s.t * s.t];
        attention_forward(&mut out, &mut probs, &q, &k, &v, s, key(0.2));
        let pos = 20;
        let (mut q2, mut k2, mut v2) = (q.clone(), k.clone(), v.clone());
        for b in 0..s.b {
            for x in [&mut q2, &mut k2, &mut v2] {
                for ch in 0..s.c() {
                    x[(b * s.t + pos) * s.c() + ch] += 3.0;
                }
            }
        }
        let mut out2 = vec![0.0; q.len()];
        attention_forward(&mut out2, &mut probs, &q2, &k2, &v2, s, key(0.2));
        for b in 0..s.b {
            for i in 0..s.t {
                let a = &out[(b * s.t + i) * s.c()..][..s.c()];
                let a2 = &out2[(b * s.t + i) * s.c()..][..s.c()];
                if i < pos {
                    assert_eq!(a, a2, "position {i} changed when position {pos} did");
                } else {
                    assert_ne!(a, a2, "position {i} did not see position {pos}");
                }
            }
        }
    }
}
