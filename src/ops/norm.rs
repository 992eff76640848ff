//! Layernorm, GELU and the residual add.

use super::{check_len, rows_per_task, tanh_fast};
use rayon::prelude::*;

pub const LAYERNORM_EPS: f32 = 1e-5;

/// out (N, C) = (inp - mean) * rstd * weight + bias per row; saves mean (N) and rstd (N).
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    n: usize,
    c: usize,
) {
    let op = "layernorm_forward";
    check_len(op, "out", out.len(), &[n, c]);
    check_len(op, "mean", mean.len(), &[n]);
    check_len(op, "rstd", rstd.len(), &[n]);
    check_len(op, "inp", inp.len(), &[n, c]);
    check_len(op, "weight", weight.len(), &[c]);
    check_len(op, "bias", bias.len(), &[c]);
    let rows = rows_per_task(n, c);
    out.par_chunks_mut(rows * c)
        .zip(mean.par_chunks_mut(rows))
        .zip(rstd.par_chunks_mut(rows))
        .zip(inp.par_chunks(rows * c))
        .for_each(|(((out, mean), rstd), inp)| {
            for (((o, m), r), x) in out
                .chunks_exact_mut(c)
                .zip(mean.iter_mut())
                .zip(rstd.iter_mut())
                .zip(inp.chunks_exact(c))
            {
                let mu = x.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                let var = x.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / c as f64;
                let rs = 1.0 / (var + LAYERNORM_EPS as f64).sqrt();
                let (mu, rs) = (mu as f32, rs as f32);
                for i in 0..c {
                    o[i] = (x[i] - mu) * rs * weight[i] + bias[i];
                }
                *m = mu;
                *r = rs;
            }
        });
}

/// Backward of layernorm: dinp += …, dweight += Σ_n dout·x̂, dbias += Σ_n dout.
pub fn layernorm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    let op = "layernorm_backward";
    check_len(op, "dinp", dinp.len(), &[n, c]);
    check_len(op, "dweight", dweight.len(), &[c]);
    check_len(op, "dbias", dbias.len(), &[c]);
    check_len(op, "dout", dout.len(), &[n, c]);
    check_len(op, "inp", inp.len(), &[n, c]);
    check_len(op, "weight", weight.len(), &[c]);
    check_len(op, "mean", mean.len(), &[n]);
    check_len(op, "rstd", rstd.len(), &[n]);
    let rows = rows_per_task(n, c);
    // dinp rows are independent: parallel. Parameter gradients are reduced over rows in a fixed
    // order (per-task partial sums in f64, then tasks in index order) so results are deterministic.
    let partials: Vec<(Vec<f64>, Vec<f64>)> = dinp
        .par_chunks_mut(rows * c)
        .zip(dout.par_chunks(rows * c))
        .zip(inp.par_chunks(rows * c))
        .zip(mean.par_chunks(rows))
        .zip(rstd.par_chunks(rows))
        .map(|((((dinp, dout), inp), mean), rstd)| {
            let mut dw = vec![0.0f64; c];
            let mut db = vec![0.0f64; c];
            for ((((di, d), x), &mu), &rs) in dinp
                .chunks_exact_mut(c)
                .zip(dout.chunks_exact(c))
                .zip(inp.chunks_exact(c))
                .zip(mean)
                .zip(rstd)
            {
                // x̂ = (x - mu) rs; dx̂ = dout * w; dx = rs (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂))
                let mut sum_dxh = 0.0f64;
                let mut sum_dxh_xh = 0.0f64;
                for i in 0..c {
                    let xh = (x[i] - mu) * rs;
                    let dxh = d[i] * weight[i];
                    sum_dxh += dxh as f64;
                    sum_dxh_xh += (dxh * xh) as f64;
                    dw[i] += (d[i] * xh) as f64;
                    db[i] += d[i] as f64;
                }
                let m1 = (sum_dxh / c as f64) as f32;
                let m2 = (sum_dxh_xh / c as f64) as f32;
                for i in 0..c {
                    let xh = (x[i] - mu) * rs;
                    di[i] += rs * (d[i] * weight[i] - m1 - xh * m2);
                }
            }
            (dw, db)
        })
        .collect();
    let mut dw = vec![0.0f64; c];
    let mut db = vec![0.0f64; c];
    for (pw, pb) in partials {
        for i in 0..c {
            dw[i] += pw[i];
            db[i] += pb[i];
        }
    }
    for i in 0..c {
        dweight[i] = (dweight[i] as f64 + dw[i]) as f32;
        dbias[i] = (dbias[i] as f64 + db[i]) as f32;
    }
}

const GELU_K: f32 = 0.797_884_6; // sqrt(2/pi)

