//! The kernels of the launch-light training step, each against the CPU reference at ragged
//! shapes (sizes that are not multiples of the 64x64x16 matmul tiles, 1-row cases, splits that do
//! not divide N): the fused linear forms (q/k/v in one launch each way, matmul + GELU both ways,
//! weight + bias gradients in one launch split over N, split-K recurrence products), the residual
//! add + layernorm, the fused cross-entropy, and the multi-tensor gradient norm and AdamW.

#[macro_use]
mod common;

use robo_poet::gpu::kernels::{self, StepRecord, StepScalars, StepState};
use robo_poet::gpu::{Device, DeviceExt, DeviceSlice, EmuDevice};
use robo_poet::ops;
use robo_poet::ops::adamw::AdamWConfig;
use robo_poet::rng::Rng;

fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * scale).collect()
}

/// |got − want| <= abs + rel·|want| everywhere; names the first failing index.
#[track_caller]
fn assert_close_all(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= abs + rel * w.abs(),
            "{what}: element {i}: got {g}, want {w} (error {err:.3e}, tolerance {abs:.0e} + {rel:.0e}·|want|)"
        );
    }
}

/// The matmul tests' tolerance for a sum of `k` products of N(0, 1) values in f32 in another
/// order than the reference (tests/emu_matmul.rs explains the margin).
fn sum_tol(k: usize) -> f32 {
    1e-5 + 2e-6 * k as f32
}

fn up(dev: &dyn Device, v: &[f32]) -> DeviceSlice<f32> {
    dev.upload(v).unwrap()
}

fn down(dev: &dyn Device, s: DeviceSlice<f32>) -> Vec<f32> {
    dev.download(s).unwrap()
}

/// Zeroed counters for the last-block reductions.
fn counters(dev: &dyn Device, n: usize) -> DeviceSlice<u32> {
    dev.upload(&vec![0u32; n.max(1)]).unwrap()
}

const LINEAR_SHAPES: [(usize, usize, usize); 4] =
    [(37, 45, 33), (1, 1, 1), (70, 65, 130), (300, 17, 70)];

