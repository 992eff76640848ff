//! The LSTM cell's kernels (kernels/lstm.cu) on the emulated device, through their launchers
//! (src/gpu/kernels/lstm.rs), against the CPU reference (src/ops/lstm.rs): ragged B·H (not a
//! multiple of the 256-thread block), missing c_prev / dc_in / dc_out, strided cell-gradient
//! views, and dc_in aliasing dgates' i-gate columns as the layer uses it.

#[macro_use]
mod common;

use robo_poet::gpu::{kernels, Device, DeviceExt, DeviceSlice, EmuDevice};
use robo_poet::ops;
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

// Tolerances. The GPU's σ and tanh use __expf, whose error (as emulated, and on the GPU) is
// about |x|·ε relative for exp(x), against the reference's libm exp; through σ and
// tanh_fast = 1 − 2/(e^{2u}+1) that is at most a few 1e-7 absolute for pre-activations up to
// |a| ≈ 10 (beyond that both saturate to the same 0 or ±1), and c, h and the gradients combine a
// handful of such values with O(1) factors. 1e-5 absolute + 1e-5 relative is 10-30x that; a
// wrong gate index, order or missing term is off by O(0.1) or more.
const ABS: f32 = 1e-5;
const REL: f32 = 1e-5;

/// Pre-activations: N(0, 2), with some far in both saturated tails.
fn pre_activations(rng: &mut Rng, b: usize, hid: usize) -> Vec<f32> {
    let mut pre = randn(rng, b * 4 * hid, 2.0);
    for (k, x) in pre.iter_mut().enumerate() {
        if k % 13 == 5 {
            *x = if k % 2 == 0 { 60.0 } else { -60.0 };
        }
    }
    pre
}

// ----------------------------------------------------------------------------------------------
// lstm_cell_forward

fn check_forward(dev: &dyn Device, b: usize, hid: usize, with_c_prev: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let pre = pre_activations(&mut rng, b, hid);
    let c_prev = randn(&mut rng, b * hid, 1.0);
    let c_prev = with_c_prev.then_some(&c_prev[..]);
    let mut want_g = pre.clone();
    let (mut want_c, mut want_h) = (vec![0.0; b * hid], vec![0.0; b * hid]);
    ops::lstm::lstm_cell_forward(&mut want_g, c_prev, &mut want_c, &mut want_h, b, hid);

    let d_gates = dev.upload(&pre).unwrap();
    let d_c_prev = c_prev.map(|cp| dev.upload(cp).unwrap());
    let d_c = dev.alloc_slice::<f32>(b * hid).unwrap();
    let d_h = dev.alloc_slice::<f32>(b * hid).unwrap();
    kernels::lstm_cell_forward(dev, d_gates, d_c_prev, d_c, d_h, b, hid).unwrap();
    let what = format!("lstm_cell_forward B={b} H={hid} c_prev={with_c_prev}");
    let got_g = dev.download(d_gates).unwrap();
    assert_close_all(&format!("{what}: gates"), &got_g, &want_g, ABS, REL);
    assert_close_all(
        &format!("{what}: c"),
        &dev.download(d_c).unwrap(),
        &want_c,
        ABS,
        REL,
    );
    assert_close_all(
        &format!("{what}: h"),
        &dev.download(d_h).unwrap(),
        &want_h,
        ABS,
        REL,
    );
}

device_tests! {
    fn emu_lstm_cell_forward_matches_reference / gpu_lstm_cell_forward_matches_reference (dev) {
        check_forward(&dev, 3, 70, true, 1);
        check_forward(&dev, 5, 70, true, 2); // 350 elements: two blocks, the second ragged
        check_forward(&dev, 5, 70, false, 3);
        check_forward(&dev, 1, 1, true, 4);
        check_forward(&dev, 1, 1, false, 5);
    }
}

// ----------------------------------------------------------------------------------------------
// lstm_cell_backward

/// One backward case: forward activations from the CPU reference, upstream gradients, and the
/// reference dgates and dc (= the gradient reaching c_prev).
struct BackwardCase {
    b: usize,
    hid: usize,
    gates: Vec<f32>,
    c: Vec<f32>,
    c_prev: Option<Vec<f32>>,
    dh: Vec<f32>,
    dc_in: Option<Vec<f32>>,
    want_dgates: Vec<f32>,
    want_dc: Vec<f32>,
}

