//! The layernorm, GELU, residual, embedding, cross-entropy and optimizer kernels (kernels/norm.cu,
//! embedding.cu, loss.cu, optim.cu) on the emulated device, launched through their host launchers
//! (src/gpu/kernels), against the CPU reference (src/ops) at ragged shapes; and the determinism
//! of the reductions that must not depend on thread order. Each device_tests! body also runs as a
//! gpu_* test on a real GPU (SKIPPED without one).

#[macro_use]
mod common;

use robo_poet::gpu::emu::Schedule;
use robo_poet::gpu::{kernels, Device, DeviceExt, DeviceSlice, EmuDevice};
use robo_poet::ops;
use robo_poet::ops::adamw::AdamWConfig;
use robo_poet::ops::IGNORE;
use robo_poet::rng::Rng;

fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * scale).collect()
}

/// Asserts |got − want| <= abs + rel·|want| everywhere; names the first failing index.
#[track_caller]
fn assert_close_all(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(err <= abs + rel * w.abs(), "{what}: element {i}: got {g}, want {w} (error {err:.3e}, tolerance {abs:.0e} + {rel:.0e}·|want|)");
    }
}

/// Asserts the two have the same bits everywhere; names the first differing index.
#[track_caller]
fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: element {i}: got {g} ({:#010x}), want {w} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

fn up(dev: &dyn Device, data: &[f32]) -> DeviceSlice<f32> {
    dev.upload(data).unwrap()
}

fn down(dev: &dyn Device, s: DeviceSlice<f32>) -> Vec<f32> {
    dev.download(s).unwrap()
}

// ----------------------------------------------------------------------------------------------
// layernorm

struct LayernormCase {
    n: usize,
    c: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dout: Vec<f32>,
}

/// Inputs with a per-row offset up to ±8 (a mean far from 0 tests the two-pass variance).
fn layernorm_case(n: usize, c: usize, seed: u64) -> LayernormCase {
    let mut rng = Rng::new(seed);
    let mut x = randn(&mut rng, n * c, 1.0);
    for row in x.chunks_mut(c) {
        let offset = (rng.uniform() as f32 - 0.5) * 16.0;
        row.iter_mut().for_each(|v| *v += offset);
    }
    LayernormCase {
        n,
        c,
        x,
        w: randn(&mut rng, c, 1.0),
        b: randn(&mut rng, c, 1.0),
        dout: randn(&mut rng, n * c, 1.0),
    }
}

fn check_layernorm_forward(dev: &dyn Device, case: &LayernormCase) {
    let (n, c) = (case.n, case.c);
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    ops::norm::layernorm_forward(
        &mut out, &mut mean, &mut rstd, &case.x, &case.w, &case.b, n, c,
    );

    let d_out = dev.alloc_slice::<f32>(n * c).unwrap();
    let d_mean = dev.alloc_slice::<f32>(n).unwrap();
    let d_rstd = dev.alloc_slice::<f32>(n).unwrap();
    let (d_x, d_w, d_b) = (up(dev, &case.x), up(dev, &case.w), up(dev, &case.b));
    kernels::layernorm_forward(dev, d_out, d_mean, d_rstd, d_x, d_w, d_b, n, c).unwrap();
    let what = format!("layernorm_forward N={n} C={c}");
    // f32 two-pass statistics (tree sums over C ≤ 130 terms of |x| ≤ ~12) against f64 ones: the
    // mean is off by a few ulp of |x| (~1e-6), rstd by a few 1e-7 relative; out = x̂·w + b carries
    // that as ≲1e-5 absolute. An indexing bug is off by O(1) or NaN.
    assert_close_all(
        &format!("{what} mean"),
        &down(dev, d_mean),
        &mean,
        2e-6,
        1e-6,
    );
    assert_close_all(
        &format!("{what} rstd"),
        &down(dev, d_rstd),
        &rstd,
        0.0,
        2e-6,
    );
    assert_close_all(&format!("{what} out"), &down(dev, d_out), &out, 2e-5, 1e-5);
}

device_tests! {
    fn emu_layernorm_forward_matches_reference_at_ragged_shapes / gpu_layernorm_forward_matches_reference_at_ragged_shapes (dev) {
        check_layernorm_forward(&dev, &layernorm_case(37, 45, 1));
        check_layernorm_forward(&dev, &layernorm_case(5, 1, 2));
        check_layernorm_forward(&dev, &layernorm_case(6, 130, 3));
    }
}

/// Runs layernorm_backward on `dev` from gradients that start at `start` (dinp, dweight,
/// dbias); mean and rstd come from the CPU forward so both sides see the same statistics.
/// The weight and bias sums are split over the rows as the launcher's heuristic says.
fn gpu_layernorm_backward(
    dev: &dyn Device,
    case: &LayernormCase,
    start: &(Vec<f32>, Vec<f32>, Vec<f32>),
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let splits = kernels::layernorm_backward_splits(case.n, case.c);
    gpu_layernorm_backward_split(dev, case, start, splits, None)
}

/// [`gpu_layernorm_backward`] with `splits` row splits of the parameter sums and an optional
/// residual gradient added to dinp.
fn gpu_layernorm_backward_split(
    dev: &dyn Device,
    case: &LayernormCase,
    start: &(Vec<f32>, Vec<f32>, Vec<f32>),
    splits: usize,
    dresidual: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, c) = (case.n, case.c);
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    ops::norm::layernorm_forward(
        &mut out, &mut mean, &mut rstd, &case.x, &case.w, &case.b, n, c,
    );
    let (d_dx, d_dw, d_db) = (up(dev, &start.0), up(dev, &start.1), up(dev, &start.2));
    kernels::layernorm_backward(
        dev,
        d_dx,
        d_dw,
        d_db,
        up(dev, &case.dout),
        up(dev, &case.x),
        up(dev, &case.w),
        up(dev, &mean),
        up(dev, &rstd),
        dresidual.map(|r| up(dev, r)),
        Some((
            dev.alloc_slice::<f64>((splits * 2 * c).max(1)).unwrap(),
            dev.upload(&vec![0u32; c.div_ceil(32)]).unwrap(),
        )),
        splits,
        n,
        c,
    )
    .unwrap();
    (down(dev, d_dx), down(dev, d_dw), down(dev, d_db))
}

fn nonzero_grads(case: &LayernormCase, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    (
        randn(&mut rng, case.n * case.c, 1.0),
        randn(&mut rng, case.c, 1.0),
        randn(&mut rng, case.c, 1.0),
    )
}

fn check_layernorm_backward(dev: &dyn Device, case: &LayernormCase, seed: u64) {
    let (n, c) = (case.n, case.c);
    let start = nonzero_grads(case, seed); // non-zero: the op accumulates
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    ops::norm::layernorm_forward(
        &mut out, &mut mean, &mut rstd, &case.x, &case.w, &case.b, n, c,
    );
    let (mut dx, mut dw, mut db) = start.clone();
    ops::norm::layernorm_backward(
        &mut dx, &mut dw, &mut db, &case.dout, &case.x, &case.w, &mean, &rstd, n, c,
    );
    let (got_dx, got_dw, got_db) = gpu_layernorm_backward(dev, case, &start);
    let what = format!("layernorm_backward N={n} C={c}");
    // dinp: the row means of dx̂ and dx̂·x̂ are f32 tree sums here, f64 there (~1e-7 relative),
    // scaled by rstd (≤ ~3 here): ≲1e-5 absolute.
    assert_close_all(&format!("{what} dinp"), &got_dx, &dx, 2e-5, 1e-5);
    // dweight, dbias: the same f32 terms summed in f64 in another order, then rounded to f32:
    // at most one f32 ulp apart.
    assert_close_all(&format!("{what} dweight"), &got_dw, &dw, 1e-6, 3e-7);
    assert_close_all(&format!("{what} dbias"), &got_db, &db, 1e-6, 3e-7);
}

device_tests! {
    fn emu_layernorm_backward_matches_reference_and_accumulates / gpu_layernorm_backward_matches_reference_and_accumulates (dev) {
        check_layernorm_backward(&dev, &layernorm_case(37, 45, 4), 40);
        check_layernorm_backward(&dev, &layernorm_case(5, 1, 5), 50);
        check_layernorm_backward(&dev, &layernorm_case(70, 33, 6), 60); // N > 32 row lanes
        check_layernorm_backward(&dev, &layernorm_case(300, 70, 8), 61); // split over rows
    }

    fn emu_layernorm_backward_splits_and_residual_match_the_unsplit_sums / gpu_layernorm_backward_splits_and_residual_match_the_unsplit_sums (dev) {
        // Any split count gives the reference's dweight and dbias within an ulp (f64 partial
        // sums in another order), and the residual gradient is added to dinp exactly as
        // `accumulate` adds it after the unfused op.
        let case = layernorm_case(133, 37, 9);
        let start = nonzero_grads(&case, 62);
        let (base_dx, base_dw, base_db) = gpu_layernorm_backward_split(&dev, &case, &start, 1, None);
        let resid = randn(&mut Rng::new(63), case.n * case.c, 1.0);
        for splits in [2, 3, 7, 64] {
            let (dx, dw, db) = gpu_layernorm_backward_split(&dev, &case, &start, splits, Some(&resid));
            let what = format!("layernorm_backward N=133 C=37 splits={splits}");
            assert_close_all(&format!("{what} dweight"), &dw, &base_dw, 1e-6, 3e-7);
            assert_close_all(&format!("{what} dbias"), &db, &base_db, 1e-6, 3e-7);
            let want: Vec<f32> = base_dx.iter().zip(&resid).map(|(a, r)| a + r).collect();
            assert_eq!(
                dx.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{what}: dinp with the residual is (unfused dinp) + dresidual, bit for bit"
            );
        }
    }
}

#[test]
fn emu_layernorm_backward_is_deterministic() {
    let case = layernorm_case(40, 20, 7); // N > 32 row lanes, one column block
    let start = nonzero_grads(&case, 70);
    let first = gpu_layernorm_backward(&EmuDevice::new(), &case, &start);
    let again = gpu_layernorm_backward(&EmuDevice::new(), &case, &start);
    let reverse = gpu_layernorm_backward(
        &EmuDevice::new().with_schedule(Schedule::Reverse),
        &case,
        &start,
    );
    for (name, other) in [("second run", &again), ("reverse schedule", &reverse)] {
        assert_bits_eq(
            &format!("layernorm_backward dinp, {name}"),
            &other.0,
            &first.0,
        );
        assert_bits_eq(
            &format!("layernorm_backward dweight, {name}"),
            &other.1,
            &first.1,
        );
        assert_bits_eq(
            &format!("layernorm_backward dbias, {name}"),
            &other.2,
            &first.2,
        );
    }
}

// ----------------------------------------------------------------------------------------------
// gelu, add, accumulate

device_tests! {
    fn emu_gelu_forward_and_backward_match_reference / gpu_gelu_forward_and_backward_match_reference (dev) {
        let mut rng = Rng::new(8);
        for n in [1, 1037] {
            let mut x = randn(&mut rng, n, 3.0);
            // saturation on both sides and the exact zero
            for (k, v) in [(0, 0.0), (1, 30.0), (2, -30.0), (3, 9.5), (4, -9.5)] {
                if k < n {
                    x[k] = v;
                }
            }
            let mut out = vec![0.0; n];
            ops::norm::gelu_forward(&mut out, &x);
            let d_x = up(&dev, &x);
            let d_out = dev.alloc_slice::<f32>(n).unwrap();
            kernels::gelu_forward(&dev, d_out, d_x).unwrap();
            // the same f32 formula and expf; on the GPU expf is within 2 ulp and FMA contraction
            // changes a rounding or two: ~1e-7 absolute where 1 + tanh cancels, ~1e-6 relative.
            assert_close_all(
                &format!("gelu_forward n={n}"),
                &down(&dev, d_out),
                &out,
                1e-6,
                1e-5,
            );

            let dout = randn(&mut rng, n, 1.0);
            let start = randn(&mut rng, n, 1.0); // non-zero: the op accumulates
            let mut dx = start.clone();
            ops::norm::gelu_backward(&mut dx, &x, &dout);
            let d_dx = up(&dev, &start);
            kernels::gelu_backward(&dev, d_dx, d_x, up(&dev, &dout)).unwrap();
            // as the forward, plus one accumulate rounding
            assert_close_all(
                &format!("gelu_backward n={n}"),
                &down(&dev, d_dx),
                &dx,
                1e-6,
                1e-5,
            );
        }
    }
}

device_tests! {
    fn emu_add_and_accumulate_match_reference_exactly / gpu_add_and_accumulate_match_reference_exactly (dev) {
        let mut rng = Rng::new(9);
        for n in [1, 257] {
            let (a, b) = (randn(&mut rng, n, 1.0), randn(&mut rng, n, 1.0));
            let mut want = vec![0.0; n];
            ops::norm::add_forward(&mut want, &a, &b);
            let d_out = dev.alloc_slice::<f32>(n).unwrap();
            kernels::add(&dev, d_out, up(&dev, &a), up(&dev, &b)).unwrap();
            // one f32 add per element on both sides: bit-identical
            assert_bits_eq(&format!("add n={n}"), &down(&dev, d_out), &want);

            ops::norm::accumulate(&mut want, &a);
            kernels::accumulate(&dev, d_out, up(&dev, &a)).unwrap();
            assert_bits_eq(&format!("accumulate n={n}"), &down(&dev, d_out), &want);
        }
    }
}

// ----------------------------------------------------------------------------------------------
// embedding

fn tokens(rng: &mut Rng, n: usize, v: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(v as u64) as u32).collect()
}