device_tests! {
    fn emu_matmul_forward_qkv_matches_three_forwards / gpu_matmul_forward_qkv_matches_three_forwards (dev) {
        for (n, ic, oc) in LINEAR_SHAPES {
            let mut rng = Rng::new((n * ic + oc) as u64);
            let inp = randn(&mut rng, n * ic, 1.0);
            let ws: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut rng, oc * ic, 1.0)).collect();
            let bs: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut rng, oc, 1.0)).collect();
            let outs = [0, 1, 2].map(|_| dev.alloc_slice::<f32>(n * oc).unwrap());
            // the third projection without a bias, as the launcher allows
            let bias = [Some(up(&dev, &bs[0])), Some(up(&dev, &bs[1])), None];
            kernels::matmul_forward_qkv(&dev, kernels::Precision::Fp32, outs, up(&dev, &inp), [0, 1, 2].map(|j| up(&dev, &ws[j])), bias, n, ic, oc).unwrap();
            for j in 0..3 {
                let mut want = vec![0.0; n * oc];
                ops::matmul::matmul_forward(&mut want, &inp, &ws[j], (j < 2).then_some(&bs[j][..]), n, ic, oc);
                assert_close_all(&format!("qkv forward {n}x{ic}x{oc} out {j}"), &down(&dev, outs[j]), &want, sum_tol(ic), 1e-5);
            }
        }
    }

    fn emu_matmul_forward_gelu_matches_matmul_then_gelu / gpu_matmul_forward_gelu_matches_matmul_then_gelu (dev) {
        for (n, ic, oc) in LINEAR_SHAPES {
            let mut rng = Rng::new(3 + (n * ic + oc) as u64);
            let (inp, w, b) = (randn(&mut rng, n * ic, 0.5), randn(&mut rng, oc * ic, 0.5), randn(&mut rng, oc, 0.5));
            let (pre, out) = (dev.alloc_slice::<f32>(n * oc).unwrap(), dev.alloc_slice::<f32>(n * oc).unwrap());
            kernels::matmul_forward_gelu(&dev, kernels::Precision::Fp32, pre, out, up(&dev, &inp), up(&dev, &w), Some(up(&dev, &b)), n, ic, oc).unwrap();
            let mut want_pre = vec![0.0; n * oc];
            ops::matmul::matmul_forward(&mut want_pre, &inp, &w, Some(&b), n, ic, oc);
            let got_pre = down(&dev, pre);
            assert_close_all(&format!("matmul+gelu pre {n}x{ic}x{oc}"), &got_pre, &want_pre, sum_tol(ic), 1e-5);
            // GELU of the kernel's own pre-activation: the activation is the elementwise kernel's
            // math on the same value (a few ulps from the reference's tanh)
            let mut want_out = vec![0.0; n * oc];
            ops::norm::gelu_forward(&mut want_out, &got_pre);
            assert_close_all(&format!("matmul+gelu out {n}x{ic}x{oc}"), &down(&dev, out), &want_out, 1e-6, 1e-5);
        }
    }

    fn emu_matmul_backward_input_qkv_and_gelu_match_the_reference / gpu_matmul_backward_input_qkv_and_gelu_match_the_reference (dev) {
        for (n, ic, oc) in LINEAR_SHAPES {
            let mut rng = Rng::new(5 + (n * ic + oc) as u64);
            let start = randn(&mut rng, n * ic, 1.0); // the ops accumulate
            let ds: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut rng, n * oc, 1.0)).collect();
            let ws: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut rng, oc * ic, 1.0)).collect();
            let x = randn(&mut rng, n * ic, 1.0);
            // qkv: dinp += Σ_j d_j · w_j
            let d_dinp = up(&dev, &start);
            kernels::matmul_backward_input_qkv(&dev, kernels::Precision::Fp32, d_dinp, [0, 1, 2].map(|j| up(&dev, &ds[j])), [0, 1, 2].map(|j| up(&dev, &ws[j])), n, ic, oc).unwrap();
            let mut want = start.clone();
            for j in 0..3 {
                let mut dw = vec![0.0; oc * ic];
                ops::matmul::matmul_backward(Some(&mut want), &mut dw, None, &ds[j], &x, &ws[j], n, ic, oc);
            }
            assert_close_all(&format!("qkv backward input {n}x{ic}x{oc}"), &down(&dev, d_dinp), &want, sum_tol(3 * oc), 1e-5);
            // gelu: dpre += gelu'(pre) ⊙ (dout · w)
            let pre = randn(&mut rng, n * ic, 1.0);
            let d_dpre = up(&dev, &start);
            kernels::matmul_backward_input_gelu(&dev, kernels::Precision::Fp32, d_dpre, up(&dev, &pre), up(&dev, &ds[0]), up(&dev, &ws[0]), n, ic, oc).unwrap();
            let mut dact = vec![0.0; n * ic];
            let mut dw = vec![0.0; oc * ic];
            ops::matmul::matmul_backward(Some(&mut dact), &mut dw, None, &ds[0], &x, &ws[0], n, ic, oc);
            let mut want = start.clone();
            ops::norm::gelu_backward(&mut want, &pre, &dact);
            assert_close_all(&format!("gelu backward input {n}x{ic}x{oc}"), &down(&dev, d_dpre), &want, 2.0 * sum_tol(oc), 1e-5);
        }
    }

    fn emu_linear_backward_params_matches_the_reference_for_any_split / gpu_linear_backward_params_matches_the_reference_for_any_split (dev) {
        for (n, ic, oc) in LINEAR_SHAPES {
            for count in [1usize, 3] {
                let mut rng = Rng::new(7 + (n * ic + oc + count) as u64);
                let x = randn(&mut rng, n * ic, 1.0);
                let douts: Vec<Vec<f32>> = (0..count).map(|_| randn(&mut rng, n * oc, 1.0)).collect();
                let (w0, b0) = (randn(&mut rng, oc * ic, 1.0), randn(&mut rng, oc, 1.0)); // the ops accumulate
                let heuristic = kernels::linear_backward_params_splits(n, ic, oc, count);
                for splits in [1, 2, 5, heuristic] {
                    let (pf, pc) = kernels::linear_backward_params_workspace(n, ic, oc, count, splits);
                    let ws = dev.alloc_slice::<f32>(pf.max(1)).unwrap();
                    let cs = counters(&dev, pc);
                    let dws: Vec<DeviceSlice<f32>> = (0..count).map(|_| up(&dev, &w0)).collect();
                    // the last layer without a bias
                    let dbs: Vec<Option<DeviceSlice<f32>>> = (0..count).map(|j| (j + 1 < count || count == 1).then(|| up(&dev, &b0))).collect();
                    let ds: Vec<DeviceSlice<f32>> = douts.iter().map(|d| up(&dev, d)).collect();
                    kernels::linear_backward_params(&dev, kernels::Precision::Fp32, &dws, &dbs, &ds, up(&dev, &x), Some(ws), Some(cs), splits, n, ic, oc).unwrap();
                    for j in 0..count {
                        let (mut dw, mut db) = (w0.clone(), b0.clone());
                        ops::matmul::matmul_backward(None, &mut dw, Some(&mut db), &douts[j], &x, &vec![0.0; oc * ic], n, ic, oc);
                        let what = format!("weight+bias grads {n}x{ic}x{oc} count {count} splits {splits} layer {j}");
                        assert_close_all(&format!("{what}: dweight"), &down(&dev, dws[j]), &dw, sum_tol(n), 1e-6);
                        if let Some(b) = dbs[j] {
                            assert_close_all(&format!("{what}: dbias"), &down(&dev, b), &db, sum_tol(n), 1e-6);
                        }
                    }
                    assert!(dev.download(cs).unwrap().iter().all(|&c| c == 0), "the counters are reset for the next launch");
                }
            }
        }
    }

    fn emu_splitk_recurrence_products_match_the_reference / gpu_splitk_recurrence_products_match_the_reference (dev) {
        // the LSTM's recurrence shapes: a few rows (B), a wide output, a long reduction
        for (n, ic, oc) in [(3, 7, 28), (32, 70, 280), (1, 300, 1200), (5, 1, 4)] {
            let mut rng = Rng::new(11 + (n * ic + oc) as u64);
            let (x, w, d) = (randn(&mut rng, n * ic, 1.0), randn(&mut rng, oc * ic, 1.0), randn(&mut rng, n * oc, 1.0));
            let (start_o, start_i) = (randn(&mut rng, n * oc, 1.0), randn(&mut rng, n * ic, 1.0));
            for splits in [1, 3, kernels::splitk_splits(n, oc, ic, 132), kernels::splitk_splits(n, ic, oc, 132)] {
                let (pf, pc) = kernels::splitk_workspace(n, oc.max(ic), splits.max(1));
                let (ws, cs) = (dev.alloc_slice::<f32>(pf.max(1)).unwrap(), counters(&dev, pc.max(64)));
                // forward: out += x · wᵀ
                let out = up(&dev, &start_o);
                kernels::matmul_forward_accumulate_splitk(&dev, kernels::Precision::Fp32, out, up(&dev, &x), up(&dev, &w), Some(ws), Some(cs), splits, n, ic, oc).unwrap();
                let mut want = vec![0.0; n * oc];
                ops::matmul::matmul_forward(&mut want, &x, &w, None, n, ic, oc);
                for (a, s) in want.iter_mut().zip(&start_o) {
                    *a += s;
                }
                assert_close_all(&format!("splitk forward {n}x{ic}x{oc} splits {splits}"), &down(&dev, out), &want, sum_tol(ic), 1e-5);
                // backward input: dinp += d · w
                let dinp = up(&dev, &start_i);
                kernels::matmul_backward_input_splitk(&dev, kernels::Precision::Fp32, dinp, up(&dev, &d), up(&dev, &w), Some(ws), Some(cs), splits, n, ic, oc).unwrap();
                let mut want = start_i.clone();
                let mut dw = vec![0.0; oc * ic];
                ops::matmul::matmul_backward(Some(&mut want), &mut dw, None, &d, &x, &w, n, ic, oc);
                assert_close_all(&format!("splitk backward input {n}x{ic}x{oc} splits {splits}"), &down(&dev, dinp), &want, sum_tol(oc), 1e-5);
                assert!(dev.download(cs).unwrap().iter().all(|&c| c == 0));
            }
        }
    }

    fn emu_add_layernorm_forward_is_add_then_layernorm_bit_for_bit / gpu_add_layernorm_forward_is_add_then_layernorm_bit_for_bit (dev) {
        for (n, c) in [(37, 45), (1, 1), (5, 130), (64, 33)] {
            let mut rng = Rng::new(13 + (n * c) as u64);
            let (a, b) = (randn(&mut rng, n * c, 1.0), randn(&mut rng, n * c, 1.0));
            let (w, bias) = (randn(&mut rng, c, 1.0), randn(&mut rng, c, 1.0));
            let [res, out, mean, rstd] = [n * c, n * c, n, n].map(|len| dev.alloc_slice::<f32>(len).unwrap());
            let (wd, bd) = (up(&dev, &w), up(&dev, &bias));
            kernels::add_layernorm_forward(&dev, res, out, mean, rstd, up(&dev, &a), up(&dev, &b), wd, bd, n, c).unwrap();
            // the unfused kernels on the same device
            let [res2, out2, mean2, rstd2] = [n * c, n * c, n, n].map(|len| dev.alloc_slice::<f32>(len).unwrap());
            kernels::add(&dev, res2, up(&dev, &a), up(&dev, &b)).unwrap();
            kernels::layernorm_forward(&dev, out2, mean2, rstd2, res2, wd, bd, n, c).unwrap();
            for (what, x, y) in [("res", res, res2), ("out", out, out2), ("mean", mean, mean2), ("rstd", rstd, rstd2)] {
                let (x, y) = (down(&dev, x), down(&dev, y));
                assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "add+layernorm {n}x{c}: {what} differs from add then layernorm");
            }
            // and the reference
            let mut sum = vec![0.0; n * c];
            ops::norm::add_forward(&mut sum, &a, &b);
            let (mut o, mut m, mut r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            ops::norm::layernorm_forward(&mut o, &mut m, &mut r, &sum, &w, &bias, n, c);
            assert_close_all(&format!("add+layernorm {n}x{c} vs reference"), &down(&dev, out), &o, 2e-5, 1e-5);
        }
    }

    fn emu_cross_entropy_forward_backward_matches_the_two_ops / gpu_cross_entropy_forward_backward_matches_the_two_ops (dev) {
        for (n, v) in [(37, 19), (1, 1), (9, 78), (33, 130)] {
            let mut rng = Rng::new(17 + (n * v) as u64);
            let logits = randn(&mut rng, n * v, 3.0);
            let mut targets: Vec<u32> = (0..n).map(|i| (i * 7 % v) as u32).collect();
            if n > 3 {
                targets[2] = ops::IGNORE;
            }
            let scale = 1.0 / n as f32;
            let scalars = StepScalars { step: 1, lr: 0.0, loss_scale: scale };
            let sc = dev.upload(bytemuck::bytes_of(&scalars)).unwrap();
            let (losses, dl) = (dev.alloc_slice::<f32>(n).unwrap(), dev.alloc_slice::<f32>(n * v).unwrap());
            kernels::cross_entropy_forward_backward(&dev, losses, dl, up(&dev, &logits), dev.upload(&targets).unwrap(), sc, n, v).unwrap();
            let mut want_l = vec![0.0; n];
            ops::loss::cross_entropy_forward(&mut want_l, &logits, &targets, n, v);
            let mut want_d = vec![0.0; n * v];
            ops::loss::cross_entropy_backward(&mut want_d, &logits, &targets, scale, n, v);
            assert_close_all(&format!("fused CE {n}x{v} losses"), &down(&dev, losses), &want_l, 1e-5, 1e-5);
            assert_close_all(&format!("fused CE {n}x{v} dlogits (overwritten, zero for IGNORE)"), &down(&dev, dl), &want_d, 1e-7, 1e-5);
        }
    }
}

