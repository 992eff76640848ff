//! LSTM layer, gate order (i, f, g, o) as in PyTorch:
//!   a = x W_ihᵀ + h_prev W_hhᵀ + b      i, f, o = σ(a_i, a_f, a_o)   g = tanh(a_g)
//!   c = f ⊙ c_prev + i ⊙ g               h = o ⊙ tanh(c)
//!
//! Sequences are TIME-MAJOR here, x (T, B, E), h and c (T, B, H), gates (T, B, 4H), so each
//! timestep is one contiguous (B, ·) block. Initial h and c are zero for every sequence.
//! `lstm_cell_forward` / `lstm_cell_backward` are the pointwise cell (one CUDA kernel each); the
//! layer functions add the gate GEMMs and backpropagation through time.

use super::gemm::{sgemm, Mat, MatMut};
use super::matmul::column_sums_into;
use super::recurrence::{self, Packed};
use super::{check_len, tanh_fast};
use rayon::prelude::*;

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Pointwise cell for one timestep. gates (B, 4H): pre-activations in, activations out (in
/// place: they are what backward needs). c_prev (B, H) (None = zeros); writes c (B, H), h (B, H).
pub fn lstm_cell_forward(
    gates: &mut [f32],
    c_prev: Option<&[f32]>,
    c: &mut [f32],
    h: &mut [f32],
    b: usize,
    hid: usize,
) {
    let op = "lstm_cell_forward";
    check_len(op, "gates", gates.len(), &[b, 4 * hid]);
    check_len(op, "c", c.len(), &[b, hid]);
    check_len(op, "h", h.len(), &[b, hid]);
    if let Some(cp) = c_prev {
        check_len(op, "c_prev", cp.len(), &[b, hid]);
    }
    for n in 0..b {
        let g = &mut gates[n * 4 * hid..(n + 1) * 4 * hid];
        for j in 0..hid {
            let ig = sigmoid(g[j]);
            let fg = sigmoid(g[hid + j]);
            let gg = tanh_fast(g[2 * hid + j]);
            let og = sigmoid(g[3 * hid + j]);
            g[j] = ig;
            g[hid + j] = fg;
            g[2 * hid + j] = gg;
            g[3 * hid + j] = og;
            let cp = c_prev.map_or(0.0, |cp| cp[n * hid + j]);
            let cv = fg * cp + ig * gg;
            c[n * hid + j] = cv;
            h[n * hid + j] = og * tanh_fast(cv);
        }
    }
}

/// Backward of the cell. dh (B, H) and dc (B, H) are the total gradients reaching h and c of this
/// step (dc is updated in place to become the gradient reaching c_prev). Writes the
/// pre-activation gradients into dgates (B, 4H) (overwrite, not accumulate: it is per-step scratch).
pub fn lstm_cell_backward(
    dgates: &mut [f32],
    dc: &mut [f32],
    dh: &[f32],
    gates: &[f32],
    c: &[f32],
    c_prev: Option<&[f32]>,
    b: usize,
    hid: usize,
) {
    let op = "lstm_cell_backward";
    check_len(op, "dgates", dgates.len(), &[b, 4 * hid]);
    check_len(op, "dc", dc.len(), &[b, hid]);
    check_len(op, "dh", dh.len(), &[b, hid]);
    check_len(op, "gates", gates.len(), &[b, 4 * hid]);
    check_len(op, "c", c.len(), &[b, hid]);
    for n in 0..b {
        let g = &gates[n * 4 * hid..(n + 1) * 4 * hid];
        let dg = &mut dgates[n * 4 * hid..(n + 1) * 4 * hid];
        for j in 0..hid {
            let (ig, fg, gg, og) = (g[j], g[hid + j], g[2 * hid + j], g[3 * hid + j]);
            let tc = tanh_fast(c[n * hid + j]);
            let d_h = dh[n * hid + j];
            let d_c = dc[n * hid + j] + d_h * og * (1.0 - tc * tc);
            let cp = c_prev.map_or(0.0, |cp| cp[n * hid + j]);
            dg[j] = d_c * gg * ig * (1.0 - ig);
            dg[hid + j] = d_c * cp * fg * (1.0 - fg);
            dg[2 * hid + j] = d_c * ig * (1.0 - gg * gg);
            dg[3 * hid + j] = d_h * tc * og * (1.0 - og);
            dc[n * hid + j] = d_c * fg;
        }
    }
}

/// Geometry of an LSTM layer call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LstmShape {
    pub t: usize,
    pub b: usize,
    pub e: usize,
    pub h: usize,
}