device_tests! {
    fn emu_embedding_forward_matches_reference_with_and_without_wpe / gpu_embedding_forward_matches_reference_with_and_without_wpe (dev) {
        let mut rng = Rng::new(10);
        for (b, t, c, v) in [(3, 37, 45, 78), (2, 5, 1, 11)] {
            let toks = tokens(&mut rng, b * t, v);
            let wte = randn(&mut rng, v * c, 1.0);
            let wpe = randn(&mut rng, (t + 2) * c, 1.0); // more rows than T, as a max-length table
            let d_toks = dev.upload(&toks).unwrap();
            let d_wte = up(&dev, &wte);
            for use_wpe in [false, true] {
                let wpe_ref = use_wpe.then_some(&wpe[..]);
                let mut want = vec![0.0; b * t * c];
                ops::embedding::embedding_forward(&mut want, &toks, &wte, wpe_ref, b, t, c);
                let d_wpe = wpe_ref.map(|p| up(&dev, p));
                let d_out = dev.alloc_slice::<f32>(b * t * c).unwrap();
                kernels::embedding_forward(&dev, d_out, d_toks, d_wte, d_wpe, b, t, c, v).unwrap();
                // a copy and at most one f32 add, as in the reference: bit-identical
                let what = format!("embedding_forward B={b} T={t} C={c} V={v} wpe={use_wpe}");
                assert_bits_eq(&what, &down(&dev, d_out), &want);
            }
        }
    }
}

