//! The CPU LSTM recurrence's hot loops, for x86-64 with AVX2 and FMA (detected at run time).
//!
//! Each timestep of an LSTM layer multiplies a few batch rows by the same recurrent weight matrix
//! (h·W_hhᵀ forward, dgates·W_hh backward). A general GEMM repacks that matrix on every call,
//! 128 times per layer per direction; here it is packed once per layer call into 16-column
//! panels ([`Packed`]) and a register-blocked micro-kernel (up to 6 rows x 16 columns, twelve
//! AVX accumulators) streams them. The pointwise cell runs eight hidden units per instruction
//! with a vector exp ([`exp8`]).
//!
//! Arithmetic and determinism: every output element is one chain of fused multiply-adds over k in
//! increasing order, starting from the value already in C; blocking over k stores and reloads
//! the accumulator, which changes no bits. So a row's result does not depend on how rows are
//! grouped or split across threads. Without AVX2+FMA (or off x86-64) [`available`] is false and
//! the callers use the general GEMM and the scalar cell (`super::lstm`).

use super::gemm::Mat;

/// 8-lane vectors per panel row.
const NV: usize = 2;
/// Columns per packed panel.
const NR: usize = 8 * NV;
/// Rows per micro-kernel call: 6 x 2 = 12 accumulators, plus 2 panel vectors and a broadcast,
/// of the 16 ymm registers. (4 x 3 needs all 16 and LLVM then spills an accumulator in the
/// inner loop: measured 25% slower.)
const MR: usize = 6;
/// k extent per pass: a 6 x 256 block of A and a 256 x 16 panel chunk (16 KiB) stay in L1.
const KC: usize = 256;

/// Whether this machine runs the vector paths (AVX2 and FMA on x86-64).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A (k x n) right-hand matrix packed into ceil(n/16) panels, each k rows of 16 contiguous
/// columns (zero-padded past n).
pub struct Packed {
    k: usize,
    n: usize,
    panels: Vec<f32>,
}

impl Packed {
    /// Packs any strided view (the transpose of W_hh costs the same as W_hh).
    pub fn pack(b: Mat) -> Packed {
        let (k, n) = (b.rows, b.cols);
        let np = n.div_ceil(NR);
        let mut panels = vec![0.0f32; np * k * NR];
        for p in 0..np {
            let panel = &mut panels[p * k * NR..(p + 1) * k * NR];
            for kk in 0..k {
                for c in 0..NR.min(n - p * NR) {
                    panel[kk * NR + c] = b.data[b.offset + kk * b.rs + (p * NR + c) * b.cs];
                }
            }
        }
        Packed { k, n, panels }
    }
}

/// c (m x n, row stride ldc) += a (m x k, row stride lda) · B, B packed.
/// Panics if the slices are too short for the shapes or if the machine lacks AVX2+FMA.
pub fn gemm_acc(c: &mut [f32], ldc: usize, a: &[f32], lda: usize, m: usize, b: &Packed) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(
        ldc >= n && lda >= k,
        "gemm_acc: strides {ldc}, {lda} for k {k}, n {n}"
    );
    assert!(
        c.len() >= (m - 1) * ldc + n && a.len() >= (m - 1) * lda + k,
        "gemm_acc: ({m}x{k})·({k}x{n}) does not fit slices of {} and {}",
        a.len(),
        c.len()
    );
    assert!(
        available(),
        "gemm_acc needs AVX2 and FMA; check recurrence::available()"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (asserted); the asserts above bound every access.
    unsafe {
        avx::gemm_acc(c, ldc, a, lda, m, b)
    }
}

/// Vector forward cell over one timestep, same contract as `super::lstm::lstm_cell_forward`.
pub fn cell_forward(
    gates: &mut [f32],
    c_prev: Option<&[f32]>,
    c: &mut [f32],
    h: &mut [f32],
    b: usize,
    hid: usize,
) {
    assert!(gates.len() == b * 4 * hid && c.len() == b * hid && h.len() == b * hid);
    assert!(c_prev.is_none_or(|cp| cp.len() == b * hid));
    assert!(available(), "cell_forward needs AVX2 and FMA");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: features asserted; lengths asserted above.
    unsafe {
        avx::cell_forward(gates, c_prev, c, h, b, hid)
    }
}

