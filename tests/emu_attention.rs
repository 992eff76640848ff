//! The attention kernels (kernels/attention.cu) on the emulated device, launched through their
//! host launchers (src/gpu/kernels/attention.rs), against the CPU step ops and the composite
//! forward/backward of src/ops/attention.rs, at ragged shapes (T and HS not multiples of the
//! 32-wide tiles), with and without dropout. Dropout masks must match src/philox.rs bit for bit.

#[macro_use]
mod common;

use robo_poet::gpu::{kernels, Device, DeviceExt, DeviceSlice, EmuDevice, Schedule};
use robo_poet::ops::attention::{self as att, AttnShape};
use robo_poet::philox::DropoutKey;
use robo_poet::rng::Rng;

/// A dropout key as the kernels take it: its step in device memory.
fn dd(dev: &dyn Device, key: Option<DropoutKey>) -> Option<kernels::DeviceDropout> {
    key.map(|k| kernels::DeviceDropout::on_device(dev, k).unwrap())
}

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

/// Asserts bitwise equality; names the first differing index.
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

/// (i, j) of element `e` of an (R, T, T) tensor.
fn ij(e: usize, t: usize) -> (usize, usize) {
    ((e / t) % t, e % t)
}

/// The shapes every op is checked at: the task's ragged shape, T = 1, T just over one tile with
/// HS over one tile (two channel tiles, the second ragged), and a second row of tiles.
const SHAPES: [AttnShape; 4] = [
    AttnShape {
        b: 2,
        t: 37,
        nh: 3,
        hs: 13,
    },
    AttnShape {
        b: 2,
        t: 1,
        nh: 2,
        hs: 5,
    },
    AttnShape {
        b: 1,
        t: 33,
        nh: 2,
        hs: 40,
    },
    AttnShape {
        b: 1,
        t: 70,
        nh: 1,
        hs: 8,
    },
];

fn key(p: f32, tensor: u32) -> DropoutKey {
    DropoutKey {
        p,
        seed: 0x1234_5678_9abc,
        step: 41,
        tensor,
    }
}

/// None, p = 0.1 and p = 0.5: no dropout, light and heavy dropout.
fn dropouts() -> [Option<DropoutKey>; 3] {
    [None, Some(key(0.1, 2)), Some(key(0.5, 7))]
}

/// q, k, v (B, T, C) ~ N(0, 1).
fn qkv(s: AttnShape, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let n = s.b * s.t * s.c();
    (
        randn(&mut rng, n, 1.0),
        randn(&mut rng, n, 1.0),
        randn(&mut rng, n, 1.0),
    )
}

/// CPU probs (R, T, T) of random scores, zero above the diagonal.
fn cpu_probs(r: usize, t: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let scores = randn(&mut rng, r * t * t, 2.0);
    let mut probs = vec![0.0; r * t * t];
    att::causal_softmax_forward(&mut probs, &scores, r, t);
    probs
}

/// The CPU weights of `probs`: probs ⊙ mask (dropout_forward, element index 0 at probs[0]).
fn cpu_weights(probs: &[f32], d: Option<DropoutKey>) -> Vec<f32> {
    match d.filter(|d| d.p > 0.0) {
        Some(key) => {
            let mut w = vec![0.0; probs.len()];
            att::dropout_forward(&mut w, probs, key, 0);
            w
        }
        None => probs.to_vec(),
    }
}

// ----------------------------------------------------------------------------------------------
// attention_scores_forward