device_tests! {
    fn emu_embedding_forward_gives_nan_rows_for_tokens_out_of_range / gpu_embedding_forward_gives_nan_rows_for_tokens_out_of_range (dev) {
        let mut rng = Rng::new(11);
        let (b, t, c, v) = (2, 7, 45, 78);
        let mut toks = tokens(&mut rng, b * t, v);
        let wte = randn(&mut rng, v * c, 1.0);
        let mut want = vec![0.0; b * t * c];
        ops::embedding::embedding_forward(&mut want, &toks, &wte, None, b, t, c);
        let bad = [(3, v as u32), (9, IGNORE)];
        for &(n, tok) in &bad {
            toks[n] = tok;
        }
        let d_out = dev.alloc_slice::<f32>(b * t * c).unwrap();
        let (d_toks, d_wte) = (dev.upload(&toks).unwrap(), up(&dev, &wte));
        kernels::embedding_forward(&dev, d_out, d_toks, d_wte, None, b, t, c, v).unwrap();
        let got = down(&dev, d_out);
        for n in 0..b * t {
            let row = &got[n * c..(n + 1) * c];
            if bad.iter().any(|&(k, _)| k == n) {
                assert!(
                    row.iter().all(|x| x.is_nan()),
                    "embedding_forward: row {n} with token {} >= V={v} must be NaN",
                    toks[n]
                );
            } else {
                assert_bits_eq(
                    &format!("embedding_forward row {n}"),
                    row,
                    &want[n * c..(n + 1) * c],
                );
            }
        }
    }
}