/// Vector backward cell over one timestep, same contract as `super::lstm::lstm_cell_backward`.
#[allow(clippy::too_many_arguments)]
pub fn cell_backward(
    dgates: &mut [f32],
    dc: &mut [f32],
    dh: &[f32],
    gates: &[f32],
    c: &[f32],
    c_prev: Option<&[f32]>,
    b: usize,
    hid: usize,
) {
    assert!(dgates.len() == b * 4 * hid && gates.len() == b * 4 * hid);
    assert!(dc.len() == b * hid && dh.len() == b * hid && c.len() == b * hid);
    assert!(c_prev.is_none_or(|cp| cp.len() == b * hid));
    assert!(available(), "cell_backward needs AVX2 and FMA");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: features asserted; lengths asserted above.
    unsafe {
        avx::cell_backward(dgates, dc, dh, gates, c, c_prev, b, hid)
    }
}

/// e^x for eight lanes (exposed for its accuracy test). Panics without AVX2+FMA.
pub fn exp8(x: [f32; 8]) -> [f32; 8] {
    assert!(available(), "exp8 needs AVX2 and FMA");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: features asserted.
    unsafe {
        avx::exp8_array(x)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!()
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{Packed, KC, MR, NR, NV};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm_acc(c: &mut [f32], ldc: usize, a: &[f32], lda: usize, m: usize, b: &Packed) {
        let (k, n) = (b.k, b.n);
        let (cp, ap) = (c.as_mut_ptr(), a.as_ptr());
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for p in 0..n.div_ceil(NR) {
                let panel = b.panels.as_ptr().add(p * k * NR + k0 * NR);
                let cols = NR.min(n - p * NR);
                let mut i = 0;
                while i < m {
                    let rows = MR.min(m - i);
                    let (ci, ai) = (cp.add(i * ldc + p * NR), ap.add(i * lda + k0));
                    match rows {
                        6 => tile::<6>(ci, ldc, ai, lda, panel, kc, cols),
                        5 => tile::<5>(ci, ldc, ai, lda, panel, kc, cols),
                        4 => tile::<4>(ci, ldc, ai, lda, panel, kc, cols),
                        3 => tile::<3>(ci, ldc, ai, lda, panel, kc, cols),
                        2 => tile::<2>(ci, ldc, ai, lda, panel, kc, cols),
                        _ => tile::<1>(ci, ldc, ai, lda, panel, kc, cols),
                    }
                    i += rows;
                }
            }
        }
    }

    /// R rows x NR columns of C += A · panel over kc values of k. `cols` < NR at the last panel:
    /// only those columns of C are read and written (through a stack copy).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const R: usize>(
        c: *mut f32,
        ldc: usize,
        a: *const f32,
        lda: usize,
        panel: *const f32,
        kc: usize,
        cols: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); NV]; R];
        let mut edge = [[0.0f32; NR]; R];
        for r in 0..R {
            let mut row = c.add(r * ldc) as *const f32;
            if cols < NR {
                std::ptr::copy_nonoverlapping(row, edge[r].as_mut_ptr(), cols);
                row = edge[r].as_ptr();
            }
            for (v, x) in acc[r].iter_mut().enumerate() {
                *x = _mm256_loadu_ps(row.add(8 * v));
            }
        }
        let rows: [*const f32; R] = std::array::from_fn(|r| a.add(r * lda));
        for kk in 0..kc {
            let bv: [__m256; NV] =
                std::array::from_fn(|v| _mm256_loadu_ps(panel.add(kk * NR + 8 * v)));
            for r in 0..R {
                let av = _mm256_broadcast_ss(&*rows[r].add(kk));
                for v in 0..NV {
                    acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
                }
            }
        }
        for r in 0..R {
            let row = if cols < NR {
                edge[r].as_mut_ptr()
            } else {
                c.add(r * ldc)
            };
            for (v, x) in acc[r].iter().enumerate() {
                _mm256_storeu_ps(row.add(8 * v), *x);
            }
            if cols < NR {
                std::ptr::copy_nonoverlapping(row, c.add(r * ldc), cols);
            }
        }
    }

    /// e^x: x clamped to [-87.3, 88.3] (the result stays a normal float; NaN passes through),
    /// x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two for an exact reduction), e^r by its
    /// degree-7 Taylor polynomial (truncation < 6e-9 relative), times 2^n built in the exponent
    /// field. About 2 ulp.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(
            _mm256_set1_ps(-87.3),
            _mm256_min_ps(_mm256_set1_ps(88.3), x),
        );
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // ln2 = 355/512 (9 significant bits, so n·hi is exact) − 2.121944400546906e-4.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(355.0 / 512.0), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.0 / 5040.0);
        for coef in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(coef));
        }
        let bits = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp8_array(x: [f32; 8]) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), exp(_mm256_loadu_ps(x.as_ptr())));
        out
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn sigmoid(x: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        _mm256_div_ps(
            one,
            _mm256_add_ps(one, exp(_mm256_sub_ps(_mm256_setzero_ps(), x))),
        )
    }

    /// 1 − 2 / (e^{2u} + 1), as `super::super::tanh_fast`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tanh(u: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        let e = exp(_mm256_add_ps(u, u));
        _mm256_sub_ps(
            one,
            _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)),
        )
    }

    /// Loads `lanes` floats at p (zero-filled past them: a partial last group of hidden units
    /// goes through stack copies).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load(p: *const f32, lanes: usize) -> __m256 {
        if lanes == 8 {
            _mm256_loadu_ps(p)
        } else {
            let mut t = [0.0f32; 8];
            std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), lanes);
            _mm256_loadu_ps(t.as_ptr())
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store(p: *mut f32, v: __m256, lanes: usize) {
        if lanes == 8 {
            _mm256_storeu_ps(p, v)
        } else {
            let mut t = [0.0f32; 8];
            _mm256_storeu_ps(t.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(t.as_ptr(), p, lanes);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn cell_forward(
        gates: &mut [f32],
        c_prev: Option<&[f32]>,
        c: &mut [f32],
        h: &mut [f32],
        b: usize,
        hid: usize,
    ) {
        for n in 0..b {
            let g = gates.as_mut_ptr().add(n * 4 * hid);
            let (cr, hr) = (c.as_mut_ptr().add(n * hid), h.as_mut_ptr().add(n * hid));
            let cpr = c_prev.map(|cp| cp.as_ptr().add(n * hid));
            let mut j = 0;
            while j < hid {
                let l = 8.min(hid - j);
                let ig = sigmoid(load(g.add(j), l));
                let fg = sigmoid(load(g.add(hid + j), l));
                let gg = tanh(load(g.add(2 * hid + j), l));
                let og = sigmoid(load(g.add(3 * hid + j), l));
                store(g.add(j), ig, l);
                store(g.add(hid + j), fg, l);
                store(g.add(2 * hid + j), gg, l);
                store(g.add(3 * hid + j), og, l);
                let cp = cpr.map_or(_mm256_setzero_ps(), |p| load(p.add(j), l));
                let cv = _mm256_add_ps(_mm256_mul_ps(fg, cp), _mm256_mul_ps(ig, gg));
                store(cr.add(j), cv, l);
                store(hr.add(j), _mm256_mul_ps(og, tanh(cv)), l);
                j += 8;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn cell_backward(
        dgates: &mut [f32],
        dc: &mut [f32],
        dh: &[f32],
        gates: &[f32],
        c: &[f32],
        c_prev: Option<&[f32]>,
        b: usize,
        hid: usize,
    ) {
        use {_mm256_add_ps as add, _mm256_mul_ps as mul, _mm256_sub_ps as sub};
        let one = _mm256_set1_ps(1.0);
        for n in 0..b {
            let g = gates.as_ptr().add(n * 4 * hid);
            let dg = dgates.as_mut_ptr().add(n * 4 * hid);
            let (dcr, dhr, cr) = (
                dc.as_mut_ptr().add(n * hid),
                dh.as_ptr().add(n * hid),
                c.as_ptr().add(n * hid),
            );
            let cpr = c_prev.map(|cp| cp.as_ptr().add(n * hid));
            let mut j = 0;
            while j < hid {
                let l = 8.min(hid - j);
                let ig = load(g.add(j), l);
                let fg = load(g.add(hid + j), l);
                let gg = load(g.add(2 * hid + j), l);
                let og = load(g.add(3 * hid + j), l);
                let tc = tanh(load(cr.add(j), l));
                let d_h = load(dhr.add(j), l);
                let d_c = add(
                    load(dcr.add(j), l),
                    mul(mul(d_h, og), sub(one, mul(tc, tc))),
                );
                let cp = cpr.map_or(_mm256_setzero_ps(), |p| load(p.add(j), l));
                store(dg.add(j), mul(mul(mul(d_c, gg), ig), sub(one, ig)), l);
                store(dg.add(hid + j), mul(mul(mul(d_c, cp), fg), sub(one, fg)), l);
                store(
                    dg.add(2 * hid + j),
                    mul(mul(d_c, ig), sub(one, mul(gg, gg))),
                    l,
                );
                store(
                    dg.add(3 * hid + j),
                    mul(mul(mul(d_h, tc), og), sub(one, og)),
                    l,
                );
                store(dcr.add(j), mul(d_c, fg), l);
                j += 8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Skips (with a line saying so) on machines without AVX2+FMA: there the callers never use
    /// this module.
    fn skip() -> bool {
        if !available() {
            eprintln!("no AVX2+FMA here: the vector recurrence is not used on this machine");
        }
        !available()
    }

    #[test]
    fn exp8_is_within_2_ulp_of_f64_exp_and_saturates() {
        if skip() {
            return;
        }
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let xs = [
                x,
                x + 0.013,
                x + 0.029,
                x + 0.031,
                x + 0.047,
                x + 0.053,
                x + 0.061,
                x + 0.07,
            ];
            let got = exp8(xs);
            for (g, xi) in got.iter().zip(xs) {
                let want = (xi as f64).exp();
                let ulp = (want as f32).abs() * f32::EPSILON;
                worst = worst.max((*g as f64 - want).abs() / ulp as f64);
            }
            x += 0.0791;
        }
        eprintln!("exp8: worst error {worst:.2} ulp over [-87, 88]");
        assert!(worst <= 2.0, "worst error {worst} ulp");
        let edge = exp8([
            -1e4,
            1e4,
            0.0,
            f32::NAN,
            -88.0,
            89.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        assert!(edge[0] > 0.0 && edge[0] < 1e-37, "{}", edge[0]);
        assert!(edge[1] > 1e38 && edge[1].is_finite(), "{}", edge[1]);
        assert_eq!(edge[2], 1.0);
        assert!(edge[3].is_nan(), "NaN must propagate, got {}", edge[3]);
        assert!(edge[6].is_finite() && edge[7] >= 0.0);
    }

    #[test]
    fn packed_gemm_matches_f64_at_ragged_shapes_and_any_row_grouping() {
        if skip() {
            return;
        }
        let mut rng = Rng::new(7);
        for &(m, k, n) in &[
            (1, 1, 1),
            (16, 256, 1024),
            (7, 300, 33),
            (13, 1024, 256),
            (3, 5, 17),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            // B given transposed (as W_hh is in the forward): b[j][kk] is B's (kk, j).
            let bt: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rng.normal() as f32).collect();
            let packed = Packed::pack(Mat::rm(&bt, n, k).t());
            let (lda, ldc) = (k + 3, n + 5);
            let mut ap = vec![f32::NAN; m * lda];
            let mut c = vec![f32::NAN; m * ldc];
            for i in 0..m {
                ap[i * lda..i * lda + k].copy_from_slice(&a[i * k..(i + 1) * k]);
                c[i * ldc..i * ldc + n].copy_from_slice(&c0[i * n..(i + 1) * n]);
            }
            gemm_acc(&mut c, ldc, &ap, lda, m, &packed);
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k)
                        .map(|kk| a[i * k + kk] as f64 * bt[j * k + kk] as f64)
                        .sum();
                    let mag: f64 = (0..k)
                        .map(|kk| (a[i * k + kk] * bt[j * k + kk]).abs() as f64)
                        .sum();
                    let want = c0[i * n + j] as f64 + dot;
                    let tol =
                        (k as f64 + 2.0) * f32::EPSILON as f64 * (mag + c0[i * n + j].abs() as f64);
                    let got = c[i * ldc + j] as f64;
                    assert!(
                        (got - want).abs() <= tol,
                        "({m},{k},{n}) [{i},{j}]: {got} vs {want}"
                    );
                }
                for j in n..ldc.min(n + 5) {
                    assert!(c[i * ldc + j].is_nan(), "column {j} past n was written");
                }
            }
            // Row by row gives the same bits as all rows at once (grouping-independent).
            let mut one = vec![f32::NAN; m * ldc];
            for i in 0..m {
                one[i * ldc..i * ldc + n].copy_from_slice(&c0[i * n..(i + 1) * n]);
                gemm_acc(&mut one[i * ldc..], ldc, &ap[i * lda..], lda, 1, &packed);
            }
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(one[i * ldc + j].to_bits(), c[i * ldc + j].to_bits());
                }
            }
        }
    }

    #[test]
    fn vector_cells_match_the_scalar_cells_at_ragged_hidden_sizes() {
        if skip() {
            return;
        }
        let mut rng = Rng::new(3);
        for &(b, hid) in &[(1, 1), (3, 7), (2, 8), (5, 19), (4, 256)] {
            for with_prev in [false, true] {
                let pre: Vec<f32> = (0..b * 4 * hid)
                    .map(|_| 3.0 * rng.normal() as f32)
                    .collect();
                let cp: Vec<f32> = (0..b * hid).map(|_| rng.normal() as f32).collect();
                let c_prev = with_prev.then_some(&cp[..]);
                let (mut g1, mut c1, mut h1) =
                    (pre.clone(), vec![0.0; b * hid], vec![0.0; b * hid]);
                let (mut g2, mut c2, mut h2) =
                    (pre.clone(), vec![0.0; b * hid], vec![0.0; b * hid]);
                super::super::lstm::lstm_cell_forward(&mut g1, c_prev, &mut c1, &mut h1, b, hid);
                cell_forward(&mut g2, c_prev, &mut c2, &mut h2, b, hid);
                let close = |x: &[f32], y: &[f32], what: &str| {
                    for (i, (p, q)) in x.iter().zip(y).enumerate() {
                        assert!(
                            (p - q).abs() <= 4e-7 * (1.0 + p.abs()),
                            "{what}[{i}] B{b} H{hid}: {p} vs {q}"
                        );
                    }
                };
                close(&g1, &g2, "gates");
                close(&c1, &c2, "c");
                close(&h1, &h2, "h");
                let dh: Vec<f32> = (0..b * hid).map(|_| rng.normal() as f32).collect();
                let dc0: Vec<f32> = (0..b * hid).map(|_| rng.normal() as f32).collect();
                let (mut dg1, mut dc1) = (vec![0.0; b * 4 * hid], dc0.clone());
                let (mut dg2, mut dc2) = (vec![0.0; b * 4 * hid], dc0.clone());
                super::super::lstm::lstm_cell_backward(
                    &mut dg1, &mut dc1, &dh, &g1, &c1, c_prev, b, hid,
                );
                cell_backward(&mut dg2, &mut dc2, &dh, &g1, &c1, c_prev, b, hid);
                close(&dg1, &dg2, "dgates");
                close(&dc1, &dc2, "dc");
            }
        }
    }
}