device_tests! {
    fn emu_attention_scores_forward_matches_reference / gpu_attention_scores_forward_matches_reference (dev) {
        for (n, &s) in SHAPES.iter().enumerate() {
            let (q, k, _) = qkv(s, 10 + n as u64);
            let tt = s.b * s.nh * s.t * s.t;
            let mut want = vec![0.0; tt];
            att::attention_scores_forward(&mut want, &q, &k, s);

            // entries above the diagonal must be left as they were
            let sentinel = vec![7.5f32; tt];
            let d_scores = dev.upload(&sentinel).unwrap();
            let (d_q, d_k) = (dev.upload(&q).unwrap(), dev.upload(&k).unwrap());
            kernels::attention_scores_forward(&dev, d_scores, d_q, d_k, s).unwrap();
            let got = dev.download(d_scores).unwrap();
            let what = format!("attention_scores_forward {s:?}");
            for (e, (&g, &w)) in got.iter().zip(&want).enumerate() {
                let (i, j) = ij(e, s.t);
                if j > i {
                    assert_eq!(
                        g, 7.5,
                        "{what}: entry {e} (i={i}, j={j}) above the diagonal was written"
                    );
                } else {
                    // an f32 sum of HS (<= 40) products of N(0, 1) values against the f64 reference:
                    // error about sqrt(HS)·ε·|typical term| ≈ 1e-6; a wrong tile or index is O(1).
                    let err = (g - w).abs();
                    assert!(
                        err <= 1e-5 + 1e-5 * w.abs(),
                        "{what}: entry {e} (i={i}, j={j}): got {g}, want {w}"
                    );
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------
// causal_softmax_dropout_forward

/// Random scores (R, T, T); matrix 1 sits at +100, where exp without the max would overflow.
fn scores_for_softmax(r: usize, t: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut scores = randn(&mut rng, r * t * t, 3.0);
    for x in scores.iter_mut().skip(t * t).take(t * t) {
        *x += 100.0;
    }
    scores
}

fn check_softmax_dropout_forward(
    dev: &dyn Device,
    r: usize,
    t: usize,
    d: Option<DropoutKey>,
    in_place: bool,
) {
    let scores = scores_for_softmax(r, t, 20 + t as u64);
    let mut want_probs = vec![0.0; r * t * t];
    att::causal_softmax_forward(&mut want_probs, &scores, r, t);

    let d_scores = dev.upload(&scores).unwrap();
    let d_probs = if in_place {
        d_scores
    } else {
        dev.alloc_slice::<f32>(r * t * t).unwrap()
    };
    let with_dropout = d.is_some_and(|d| d.p > 0.0);
    // fresh allocations are NaN: every entry the kernel should write must be written
    let d_weights = with_dropout.then(|| dev.alloc_slice::<f32>(r * t * t).unwrap());
    kernels::causal_softmax_dropout_forward(dev, d_probs, d_weights, d_scores, r, t, dd(dev, d))
        .unwrap();
    let probs = dev.download(d_probs).unwrap();

    let what =
        format!("causal_softmax_dropout_forward R={r} T={t} dropout={d:?} in_place={in_place}");
    // __expf (exp2 of x·log2 e, rounded) and f32 sums against expf and f64 sums: the relative
    // difference is a few 1e-6 for these scores (the same bound as causal_softmax_forward).
    assert_close_all(&format!("{what}: probs"), &probs, &want_probs, 1e-7, 2e-5);
    for (e, &p) in probs.iter().enumerate() {
        let (i, j) = ij(e, t);
        if j > i {
            assert_eq!(
                p.to_bits(),
                0,
                "{what}: probs entry {e} (i={i}, j={j}) above the diagonal must be exactly 0"
            );
        }
    }
    let Some(d_weights) = d_weights else { return };
    let weights = dev.download(d_weights).unwrap();
    // The mask is exact: weights are the kernel's own probs through the CPU's dropout_forward,
    // bit for bit (same Philox bits, same kept scale, the same single f32 product).
    assert_bits_eq(
        &format!("{what}: weights vs dropout_forward(kernel probs)"),
        &weights,
        &cpu_weights(&probs, d),
    );
    // and the dropped entries are exactly those the CPU drops from its own probs
    let want_weights = cpu_weights(&want_probs, d);
    for (e, (&g, &w)) in weights.iter().zip(&want_weights).enumerate() {
        assert_eq!(
            g == 0.0,
            w == 0.0,
            "{what}: weights entry {e} {ij:?}: got {g}, CPU {w}",
            ij = ij(e, t)
        );
    }
}

device_tests! {
    fn emu_causal_softmax_dropout_forward_matches_reference / gpu_causal_softmax_dropout_forward_matches_reference (dev) {
        // T = 37: row starts at every offset mod 4 within a Philox group; T = 130: rows longer than
        // one pass of the warp's 32 lanes × 4 entries (one dropout suffices: the emulator is slow).
        for (r, t) in [(3, 37), (3, 1), (1, 33)] {
            for d in dropouts() {
                check_softmax_dropout_forward(&dev, r, t, d, false);
            }
        }
        check_softmax_dropout_forward(&dev, 1, 130, Some(key(0.5, 4)), false);
    }
}

device_tests! {
    fn emu_causal_softmax_dropout_forward_in_place / gpu_causal_softmax_dropout_forward_in_place (dev) {
        for d in dropouts() {
            check_softmax_dropout_forward(&dev, 3, 37, d, true);
        }
        // p = 0 with a key is no dropout: no weights buffer needed
        check_softmax_dropout_forward(&dev, 2, 33, Some(key(0.0, 3)), true);
    }
}

// ----------------------------------------------------------------------------------------------
// attention_dropout_weights

device_tests! {
    fn emu_attention_dropout_weights_regenerates_the_forward_mask / gpu_attention_dropout_weights_regenerates_the_forward_mask (dev) {
        for (r, t) in [(3, 37), (3, 1), (1, 70)] {
            for p in [0.1, 0.5] {
                let d = key(p, 5);
                let scores = scores_for_softmax(r, t, 30 + t as u64);
                let d_scores = dev.upload(&scores).unwrap();
                let d_probs = dev.alloc_slice::<f32>(r * t * t).unwrap();
                let d_fwd = dev.alloc_slice::<f32>(r * t * t).unwrap();
                kernels::causal_softmax_dropout_forward(
                    &dev,
                    d_probs,
                    Some(d_fwd),
                    d_scores,
                    r,
                    t,
                    dd(&dev, Some(d)),
                )
                .unwrap();
                let d_regen = dev.alloc_slice::<f32>(r * t * t).unwrap();
                kernels::attention_dropout_weights(&dev, d_regen, d_probs, r, t, dd(&dev, Some(d)).unwrap()).unwrap();
                let what = format!("attention_dropout_weights R={r} T={t} p={p}");
                let regen = dev.download(d_regen).unwrap();
                assert_bits_eq(
                    &format!("{what}: vs the forward's weights"),
                    &regen,
                    &dev.download(d_fwd).unwrap(),
                );

                // CPU probs with junk above the diagonal: the kernel must write zeros there anyway
                let mut probs = cpu_probs(r, t, 31);
                for (e, x) in probs.iter_mut().enumerate() {
                    let (i, j) = ij(e, t);
                    if j > i {
                        *x = 0.25;
                    }
                }
                let mut want = cpu_weights(&probs, Some(d));
                for (e, x) in want.iter_mut().enumerate() {
                    let (i, j) = ij(e, t);
                    if j > i {
                        *x = 0.0;
                    }
                }
                let d_probs = dev.upload(&probs).unwrap();
                kernels::attention_dropout_weights(&dev, d_regen, d_probs, r, t, dd(&dev, Some(d)).unwrap()).unwrap();
                assert_bits_eq(
                    &format!("{what}: vs dropout_forward"),
                    &dev.download(d_regen).unwrap(),
                    &want,
                );
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------
// attention_values_forward / attention_values_backward

device_tests! {
    fn emu_attention_values_forward_matches_reference / gpu_attention_values_forward_matches_reference (dev) {
        for (n, &s) in SHAPES.iter().enumerate() {
            for d in [None, Some(key(0.5, 1))] {
                let (_, _, v) = qkv(s, 40 + n as u64);
                let weights = cpu_weights(&cpu_probs(s.b * s.nh, s.t, 41), d);
                let mut want = vec![0.0; v.len()];
                att::attention_values_forward(&mut want, &weights, &v, s);

                let d_out = dev.alloc_slice::<f32>(v.len()).unwrap(); // NaN: must be overwritten
                let (d_w, d_v) = (dev.upload(&weights).unwrap(), dev.upload(&v).unwrap());
                kernels::attention_values_forward(&dev, d_out, d_w, d_v, s).unwrap();
                // an f32 sum over <= T terms w·v with Σ|w| <= 2 (dropout scale) against f64:
                // about T·ε·2 ≈ 1e-5 at worst; a skipped tile or wrong head is O(1).
                assert_close_all(
                    &format!("attention_values_forward {s:?} dropout={d:?}"),
                    &dev.download(d_out).unwrap(),
                    &want,
                    1e-5,
                    1e-5,
                );
            }
        }
    }
}

device_tests! {
    fn emu_attention_values_backward_matches_reference / gpu_attention_values_backward_matches_reference (dev) {
        for (n, &s) in SHAPES.iter().enumerate() {
            let (dout, dv0, v) = qkv(s, 50 + n as u64);
            let weights = cpu_weights(&cpu_probs(s.b * s.nh, s.t, 51), Some(key(0.1, 1)));
            let tt = weights.len();
            let mut want_dw = vec![0.0; tt];
            let mut want_dv = dv0.clone(); // dv accumulates onto non-zero values
            att::attention_values_backward(&mut want_dw, &mut want_dv, &dout, &weights, &v, s);

            let d_dv = dev.upload(&dv0).unwrap();
            let d_dw = dev.upload(&vec![3.0f32; tt]).unwrap(); // junk: dweights is overwritten
            let (d_dout, d_w, d_v) = (
                dev.upload(&dout).unwrap(),
                dev.upload(&weights).unwrap(),
                dev.upload(&v).unwrap(),
            );
            kernels::attention_values_backward(&dev, d_dv, d_dw, d_dout, d_w, d_v, s).unwrap();
            let what = format!("attention_values_backward {s:?}");
            // dv: an f32 sum over <= T terms w·dout (Σ|w| <= 1.1) plus the start value: ≈ T·ε.
            assert_close_all(
                &format!("{what}: dv"),
                &dev.download(d_dv).unwrap(),
                &want_dv,
                1e-5,
                1e-5,
            );
            // dweights: an f32 sum of HS products of N(0, 1) values, as for the scores; the CPU op
            // fills the whole matrix, the kernel zeros above the diagonal.
            let dw = dev.download(d_dw).unwrap();
            for (e, (&g, &w)) in dw.iter().zip(&want_dw).enumerate() {
                let (i, j) = ij(e, s.t);
                if j > i {
                    assert_eq!(g.to_bits(), 0, "{what}: dweights entry {e} (i={i}, j={j}) above the diagonal must be exactly 0");
                } else {
                    assert!(
                        (g - w).abs() <= 1e-5 + 1e-5 * w.abs(),
                        "{what}: dweights entry {e} (i={i}, j={j}): got {g}, want {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn emu_attention_values_backward_in_place_over_the_weights() {
    // The backward pass with dropout regenerates the weights into the scratch that then receives
    // their gradient: dweights == weights must give what two buffers give.
    let dev = EmuDevice::new();
    let s = SHAPES[0];
    let (dout, dv0, v) = qkv(s, 60);
    let weights = cpu_weights(&cpu_probs(s.b * s.nh, s.t, 61), Some(key(0.1, 1)));
    let (mut want_dw, mut want_dv) = (vec![0.0; weights.len()], dv0.clone());
    att::attention_values_backward(&mut want_dw, &mut want_dv, &dout, &weights, &v, s);
    let (d_dv, d_w) = (dev.upload(&dv0).unwrap(), dev.upload(&weights).unwrap());
    let (d_dout, d_v) = (dev.upload(&dout).unwrap(), dev.upload(&v).unwrap());
    kernels::attention_values_backward(&dev, d_dv, d_w, d_dout, d_w, d_v, s).unwrap();
    // tolerances as in emu_attention_values_backward_matches_reference
    assert_close_all(
        "in place: dv",
        &dev.download(d_dv).unwrap(),
        &want_dv,
        1e-5,
        1e-5,
    );
    let dw = dev.download(d_w).unwrap();
    for (e, (&g, &w)) in dw.iter().zip(&want_dw).enumerate() {
        let (i, j) = ij(e, s.t);
        let w = if j > i { 0.0 } else { w };
        assert!(
            (g - w).abs() <= 1e-5 + 1e-5 * w.abs(),
            "in place: dweights entry {e}: got {g}, want {w}"
        );
    }
    // a partial overlap is refused
    // (the check panics before any launch, so the view past the allocation's end is never used)
    let shifted = DeviceSlice::<f32>::new(d_w.ptr() + 4, d_w.len());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        kernels::attention_values_backward(&dev, d_dv, shifted, d_dout, d_w, d_v, s)
    }));
    assert!(
        r.is_err(),
        "a dweights shifted by one element over weights must be refused"
    );
}

// ----------------------------------------------------------------------------------------------
// causal_softmax_dropout_backward

fn check_softmax_dropout_backward(
    dev: &dyn Device,
    r: usize,
    t: usize,
    d: Option<DropoutKey>,
    in_place: bool,
) {
    let probs = cpu_probs(r, t, 60 + t as u64);
    let mut rng = Rng::new(61);
    let mut dweights = randn(&mut rng, r * t * t, 1.0);
    for (e, x) in dweights.iter_mut().enumerate() {
        let (i, j) = ij(e, t);
        if j > i {
            *x = 0.0; // as attention_values_backward leaves it
        }
    }
    // the CPU chain: dP = dropout_backward(dweights), then dscores = softmax backward of dP
    let dp = match d.filter(|d| d.p > 0.0) {
        Some(key) => {
            let mut dp = vec![0.0; r * t * t];
            att::dropout_backward(&mut dp, &dweights, key, 0);
            dp
        }
        None => dweights.clone(),
    };
    let mut want = vec![0.0; r * t * t];
    att::causal_softmax_backward(&mut want, &dp, &probs, r, t);

    let d_dw = dev.upload(&dweights).unwrap();
    let d_ds = if in_place {
        d_dw
    } else {
        dev.alloc_slice::<f32>(r * t * t).unwrap() // NaN: must be overwritten
    };
    let d_probs = dev.upload(&probs).unwrap();
    kernels::causal_softmax_dropout_backward(dev, d_ds, d_dw, d_probs, r, t, dd(dev, d)).unwrap();
    let got = dev.download(d_ds).unwrap();
    let what =
        format!("causal_softmax_dropout_backward R={r} T={t} dropout={d:?} in_place={in_place}");
    // ds = p·(dP − Σ p·dP): the row sum in f32 (fixed lane order + butterfly) against f64 differs
    // by about sqrt(T)·ε·max|dP| <= 1e-6 (|dP| <= 2·4σ), times p <= 1; a wrong mask is O(0.1).
    assert_close_all(&what, &got, &want, 2e-6, 1e-5);
    for (e, &g) in got.iter().enumerate() {
        let (i, j) = ij(e, t);
        if j > i {
            assert_eq!(
                g.to_bits(),
                0,
                "{what}: entry {e} (i={i}, j={j}) above the diagonal must be exactly 0"
            );
        }
    }
}

device_tests! {
    fn emu_causal_softmax_dropout_backward_matches_reference / gpu_causal_softmax_dropout_backward_matches_reference (dev) {
        for (r, t) in [(3, 37), (3, 1), (1, 33)] {
            for d in dropouts() {
                check_softmax_dropout_backward(&dev, r, t, d, false);
            }
        }
        check_softmax_dropout_backward(&dev, 1, 130, Some(key(0.5, 4)), false);
    }
}

device_tests! {
    fn emu_causal_softmax_dropout_backward_in_place / gpu_causal_softmax_dropout_backward_in_place (dev) {
        for d in dropouts() {
            check_softmax_dropout_backward(&dev, 3, 37, d, true);
        }
    }
}

// ----------------------------------------------------------------------------------------------
// attention_scores_backward

device_tests! {
    fn emu_attention_scores_backward_matches_reference / gpu_attention_scores_backward_matches_reference (dev) {
        for (n, &s) in SHAPES.iter().enumerate() {
            let (q, k, dq0) = qkv(s, 70 + n as u64);
            let mut rng = Rng::new(71);
            let dk0 = randn(&mut rng, q.len(), 1.0);
            let mut dscores = randn(&mut rng, s.b * s.nh * s.t * s.t, 0.1);
            for (e, x) in dscores.iter_mut().enumerate() {
                let (i, j) = ij(e, s.t);
                if j > i {
                    *x = 0.0;
                }
            }
            let (mut want_dq, mut want_dk) = (dq0.clone(), dk0.clone()); // accumulate onto non-zero
            att::attention_scores_backward(&mut want_dq, &mut want_dk, &dscores, &q, &k, s);

            let (d_dq, d_dk) = (dev.upload(&dq0).unwrap(), dev.upload(&dk0).unwrap());
            let (d_ds, d_q, d_k) = (
                dev.upload(&dscores).unwrap(),
                dev.upload(&q).unwrap(),
                dev.upload(&k).unwrap(),
            );
            kernels::attention_scores_backward(&dev, d_dq, d_dk, d_ds, d_q, d_k, s).unwrap();
            let what = format!("attention_scores_backward {s:?}");
            // f32 sums over <= T terms of 0.1·N(0,1)·N(0,1)·scale in another order than the CPU's
            // per-term accumulation (which also rounds the start value in each step): ≈ T·ε.
            assert_close_all(
                &format!("{what}: dq"),
                &dev.download(d_dq).unwrap(),
                &want_dq,
                1e-5,
                1e-5,
            );
            assert_close_all(
                &format!("{what}: dk"),
                &dev.download(d_dk).unwrap(),
                &want_dk,
                1e-5,
                1e-5,
            );
        }
    }
}

// ----------------------------------------------------------------------------------------------
// the whole chain

/// Device results of one forward + backward chain.
struct ChainResult {
    out: Vec<f32>,
    probs: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// scores → softmax + dropout (in place) → values; then values backward → softmax + dropout
/// backward (in place) → scores backward, as the CUDA backend chains them, with one T×T scratch
/// for the weights, regenerated in the backward.
#[allow(clippy::too_many_arguments)]
fn run_chain(
    dev: &dyn Device,
    s: AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    dqkv0: &[f32],
    d: Option<DropoutKey>,
) -> ChainResult {
    let tt = s.b * s.nh * s.t * s.t;
    let (r, t) = (s.b * s.nh, s.t);
    let with_dropout = d.is_some_and(|d| d.p > 0.0);
    let up = |x: &[f32]| dev.upload(x).unwrap();
    let (d_q, d_k, d_v, d_dout) = (up(q), up(k), up(v), up(dout));
    let d_probs: DeviceSlice<f32> = dev.alloc_slice(tt).unwrap();
    let d_scratch: DeviceSlice<f32> = dev.alloc_slice(tt).unwrap();
    let d_out: DeviceSlice<f32> = dev.alloc_slice(q.len()).unwrap();

    kernels::attention_scores_forward(dev, d_probs, d_q, d_k, s).unwrap();
    let weights = with_dropout.then_some(d_scratch);
    kernels::causal_softmax_dropout_forward(dev, d_probs, weights, d_probs, r, t, dd(dev, d))
        .unwrap();
    kernels::attention_values_forward(dev, d_out, weights.unwrap_or(d_probs), d_v, s).unwrap();

    let (d_dq, d_dk, d_dv) = (up(dqkv0), up(dqkv0), up(dqkv0));
    let d_dweights: DeviceSlice<f32> = dev.alloc_slice(tt).unwrap();
    if let Some(key) = d.filter(|d| d.p > 0.0) {
        kernels::attention_dropout_weights(
            dev,
            d_scratch,
            d_probs,
            r,
            t,
            dd(dev, Some(key)).unwrap(),
        )
        .unwrap();
    }
    kernels::attention_values_backward(
        dev,
        d_dv,
        d_dweights,
        d_dout,
        weights.unwrap_or(d_probs),
        d_v,
        s,
    )
    .unwrap();
    kernels::causal_softmax_dropout_backward(
        dev,
        d_dweights,
        d_dweights,
        d_probs,
        r,
        t,
        dd(dev, d),
    )
    .unwrap();
    kernels::attention_scores_backward(dev, d_dq, d_dk, d_dweights, d_q, d_k, s).unwrap();

    let down = |x| dev.download(x).unwrap();
    ChainResult {
        out: down(d_out),
        probs: down(d_probs),
        dq: down(d_dq),
        dk: down(d_dk),
        dv: down(d_dv),
    }
}

device_tests! {
    fn emu_attention_chain_matches_composite_forward_and_backward / gpu_attention_chain_matches_composite_forward_and_backward (dev) {
        // every dropout at a ragged shape (two batch rows, two heads); T = 1 and the two-channel-tile
        // shape with one dropout each (the emulator is slow; the single ops cover the rest)
        let ragged = AttnShape {
            b: 2,
            t: 37,
            nh: 2,
            hs: 13,
        };
        let [none, light, heavy] = dropouts();
        let cases = [
            (ragged, none),
            (ragged, light),
            (ragged, heavy),
            (SHAPES[1], heavy),
            (SHAPES[2], light),
        ];
        for (n, &(s, d)) in cases.iter().enumerate() {
            let (q, k, v) = qkv(s, 80 + n as u64);
            let mut rng = Rng::new(81);
            let dout = randn(&mut rng, q.len(), 1.0);
            let dqkv0 = randn(&mut rng, q.len(), 1.0);
            let got = run_chain(&dev, s, &q, &k, &v, &dout, &dqkv0, d);

            let mut out = vec![0.0; q.len()];
            let mut probs = vec![0.0; got.probs.len()];
            att::attention_forward(&mut out, &mut probs, &q, &k, &v, s, d);
            let (mut dq, mut dk, mut dv) = (dqkv0.clone(), dqkv0.clone(), dqkv0.clone());
            att::attention_backward(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &probs, s, d);

            let what = format!("attention chain {s:?} dropout={d:?}");
            // probs: __expf and f32 row sums vs expf and f64 (2e-5 relative, as the softmax
            // alone), on scores that already differ by ~1e-6 (f32 dot products in another order).
            assert_close_all(&format!("{what}: probs"), &got.probs, &probs, 1e-6, 5e-5);
            // out and the gradients inherit those relative errors of the probs through sums of
            // <= T terms with O(1) values (×2 with p = 0.5): a few 1e-5 absolute. A mask or tile
            // mistake moves them by O(0.1).
            assert_close_all(&format!("{what}: out"), &got.out, &out, 5e-5, 5e-5);
            assert_close_all(&format!("{what}: dv"), &got.dv, &dv, 5e-5, 5e-5);
            assert_close_all(&format!("{what}: dq"), &got.dq, &dq, 1e-4, 1e-4);
            assert_close_all(&format!("{what}: dk"), &got.dk, &dk, 1e-4, 1e-4);
        }
    }
}

#[test]
fn emu_attention_chain_is_deterministic() {
    // Two runs, the second with the opposite thread schedule: bit-identical outputs. The kernels
    // use no float atomics; every sum has one owner and a fixed order (or a fixed shuffle tree).
    let s = AttnShape {
        b: 1,
        t: 37,
        nh: 2,
        hs: 13,
    };
    let (q, k, v) = qkv(s, 90);
    let mut rng = Rng::new(91);
    let dout = randn(&mut rng, q.len(), 1.0);
    let dqkv0 = randn(&mut rng, q.len(), 1.0);
    let d = Some(key(0.1, 9));
    let forward = EmuDevice::new().with_schedule(Schedule::Forward);
    let first = run_chain(&forward, s, &q, &k, &v, &dout, &dqkv0, d);
    let reverse = EmuDevice::new().with_schedule(Schedule::Reverse);
    let again = run_chain(&reverse, s, &q, &k, &v, &dout, &dqkv0, d);
    let what = "second run (reverse schedule)";
    assert_bits_eq(&format!("{what}: out"), &again.out, &first.out);
    assert_bits_eq(&format!("{what}: probs"), &again.probs, &first.probs);
    assert_bits_eq(&format!("{what}: dq"), &again.dq, &first.dq);
    assert_bits_eq(&format!("{what}: dk"), &again.dk, &first.dk);
    assert_bits_eq(&format!("{what}: dv"), &again.dv, &first.dv);
}

device_tests! {
    fn emu_attention_launchers_check_shapes / gpu_attention_launchers_check_shapes (dev) {
        let s = SHAPES[0];
        let q: DeviceSlice<f32> = dev.alloc_slice(s.b * s.t * s.c()).unwrap();
        let short: DeviceSlice<f32> = dev.alloc_slice(s.b * s.nh * s.t * s.t - 1).unwrap();
        let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            kernels::attention_scores_forward(&dev, short, q, q, s).unwrap();
        }))
        .unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("attention_scores_forward") && msg.contains("scores"),
            "{msg}"
        );
    }
}