/// Forward over the sequence. Writes gates (T,B,4H) (activations), c (T,B,H), h (T,B,H).
pub fn lstm_forward(
    h: &mut [f32],
    c: &mut [f32],
    gates: &mut [f32],
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    bias: &[f32],
    s: LstmShape,
) {
    forward_impl(h, c, gates, x, w_ih, w_hh, bias, s, recurrence::available());
}

/// `lstm_forward` with the path chosen: `vector` = the AVX2 recurrence (only when available).
#[allow(clippy::too_many_arguments)]
fn forward_impl(
    h: &mut [f32],
    c: &mut [f32],
    gates: &mut [f32],
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    bias: &[f32],
    s: LstmShape,
    vector: bool,
) {
    let op = "lstm_forward";
    let LstmShape { t, b, e, h: hid } = s;
    check_len(op, "h", h.len(), &[t, b, hid]);
    check_len(op, "c", c.len(), &[t, b, hid]);
    check_len(op, "gates", gates.len(), &[t, b, 4 * hid]);
    check_len(op, "x", x.len(), &[t, b, e]);
    check_len(op, "w_ih", w_ih.len(), &[4 * hid, e]);
    check_len(op, "w_hh", w_hh.len(), &[4 * hid, hid]);
    check_len(op, "bias", bias.len(), &[4 * hid]);
    // All input projections at once: gates = x W_ihᵀ + bias.
    for row in gates.chunks_exact_mut(4 * hid) {
        row.copy_from_slice(bias);
    }
    sgemm(
        MatMut::rm(gates, t * b, 4 * hid),
        Mat::rm(x, t * b, e),
        Mat::rm(w_ih, 4 * hid, e).t(),
        1.0,
        true,
        true,
    );
    // The recurrence: batch rows are independent sequences, so each thread runs the whole time
    // loop for its own rows, with no synchronisation between timesteps.
    // With AVX2+FMA, W_hhᵀ is packed once here for all T steps (see `recurrence`).
    let packed = (vector && t > 1).then(|| Packed::pack(Mat::rm(w_hh, 4 * hid, hid).t()));
    let cell = if vector {
        recurrence::cell_forward
    } else {
        lstm_cell_forward
    };
    let ranges = row_ranges(b);
    let gp = split_rows(gates, b, 4 * hid, &ranges);
    let cp = split_rows(c, b, hid, &ranges);
    let hp = split_rows(h, b, hid, &ranges);
    gp.into_par_iter()
        .zip(cp)
        .zip(hp)
        .for_each(|((mut g, mut c), mut h)| {
            for step in 0..t {
                let (h_done, h_rest) = h.split_at_mut(step);
                let (c_done, c_rest) = c.split_at_mut(step);
                let n = c_rest[0].len() / hid;
                if step > 0 {
                    match &packed {
                        Some(p) => {
                            recurrence::gemm_acc(g[step], 4 * hid, h_done[step - 1], hid, n, p)
                        }
                        None => sgemm(
                            MatMut::rm(g[step], n, 4 * hid),
                            Mat::rm(h_done[step - 1], n, hid),
                            Mat::rm(w_hh, 4 * hid, hid).t(),
                            1.0,
                            true,
                            false,
                        ),
                    }
                }
                let c_prev = if step > 0 {
                    Some(&*c_done[step - 1])
                } else {
                    None
                };
                cell(g[step], c_prev, c_rest[0], h_rest[0], n, hid);
            }
        });
}

/// Contiguous batch-row ranges, one per thread (at most B of them).
fn row_ranges(b: usize) -> Vec<(usize, usize)> {
    let k = rayon::current_num_threads().clamp(1, b.max(1));
    (0..k).map(|i| (i * b / k, (i + 1) * b / k)).collect()
}

