//! The fused (flash-style) attention kernels (kernels/attention_fused.cu) on the emulated device
//! (and, as `gpu_*` twins, on a GPU) against the CPU reference (src/ops/attention_fused.rs, itself
//! checked against the materialized reference), at ragged shapes (T and HS not multiples of the
//! 32-wide tiles; HS 100 and 256 above the 48 KiB of shared memory a block gets without the
//! opt-in), with and without dropout; the dropout masks against the step-by-step kernels', bit
//! for bit; and determinism.

#[macro_use]
mod common;

use robo_poet::gpu::kernels::Precision;
use robo_poet::gpu::{kernels, Device, DeviceExt, EmuDevice};
use robo_poet::ops::attention::AttnShape;
use robo_poet::ops::attention_fused as fused;
use robo_poet::philox::DropoutKey;
use robo_poet::rng::Rng;

fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * scale).collect()
}

/// |got − want| <= tol · max |want| everywhere (the tolerance is relative to the tensor's largest
/// entry: a wrong row or tile is off by O(1) of it).
#[track_caller]
fn assert_close_scaled(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}: element {i}: got {g}, want {w} (error {:.3e} of the largest entry {scale:.3e}, tolerance {tol:.0e})",
            (g - w).abs() / scale
        );
    }
}

fn key(p: f32) -> Option<DropoutKey> {
    (p > 0.0).then_some(DropoutKey {
        p,
        seed: 41,
        step: 7,
        tensor: 2,
    })
}

/// (B, T, NH, HS, dropout p): every T and HS of the issue (T 1, 7, 64, 65, 200; HS 8, 24, 64, 100,
/// 256), NH 1 to 4, with and without dropout.
const CASES: [(usize, usize, usize, usize, f32); 7] = [
    (2, 1, 1, 8, 0.0),
    (1, 7, 3, 24, 0.3),
    (1, 64, 2, 64, 0.1),
    (1, 65, 4, 100, 0.5),
    (1, 200, 1, 256, 0.1),
    (2, 200, 2, 8, 0.0),
    (1, 65, 1, 256, 0.0),
];

struct Outputs {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// Forward and backward on `dev` at precision `prec` (gradients accumulated onto `start`).
#[allow(clippy::too_many_arguments)]
fn run_device(
    dev: &dyn Device,
    s: AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    start: &[f32],
    p: f32,
    prec: Precision,
) -> Outputs {
    let n = q.len();
    let rows = s.b * s.nh * s.t;
    let (dq_, dk_, dv_, do_) = (
        dev.upload(q).unwrap(),
        dev.upload(k).unwrap(),
        dev.upload(v).unwrap(),
        dev.upload(dout).unwrap(),
    );
    let (out, lse, delta) = (
        dev.alloc_slice::<f32>(n).unwrap(),
        dev.alloc_slice::<f32>(rows).unwrap(),
        dev.alloc_slice::<f32>(rows).unwrap(),
    );
    let d = key(p).map(|k| kernels::DeviceDropout::on_device(dev, k).unwrap());
    kernels::attention_fused_forward(dev, out, lse, dq_, dk_, dv_, s, d, prec).unwrap();
    let (gq, gk, gv) = (
        dev.upload(start).unwrap(),
        dev.upload(start).unwrap(),
        dev.upload(start).unwrap(),
    );
    kernels::attention_fused_backward(
        dev, gq, gk, gv, do_, dq_, dk_, dv_, out, lse, delta, s, d, prec,
    )
    .unwrap();
    Outputs {
        out: dev.download(out).unwrap(),
        lse: dev.download(lse).unwrap(),
        dq: dev.download(gq).unwrap(),
        dk: dev.download(gk).unwrap(),
        dv: dev.download(gv).unwrap(),
    }
}

/// x rounded as the tensor-core kernels round their operands (identity at fp32).
fn rounded(prec: Precision, x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| prec.round(v)).collect()
}

