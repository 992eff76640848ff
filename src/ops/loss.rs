//! Fused softmax + cross-entropy over the vocabulary. The softmax is never stored: forward
//! writes per-position losses, backward recomputes the row's softmax from the logits.

use super::{check_len, rows_per_task, IGNORE};
use rayon::prelude::*;

/// Log-sum-exp of one row, with the max subtracted for stability; the sum is taken in f64.
fn row_max_and_log_sum(row: &[f32]) -> (f32, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| (x - max).exp() as f64).sum();
    (max, sum.ln())
}

/// losses (N) = −log softmax(logits[n])[targets[n]]; 0 where targets[n] == IGNORE.
pub fn cross_entropy_forward(
    losses: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    n: usize,
    v: usize,
) {
    let op = "cross_entropy_forward";
    check_len(op, "losses", losses.len(), &[n]);
    check_len(op, "logits", logits.len(), &[n, v]);
    check_len(op, "targets", targets.len(), &[n]);
    let rows = rows_per_task(n, v);
    losses
        .par_chunks_mut(rows)
        .zip(logits.par_chunks(rows * v))
        .zip(targets.par_chunks(rows))
        .for_each(|((l, x), t)| {
            for ((l, row), &tg) in l.iter_mut().zip(x.chunks_exact(v)).zip(t) {
                if tg == IGNORE {
                    *l = 0.0;
                    continue;
                }
                assert!(
                    (tg as usize) < v,
                    "{op}: target id {tg} out of range for vocabulary {v}"
                );
                let (max, log_sum) = row_max_and_log_sum(row);
                *l = (log_sum - (row[tg as usize] - max) as f64) as f32;
            }
        });
}

/// dlogits (N, V) += scale · (softmax(logits[n]) − onehot(targets[n])); IGNORE rows get nothing.
/// With scale = 1 / (number of counted targets) this is the gradient of the mean loss.
pub fn cross_entropy_backward(
    dlogits: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    scale: f32,
    n: usize,
    v: usize,
) {
    let op = "cross_entropy_backward";
    check_len(op, "dlogits", dlogits.len(), &[n, v]);
    check_len(op, "logits", logits.len(), &[n, v]);
    check_len(op, "targets", targets.len(), &[n]);
    let rows = rows_per_task(n, v);
    dlogits
        .par_chunks_mut(rows * v)
        .zip(logits.par_chunks(rows * v))
        .zip(targets.par_chunks(rows))
        .for_each(|((d, x), t)| {
            for ((drow, row), &tg) in d.chunks_exact_mut(v).zip(x.chunks_exact(v)).zip(t) {
                if tg == IGNORE {
                    continue;
                }
                let (max, log_sum) = row_max_and_log_sum(row);
                for (j, (dj, &xj)) in drow.iter_mut().zip(row).enumerate() {
                    let p = ((xj - max) as f64 - log_sum).exp() as f32;
                    let y = if j == tg as usize { 1.0 } else { 0.0 };
                    *dj += scale * (p - y);
                }
            }
        });
}

/// (Σ losses over counted positions in f64, number of counted positions).
pub fn loss_sum(losses: &[f32], targets: &[u32]) -> (f64, usize) {
    let mut sum = 0.0f64;
    let mut count = 0;
    for (&l, &t) in losses.iter().zip(targets) {
        if t != IGNORE {
            sum += l as f64;
            count += 1;
        }
    }
    (sum, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    #[test]
    fn cross_entropy_forward_backward_with_ignored_rows() {
        for &(n, v) in &[(1, 1), (1, 5), (3 * 37, 13), (37, 130)] {
            let mut r = rng(n + v);
            let logits: Vec<f32> = randn(&mut r, n * v).iter().map(|x| x * 2.0).collect();
            let targets: Vec<u32> = (0..n)
                .map(|i| {
                    if i % 7 == 3 {
                        IGNORE
                    } else {
                        r.below(v as u64) as u32
                    }
                })
                .collect();
            let mut losses = vec![0.0; n];
            cross_entropy_forward(&mut losses, &logits, &targets, n, v);
            for i in 0..n {
                let row = &logits[i * v..(i + 1) * v];
                let want = if targets[i] == IGNORE {
                    0.0
                } else {
                    let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
                    z.ln() - row[targets[i] as usize] as f64
                };
                assert_close(losses[i], want, 1e-5, &format!("loss[{i}] ({n},{v})"));
            }
            let (_, count) = loss_sum(&losses, &targets);
            let scale = 1.0 / count.max(1) as f32;
            let mut dlogits = vec![0.0; n * v];
            cross_entropy_backward(&mut dlogits, &logits, &targets, scale, n, v);
            grad_check("cross_entropy dlogits", &logits, &dlogits, |x| {
                let mut l = vec![0.0; n];
                cross_entropy_forward(&mut l, x, &targets, n, v);
                loss_sum(&l, &targets).0 * scale as f64
            });
        }
    }
}