/// The multi-tensor step on `dev`: tensors of the given lengths (some decayed) in one region
/// per kind; returns the state, the record and the updated parameters and moments.
#[allow(clippy::type_complexity)]
fn multi_step(
    dev: &dyn Device,
    lens: &[usize],
    grads: &[Vec<f32>],
    params: &[Vec<f32>],
    losses: &[f32],
    targets: &[u32],
    scalars: StepScalars,
    clip: f32,
    cfg: &AdamWConfig,
) -> (
    StepState,
    StepRecord,
    Vec<f64>,
    Vec<Vec<f32>>,
    Vec<Vec<f32>>,
    Vec<Vec<f32>>,
) {
    // each tensor padded to 64 floats in its region, as the arena lays them out
    let offs: Vec<usize> = lens
        .iter()
        .scan(0, |at, &l| {
            let o = *at;
            *at += l.next_multiple_of(64);
            Some(o)
        })
        .collect();
    let total = offs.last().unwrap() + lens.last().unwrap().next_multiple_of(64);
    let place = |vs: &[Vec<f32>]| {
        let mut r = vec![0.0f32; total];
        for (v, &o) in vs.iter().zip(&offs) {
            r[o..o + v.len()].copy_from_slice(v);
        }
        r
    };
    let tensors: Vec<(usize, usize, bool)> = lens
        .iter()
        .zip(&offs)
        .enumerate()
        .map(|(i, (&l, &o))| (o, l, i % 2 == 0))
        .collect();
    let (off, len, ten, dec) = kernels::chunk_table(&tensors);
    let table = kernels::ChunkTable {
        offset: dev.upload(&off).unwrap(),
        len: dev.upload(&len).unwrap(),
        tensor: dev.upload(&ten).unwrap(),
        decay: dev.upload(&dec).unwrap(),
        chunks: off.len(),
        tensors: lens.len(),
    };
    let (p, g) = (up(dev, &place(params)), up(dev, &place(grads)));
    let m = up(dev, &vec![0.0; total]);
    let v = up(dev, &vec![0.0; total]);
    let state = dev.upload(&[0u8; 24]).unwrap();
    let ring = dev.upload(&[0u8; 40 * 4]).unwrap();
    let tensor_sq = dev.alloc_slice::<f64>(lens.len()).unwrap();
    let partials = dev.alloc_slice::<f64>(off.len()).unwrap();
    let sc = dev.upload(bytemuck::bytes_of(&scalars)).unwrap();
    kernels::step_finalize(
        dev,
        state,
        ring,
        tensor_sq,
        partials,
        g,
        &table,
        up(dev, losses),
        dev.upload(targets).unwrap(),
        sc,
        clip,
        cfg,
    )
    .unwrap();
    kernels::adamw_multi(dev, p, g, m, v, &table, state, sc, cfg).unwrap();
    let st: StepState = *bytemuck::from_bytes(&dev.download(state).unwrap());
    let ring = dev.download(ring).unwrap();
    let slot = (scalars.step % 4) as usize;
    let rec: StepRecord = *bytemuck::from_bytes(&ring[slot * 40..slot * 40 + 40]);
    let take = |s: DeviceSlice<f32>| -> Vec<Vec<f32>> {
        let all = dev.download(s).unwrap();
        offs.iter()
            .zip(lens)
            .map(|(&o, &l)| all[o..o + l].to_vec())
            .collect()
    };
    (
        st,
        rec,
        dev.download(tensor_sq).unwrap(),
        take(p),
        take(m),
        take(v),
    )
}