/// GELU, tanh approximation (GPT-2's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³))).
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh_fast(GELU_K * (x + 0.044715 * x * x * x)))
}

/// d gelu(x) / dx.
#[inline]
pub fn gelu_grad(x: f32) -> f32 {
    let u = GELU_K * (x + 0.044715 * x * x * x);
    let t = tanh_fast(u);
    let du = GELU_K * (1.0 + 3.0 * 0.044715 * x * x);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
}

/// out (N) = gelu(inp (N)).
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    check_len("gelu_forward", "out", out.len(), &[inp.len()]);
    out.par_chunks_mut(16 * 1024)
        .zip(inp.par_chunks(16 * 1024))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = gelu(x);
            }
        });
}

/// dinp (N) += gelu'(inp) · dout.
pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    check_len("gelu_backward", "dinp", dinp.len(), &[inp.len()]);
    check_len("gelu_backward", "dout", dout.len(), &[inp.len()]);
    dinp.par_chunks_mut(16 * 1024)
        .zip(inp.par_chunks(16 * 1024))
        .zip(dout.par_chunks(16 * 1024))
        .for_each(|((d, x), g)| {
            for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                *d += gelu_grad(x) * g;
            }
        });
}

/// out = a + b (the residual connection). Its backward is `accumulate` into both inputs' grads.
pub fn add_forward(out: &mut [f32], a: &[f32], b: &[f32]) {
    check_len("add_forward", "a", a.len(), &[out.len()]);
    check_len("add_forward", "b", b.len(), &[out.len()]);
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// dst += src.
pub fn accumulate(dst: &mut [f32], src: &[f32]) {
    check_len("accumulate", "src", src.len(), &[dst.len()]);
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    fn ln_naive(x: &[f32], w: &[f32], b: &[f32], c: usize) -> Vec<f64> {
        let mut out = vec![];
        for row in x.chunks(c) {
            let mu: f64 = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let var: f64 = row.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / c as f64;
            for i in 0..c {
                out.push((row[i] as f64 - mu) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64);
            }
        }
        out
    }

    #[test]
    fn layernorm_forward_and_backward() {
        for &(n, c) in &[(1, 1), (1, 7), (3 * 37, 13), (37, 130)] {
            let mut r = rng(n * c);
            let x = randn(&mut r, n * c);
            let w = randn(&mut r, c);
            let b = randn(&mut r, c);
            let dout = randn(&mut r, n * c);
            let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, &b, n, c);
            let want = ln_naive(&x, &w, &b, c);
            for i in 0..n * c {
                assert_close(
                    out[i],
                    want[i],
                    1e-4,
                    &format!("layernorm ({n},{c}) out[{i}]"),
                );
            }
            if c == 1 {
                continue; // a one-element row normalises to 0: its input gradient is identically 0
            }
            let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
            layernorm_backward(&mut dx, &mut dw, &mut db, &dout, &x, &w, &mean, &rstd, n, c);
            let f = |x: &[f32], w: &[f32], b: &[f32]| {
                let (mut o, mut m, mut s) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
                layernorm_forward(&mut o, &mut m, &mut s, x, w, b, n, c);
                dot(&o, &dout)
            };
            grad_check("layernorm dinp", &x, &dx, |v| f(v, &w, &b));
            grad_check("layernorm dweight", &w, &dw, |v| f(&x, v, &b));
            grad_check("layernorm dbias", &b, &db, |v| f(&x, &w, v));
        }
    }

    #[test]
    fn gelu_forward_and_backward() {
        let mut r = rng(9);
        let x: Vec<f32> = randn(&mut r, 3 * 37 * 5).iter().map(|v| v * 3.0).collect();
        let mut out = vec![0.0; x.len()];
        gelu_forward(&mut out, &x);
        for (i, &v) in x.iter().enumerate() {
            let v = v as f64;
            let want = 0.5
                * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh());
            assert_close(out[i], want, 1e-6, "gelu");
        }
        let dout = randn(&mut r, x.len());
        let mut dx = vec![0.0; x.len()];
        gelu_backward(&mut dx, &x, &dout);
        grad_check("gelu dinp", &x, &dx, |v| {
            let mut o = vec![0.0; v.len()];
            gelu_forward(&mut o, v);
            dot(&o, &dout)
        });
    }

    #[test]
    fn residual_add_and_accumulate() {
        let mut out = vec![0.0; 3];
        add_forward(&mut out, &[1.0, 2.0, 3.0], &[0.5, -2.0, 1.0]);
        assert_eq!(out, vec![1.5, 0.0, 4.0]);
        accumulate(&mut out, &[1.0, 1.0, 1.0]);
        assert_eq!(out, vec![2.5, 1.0, 5.0]);
    }
}