/// The unit roundoff of an operand rounded to nearest at `prec`: 2^-p for a p-bit significand
/// (TF32 11 bits, BF16 8, counting the implicit one); 0 at fp32, whose operands are not rounded.
fn unit_roundoff(prec: Precision) -> f64 {
    match prec {
        Precision::Fp32 => 0.0,
        Precision::Tf32 => (-11f64).exp2(),
        Precision::Bf16 => (-8f64).exp2(),
    }
}

/// Per element, Σ |a|·|b| over the terms of the product the tensor-core kernels form from one
/// rounded operand (see `emu_attention_fused_tensor_cores_match_the_rounding_bound`), in f64:
/// out: Σ_j P̃_ij |v_jc|, dv: Σ_i P̃_ij |dO_ic|, dk: scale Σ_i |dS_ij| |q_ic|, dq: scale Σ_j |dS_ij|
/// |k_jc|, with P̃ = P·mult the dropped-out probabilities and dS = P (mult·dO_i·v_j − D_i). The
/// backward's D_i = Σ_c dO_ic·out_ic is formed from the kernel's own out, which carries the
/// forward's rounding (at most u·bound.out): an error of D_i of at most u·E_i, E_i = Σ_c |dO_ic|
/// bound.out_ic, moves dS_ij by P_ij·u·E_i, so dk gains scale Σ_i P_ij E_i |q_ic| and dq
/// scale Σ_j P_ij E_i |k_jc|.
struct Bounds {
    out: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

fn product_bounds(s: AttnShape, q: &[f32], k: &[f32], v: &[f32], dout: &[f32], p: f32) -> Bounds {
    let (t, c, hs) = (s.t, s.c(), s.hs);
    let n = s.b * t * c;
    let mut b = Bounds {
        out: vec![0.0; n],
        dq: vec![0.0; n],
        dk: vec![0.0; n],
        dv: vec![0.0; n],
    };
    let scale = s.scale() as f64;
    let at = |x: &[f32], bb: usize, i: usize, h: usize, ch: usize| {
        x[(bb * t + i) * c + h * hs + ch] as f64
    };
    for bb in 0..s.b {
        for h in 0..s.nh {
            let bh = bb * s.nh + h;
            for i in 0..t {
                let mut mult = vec![1.0f32; i + 1];
                if let Some(key) = key(p) {
                    key.fill_mask(((bh * t + i) * t) as u64, &mut mult);
                }
                let sc: Vec<f64> = (0..=i)
                    .map(|j| {
                        scale
                            * (0..hs)
                                .map(|ch| at(q, bb, i, h, ch) * at(k, bb, j, h, ch))
                                .sum::<f64>()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let l: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                let prob: Vec<f64> = sc.iter().map(|x| (x - m).exp() / l).collect();
                let pd: Vec<f64> = (0..=i).map(|j| prob[j] * mult[j] as f64).collect();
                let o: Vec<f64> = (0..hs)
                    .map(|ch| (0..=i).map(|j| pd[j] * at(v, bb, j, h, ch)).sum())
                    .collect();
                let dd: f64 = (0..hs).map(|ch| at(dout, bb, i, h, ch) * o[ch]).sum();
                let row = (bb * t + i) * c + h * hs;
                for (j, &pdj) in pd.iter().enumerate() {
                    for ch in 0..hs {
                        b.out[row + ch] += pdj * at(v, bb, j, h, ch).abs();
                    }
                }
                let e: f64 = (0..hs)
                    .map(|ch| at(dout, bb, i, h, ch).abs() * b.out[row + ch])
                    .sum();
                for j in 0..=i {
                    let dp = mult[j] as f64
                        * (0..hs)
                            .map(|ch| at(dout, bb, i, h, ch) * at(v, bb, j, h, ch))
                            .sum::<f64>();
                    let ds = (prob[j] * (dp - dd)).abs() + prob[j] * e;
                    for ch in 0..hs {
                        let (ei, ej) = (row + ch, (bb * t + j) * c + h * hs + ch);
                        b.dv[ej] += pd[j] * at(dout, bb, i, h, ch).abs();
                        b.dk[ej] += scale * ds * at(q, bb, i, h, ch).abs();
                        b.dq[ei] += scale * ds * at(k, bb, j, h, ch).abs();
                    }
                }
            }
        }
    }
    b
}

/// |got − want| <= u·bound + slack·max |want| everywhere; returns the largest |got − want| over
/// max |want|.
#[track_caller]
fn assert_within_bound(
    what: &str,
    got: &[f32],
    want: &[f32],
    bound: &[f64],
    u: f64,
    slack: f64,
) -> f64 {
    let scale = want.iter().fold(1e-12f64, |m, &x| m.max(x.abs() as f64));
    let mut worst = 0.0f64;
    for (i, ((&g, &w), &bd)) in got.iter().zip(want).zip(bound).enumerate() {
        let (err, tol) = ((g as f64 - w as f64).abs(), u * bd + slack * scale);
        assert!(
            err <= tol,
            "{what}: element {i}: got {g}, want {w} (error {err:.3e} > tolerance {tol:.3e}: u·bound {:.3e} + {slack:.0e} of the largest entry {scale:.3e})",
            u * bd
        );
        worst = worst.max(err / scale);
    }
    worst
}

fn inputs(s: AttnShape, seed: u64) -> [Vec<f32>; 5] {
    let n = s.b * s.t * s.c();
    let mut rng = Rng::new(seed);
    [
        randn(&mut rng, n, 1.0),
        randn(&mut rng, n, 1.0),
        randn(&mut rng, n, 1.0),
        randn(&mut rng, n, 1.0),
        randn(&mut rng, n, 0.5), // non-zero: the backward accumulates
    ]
}

device_tests! {
    fn emu_attention_fused_matches_the_reference_forward_and_backward / gpu_attention_fused_matches_the_reference_forward_and_backward (dev) {
        for (b, t, nh, hs, p) in CASES {
            let s = AttnShape { b, t, nh, hs };
            let [q, k, v, dout, start] = inputs(s, 100 + t as u64 + hs as u64);
            let got = run_device(&dev, s, &q, &k, &v, &dout, &start, p, Precision::Fp32);
            let n = q.len();
            let (mut out, mut lse) = (vec![0.0; n], vec![0.0; b * nh * t]);
            fused::fused_attention_forward(&mut out, &mut lse, &q, &k, &v, s, key(p));
            let (mut dq, mut dk, mut dv) = (start.clone(), start.clone(), start.clone());
            fused::fused_attention_backward(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, s, key(p));
            let what = format!("B {b} T {t} NH {nh} HS {hs} p {p}");
            // f32 dot products and tile-by-tile online-softmax rescaling against f64 sums: a few
            // f32 ulps of the terms, summed over up to HS (dots) and T (values) terms.
            assert_close_scaled(&format!("{what}: out"), &got.out, &out, 1e-5);
            assert_close_scaled(&format!("{what}: lse"), &got.lse, &lse, 1e-5);
            assert_close_scaled(&format!("{what}: dq"), &got.dq, &dq, 1e-4);
            assert_close_scaled(&format!("{what}: dk"), &got.dk, &dk, 1e-4);
            assert_close_scaled(&format!("{what}: dv"), &got.dv, &dv, 1e-4);
        }
    }

    fn emu_attention_fused_tensor_cores_match_the_rounding_bound / gpu_attention_fused_tensor_cores_match_the_rounding_bound (dev) {
        // The _tf32 / _bf16 kernels at every shape of CASES, on inputs already rounded to the
        // precision (so the kernels' rounding of q, k, v and dO is exact), against the f64 CPU
        // reference. What remains is one rounded operand per product: the forward rounds each
        // dropped-out probability P̃_ij = exp(s_ij − m)·mult before p·v, the dk/dv kernel P̃ again
        // (recomputed) before P̃ᵀ·dO and dS before dSᵀ·q, the dq kernel dS before dS·k. A value
        // rounded to nearest carries a relative error of at most u (2^-11 tf32, 2^-8 bf16), and
        // the product's other operand is exact, so the error of a sum Σ_j a_j·b_j with a rounded
        // is at most u·Σ_j |a_j|·|b_j| (`product_bounds`; the online softmax's rescaling of the
        // forward's partial sums is a positive factor per row and changes nothing). The rest is
        // f32 arithmetic as in the fp32 kernels, hence their tolerances (1e-5 of the largest
        // entry forward, 1e-4 backward) as the slack. lse involves no rounded operand: it gets
        // the fp32 tolerance alone, which checks the scores' products (q·kᵀ on the tensor
        // cores). A misplaced fragment element moves a score or an output by O(1) of its size.
        for prec in [Precision::Tf32, Precision::Bf16] {
            let u = unit_roundoff(prec);
            let mut moved = 0.0f64;  // the largest |tc − fp32 kernel| / max |want| of out
            for (b, t, nh, hs, p) in CASES {
                let s = AttnShape { b, t, nh, hs };
                let [q, k, v, dout, start] = inputs(s, 100 + t as u64 + hs as u64);
                let [q, k, v, dout] = [&q, &k, &v, &dout].map(|x| rounded(prec, x));
                let got = run_device(&dev, s, &q, &k, &v, &dout, &start, p, prec);
                let n = q.len();
                let (mut out, mut lse) = (vec![0.0; n], vec![0.0; b * nh * t]);
                fused::fused_attention_forward(&mut out, &mut lse, &q, &k, &v, s, key(p));
                let (mut dq, mut dk, mut dv) = (start.clone(), start.clone(), start.clone());
                fused::fused_attention_backward(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, s, key(p));
                let bd = product_bounds(s, &q, &k, &v, &dout, p);
                let what = format!("{prec} B {b} T {t} NH {nh} HS {hs} p {p}");
                assert_within_bound(&format!("{what}: out"), &got.out, &out, &bd.out, u, 1e-5);
                assert_close_scaled(&format!("{what}: lse"), &got.lse, &lse, 1e-5);
                assert_within_bound(&format!("{what}: dq"), &got.dq, &dq, &bd.dq, u, 1e-4);
                assert_within_bound(&format!("{what}: dk"), &got.dk, &dk, &bd.dk, u, 1e-4);
                assert_within_bound(&format!("{what}: dv"), &got.dv, &dv, &bd.dv, u, 1e-4);
                let fp32 = run_device(&dev, s, &q, &k, &v, &dout, &start, p, Precision::Fp32);
                let scale = out.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
                for (a, f) in got.out.iter().zip(&fp32.out) {
                    moved = moved.max(((a - f).abs() / scale) as f64);
                }
            }
            // the rounding of P̃ shows: the tensor-core kernels ran, not the fp32 ones (which
            // stay within 1e-5 of the reference)
            eprintln!("{prec}: out moved by up to {moved:.3e} of its largest entry from the fp32 kernel's");
            assert!(moved > 1e-4, "{prec}: out within {moved:.1e} of the fp32 kernel's: were the tensor cores used?");
        }
    }

    fn emu_attention_fused_masks_are_the_step_by_step_kernels_bits / gpu_attention_fused_masks_are_the_step_by_step_kernels_bits (dev) {
        // With one-hot value rows (v_j = e_j), out_i is row i of the dropped-out weight matrix,
        // which the step-by-step softmax kernel writes: the same entries dropped (exact zeros)
        // and the kept ones equal to rounding, at every precision (the tensor-core kernels round
        // each kept weight before p·v: relative error up to u, 2^-11 for tf32 and 2^-8 for bf16;
        // their scores' rounding moves the weights by far less than that here, q and k being
        // rounded first).
        let (t, hs) = (45usize, 48usize);
        let s = AttnShape { b: 1, t, nh: 1, hs };
        let mut rng = Rng::new(5);
        let q = randn(&mut rng, t * hs, 1.0);
        let k = randn(&mut rng, t * hs, 1.0);
        let mut v = vec![0.0f32; t * hs];
        for j in 0..t {
            v[j * hs + j] = 1.0;
        }
        let p = 0.5;
        let d = kernels::DeviceDropout::on_device(&dev, key(p).unwrap()).unwrap();
        for prec in Precision::ALL {
            let (q, k) = (rounded(prec, &q), rounded(prec, &k));
            let (dq, dk, dv) = (dev.upload(&q).unwrap(), dev.upload(&k).unwrap(), dev.upload(&v).unwrap());
            let (out, lse) = (dev.alloc_slice::<f32>(t * hs).unwrap(), dev.alloc_slice::<f32>(t).unwrap());
            kernels::attention_fused_forward(&dev, out, lse, dq, dk, dv, s, Some(d), prec).unwrap();
            let out = dev.download(out).unwrap();
            let scores = dev.alloc_slice::<f32>(t * t).unwrap();
            let (probs, weights) = (dev.alloc_slice::<f32>(t * t).unwrap(), dev.alloc_slice::<f32>(t * t).unwrap());
            kernels::attention_scores_forward(&dev, scores, dq, dk, s).unwrap();
            kernels::causal_softmax_dropout_forward(&dev, probs, Some(weights), scores, 1, t, Some(d)).unwrap();
            let w = dev.download(weights).unwrap();
            let u = unit_roundoff(prec);
            let mut dropped = 0;
            for i in 0..t {
                for j in 0..=i {
                    let (f, m) = (out[i * hs + j], w[i * t + j]);
                    assert_eq!(f == 0.0, m == 0.0, "{prec} ({i}, {j}): fused {f}, step by step {m}: a different mask");
                    assert!((f - m).abs() <= 2e-6 + u as f32 * m.abs(), "{prec} ({i}, {j}): fused {f}, step by step {m}");
                    dropped += (m == 0.0) as usize;
                }
            }
            let live = t * (t + 1) / 2;
            assert!(dropped > live / 3 && dropped < 2 * live / 3, "p = 0.5 drops about half: {dropped} of {live}");
        }
    }

    fn emu_attention_fused_lse_check_finds_rows_that_do_not_sum_to_one / gpu_attention_fused_lse_check_finds_rows_that_do_not_sum_to_one (dev) {
        let s = AttnShape { b: 2, t: 33, nh: 2, hs: 16 };
        let [q, k, v, _, _] = inputs(s, 9);
        let rows = s.b * s.nh * s.t;
        let (dq, dk, dv) = (dev.upload(&q).unwrap(), dev.upload(&k).unwrap(), dev.upload(&v).unwrap());
        let (out, lse) = (dev.alloc_slice::<f32>(q.len()).unwrap(), dev.alloc_slice::<f32>(rows).unwrap());
        let result = dev.alloc_slice::<u32>(2).unwrap();
        // the tensor-core forwards' lse passes the check at their own precision; at bf16 the
        // scores' rounding (q and k to 8 significant bits) moves the row sums by about 1e-3, so
        // the fp32 check of the same lse fails: the check rounds as the forward did
        for prec in [Precision::Tf32, Precision::Bf16] {
            kernels::attention_fused_forward(&dev, out, lse, dq, dk, dv, s, None, prec).unwrap();
            kernels::attention_lse_check(&dev, result, dq, dk, lse, s, 1e-5, prec).unwrap();
            let (dev_max, bad) = kernels::read_row_sum_check(&dev, result).unwrap();
            assert!(bad == 0 && dev_max <= 1e-5, "{prec}: a correct lse: {dev_max}, {bad} bad rows");
        }
        kernels::attention_lse_check(&dev, result, dq, dk, lse, s, 1e-5, Precision::Fp32).unwrap();
        let (dev_max, bad) = kernels::read_row_sum_check(&dev, result).unwrap();
        assert!(bad > 0 && dev_max > 1e-4, "the bf16 lse checked at fp32: {dev_max}, {bad} bad rows");
        kernels::attention_fused_forward(&dev, out, lse, dq, dk, dv, s, None, Precision::Fp32).unwrap();
        kernels::attention_lse_check(&dev, result, dq, dk, lse, s, 1e-5, Precision::Fp32).unwrap();
        let (dev_max, bad) = kernels::read_row_sum_check(&dev, result).unwrap();
        assert!(bad == 0 && dev_max <= 1e-5, "a correct lse: {dev_max}, {bad} bad rows");
        // three rows' logsumexp off by 0.01: those rows sum to e^-0.01 ≈ 0.99
        let mut l = dev.download(lse).unwrap();
        for r in [0, 40, rows - 1] {
            l[r] += 0.01;
        }
        let lse2 = dev.upload(&l).unwrap();
        kernels::attention_lse_check(&dev, result, dq, dk, lse2, s, 1e-5, Precision::Fp32).unwrap();
        let (dev_max, bad) = kernels::read_row_sum_check(&dev, result).unwrap();
        assert_eq!(bad, 3);
        assert!((dev_max - (1.0 - (-0.01f32).exp())).abs() < 1e-4, "{dev_max}");
        let (cpu_max, cpu_bad) = fused::lse_row_check(&q, &k, &l, s, 1e-5);
        assert_eq!(cpu_bad, 3);
        assert!((cpu_max - dev_max).abs() < 1e-5);
    }
}

#[test]
fn emu_attention_fused_is_deterministic() {
    let s = AttnShape {
        b: 1,
        t: 70,
        nh: 2,
        hs: 24,
    };
    let [q, k, v, dout, start] = inputs(s, 77);
    let bits = |o: &Outputs| -> Vec<u32> {
        [&o.out, &o.lse, &o.dq, &o.dk, &o.dv]
            .iter()
            .flat_map(|v| v.iter().map(|x| x.to_bits()))
            .collect()
    };
    for prec in Precision::ALL {
        let a = run_device(&EmuDevice::new(), s, &q, &k, &v, &dout, &start, 0.2, prec);
        let b = run_device(
            &EmuDevice::new().with_schedule(robo_poet::gpu::Schedule::Reverse),
            s,
            &q,
            &k,
            &v,
            &dout,
            &start,
            0.2,
            prec,
        );
        assert!(
            bits(&a) == bits(&b),
            "{prec}: two runs (the second in the reverse thread order) differ"
        );
    }
}

#[test]
fn emu_attention_fused_refuses_head_sizes_beyond_the_shared_memory_opt_in() {
    let dev = EmuDevice::new();
    let hs = kernels::fused_max_head_size(dev.max_shared_optin() as usize) + 1;
    let s = AttnShape {
        b: 1,
        t: 4,
        nh: 1,
        hs,
    };
    let n = 4 * hs;
    let x = dev.upload(&vec![0.1f32; n]).unwrap();
    let (out, lse, delta) = (
        dev.alloc_slice::<f32>(n).unwrap(),
        dev.alloc_slice::<f32>(4).unwrap(),
        dev.alloc_slice::<f32>(4).unwrap(),
    );
    // the forward fits (it needs the least), the backward's dk/dv kernel does not
    for prec in Precision::ALL {
        kernels::attention_fused_forward(&dev, out, lse, x, x, x, s, None, prec).unwrap();
        let e = kernels::attention_fused_backward(
            &dev, x, x, x, x, x, x, x, out, lse, delta, s, None, prec,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--attention materialized"), "{prec}: {e}");
    }
}