device_tests! {
    fn emu_grad_norm_clip_and_adamw_over_every_tensor_match_the_reference / gpu_grad_norm_clip_and_adamw_over_every_tensor_match_the_reference (dev) {
        // tensors spanning several chunks (STEP_CHUNK floats) and tiny ones
        let lens = [1usize, 37, kernels::STEP_CHUNK + 5, 300, 2 * kernels::STEP_CHUNK];
        let mut rng = Rng::new(19);
        let grads: Vec<Vec<f32>> = lens.iter().map(|&l| randn(&mut rng, l, 0.1)).collect();
        let params: Vec<Vec<f32>> = lens.iter().map(|&l| randn(&mut rng, l, 1.0)).collect();
        let losses = randn(&mut rng, 50, 1.0).iter().map(|x| x.abs() + 1.0).collect::<Vec<_>>();
        let mut targets: Vec<u32> = (0..50).collect();
        targets[3] = ops::IGNORE;
        targets[40] = ops::IGNORE;
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let (step, lr, clip) = (7u64, 3e-3f32, 0.5f32);
        let (st, rec, tsq, p, m, v) = multi_step(&dev, &lens, &grads, &params, &losses, &targets, StepScalars { step, lr, loss_scale: 0.02 }, clip, &cfg);
        // the reference: per-tensor Σ g², the clip factor, AdamW per tensor
        let sq: Vec<f64> = grads.iter().map(|g| ops::adamw::sum_squares(g)).collect();
        let norm = sq.iter().sum::<f64>().sqrt();
        for (a, b) in tsq.iter().zip(&sq) {
            assert!((a - b).abs() <= 1e-12 * b.max(1.0), "per-tensor Σ g²: {a} vs {b}");
        }
        assert!((rec.grad_sq.sqrt() - norm).abs() <= 1e-12 * norm, "global norm {} vs {norm}", rec.grad_sq.sqrt());
        let (sum, scored) = ops::loss::loss_sum(&losses, &targets);
        assert_eq!(rec.scored as usize, scored);
        assert!((rec.loss_sum - sum).abs() <= 1e-12 * sum, "loss sum {} vs {sum}", rec.loss_sum);
        assert_eq!((rec.step, rec.updated, rec.halted, st.update, st.halted), (step, 1, 0, 1, 0));
        let factor = ops::adamw::clip_scale(norm, clip);
        assert!(factor < 1.0, "the test clips");
        assert_eq!(st.clip_factor.to_bits(), factor.to_bits(), "clip factor");
        for (i, &l) in lens.iter().enumerate() {
            let (mut pw, mut mw, mut vw) = (params[i].clone(), vec![0.0; l], vec![0.0; l]);
            ops::adamw::adamw_update(&mut pw, &grads[i], &mut mw, &mut vw, &cfg, lr, step, factor, i % 2 == 0);
            // the same expression in the same order: equal up to FMA contraction
            assert_close_all(&format!("adamw tensor {i} params"), &p[i], &pw, 1e-7, 1e-6);
            assert_close_all(&format!("adamw tensor {i} m"), &m[i], &mw, 1e-9, 1e-6);
            assert_close_all(&format!("adamw tensor {i} v"), &v[i], &vw, 1e-12, 1e-6);
        }
    }

    fn emu_a_non_finite_step_halts_the_updates / gpu_a_non_finite_step_halts_the_updates (dev) {
        let lens = [5usize, 9];
        let grads = vec![vec![0.1f32; 5], vec![f32::NAN; 9]];
        let params = vec![vec![1.0f32; 5], vec![2.0f32; 9]];
        let (st, rec, tsq, p, _, _) = multi_step(&dev, &lens, &grads, &params, &[1.0, 2.0], &[0, 1], StepScalars { step: 3, lr: 1e-2, loss_scale: 0.5 }, 1.0, &AdamWConfig::default());
        assert_eq!((st.update, st.halted, rec.updated, rec.halted), (0, 1, 0, 1));
        assert!(tsq[1].is_nan() && tsq[0] > 0.0, "the per-tensor sums name the bad tensor: {tsq:?}");
        assert_eq!(p, params, "no parameter moved");
    }
}

#[test]
fn emu_step_kernels_are_deterministic() {
    let run = || {
        let dev = EmuDevice::new();
        let lens = [70usize, kernels::STEP_CHUNK + 1];
        let mut rng = Rng::new(23);
        let grads: Vec<Vec<f32>> = lens.iter().map(|&l| randn(&mut rng, l, 0.3)).collect();
        let params: Vec<Vec<f32>> = lens.iter().map(|&l| randn(&mut rng, l, 1.0)).collect();
        let r = multi_step(
            &dev,
            &lens,
            &grads,
            &params,
            &[1.5; 9],
            &[0; 9],
            StepScalars {
                step: 2,
                lr: 1e-3,
                loss_scale: 1.0 / 9.0,
            },
            1.0,
            &AdamWConfig::default(),
        );
        (
            r.1.grad_sq.to_bits(),
            r.3.concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(run(), run());
}