struct EmbeddingGrads {
    dwte: Vec<f32>,
    dwpe: Option<Vec<f32>>,
}

/// embedding_backward on `dev` from non-zero starting gradients.
#[allow(clippy::too_many_arguments)]
fn gpu_embedding_backward(
    dev: &dyn Device,
    start: &EmbeddingGrads,
    dout: &[f32],
    toks: &[u32],
    b: usize,
    t: usize,
    c: usize,
    v: usize,
) -> EmbeddingGrads {
    let d_dwte = up(dev, &start.dwte);
    let d_dwpe = start.dwpe.as_ref().map(|p| up(dev, p));
    let (d_dout, d_toks) = (up(dev, dout), dev.upload(toks).unwrap());
    kernels::embedding_backward(dev, d_dwte, d_dwpe, d_dout, d_toks, b, t, c, v).unwrap();
    EmbeddingGrads {
        dwte: down(dev, d_dwte),
        dwpe: d_dwpe.map(|p| down(dev, p)),
    }
}

device_tests! {
    fn emu_embedding_backward_matches_reference_with_repeated_tokens / gpu_embedding_backward_matches_reference_with_repeated_tokens (dev) {
        let mut rng = Rng::new(12);
        // V=11 repeats every token ~10 times; V=78 (the char vocabulary) is not a multiple of 4 warps
        for (b, t, c, v) in [(3, 37, 45, 11), (3, 37, 45, 78), (2, 5, 1, 3)] {
            let toks = tokens(&mut rng, b * t, v);
            let dout = randn(&mut rng, b * t * c, 1.0);
            for use_wpe in [false, true] {
                let start = EmbeddingGrads {
                    dwte: randn(&mut rng, v * c, 1.0), // non-zero: the op accumulates
                    dwpe: use_wpe.then(|| randn(&mut rng, (t + 2) * c, 1.0)),
                };
                let mut want = EmbeddingGrads {
                    dwte: start.dwte.clone(),
                    dwpe: start.dwpe.clone(),
                };
                ops::embedding::embedding_backward(
                    &mut want.dwte,
                    want.dwpe.as_deref_mut(),
                    &dout,
                    &toks,
                    b,
                    t,
                    c,
                );
                let got = gpu_embedding_backward(&dev, &start, &dout, &toks, b, t, c, v);
                // the kernels add the same f32 values in the reference's order (positions in
                // increasing n; batches in increasing b): bit-identical, rows past T included
                let what = format!("embedding_backward B={b} T={t} C={c} V={v} wpe={use_wpe}");
                assert_bits_eq(&format!("{what} dwte"), &got.dwte, &want.dwte);
                if let (Some(g), Some(w)) = (&got.dwpe, &want.dwpe) {
                    assert_bits_eq(&format!("{what} dwpe"), g, w);
                }
            }
        }
    }
}

