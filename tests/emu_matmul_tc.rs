//! The tensor-core GEMMs (kernels/matmul_tc.cu: every kernel of kernels/matmul.cuh at tf32 and
//! bf16) through their launchers, against a CPU reference that rounds the operands as the
//! kernels do and accumulates in f64, at ragged shapes (M, N, K not multiples of 16 or 8, 1x1x1,
//! and shapes whose contiguous extents are multiples of 4, where the 16-byte copies run); and 30
//! training steps of the default GPT (materialized and fused attention) at tf32 and bf16 on the
//! emulated CUDA backend against the fp32 CPU backend.
//!
//! The tolerance, per output element: the kernels and the reference multiply the same rounded
//! operands, and each product of two TF32 (11-bit) or BF16 (8-bit significand) values is exact in
//! f32 and f64. What differs is only the accumulation: the reference's f64 sum is exact to 2^-52
//! relative, the kernel's f32 sum of K products plus the start value and the bias is a chain of
//! at most K + 2 additions, each rounded. The standard bound for recursive summation (Higham,
//! "Accuracy and Stability of Numerical Algorithms", 4.2) is |fl(Σ x) − Σ x| <= γ_n Σ |x_i| with
//! γ_n = n·u / (1 − n·u), u the unit roundoff. f32 round-to-nearest has u = 2^-24; the tensor
//! cores' internal adders are not specified to round to nearest (measurements show truncation),
//! so u = 2^-23 here, and n = K + 4 (the chain, the split-K partial sums, the epilogue's add).
//! Hence tol = (K + 4)·2^-23·(Σ_k |ã_k·b̃_k| + |start| + |bias|) (ã, b̃ the rounded operands),
//! times the GELU derivative's bound 1.13 where the epilogue multiplies by it. A misplaced
//! element is off by a whole product, which is far above that for the K used here.

#[macro_use]
mod common;

use robo_poet::diagnostics::parity::training_parity_with;
use robo_poet::gpu::kernels::{self, Precision};
use robo_poet::gpu::{Device, DeviceExt, DeviceSlice, EmuDevice};
use robo_poet::ops;
use robo_poet::rng::Rng;

const TC: [Precision; 2] = [Precision::Tf32, Precision::Bf16];

/// (N, IC, OC): ragged, 1x1x1, one past a tile, and multiples of 4 (the 16-byte staging).
const SHAPES: [(usize, usize, usize); 5] = [
    (70, 45, 33),
    (1, 1, 1),
    (65, 17, 65),
    (33, 64, 48),
    (130, 36, 70),
];

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn up(dev: &dyn Device, v: &[f32]) -> DeviceSlice<f32> {
    dev.upload(v).unwrap()
}

/// Σ_k round(a(m, k))·round(b(k, n)) in f64, and Σ_k |…|, for an (M, NC) output.
struct Product {
    value: Vec<f64>,
    bound: Vec<f64>,
    k: usize,
}

fn product(
    p: Precision,
    m: usize,
    nc: usize,
    k: usize,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
) -> Product {
    let (mut value, mut bound) = (vec![0.0; m * nc], vec![0.0; m * nc]);
    for i in 0..m {
        for j in 0..nc {
            for kk in 0..k {
                let t = p.round(a(i, kk)) as f64 * p.round(b(kk, j)) as f64;
                value[i * nc + j] += t;
                bound[i * nc + j] += t.abs();
            }
        }
    }
    Product { value, bound, k }
}

/// out = inp · weightᵀ: inp (N, IC), weight (OC, IC).
fn forward(p: Precision, inp: &[f32], w: &[f32], n: usize, ic: usize, oc: usize) -> Product {
    product(p, n, oc, ic, |i, k| inp[i * ic + k], |k, j| w[j * ic + k])
}

/// dinp = dout · weight: dout (N, OC), weight (OC, IC).
fn backward_input(
    p: Precision,
    dout: &[f32],
    w: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
) -> Product {
    product(p, n, ic, oc, |i, k| dout[i * oc + k], |k, j| w[k * ic + j])
}

/// dweight = doutᵀ · inp.
fn backward_weight(
    p: Precision,
    dout: &[f32],
    inp: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
) -> Product {
    product(
        p,
        oc,
        ic,
        n,
        |i, k| dout[k * oc + i],
        |k, j| inp[k * ic + j],
    )
}

fn gamma(k: usize) -> f64 {
    (k + 4) as f64 * 2f64.powi(-23)
}

