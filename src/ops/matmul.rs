//! Linear layer: out = inp · weightᵀ + bias, with weight stored (OC, IC) as in PyTorch's Linear.

use super::check_len;
use super::gemm::{sgemm, Mat, MatMut};

/// out (N, OC) = inp (N, IC) · weight (OC, IC)ᵀ + bias (OC).
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    ic: usize,
    oc: usize,
) {
    let op = "matmul_forward";
    check_len(op, "out", out.len(), &[n, oc]);
    check_len(op, "inp", inp.len(), &[n, ic]);
    check_len(op, "weight", weight.len(), &[oc, ic]);
    if let Some(b) = bias {
        check_len(op, "bias", b.len(), &[oc]);
        for row in out.chunks_exact_mut(oc) {
            row.copy_from_slice(b);
        }
    }
    sgemm(
        MatMut::rm(out, n, oc),
        Mat::rm(inp, n, ic),
        Mat::rm(weight, oc, ic).t(),
        1.0,
        bias.is_some(),
        true,
    );
}

/// dinp (N, IC) += dout · weight; dweight (OC, IC) += doutᵀ · inp; dbias (OC) += Σ_n dout.
pub fn matmul_backward(
    dinp: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
) {
    let op = "matmul_backward";
    check_len(op, "dout", dout.len(), &[n, oc]);
    check_len(op, "inp", inp.len(), &[n, ic]);
    check_len(op, "weight", weight.len(), &[oc, ic]);
    check_len(op, "dweight", dweight.len(), &[oc, ic]);
    if let Some(dinp) = dinp {
        check_len(op, "dinp", dinp.len(), &[n, ic]);
        sgemm(
            MatMut::rm(dinp, n, ic),
            Mat::rm(dout, n, oc),
            Mat::rm(weight, oc, ic),
            1.0,
            true,
            true,
        );
    }
    sgemm(
        MatMut::rm(dweight, oc, ic),
        Mat::rm(dout, n, oc).t(),
        Mat::rm(inp, n, ic),
        1.0,
        true,
        true,
    );
    if let Some(db) = dbias {
        check_len(op, "dbias", db.len(), &[oc]);
        column_sums_into(db, dout, oc);
    }
}

/// acc (C) += Σ over rows of m (R, C), summed in f64 in row order (deterministic).
pub fn column_sums_into(acc: &mut [f32], m: &[f32], c: usize) {
    let mut sums = vec![0.0f64; c];
    for row in m.chunks_exact(c) {
        for (s, &x) in sums.iter_mut().zip(row) {
            *s += x as f64;
        }
    }
    for (a, s) in acc.iter_mut().zip(sums) {
        *a = (*a as f64 + s) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    #[test]
    fn forward_matches_naive_formula() {
        for &(n, ic, oc) in &[(1, 1, 1), (3 * 37, 13, 29), (70, 45, 33)] {
            let mut r = rng(n + ic);
            let inp = randn(&mut r, n * ic);
            let w = randn(&mut r, oc * ic);
            let b = randn(&mut r, oc);
            let mut out = vec![0.0; n * oc];
            matmul_forward(&mut out, &inp, &w, Some(&b), n, ic, oc);
            for i in 0..n {
                for o in 0..oc {
                    let want: f64 = b[o] as f64
                        + (0..ic)
                            .map(|k| inp[i * ic + k] as f64 * w[o * ic + k] as f64)
                            .sum::<f64>();
                    assert_close(
                        out[i * oc + o],
                        want,
                        1e-4,
                        &format!("({n},{ic},{oc}) out[{i},{o}]"),
                    );
                }
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        for &(n, ic, oc) in &[(1, 1, 1), (3 * 37, 13, 29), (37, 9, 70)] {
            let mut r = rng(3 * n + oc);
            let inp = randn(&mut r, n * ic);
            let w = randn(&mut r, oc * ic);
            let b = randn(&mut r, oc);
            let dout = randn(&mut r, n * oc);
            let (mut dinp, mut dw, mut db) = (vec![0.0; n * ic], vec![0.0; oc * ic], vec![0.0; oc]);
            matmul_backward(
                Some(&mut dinp),
                &mut dw,
                Some(&mut db),
                &dout,
                &inp,
                &w,
                n,
                ic,
                oc,
            );
            let f = |inp: &[f32], w: &[f32], b: &[f32]| {
                let mut out = vec![0.0; n * oc];
                matmul_forward(&mut out, inp, w, Some(b), n, ic, oc);
                dot(&out, &dout)
            };
            grad_check("matmul dinp", &inp, &dinp, |x| f(x, &w, &b));
            grad_check("matmul dweight", &w, &dw, |x| f(&inp, x, &b));
            grad_check("matmul dbias", &b, &db, |x| f(&inp, &w, x));
        }
    }

    #[test]
    #[should_panic(expected = "shape mismatch in matmul_forward: weight expected shape [4, 3]")]
    fn wrong_shape_names_op_and_shapes() {
        let mut out = vec![0.0; 8];
        matmul_forward(&mut out, &[0.0; 6], &[0.0; 10], None, 2, 3, 4);
    }
}