device_tests! {
    fn emu_embedding_backward_skips_tokens_out_of_range / gpu_embedding_backward_skips_tokens_out_of_range (dev) {
        let mut rng = Rng::new(13);
        let (b, t, c, v) = (2, 19, 33, 7);
        let mut toks = tokens(&mut rng, b * t, v);
        let mut dout = randn(&mut rng, b * t * c, 1.0);
        let start = EmbeddingGrads {
            dwte: randn(&mut rng, v * c, 1.0),
            dwpe: None,
        };
        let bad = [(0, v as u32), (20, IGNORE), (37, 1000)];
        for &(n, tok) in &bad {
            toks[n] = tok;
        }
        let got = gpu_embedding_backward(&dev, &start, &dout, &toks, b, t, c, v);
        // the reference rejects such tokens: give it token 0 with a zero gradient row instead
        let mut ref_toks = toks.clone();
        for &(n, _) in &bad {
            ref_toks[n] = 0;
            dout[n * c..(n + 1) * c].fill(0.0);
        }
        let mut want = start.dwte.clone();
        ops::embedding::embedding_backward(&mut want, None, &dout, &ref_toks, b, t, c);
        assert_bits_eq("embedding_backward with tokens >= V", &got.dwte, &want);
    }
}

#[test]
fn emu_embedding_backward_is_deterministic() {
    let mut rng = Rng::new(14);
    let (b, t, c, v) = (4, 33, 40, 9); // few tokens, many repeats
    let toks = tokens(&mut rng, b * t, v);
    let dout = randn(&mut rng, b * t * c, 1.0);
    let start = EmbeddingGrads {
        dwte: randn(&mut rng, v * c, 1.0),
        dwpe: Some(randn(&mut rng, t * c, 1.0)),
    };
    let run = |dev: EmuDevice| gpu_embedding_backward(&dev, &start, &dout, &toks, b, t, c, v);
    let first = run(EmuDevice::new());
    for (name, other) in [
        ("second run", run(EmuDevice::new())),
        (
            "reverse schedule",
            run(EmuDevice::new().with_schedule(Schedule::Reverse)),
        ),
    ] {
        assert_bits_eq(
            &format!("embedding_backward dwte, {name}"),
            &other.dwte,
            &first.dwte,
        );
        assert_bits_eq(
            &format!("embedding_backward dwpe, {name}"),
            other.dwpe.as_ref().unwrap(),
            first.dwpe.as_ref().unwrap(),
        );
    }
}