fn backward_case(
    b: usize,
    hid: usize,
    with_c_prev: bool,
    with_dc_in: bool,
    seed: u64,
) -> BackwardCase {
    let mut rng = Rng::new(seed);
    let mut gates = pre_activations(&mut rng, b, hid);
    let c_prev = with_c_prev.then(|| randn(&mut rng, b * hid, 1.0));
    let (mut c, mut h) = (vec![0.0; b * hid], vec![0.0; b * hid]);
    ops::lstm::lstm_cell_forward(&mut gates, c_prev.as_deref(), &mut c, &mut h, b, hid);
    let dh = randn(&mut rng, b * hid, 1.0);
    let dc_in = with_dc_in.then(|| randn(&mut rng, b * hid, 1.0));
    let mut want_dgates = vec![0.0; b * 4 * hid];
    let mut want_dc = dc_in.clone().unwrap_or_else(|| vec![0.0; b * hid]);
    ops::lstm::lstm_cell_backward(
        &mut want_dgates,
        &mut want_dc,
        &dh,
        &gates,
        &c,
        c_prev.as_deref(),
        b,
        hid,
    );
    BackwardCase {
        b,
        hid,
        gates,
        c,
        c_prev,
        dh,
        dc_in,
        want_dgates,
        want_dc,
    }
}

/// (B, H) with rows `stride` apart inside a buffer of `fill`: the buffer's contents.
fn strided(dense: &[f32], b: usize, hid: usize, stride: usize, fill: f32) -> Vec<f32> {
    let mut v = vec![fill; (b - 1) * stride + hid];
    for n in 0..b {
        v[n * stride..n * stride + hid].copy_from_slice(&dense[n * hid..(n + 1) * hid]);
    }
    v
}

/// The (B, H) view out of a strided buffer, and whether everything between rows kept `fill`.
fn unstrided(buf: &[f32], b: usize, hid: usize, stride: usize, fill: f32) -> (Vec<f32>, bool) {
    let mut dense = Vec::with_capacity(b * hid);
    let mut gaps_kept = true;
    for (k, &x) in buf.iter().enumerate() {
        if k % stride < hid {
            dense.push(x);
        } else {
            gaps_kept &= x.to_bits() == fill.to_bits();
        }
    }
    (dense, gaps_kept)
}

/// Where dc_out goes.
#[derive(Clone, Copy, Debug)]
enum DcOut {
    None,
    /// its own buffer, rows `stride` apart
    Strided(usize),
    /// the dc_in buffer itself (dc_in must be a separate, stride-H buffer)
    InPlace,
}

/// Runs the kernel with dc_in in its own buffer with rows `dc_stride` apart (or, `alias`, inside
/// dgates' columns 0..H with stride 4H) and checks dgates and dc_out against the reference.
fn check_backward(
    dev: &dyn Device,
    case: &BackwardCase,
    dc_stride: usize,
    alias: bool,
    dc_out: DcOut,
) {
    let (b, hid) = (case.b, case.hid);
    let what = format!(
        "lstm_cell_backward B={b} H={hid} c_prev={} dc_in={} stride={dc_stride} alias={alias} dc_out={dc_out:?}",
        case.c_prev.is_some(),
        case.dc_in.is_some()
    );
    const FILL: f32 = -7.25; // marks memory the kernel must leave alone
    let d_gates = dev.upload(&case.gates).unwrap();
    let d_c = dev.upload(&case.c).unwrap();
    let d_c_prev = case.c_prev.as_ref().map(|cp| dev.upload(cp).unwrap());
    let d_dh = dev.upload(&case.dh).unwrap();
    // dgates starts as NaN (the allocation's poison) except where dc_in lives in it
    let d_dgates: DeviceSlice<f32> = dev.alloc_slice(b * 4 * hid).unwrap();
    let view_len = (b - 1) * dc_stride + hid;
    let d_dc_in = case.dc_in.as_ref().map(|dc| {
        if alias {
            assert_eq!(dc_stride, 4 * hid);
            let mut init = dev.download(d_dgates).unwrap();
            init[..view_len].copy_from_slice(&strided(dc, b, hid, dc_stride, f32::NAN));
            dev.write(d_dgates, &init).unwrap();
            d_dgates.slice(0..view_len)
        } else {
            dev.upload(&strided(dc, b, hid, dc_stride, FILL)).unwrap()
        }
    });
    let (d_dc_out, out_stride) = match dc_out {
        DcOut::None => (None, dc_stride),
        DcOut::Strided(s) => {
            assert_eq!(s, dc_stride, "dc_in and dc_out share dc_stride");
            let buf = vec![FILL; (b - 1) * s + hid];
            (Some(dev.upload(&buf).unwrap()), s)
        }
        DcOut::InPlace => (Some(d_dc_in.expect("in place needs dc_in")), dc_stride),
    };
    kernels::lstm_cell_backward(
        dev, d_dgates, d_dc_out, d_dc_in, dc_stride, d_dh, d_gates, d_c, d_c_prev, b, hid,
    )
    .unwrap();

    let got = dev.download(d_dgates).unwrap();
    assert_close_all(
        &format!("{what}: dgates"),
        &got,
        &case.want_dgates,
        ABS,
        REL,
    );
    if let Some(d) = d_dc_out {
        let (got_dc, gaps_kept) = unstrided(&dev.download(d).unwrap(), b, hid, out_stride, FILL);
        assert_close_all(&format!("{what}: dc_out"), &got_dc, &case.want_dc, ABS, REL);
        assert!(gaps_kept, "{what}: dc_out wrote between its rows");
    }
    if let (Some(d), false) = (d_dc_in, alias) {
        if !matches!(dc_out, DcOut::InPlace) {
            let want_in = strided(case.dc_in.as_ref().unwrap(), b, hid, dc_stride, FILL);
            let got_in = dev.download(d).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got_in), bits(&want_in), "{what}: dc_in was modified");
        }
    }
}