/// Asserts got ≈ start + bias + product (the bias by column), within the bound above (× scale).
#[track_caller]
fn check(what: &str, got: &[f32], want: &[f64], bound: &[f64], k: usize, scale: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, (&w, &b))) in got.iter().zip(want.iter().zip(bound)).enumerate() {
        let tol = scale * gamma(k) * b + 1e-30;
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol,
            "{what}: element {i}: got {g}, want {w} (error {err:.3e} > tolerance {tol:.3e})"
        );
    }
}

/// want = start + bias[col] + value; bound likewise with absolute values.
fn expected(
    prod: &Product,
    start: Option<&[f32]>,
    bias: Option<&[f32]>,
    cols: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut want = prod.value.clone();
    let mut bound = prod.bound.clone();
    for e in 0..want.len() {
        if let Some(s) = start {
            want[e] += s[e] as f64;
            bound[e] += s[e].abs() as f64;
        }
        if let Some(b) = bias {
            want[e] += b[e % cols] as f64;
            bound[e] += b[e % cols].abs() as f64;
        }
    }
    (want, bound)
}

device_tests! {
    fn emu_tc_matmul_forward_family_matches_the_rounded_reference / gpu_tc_matmul_forward_family_matches_the_rounded_reference (dev) {
        for p in TC {
            for (n, ic, oc) in SHAPES {
                let mut rng = Rng::new((n * 1000 + ic * 10 + oc) as u64);
                let (inp, bias, start) = (randn(&mut rng, n * ic), randn(&mut rng, oc), randn(&mut rng, n * oc));
                let ws: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut rng, oc * ic)).collect();
                let tag = format!("{p} {n}x{ic}x{oc}");
                let prods: Vec<Product> = ws.iter().map(|w| forward(p, &inp, w, n, ic, oc)).collect();
                // matmul_forward (with bias)
                let out = dev.alloc_slice::<f32>(n * oc).unwrap();
                kernels::matmul_forward(&dev, p, out, up(&dev, &inp), up(&dev, &ws[0]), Some(up(&dev, &bias)), n, ic, oc).unwrap();
                let (want, bound) = expected(&prods[0], None, Some(&bias), oc);
                check(&format!("matmul_forward {tag}"), &dev.download(out).unwrap(), &want, &bound, ic, 1.0);
                // matmul_forward_accumulate
                let out = up(&dev, &start);
                kernels::matmul_forward_accumulate(&dev, p, out, up(&dev, &inp), up(&dev, &ws[0]), n, ic, oc).unwrap();
                let (want, bound) = expected(&prods[0], Some(&start), None, oc);
                check(&format!("matmul_forward_accumulate {tag}"), &dev.download(out).unwrap(), &want, &bound, ic, 1.0);
                // matmul_forward_qkv: q and k with the bias, v without
                let outs = [0, 1, 2].map(|_| dev.alloc_slice::<f32>(n * oc).unwrap());
                let b = up(&dev, &bias);
                kernels::matmul_forward_qkv(&dev, p, outs, up(&dev, &inp), [0, 1, 2].map(|j| up(&dev, &ws[j])), [Some(b), Some(b), None], n, ic, oc).unwrap();
                for j in 0..3 {
                    let (want, bound) = expected(&prods[j], None, (j < 2).then_some(&bias[..]), oc);
                    check(&format!("matmul_forward_qkv {tag} output {j}"), &dev.download(outs[j]).unwrap(), &want, &bound, ic, 1.0);
                }
                // matmul_forward_gelu: pre as matmul_forward, out = gelu(pre) from the same registers
                let (pre, act) = (dev.alloc_slice::<f32>(n * oc).unwrap(), dev.alloc_slice::<f32>(n * oc).unwrap());
                kernels::matmul_forward_gelu(&dev, p, pre, act, up(&dev, &inp), up(&dev, &ws[1]), Some(up(&dev, &bias)), n, ic, oc).unwrap();
                let (want, bound) = expected(&prods[1], None, Some(&bias), oc);
                let pre = dev.download(pre).unwrap();
                check(&format!("matmul_forward_gelu {tag}: pre"), &pre, &want, &bound, ic, 1.0);
                let mut want_act = vec![0.0; n * oc];
                ops::norm::gelu_forward(&mut want_act, &pre);
                for (i, (g, w)) in dev.download(act).unwrap().iter().zip(&want_act).enumerate() {
                    assert!((g - w).abs() <= 1e-6 + 1e-5 * w.abs(), "matmul_forward_gelu {tag}: act {i}: got {g}, want gelu(pre) = {w}");
                }
            }
        }
    }

    fn emu_tc_matmul_backward_input_family_matches_the_rounded_reference / gpu_tc_matmul_backward_input_family_matches_the_rounded_reference (dev) {
        for p in TC {
            for (n, ic, oc) in SHAPES {
                let mut rng = Rng::new((n * 1000 + ic * 10 + oc) as u64 + 1);
                let (start, pre) = (randn(&mut rng, n * ic), randn(&mut rng, n * ic));
                let ds: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut rng, n * oc)).collect();
                let ws: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut rng, oc * ic)).collect();
                let tag = format!("{p} {n}x{ic}x{oc}");
                let prods: Vec<Product> = (0..3).map(|j| backward_input(p, &ds[j], &ws[j], n, ic, oc)).collect();
                // matmul_backward_input
                let dinp = up(&dev, &start);
                kernels::matmul_backward_input(&dev, p, dinp, up(&dev, &ds[0]), up(&dev, &ws[0]), n, ic, oc).unwrap();
                let (want, bound) = expected(&prods[0], Some(&start), None, ic);
                check(&format!("matmul_backward_input {tag}"), &dev.download(dinp).unwrap(), &want, &bound, oc, 1.0);
                // matmul_backward_input_qkv: the three products summed, then added
                let dinp = up(&dev, &start);
                kernels::matmul_backward_input_qkv(&dev, p, dinp, [0, 1, 2].map(|j| up(&dev, &ds[j])), [0, 1, 2].map(|j| up(&dev, &ws[j])), n, ic, oc).unwrap();
                let sum = Product {
                    value: (0..n * ic).map(|e| prods.iter().map(|q| q.value[e]).sum()).collect(),
                    bound: (0..n * ic).map(|e| prods.iter().map(|q| q.bound[e]).sum()).collect(),
                    k: 3 * oc,
                };
                let (want, bound) = expected(&sum, Some(&start), None, ic);
                check(&format!("matmul_backward_input_qkv {tag}"), &dev.download(dinp).unwrap(), &want, &bound, sum.k, 1.0);
                // matmul_backward_input_gelu: dpre = start + gelu'(pre)·(dout · w)
                let dpre = up(&dev, &start);
                kernels::matmul_backward_input_gelu(&dev, p, dpre, up(&dev, &pre), up(&dev, &ds[0]), up(&dev, &ws[0]), n, ic, oc).unwrap();
                let want: Vec<f64> = (0..n * ic).map(|e| start[e] as f64 + ops::norm::gelu_grad(pre[e]) as f64 * prods[0].value[e]).collect();
                let bound: Vec<f64> = (0..n * ic).map(|e| start[e].abs() as f64 + 1.13 * prods[0].bound[e]).collect();
                check(&format!("matmul_backward_input_gelu {tag}"), &dev.download(dpre).unwrap(), &want, &bound, prods[0].k, 1.0);
            }
        }
    }

    fn emu_tc_weight_gradients_match_the_rounded_reference_for_any_split / gpu_tc_weight_gradients_match_the_rounded_reference_for_any_split (dev) {
        for p in TC {
            for (n, ic, oc) in SHAPES {
                let mut rng = Rng::new((n * 1000 + ic * 10 + oc) as u64 + 2);
                let x = randn(&mut rng, n * ic);
                let douts: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut rng, n * oc)).collect();
                let (w0, b0) = (randn(&mut rng, oc * ic), randn(&mut rng, oc));
                let tag = format!("{p} {n}x{ic}x{oc}");
                // matmul_backward_weight, unsplit and split
                let prod = backward_weight(p, &douts[0], &x, n, ic, oc);
                let (want, bound) = expected(&prod, Some(&w0), None, ic);
                for splits in [1, 3] {
                    let dw = up(&dev, &w0);
                    let len = kernels::matmul_backward_weight_workspace_len(n, ic, oc, splits);
                    let ws = (len > 0).then(|| dev.alloc_slice::<f32>(len).unwrap());
                    kernels::matmul_backward_weight_with_workspace(&dev, p, dw, up(&dev, &douts[0]), up(&dev, &x), ws, splits, n, ic, oc).unwrap();
                    check(&format!("matmul_backward_weight {tag} splits {splits}"), &dev.download(dw).unwrap(), &want, &bound, n, 1.0);
                }
                // linear_backward_params: 1 and 3 layers; the bias sums stay f32 sums of dout
                for count in [1usize, 3] {
                    for splits in [1, 3] {
                        let (pf, pc) = kernels::linear_backward_params_workspace(n, ic, oc, count, splits);
                        let ws = dev.alloc_slice::<f32>(pf.max(1)).unwrap();
                        let cs = dev.alloc_slice::<u32>(pc.max(1)).unwrap();
                        dev.zero(cs).unwrap();
                        let dws: Vec<DeviceSlice<f32>> = (0..count).map(|_| up(&dev, &w0)).collect();
                        let dbs: Vec<Option<DeviceSlice<f32>>> = (0..count).map(|_| Some(up(&dev, &b0))).collect();
                        let ds: Vec<DeviceSlice<f32>> = douts[..count].iter().map(|d| up(&dev, d)).collect();
                        kernels::linear_backward_params(&dev, p, &dws, &dbs, &ds, up(&dev, &x), Some(ws), Some(cs), splits, n, ic, oc).unwrap();
                        for j in 0..count {
                            let what = format!("linear_backward_params {tag} count {count} splits {splits} layer {j}");
                            let prod = backward_weight(p, &douts[j], &x, n, ic, oc);
                            let (want, bound) = expected(&prod, Some(&w0), None, ic);
                            check(&format!("{what}: dweight"), &dev.download(dws[j]).unwrap(), &want, &bound, n, 1.0);
                            let mut db = b0.clone();
                            let mut unused = vec![0.0; oc * ic];
                            ops::matmul::matmul_backward(None, &mut unused, Some(&mut db), &douts[j], &x, &vec![0.0; oc * ic], n, ic, oc);
                            for (i, (g, w)) in dev.download(dbs[j].unwrap()).unwrap().iter().zip(&db).enumerate() {
                                assert!((g - w).abs() <= 1e-5 + 1e-6 * w.abs(), "{what}: dbias {i}: got {g}, want {w} (f32 sums of dout)");
                            }
                        }
                        assert!(dev.download(cs).unwrap().iter().all(|&c| c == 0), "{tag}: counters reset");
                    }
                }
            }
        }
    }

    fn emu_tc_splitk_products_match_the_rounded_reference / gpu_tc_splitk_products_match_the_rounded_reference (dev) {
        for p in TC {
            for (n, ic, oc) in [(3, 7, 28), (32, 70, 280), (5, 1, 4)] {
                let mut rng = Rng::new((n * ic + oc) as u64 + 3);
                let (x, w, d) = (randn(&mut rng, n * ic), randn(&mut rng, oc * ic), randn(&mut rng, n * oc));
                let (start_o, start_i) = (randn(&mut rng, n * oc), randn(&mut rng, n * ic));
                for splits in [1, 3] {
                    let (pf, pc) = kernels::splitk_workspace(n, oc.max(ic), splits);
                    let (ws, cs) = (dev.alloc_slice::<f32>(pf.max(1)).unwrap(), dev.alloc_slice::<u32>(pc.max(64)).unwrap());
                    dev.zero(cs).unwrap();
                    let out = up(&dev, &start_o);
                    kernels::matmul_forward_accumulate_splitk(&dev, p, out, up(&dev, &x), up(&dev, &w), Some(ws), Some(cs), splits, n, ic, oc).unwrap();
                    let (want, bound) = expected(&forward(p, &x, &w, n, ic, oc), Some(&start_o), None, oc);
                    check(&format!("splitk forward {p} {n}x{ic}x{oc} splits {splits}"), &dev.download(out).unwrap(), &want, &bound, ic, 1.0);
                    let dinp = up(&dev, &start_i);
                    kernels::matmul_backward_input_splitk(&dev, p, dinp, up(&dev, &d), up(&dev, &w), Some(ws), Some(cs), splits, n, ic, oc).unwrap();
                    let (want, bound) = expected(&backward_input(p, &d, &w, n, ic, oc), Some(&start_i), None, ic);
                    check(&format!("splitk backward input {p} {n}x{ic}x{oc} splits {splits}"), &dev.download(dinp).unwrap(), &want, &bound, oc, 1.0);
                }
            }
        }
    }

    fn emu_tc_results_are_the_rounded_products_not_the_f32_ones / gpu_tc_results_are_the_rounded_products_not_the_f32_ones (dev) {
        // The same check against the unrounded operands fails by far: the kernels really round.
        let (n, ic, oc) = (70, 45, 33);
        let mut rng = Rng::new(99);
        let (inp, w) = (randn(&mut rng, n * ic), randn(&mut rng, oc * ic));
        let exact = forward(Precision::Fp32, &inp, &w, n, ic, oc);
        for p in TC {
            let out = dev.alloc_slice::<f32>(n * oc).unwrap();
            kernels::matmul_forward(&dev, p, out, up(&dev, &inp), up(&dev, &w), None, n, ic, oc).unwrap();
            let got = dev.download(out).unwrap();
            let worst = got
                .iter()
                .zip(exact.value.iter().zip(&exact.bound))
                .map(|(&g, (&v, &b))| (g as f64 - v).abs() / (gamma(ic) * b))
                .fold(0.0, f64::max);
            // rounding each operand to 10 (7) mantissa bits moves a product by up to 2^-10 (2^-7)
            // relative: hundreds of times the f32 accumulation bound
            assert!(worst > 20.0, "{p}: the result is within {worst:.1}x the f32 bound of the unrounded product: are the operands rounded?");
        }
    }
}