// ----------------------------------------------------------------------------------------------
// cross-entropy

fn check_cross_entropy(dev: &dyn Device, n: usize, v: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut logits = randn(&mut rng, n * v, 3.0);
    // row 1 sits at +100: exp without the max subtraction would overflow f32
    for x in logits.iter_mut().skip(v).take(v) {
        *x += 100.0;
    }
    let targets: Vec<u32> = (0..n)
        .map(|i| {
            if i % 7 == 3 {
                IGNORE
            } else {
                rng.below(v as u64) as u32
            }
        })
        .collect();
    let what = format!("cross_entropy N={n} V={v}");

    let mut losses = vec![0.0; n];
    ops::loss::cross_entropy_forward(&mut losses, &logits, &targets, n, v);
    let (d_logits, d_targets) = (up(dev, &logits), dev.upload(&targets).unwrap());
    let d_losses = dev.alloc_slice::<f32>(n).unwrap();
    kernels::cross_entropy_forward(dev, d_losses, d_logits, d_targets, n, v).unwrap();
    let got = down(dev, d_losses);
    // Σ exp over V ≤ 2728 terms in f32 (merged online, ~1e-6 relative) against f64, then a log:
    // ~1e-6 absolute on losses of a few units.
    assert_close_all(&format!("{what} losses"), &got, &losses, 1e-5, 1e-5);
    for (i, &t) in targets.iter().enumerate() {
        if t == IGNORE {
            assert_eq!(
                got[i].to_bits(),
                0,
                "{what}: ignored row {i} must have loss 0"
            );
        }
    }

    let count = targets.iter().filter(|&&t| t != IGNORE).count();
    let scale = 1.0 / count.max(1) as f32;
    let start = randn(&mut rng, n * v, 1.0); // non-zero: the op accumulates
    let mut want = start.clone();
    ops::loss::cross_entropy_backward(&mut want, &logits, &targets, scale, n, v);
    let d_dlogits = up(dev, &start);
    kernels::cross_entropy_backward(dev, d_dlogits, d_logits, d_targets, scale, n, v).unwrap();
    let got = down(dev, d_dlogits);
    // softmax entries within ~1e-6 relative of the f64 ones, times scale ≤ 1, added to O(1)
    // starting values: a few ulp of the start.
    assert_close_all(&format!("{what} dlogits"), &got, &want, 1e-6, 1e-6);
    for (i, &t) in targets.iter().enumerate() {
        if t == IGNORE {
            let row = i * v..(i + 1) * v;
            assert_bits_eq(
                &format!("{what}: ignored row {i} untouched"),
                &got[row.clone()],
                &start[row],
            );
        }
    }
}