/// Splits a time-major (T, B, w) buffer into, per row range, the list over t of that range's
/// rows at timestep t (disjoint mutable slices, so threads can own them).
fn split_rows<'a>(
    buf: &'a mut [f32],
    b: usize,
    w: usize,
    ranges: &[(usize, usize)],
) -> Vec<Vec<&'a mut [f32]>> {
    let mut parts: Vec<Vec<&'a mut [f32]>> = ranges.iter().map(|_| Vec::new()).collect();
    for block in buf.chunks_exact_mut(b * w) {
        let mut rest = block;
        for (k, &(r0, r1)) in ranges.iter().enumerate() {
            let (mine, tail) = rest.split_at_mut((r1 - r0) * w);
            parts[k].push(mine);
            rest = tail;
        }
    }
    parts
}

/// Backward through time. dh (T,B,H): gradient from above (consumed: used as scratch).
/// dgates (T,B,4H): scratch for pre-activation gradients. Accumulates into dx, dw_ih, dw_hh, dbias.
pub fn lstm_backward(
    dx: Option<&mut [f32]>,
    dw_ih: &mut [f32],
    dw_hh: &mut [f32],
    dbias: &mut [f32],
    dgates: &mut [f32],
    dh: &mut [f32],
    h: &[f32],
    c: &[f32],
    gates: &[f32],
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    s: LstmShape,
) {
    let v = recurrence::available();
    backward_impl(
        dx, dw_ih, dw_hh, dbias, dgates, dh, h, c, gates, x, w_ih, w_hh, s, v,
    );
}