// ---- training at tf32 and bf16 on the emulated CUDA backend

/// Measured (2026-12-01, this file, emulated H200): the largest loss drift from the fp32 CPU
/// backend over 30 steps of the default GPT at batch 1 is 1.17e-4 at tf32 and 3.03e-4 at bf16
/// (the fp32 CUDA backend: about 1.5e-7, tests/emu_fma_parity.rs); with the fused attention,
/// whose q·kᵀ and p·v then run on the tensor cores too, 1.24e-4 and 7.12e-4 (measured
/// 2026-12-01); the loss falls from 4.31 to 0.95 either way. The bounds are about 5x those: a
/// regression that loses accuracy (a wrong rounding, an unrounded operand mixed in) or breaks
/// training fails; and a lower bound shows the tensor-core kernels ran (fp32 drifts 1e-7). About
/// 45-65 s per run on one core: .ci/run's sanitizer and reverse-schedule legs skip these four
/// (`emu_tc_default_gpt`).
const TRAIN_STEPS: u64 = 30;

fn train_at(p: Precision, fused: bool) -> robo_poet::diagnostics::parity::Parity {
    let mut cfg = common::default_gpt();
    if fused {
        let robo_poet::model::ModelConfig::Attention(a) = &mut cfg else {
            unreachable!("the default GPT is an attention model")
        };
        a.attention = robo_poet::model::attention::AttentionImpl::Fused;
    }
    training_parity_with(&cfg, 1, TRAIN_STEPS, 7, Box::new(EmuDevice::new()), |be| {
        be.set_precision(p)
    })
    .unwrap()
}