device_tests! {
    fn emu_cross_entropy_matches_reference_with_ignored_targets / gpu_cross_entropy_matches_reference_with_ignored_targets (dev) {
        check_cross_entropy(&dev, 37, 78, 15); // char vocabulary
        check_cross_entropy(&dev, 10, 2728, 16); // word vocabulary, not a multiple of 32
        check_cross_entropy(&dev, 9, 45, 17);
        check_cross_entropy(&dev, 5, 1, 18);
    }
}

device_tests! {
    fn emu_cross_entropy_gives_nan_for_targets_out_of_range / gpu_cross_entropy_gives_nan_for_targets_out_of_range (dev) {
        let (n, v) = (3, 45);
        let logits = randn(&mut Rng::new(19), n * v, 1.0);
        let targets = [0u32, v as u32, 7];
        let (d_logits, d_targets) = (up(&dev, &logits), dev.upload(&targets).unwrap());
        let d_losses = dev.alloc_slice::<f32>(n).unwrap();
        kernels::cross_entropy_forward(&dev, d_losses, d_logits, d_targets, n, v).unwrap();
        let losses = down(&dev, d_losses);
        assert!(
            losses[1].is_nan(),
            "target V must give a NaN loss, got {}",
            losses[1]
        );
        assert!(losses[0].is_finite() && losses[2].is_finite(), "{losses:?}");
        let d_dlogits = up(&dev, &vec![0.0; n * v]);
        kernels::cross_entropy_backward(&dev, d_dlogits, d_logits, d_targets, 1.0, n, v).unwrap();
        let dlogits = down(&dev, d_dlogits);
        assert!(
            dlogits[v..2 * v].iter().all(|x| x.is_nan()),
            "row 1 must be NaN"
        );
        assert!(dlogits[..v]
            .iter()
            .chain(&dlogits[2 * v..])
            .all(|x| x.is_finite()));
    }
}

// ----------------------------------------------------------------------------------------------
// adamw, sum_squares

device_tests! {
    fn emu_adamw_matches_reference_over_steps_with_and_without_decay / gpu_adamw_matches_reference_over_steps_with_and_without_decay (dev) {
        let cfg = AdamWConfig::default();
        let mut rng = Rng::new(20);
        for (n, decay) in [(1037, true), (1037, false), (1, true)] {
            let mut param = randn(&mut rng, n, 1.0);
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let (d_p, d_m, d_v) = (up(&dev, &param), up(&dev, &m), up(&dev, &v));
            for step in 1..=3u64 {
                let grad = randn(&mut rng, n, 0.1);
                let (lr, grad_scale) = (3e-3, 0.5);
                ops::adamw::adamw_update(
                    &mut param, &grad, &mut m, &mut v, &cfg, lr, step, grad_scale, decay,
                );
                let d_g = up(&dev, &grad);
                kernels::adamw_update(&dev, d_p, d_g, d_m, d_v, &cfg, lr, step, grad_scale, decay)
                    .unwrap();
                // the reference's f32 expression order with the same host bias corrections: equal
                // here; on the GPU FMA contraction moves the last bit of a few products. The update
                // is lr·O(1) = 3e-3 per step: 1e-8 absolute is a few ulp of it.
                let what = format!("adamw_update n={n} decay={decay} step={step}");
                assert_close_all(
                    &format!("{what} param"),
                    &down(&dev, d_p),
                    &param,
                    1e-8,
                    1e-6,
                );
                assert_close_all(&format!("{what} m"), &down(&dev, d_m), &m, 1e-9, 1e-6);
                assert_close_all(&format!("{what} v"), &down(&dev, d_v), &v, 1e-12, 1e-6);
            }
        }
    }
}

