//! Causal attention without a T×T tensor, the reference of the fused (flash-style) kernels in
//! kernels/attention_fused.cu and the CPU backend's `--attention fused` path: the same math as
//! `attention::attention_forward` / `attention_backward`, computed row by row with O(T) scratch.
//!
//! Forward, for every row i of head (b, h): s_j = scale · q_i · k_j for j ≤ i, m = max_j s_j,
//! l = Σ_j exp(s_j − m); the row's logsumexp lse_i = m + ln l is saved (B, NH, T) instead of the
//! probabilities, and out_i = Σ_j mult_ij · exp(s_j − m) / l · v_j: dropout AFTER the softmax,
//! the mask (Philox, element index ((b·NH + h)·T + i)·T + j, the step-by-step path's) multiplying
//! the probabilities, which commutes with the per-row normalisation.
//!
//! Backward, with P_ij = exp(s_ij − lse_i) recomputed and D_i = Σ_c dO_ic · O_ic:
//! dP_ij = mult_ij · dO_i · v_j, dS_ij = P_ij (dP_ij − D_i), dq_i += scale Σ_j dS_ij k_j,
//! dk_j += scale Σ_i dS_ij q_i, dv_j += Σ_i P_ij mult_ij dO_i.
//!
//! Dot products and sums are accumulated in f64 (this is an oracle); every backward accumulates.

use super::attention::AttnShape;
use super::check_len;
use crate::philox::DropoutKey;
use rayon::prelude::*;

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// The dropout multipliers of row i (entries 0..=i) of head `bh`, or all 1.
fn row_mask(key: Option<DropoutKey>, bh: usize, t: usize, i: usize, out: &mut [f32]) {
    match key {
        Some(k) => k.fill_mask(((bh * t + i) * t) as u64, &mut out[..=i]),
        None => out[..=i].fill(1.0),
    }
}

fn check(op: &str, s: AttnShape, qkv: &[(&str, usize)], rows: &[(&str, usize)]) {
    for (arg, len) in qkv {
        check_len(op, arg, *len, &[s.b, s.t, s.c()]);
    }
    for (arg, len) in rows {
        check_len(op, arg, *len, &[s.b, s.nh, s.t]);
    }
}

/// The scores s_j (j ≤ i) of row i of head (b, h), into `row[..=i]`.
fn scores(row: &mut [f32], q: &[f32], k: &[f32], s: AttnShape, b: usize, h: usize, i: usize) {
    let (t, c, hs) = (s.t, s.c(), s.hs);
    let qi = &q[(b * t + i) * c + h * hs..][..hs];
    for (j, x) in row[..=i].iter_mut().enumerate() {
        let kj = &k[(b * t + j) * c + h * hs..][..hs];
        *x = dot(qi, kj) as f32 * s.scale();
    }
}