/// `lstm_backward` with the path chosen, as `forward_impl`.
#[allow(clippy::too_many_arguments)]
fn backward_impl(
    dx: Option<&mut [f32]>,
    dw_ih: &mut [f32],
    dw_hh: &mut [f32],
    dbias: &mut [f32],
    dgates: &mut [f32],
    dh: &mut [f32],
    h: &[f32],
    c: &[f32],
    gates: &[f32],
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    s: LstmShape,
    vector: bool,
) {
    let op = "lstm_backward";
    let LstmShape { t, b, e, h: hid } = s;
    check_len(op, "dw_ih", dw_ih.len(), &[4 * hid, e]);
    check_len(op, "dw_hh", dw_hh.len(), &[4 * hid, hid]);
    check_len(op, "dbias", dbias.len(), &[4 * hid]);
    check_len(op, "dgates", dgates.len(), &[t, b, 4 * hid]);
    check_len(op, "dh", dh.len(), &[t, b, hid]);
    check_len(op, "h", h.len(), &[t, b, hid]);
    check_len(op, "c", c.len(), &[t, b, hid]);
    check_len(op, "gates", gates.len(), &[t, b, 4 * hid]);
    check_len(op, "x", x.len(), &[t, b, e]);
    check_len(op, "w_ih", w_ih.len(), &[4 * hid, e]);
    check_len(op, "w_hh", w_hh.len(), &[4 * hid, hid]);
    let (bh, bg) = (b * hid, b * 4 * hid);
    // The recurrence per thread-owned batch rows, as in the forward.
    let packed = (vector && t > 1).then(|| Packed::pack(Mat::rm(w_hh, 4 * hid, hid)));
    let cell = if vector {
        recurrence::cell_backward
    } else {
        lstm_cell_backward
    };
    let ranges = row_ranges(b);
    let dgp = split_rows(dgates, b, 4 * hid, &ranges);
    let dhp = split_rows(dh, b, hid, &ranges);
    dgp.into_par_iter()
        .zip(dhp)
        .zip(ranges.par_iter())
        .for_each(|((mut dg, mut dhr), &(r0, r1))| {
            let n = r1 - r0;
            let mut dc = vec![0.0f32; n * hid];
            for step in (0..t).rev() {
                let (g0, g1) = ((step * b + r0) * 4 * hid, (step * b + r1) * 4 * hid);
                let (c0, c1) = ((step * b + r0) * hid, (step * b + r1) * hid);
                let c_prev = if step > 0 {
                    Some(&c[c0 - bh..c1 - bh])
                } else {
                    None
                };
                let (dh_before, dh_rest) = dhr.split_at_mut(step);
                cell(
                    dg[step],
                    &mut dc,
                    dh_rest[0],
                    &gates[g0..g1],
                    &c[c0..c1],
                    c_prev,
                    n,
                    hid,
                );
                if step > 0 {
                    // dh_{t-1} += dgates_t · W_hh
                    match &packed {
                        Some(p) => {
                            recurrence::gemm_acc(dh_before[step - 1], hid, dg[step], 4 * hid, n, p)
                        }
                        None => sgemm(
                            MatMut::rm(dh_before[step - 1], n, hid),
                            Mat::rm(dg[step], n, 4 * hid),
                            Mat::rm(w_hh, 4 * hid, hid),
                            1.0,
                            true,
                            false,
                        ),
                    }
                }
            }
        });
    // Weight gradients as three big GEMMs over all timesteps.
    if t > 1 {
        sgemm(
            MatMut::rm(dw_hh, 4 * hid, hid),
            Mat::rm(&dgates[bg..], (t - 1) * b, 4 * hid).t(),
            Mat::rm(&h[..(t - 1) * bh], (t - 1) * b, hid),
            1.0,
            true,
            true,
        );
    }
    sgemm(
        MatMut::rm(dw_ih, 4 * hid, e),
        Mat::rm(dgates, t * b, 4 * hid).t(),
        Mat::rm(x, t * b, e),
        1.0,
        true,
        true,
    );
    column_sums_into(dbias, dgates, 4 * hid);
    if let Some(dx) = dx {
        check_len(op, "dx", dx.len(), &[t, b, e]);
        sgemm(
            MatMut::rm(dx, t * b, e),
            Mat::rm(dgates, t * b, 4 * hid),
            Mat::rm(w_ih, 4 * hid, e),
            1.0,
            true,
            true,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    /// A direct per-element formula in f64, the forward's oracle.
    fn naive_forward(
        x: &[f32],
        w_ih: &[f32],
        w_hh: &[f32],
        bias: &[f32],
        s: LstmShape,
    ) -> Vec<f64> {
        let LstmShape { t, b, e, h } = s;
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut hs = vec![0.0f64; t * b * h];
        let mut cs = vec![0.0f64; b * h];
        let mut hp = vec![0.0f64; b * h];
        for step in 0..t {
            for n in 0..b {
                let mut a = vec![0.0f64; 4 * h];
                for r in 0..4 * h {
                    a[r] = bias[r] as f64
                        + (0..e)
                            .map(|k| w_ih[r * e + k] as f64 * x[(step * b + n) * e + k] as f64)
                            .sum::<f64>()
                        + (0..h)
                            .map(|k| w_hh[r * h + k] as f64 * hp[n * h + k])
                            .sum::<f64>();
                }
                for j in 0..h {
                    let c = sig(a[h + j]) * cs[n * h + j] + sig(a[j]) * a[2 * h + j].tanh();
                    cs[n * h + j] = c;
                    hs[(step * b + n) * h + j] = sig(a[3 * h + j]) * c.tanh();
                }
            }
            hp.copy_from_slice(&hs[step * b * h..(step + 1) * b * h]);
        }
        hs
    }

    fn run(
        x: &[f32],
        w_ih: &[f32],
        w_hh: &[f32],
        bias: &[f32],
        s: LstmShape,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (mut h, mut c, mut g) = (
            vec![0.0; s.t * s.b * s.h],
            vec![0.0; s.t * s.b * s.h],
            vec![0.0; s.t * s.b * 4 * s.h],
        );
        lstm_forward(&mut h, &mut c, &mut g, x, w_ih, w_hh, bias, s);
        (h, c, g)
    }

    const SHAPES: [LstmShape; 3] = [
        LstmShape {
            t: 1,
            b: 1,
            e: 1,
            h: 1,
        },
        LstmShape {
            t: 37,
            b: 3,
            e: 5,
            h: 7,
        },
        LstmShape {
            t: 6,
            b: 2,
            e: 9,
            h: 13,
        },
    ];

    fn params(s: LstmShape, seed: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut r = rng(seed);
        let sc = 1.0 / (s.h as f32).sqrt();
        let scaled =
            |r: &mut crate::rng::Rng, n| randn(r, n).iter().map(|v| v * sc).collect::<Vec<f32>>();
        (
            randn(&mut r, s.t * s.b * s.e),
            scaled(&mut r, 4 * s.h * s.e),
            scaled(&mut r, 4 * s.h * s.h),
            scaled(&mut r, 4 * s.h),
        )
    }

    #[test]
    fn forward_matches_naive_formula() {
        for (i, &s) in SHAPES.iter().enumerate() {
            let (x, w_ih, w_hh, bias) = params(s, i);
            let (h, _, _) = run(&x, &w_ih, &w_hh, &bias, s);
            let want = naive_forward(&x, &w_ih, &w_hh, &bias, s);
            for n in 0..h.len() {
                assert_close(h[n], want[n], 1e-5, &format!("{s:?} h[{n}]"));
            }
        }
    }

    #[test]
    fn backward_through_time_matches_finite_differences() {
        for (i, &s) in SHAPES.iter().enumerate() {
            let (x, w_ih, w_hh, bias) = params(s, 10 + i);
            let mut r = rng(20 + i);
            let dout = randn(&mut r, s.t * s.b * s.h);
            let (h, c, g) = run(&x, &w_ih, &w_hh, &bias, s);
            let (mut dx, mut dwi, mut dwh, mut db) = (
                vec![0.0; x.len()],
                vec![0.0; w_ih.len()],
                vec![0.0; w_hh.len()],
                vec![0.0; bias.len()],
            );
            let mut dgates = vec![0.0; g.len()];
            let mut dh = dout.clone();
            lstm_backward(
                Some(&mut dx),
                &mut dwi,
                &mut dwh,
                &mut db,
                &mut dgates,
                &mut dh,
                &h,
                &c,
                &g,
                &x,
                &w_ih,
                &w_hh,
                s,
            );
            let f =
                |x: &[f32], wi: &[f32], wh: &[f32], b: &[f32]| dot(&run(x, wi, wh, b, s).0, &dout);
            grad_check(&format!("{s:?} lstm dx"), &x, &dx, |v| {
                f(v, &w_ih, &w_hh, &bias)
            });
            grad_check(&format!("{s:?} lstm dw_ih"), &w_ih, &dwi, |v| {
                f(&x, v, &w_hh, &bias)
            });
            grad_check(&format!("{s:?} lstm dw_hh"), &w_hh, &dwh, |v| {
                f(&x, &w_ih, v, &bias)
            });
            grad_check(&format!("{s:?} lstm dbias"), &bias, &db, |v| {
                f(&x, &w_ih, &w_hh, v)
            });
        }
    }

    #[test]
    fn cell_backward_matches_finite_differences() {
        let (b, hid) = (3, 5);
        let mut r = rng(31);
        let pre = randn(&mut r, b * 4 * hid);
        let c_prev = randn(&mut r, b * hid);
        let (wh, wc) = (randn(&mut r, b * hid), randn(&mut r, b * hid));
        let f = |pre: &[f32], cp: &[f32]| {
            let mut g = pre.to_vec();
            let (mut c, mut h) = (vec![0.0; b * hid], vec![0.0; b * hid]);
            lstm_cell_forward(&mut g, Some(cp), &mut c, &mut h, b, hid);
            dot(&h, &wh) + dot(&c, &wc)
        };
        let mut g = pre.clone();
        let (mut c, mut h) = (vec![0.0; b * hid], vec![0.0; b * hid]);
        lstm_cell_forward(&mut g, Some(&c_prev), &mut c, &mut h, b, hid);
        let mut dgates = vec![0.0; b * 4 * hid];
        let mut dc = wc.clone();
        lstm_cell_backward(&mut dgates, &mut dc, &wh, &g, &c, Some(&c_prev), b, hid);
        grad_check("cell dgates", &pre, &dgates, |v| f(v, &c_prev));
        grad_check("cell dc_prev", &c_prev, &dc, |v| f(&pre, v));
    }

    #[test]
    fn changing_a_future_input_leaves_earlier_outputs_unchanged() {
        let s = LstmShape {
            t: 37,
            b: 3,
            e: 5,
            h: 7,
        };
        let (x, w_ih, w_hh, bias) = params(s, 40);
        let (h, _, _) = run(&x, &w_ih, &w_hh, &bias, s);
        let mut x2 = x.clone();
        let pos = 20;
        for v in &mut x2[pos * s.b * s.e..(pos + 1) * s.b * s.e] {
            *v += 2.0;
        }
        let (h2, _, _) = run(&x2, &w_ih, &w_hh, &bias, s);
        let cut = pos * s.b * s.h;
        assert_eq!(h[..cut], h2[..cut], "outputs before step {pos} changed");
        assert_ne!(h[cut..], h2[cut..]);
    }

    /// Forward and backward through `*_impl`; returns every output, flattened in a fixed order.
    fn both_directions(s: LstmShape, seed: usize, vector: bool) -> Vec<Vec<f32>> {
        let (x, w_ih, w_hh, bias) = params(s, seed);
        let dout = randn(&mut rng(seed + 1), s.t * s.b * s.h);
        let (mut h, mut c, mut g) = (
            vec![0.0; s.t * s.b * s.h],
            vec![0.0; s.t * s.b * s.h],
            vec![0.0; s.t * s.b * 4 * s.h],
        );
        forward_impl(&mut h, &mut c, &mut g, &x, &w_ih, &w_hh, &bias, s, vector);
        let (mut dx, mut dwi, mut dwh, mut db) = (
            vec![0.0; x.len()],
            vec![0.0; w_ih.len()],
            vec![0.0; w_hh.len()],
            vec![0.0; bias.len()],
        );
        let (mut dgates, mut dh) = (vec![0.0; g.len()], dout);
        backward_impl(
            Some(&mut dx),
            &mut dwi,
            &mut dwh,
            &mut db,
            &mut dgates,
            &mut dh,
            &h,
            &c,
            &g,
            &x,
            &w_ih,
            &w_hh,
            s,
            vector,
        );
        vec![h, c, g, dx, dwi, dwh, db]
    }

    /// Shapes for the path tests: ragged rows per thread and per 6-row tile, 4H across several
    /// 16-column panels with a partial last one, and (h 70) the backward's k = 280 in two
    /// 256-deep passes.
    const PATH_SHAPES: [LstmShape; 3] = [
        LstmShape {
            t: 5,
            b: 7,
            e: 3,
            h: 70,
        },
        LstmShape {
            t: 9,
            b: 13,
            e: 4,
            h: 19,
        },
        LstmShape {
            t: 2,
            b: 1,
            e: 2,
            h: 3,
        },
    ];

    #[test]
    fn vector_and_scalar_recurrences_agree() {
        if !recurrence::available() {
            eprintln!("no AVX2+FMA: only the scalar recurrence runs on this machine");
            return;
        }
        let names = ["h", "c", "gates", "dx", "dw_ih", "dw_hh", "dbias"];
        for (i, &s) in PATH_SHAPES.iter().enumerate() {
            let scalar = both_directions(s, 50 + i, false);
            let vector = both_directions(s, 50 + i, true);
            for ((a, b), name) in scalar.iter().zip(&vector).zip(names) {
                let big = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (n, (p, q)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (p - q).abs() <= 2e-5 * big,
                        "{s:?} {name}[{n}]: scalar {p}, vector {q}"
                    );
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        for vector in [false, recurrence::available()] {
            for (i, &s) in PATH_SHAPES.iter().enumerate() {
                let one = pool(1).install(|| both_directions(s, 60 + i, vector));
                let three = pool(3).install(|| both_directions(s, 60 + i, vector));
                for (a, b) in one.iter().zip(&three) {
                    let (a, b): (Vec<u32>, Vec<u32>) = (
                        a.iter().map(|v| v.to_bits()).collect(),
                        b.iter().map(|v| v.to_bits()).collect(),
                    );
                    assert!(a == b, "{s:?} vector={vector}: 1 and 3 threads differ");
                }
            }
        }
    }
}