fn gpu_sum_squares(dev: &dyn Device, x: &[f32]) -> f64 {
    // from an empty x the device slice is empty: a 1-element allocation viewed with length 0
    let d_x = if x.is_empty() {
        dev.alloc_slice::<f32>(1).unwrap().slice(0..0)
    } else {
        up(dev, x)
    };
    let d_out = dev.alloc_slice::<f64>(1).unwrap();
    let d_partials = dev
        .alloc_slice::<f64>(kernels::SUM_SQUARES_PARTIALS)
        .unwrap(); // NaN-filled: unused partials must not be read
    kernels::sum_squares(dev, d_out, d_partials, d_x).unwrap();
    dev.download(d_out).unwrap()[0]
}

/// Longer than SUM_SQUARES_PARTIALS blocks of 256 threads: every partial is used and the blocks
/// stride.
const SUM_SQUARES_LONG: usize = kernels::SUM_SQUARES_PARTIALS * 256 + 77;

device_tests! {
    fn emu_sum_squares_matches_reference / gpu_sum_squares_matches_reference (dev) {
        let mut rng = Rng::new(21);
        for n in [0, 1, 1000, SUM_SQUARES_LONG] {
            let x = randn(&mut rng, n, 2.0);
            let want = ops::adamw::sum_squares(&x);
            let got = gpu_sum_squares(&dev, &x);
            // both exact f64 squares of f32 values, summed in f64 in different orders: each sum is
            // within ~sqrt(n)·ε ≈ 6e-14 relative of the exact value for n = 65613 (positive terms,
            // rounding errors random), so 1e-12 relative is a generous bound.
            assert!(
                (got - want).abs() <= 1e-12 * want,
                "sum_squares n={n}: got {got}, want {want} (relative error {:.2e})",
                (got - want).abs() / want
            );
        }
    }
}

#[test]
fn emu_sum_squares_is_deterministic() {
    // many blocks (the path that could depend on order); the long, striding case costs seconds
    // in the emulator and runs once, above
    let x = randn(&mut Rng::new(22), 37 * 256 + 5, 1.0);
    let first = gpu_sum_squares(&EmuDevice::new(), &x);
    let again = gpu_sum_squares(&EmuDevice::new(), &x);
    let reverse = gpu_sum_squares(&EmuDevice::new().with_schedule(Schedule::Reverse), &x);
    assert_eq!(
        again.to_bits(),
        first.to_bits(),
        "second run: {again} vs {first}"
    );
    assert_eq!(
        reverse.to_bits(),
        first.to_bits(),
        "reverse schedule: {reverse} vs {first}"
    );
}

// ----------------------------------------------------------------------------------------------
// launcher shape checks

#[test]
#[should_panic(expected = "shape mismatch in embedding_forward: wpe expected at least [37, 45]")]
fn emu_embedding_forward_rejects_a_short_wpe() {
    let dev = EmuDevice::new();
    let out = dev.alloc_slice::<f32>(37 * 45).unwrap();
    let toks = dev.alloc_slice::<u32>(37).unwrap();
    let wte = dev.alloc_slice::<f32>(78 * 45).unwrap();
    let wpe = dev.alloc_slice::<f32>(36 * 45).unwrap();
    let _ = kernels::embedding_forward(&dev, out, toks, wte, Some(wpe), 1, 37, 45, 78);
}