/// out (B, T, C) and lse (B, NH, T) of causal attention with dropout after the softmax.
pub fn fused_attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    dropout: Option<DropoutKey>,
) {
    let op = "fused_attention_forward";
    check(
        op,
        s,
        &[
            ("out", out.len()),
            ("q", q.len()),
            ("k", k.len()),
            ("v", v.len()),
        ],
        &[("lse", lse.len())],
    );
    let (t, c, hs, nh) = (s.t, s.c(), s.hs, s.nh);
    let dropout = dropout.filter(|d| d.p > 0.0);
    // Each (b, h) writes its own lse rows and its own channels of out: computed in parallel
    // into per-head buffers, then placed.
    let heads: Vec<(Vec<f32>, Vec<f32>)> = (0..s.b * nh)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / nh, bh % nh);
            let mut o = vec![0.0f32; t * hs];
            let mut l_out = vec![0.0f32; t];
            let (mut row, mut mask) = (vec![0.0f32; t], vec![0.0f32; t]);
            let mut acc = vec![0.0f64; hs];
            for i in 0..t {
                scores(&mut row, q, k, s, b, h, i);
                let m = row[..=i].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut l = 0.0f64;
                for x in row[..=i].iter_mut() {
                    *x = (*x - m).exp();
                    l += *x as f64;
                }
                l_out[i] = (m as f64 + l.ln()) as f32;
                row_mask(dropout, bh, t, i, &mut mask);
                acc.fill(0.0);
                for j in 0..=i {
                    let w = row[j] as f64 / l * mask[j] as f64;
                    let vj = &v[(b * t + j) * c + h * hs..][..hs];
                    for (a, &x) in acc.iter_mut().zip(vj) {
                        *a += w * x as f64;
                    }
                }
                for (d, a) in o[i * hs..(i + 1) * hs].iter_mut().zip(&acc) {
                    *d = *a as f32;
                }
            }
            (o, l_out)
        })
        .collect();
    for (bh, (o, l)) in heads.into_iter().enumerate() {
        let (b, h) = (bh / nh, bh % nh);
        lse[bh * t..(bh + 1) * t].copy_from_slice(&l);
        for i in 0..t {
            out[(b * t + i) * c + h * hs..][..hs].copy_from_slice(&o[i * hs..(i + 1) * hs]);
        }
    }
}

/// dq, dk, dv (B, T, C) += the gradients of [`fused_attention_forward`] given dout, its output
/// `out` and its `lse`.
#[allow(clippy::too_many_arguments)]
pub fn fused_attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    s: AttnShape,
    dropout: Option<DropoutKey>,
) {
    let op = "fused_attention_backward";
    check(
        op,
        s,
        &[
            ("dq", dq.len()),
            ("dk", dk.len()),
            ("dv", dv.len()),
            ("dout", dout.len()),
            ("q", q.len()),
            ("k", k.len()),
            ("v", v.len()),
            ("out", out.len()),
        ],
        &[("lse", lse.len())],
    );
    let (t, c, hs, nh) = (s.t, s.c(), s.hs, s.nh);
    let dropout = dropout.filter(|d| d.p > 0.0);
    let scale = s.scale() as f64;
    let grads: Vec<[Vec<f64>; 3]> = (0..s.b * nh)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / nh, bh % nh);
            let at = |x: &'_ [f32], r: usize| -> Vec<f32> {
                x[(b * t + r) * c + h * hs..][..hs].to_vec()
            };
            let (mut gq, mut gk, mut gv) = (
                vec![0.0f64; t * hs],
                vec![0.0f64; t * hs],
                vec![0.0f64; t * hs],
            );
            let (mut row, mut mask) = (vec![0.0f32; t], vec![0.0f32; t]);
            for i in 0..t {
                let (qi, doi, oi) = (at(q, i), at(dout, i), at(out, i));
                let d_i = dot(&doi, &oi);
                scores(&mut row, q, k, s, b, h, i);
                row_mask(dropout, bh, t, i, &mut mask);
                let li = lse[bh * t + i] as f64;
                for j in 0..=i {
                    let (kj, vj) = (at(k, j), at(v, j));
                    let p = (row[j] as f64 - li).exp();
                    let mult = mask[j] as f64;
                    let dp = mult * dot(&doi, &vj);
                    let ds = p * (dp - d_i);
                    for d in 0..hs {
                        gq[i * hs + d] += scale * ds * kj[d] as f64;
                        gk[j * hs + d] += scale * ds * qi[d] as f64;
                        gv[j * hs + d] += p * mult * doi[d] as f64;
                    }
                }
            }
            [gq, gk, gv]
        })
        .collect();
    for (bh, [gq, gk, gv]) in grads.into_iter().enumerate() {
        let (b, h) = (bh / nh, bh % nh);
        for i in 0..t {
            let o = (b * t + i) * c + h * hs;
            for d in 0..hs {
                dq[o + d] += gq[i * hs + d] as f32;
                dk[o + d] += gk[i * hs + d] as f32;
                dv[o + d] += gv[i * hs + d] as f32;
            }
        }
    }
}