device_tests! {
    fn emu_lstm_cell_backward_matches_reference / gpu_lstm_cell_backward_matches_reference (dev) {
        for &(b, hid) in &[(3, 70), (5, 70), (1, 1)] {
            let seed = (b * 100 + hid) as u64;
            let full = backward_case(b, hid, true, true, seed);
            check_backward(&dev, &full, hid, false, DcOut::Strided(hid));
            check_backward(&dev, &full, hid + 3, false, DcOut::Strided(hid + 3));
            check_backward(&dev, &full, hid, false, DcOut::None);
            check_backward(&dev, &full, hid, false, DcOut::InPlace);
            // the first step of the sequence: no c_prev
            let first = backward_case(b, hid, false, true, seed + 1);
            check_backward(&dev, &first, hid, false, DcOut::Strided(hid));
            // the last step: no gradient reaching c from later steps
            let last = backward_case(b, hid, true, false, seed + 2);
            check_backward(&dev, &last, hid, false, DcOut::Strided(hid));
            check_backward(&dev, &last, 2 * hid + 1, false, DcOut::None);
            // a one-step sequence: neither
            let only = backward_case(b, hid, false, false, seed + 3);
            check_backward(&dev, &only, hid, false, DcOut::Strided(hid));
        }
    }
}

#[test]
fn emu_lstm_cell_backward_reads_dc_in_from_dgates_before_overwriting_it() {
    // The layer's layout: dc_in is this step's dgates columns 0..H (stride 4H), and dc_out goes
    // to the previous step's dgates columns 0..H (another (B, 4H) buffer, same stride).
    let dev = EmuDevice::new();
    for &(b, hid) in &[(3, 70), (5, 70), (1, 1), (2, 3)] {
        let case = backward_case(b, hid, true, true, (b * 7 + hid) as u64);
        check_backward(&dev, &case, 4 * hid, true, DcOut::Strided(4 * hid));
        check_backward(&dev, &case, 4 * hid, true, DcOut::None);
        let first = backward_case(b, hid, false, true, (b * 7 + hid + 1) as u64);
        check_backward(&dev, &first, 4 * hid, true, DcOut::Strided(4 * hid));
    }
}

#[test]
#[should_panic(
    expected = "shape mismatch in lstm_cell_backward: dc_in expected shape [2, 3] with row stride 12"
)]
fn emu_lstm_cell_backward_wrong_strided_length_names_op_and_argument() {
    let dev = EmuDevice::new();
    let g = dev.alloc_slice::<f32>(2 * 12).unwrap();
    let s = dev.alloc_slice::<f32>(2 * 3).unwrap();
    // a (2, 3) view with stride 12 has 12 + 3 = 15 elements, not 24
    let _ = kernels::lstm_cell_backward(&dev, g, None, Some(g), 12, s, g, s, None, 2, 3);
}