fn check_training(p: Precision, fused: bool, max_drift: f64) {
    let run = train_at(p, fused);
    let drift = run.max_loss_rel_err();
    let (first, last) = (run.steps[0].cpu_loss, run.steps.last().unwrap().cpu_loss);
    eprintln!("default GPT (fused attention: {fused}), {p}: {} steps, loss {first:.4} -> {last:.4} (fp32 CPU), max loss rel drift {drift:.2e}", run.steps.len());
    assert_eq!(run.steps.len() as u64, TRAIN_STEPS);
    assert!(
        last < first,
        "{p}: the loss did not fall ({first} -> {last})"
    );
    assert!(
        drift <= max_drift,
        "{p}: loss drift {drift:.2e} from the fp32 run > {max_drift:.0e}"
    );
    assert!(
        drift > 1e-6,
        "{p}: loss drift {drift:.2e}: as close as fp32, so the tensor-core kernels did not run"
    );
}

#[test]
fn emu_tc_default_gpt_trains_at_tf32_tracking_fp32() {
    check_training(Precision::Tf32, false, 6e-4);
}

#[test]
fn emu_tc_default_gpt_trains_at_bf16_tracking_fp32() {
    check_training(Precision::Bf16, false, 1.5e-3);
}

#[test]
fn emu_tc_default_gpt_fused_trains_at_tf32_tracking_fp32() {
    check_training(Precision::Tf32, true, 6.2e-4);
}

#[test]
fn emu_tc_default_gpt_fused_trains_at_bf16_tracking_fp32() {
    check_training(Precision::Bf16, true, 3.6e-3);
}