/// The largest |Σ_j exp(s_ij − lse_i) − 1| over every row, and how many rows exceed `tol`
/// (NaN counts as bad): the fused path's row check, a real check of the logsumexp.
pub fn lse_row_check(q: &[f32], k: &[f32], lse: &[f32], s: AttnShape, tol: f32) -> (f32, usize) {
    check(
        "lse_row_check",
        s,
        &[("q", q.len()), ("k", k.len())],
        &[("lse", lse.len())],
    );
    let (t, nh) = (s.t, s.nh);
    let mut worst = 0.0f32;
    let mut bad = 0;
    let mut row = vec![0.0f32; t];
    for bh in 0..s.b * nh {
        let (b, h) = (bh / nh, bh % nh);
        for i in 0..t {
            scores(&mut row, q, k, s, b, h, i);
            let li = lse[bh * t + i] as f64;
            let sum: f64 = row[..=i].iter().map(|&x| (x as f64 - li).exp()).sum();
            let dev = (sum - 1.0).abs() as f32;
            if dev.is_nan() || dev > tol {
                bad += 1;
            }
            worst = crate::backend::RowCheck::worst(worst, dev);
        }
    }
    (worst, bad)
}

#[cfg(test)]
mod tests {
    use super::super::attention::{attention_backward, attention_forward};
    use super::*;
    use crate::rng::Rng;

    fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// The fused reference against the materialized one (probabilities stored, GEMMs): the same
    /// outputs and gradients to f32 rounding, with and without dropout, at ragged shapes.
    #[test]
    fn fused_reference_matches_the_materialized_reference() {
        for (b, t, nh, hs, p) in [
            (2, 7, 3, 5, 0.0),
            (1, 13, 2, 8, 0.3),
            (3, 1, 1, 4, 0.5),
            (1, 33, 4, 3, 0.1),
        ] {
            let s = AttnShape { b, t, nh, hs };
            let n = b * t * nh * hs;
            let mut rng = Rng::new(7 + t as u64);
            let (q, k, v, dout) = (
                randn(&mut rng, n),
                randn(&mut rng, n),
                randn(&mut rng, n),
                randn(&mut rng, n),
            );
            let key = (p > 0.0).then_some(DropoutKey {
                p,
                seed: 3,
                step: 9,
                tensor: 1,
            });
            let (mut o_m, mut probs) = (vec![0.0; n], vec![0.0; b * nh * t * t]);
            attention_forward(&mut o_m, &mut probs, &q, &k, &v, s, key);
            let (mut o_f, mut lse) = (vec![0.0; n], vec![0.0; b * nh * t]);
            fused_attention_forward(&mut o_f, &mut lse, &q, &k, &v, s, key);
            let close = |what: &str, a: &[f32], b: &[f32], tol: f32| {
                let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (x - y).abs() <= tol * scale,
                        "{what} [{i}]: {x} vs {y} (shape {s:?}, p {p})"
                    );
                }
            };
            close("out", &o_f, &o_m, 1e-5);
            let (worst, bad) = lse_row_check(&q, &k, &lse, s, 1e-5);
            assert!(
                bad == 0 && worst < 1e-5,
                "rows of exp(s - lse) sum to 1: {worst}"
            );
            let (mut gq, mut gk, mut gv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            attention_backward(&mut gq, &mut gk, &mut gv, &dout, &q, &k, &v, &probs, s, key);
            let (mut fq, mut fk, mut fv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            fused_attention_backward(
                &mut fq, &mut fk, &mut fv, &dout, &q, &k, &v, &o_f, &lse, s, key,
            );
            close("dq", &fq, &gq, 1e-4);
            close("dk", &fk, &gk, 1e-4);
            close("dv", &fv, &gv, 1e-4);
        }
    }
}
