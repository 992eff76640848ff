//! The linear layer's kernels (kernels/matmul.cu) on the emulated device, through their launchers
//! (src/gpu/kernels/matmul.rs), against the CPU reference (src/ops/matmul.rs) at ragged shapes:
//! sizes that are not multiples of the 64x64x16 tiles, 1x1x1, and sizes just over one tile.

#[macro_use]
mod common;

use robo_poet::gpu::{kernels, Device, DeviceExt, EmuDevice, KernelArgs, LaunchConfig, Schedule};
use robo_poet::ops;
use robo_poet::rng::Rng;

/// Allocations still live on a device, where the device counts them (the emulator does; the
/// GPU run of a test skips that check).
trait Live {
    fn live(&self) -> Option<usize>;
}
impl Live for EmuDevice {
    fn live(&self) -> Option<usize> {
        Some(self.live_allocations())
    }
}
impl Live for robo_poet::gpu::CudaDevice {
    fn live(&self) -> Option<usize> {
        None
    }
}
fn live(dev: &impl Live) -> Option<usize> {
    dev.live()
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

/// Absolute tolerance for a sum of `k` products of N(0, 1) values in f32, summed in another order
/// than the reference: the rounding difference grows about like k·ε·|term| in the worst case
/// (ε = 6e-8, |term| rarely above 4, so 2.4e-7·k); 2e-6·k leaves an 8x margin, and a wrong tile,
/// index or missing zero padding is off by O(1) or NaN.
fn sum_tol(k: usize) -> f32 {
    1e-5 + 2e-6 * k as f32
}

// ----------------------------------------------------------------------------------------------
// matmul_forward, matmul_forward_accumulate

fn check_matmul(dev: &dyn Device, n: usize, ic: usize, oc: usize, with_bias: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let inp = randn(&mut rng, n * ic, 1.0);
    let weight = randn(&mut rng, oc * ic, 1.0);
    let bias = randn(&mut rng, oc, 1.0);
    let bias = with_bias.then_some(&bias[..]);
    let mut want = vec![0.0; n * oc];
    ops::matmul::matmul_forward(&mut want, &inp, &weight, bias, n, ic, oc);

    let d_inp = dev.upload(&inp).unwrap();
    let d_weight = dev.upload(&weight).unwrap();
    let d_bias = bias.map(|b| dev.upload(b).unwrap());
    let d_out = dev.alloc_slice::<f32>(n * oc).unwrap();
    kernels::matmul_forward(
        dev,
        kernels::Precision::Fp32,
        d_out,
        d_inp,
        d_weight,
        d_bias,
        n,
        ic,
        oc,
    )
    .unwrap();
    let got = dev.download(d_out).unwrap();
    // f32 sums over IC terms in another order than the reference: the difference is about
    // sqrt(IC)·ε·(typical |term|) ≈ 1e-6 here; a wrong tile or index is off by O(1) or NaN.
    assert_close_all(
        &format!("matmul_forward {n}x{ic}x{oc} bias={with_bias}"),
        &got,
        &want,
        1e-4,
        1e-4,
    );
}

device_tests! {
    fn emu_matmul_forward_matches_reference_at_ragged_shapes / gpu_matmul_forward_matches_reference_at_ragged_shapes (dev) {
        check_matmul(&dev, 70, 45, 33, true, 1);
        check_matmul(&dev, 1, 1, 1, true, 2);
        check_matmul(&dev, 33, 32, 31, false, 3);
        check_matmul(&dev, 65, 17, 65, true, 5); // one past the 64x64 output tile and the 16-deep k step
        // K a multiple of 4: the staging's float4 loads, with ragged rows, columns and k steps
        check_matmul(&dev, 37, 36, 68, true, 6);
    }
}

device_tests! {
    fn emu_matmul_forward_matches_reference_at_a_larger_shape / gpu_matmul_forward_matches_reference_at_a_larger_shape (dev) {
        check_matmul(&dev, 128, 256, 384, true, 4);
    }
}

fn check_matmul_accumulate(dev: &dyn Device, n: usize, ic: usize, oc: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let inp = randn(&mut rng, n * ic, 1.0);
    let weight = randn(&mut rng, oc * ic, 1.0);
    let out0 = randn(&mut rng, n * oc, 1.0);
    let mut prod = vec![0.0; n * oc];
    ops::matmul::matmul_forward(&mut prod, &inp, &weight, None, n, ic, oc);
    let want: Vec<f32> = out0.iter().zip(&prod).map(|(a, p)| a + p).collect();

    let d_out = dev.upload(&out0).unwrap();
    let d_inp = dev.upload(&inp).unwrap();
    let d_weight = dev.upload(&weight).unwrap();
    kernels::matmul_forward_accumulate(
        dev,
        kernels::Precision::Fp32,
        d_out,
        d_inp,
        d_weight,
        n,
        ic,
        oc,
    )
    .unwrap();
    let got = dev.download(d_out).unwrap();
    // the product's f32 rounding (sum_tol), plus one rounding of the addition (rel 1e-6)
    assert_close_all(
        &format!("matmul_forward_accumulate {n}x{ic}x{oc}"),
        &got,
        &want,
        sum_tol(ic),
        1e-6,
    );
}

device_tests! {
    fn emu_matmul_forward_accumulate_adds_to_the_output / gpu_matmul_forward_accumulate_adds_to_the_output (dev) {
        check_matmul_accumulate(&dev, 70, 45, 33, 11);
        check_matmul_accumulate(&dev, 1, 1, 1, 12);
        check_matmul_accumulate(&dev, 65, 17, 65, 13);
    }
}

// ----------------------------------------------------------------------------------------------
// matmul_backward_input

fn check_backward_input(dev: &dyn Device, n: usize, ic: usize, oc: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let dout = randn(&mut rng, n * oc, 1.0);
    let inp = randn(&mut rng, n * ic, 1.0);
    let weight = randn(&mut rng, oc * ic, 1.0);
    let dinp0 = randn(&mut rng, n * ic, 1.0);
    let mut want = dinp0.clone();
    let mut dw_unused = vec![0.0; oc * ic];
    ops::matmul::matmul_backward(
        Some(&mut want),
        &mut dw_unused,
        None,
        &dout,
        &inp,
        &weight,
        n,
        ic,
        oc,
    );

    let d_dinp = dev.upload(&dinp0).unwrap();
    let d_dout = dev.upload(&dout).unwrap();
    let d_weight = dev.upload(&weight).unwrap();
    kernels::matmul_backward_input(
        dev,
        kernels::Precision::Fp32,
        d_dinp,
        d_dout,
        d_weight,
        n,
        ic,
        oc,
    )
    .unwrap();
    let got = dev.download(d_dinp).unwrap();
    // a sum over OC products (sum_tol) added to the starting values (rel 1e-6)
    assert_close_all(
        &format!("matmul_backward_input {n}x{ic}x{oc}"),
        &got,
        &want,
        sum_tol(oc),
        1e-6,
    );
}

device_tests! {
    fn emu_matmul_backward_input_matches_reference / gpu_matmul_backward_input_matches_reference (dev) {
        check_backward_input(&dev, 70, 45, 33, 21);
        check_backward_input(&dev, 1, 1, 1, 22);
        check_backward_input(&dev, 65, 65, 17, 23);
        check_backward_input(&dev, 17, 3, 70, 24);
        // IC a multiple of 4: the weight's rows are staged as float4, the last group partly
        check_backward_input(&dev, 70, 36, 33, 25);
        check_backward_input(&dev, 5, 68, 20, 26);
    }
}

// ----------------------------------------------------------------------------------------------
// matmul_backward_weight

/// Inputs and the reference dweight (starting from non-zero values) for one shape.
fn backward_weight_case(n: usize, ic: usize, oc: usize, seed: u64) -> [Vec<f32>; 4] {
    let mut rng = Rng::new(seed);
    let dout = randn(&mut rng, n * oc, 1.0);
    let inp = randn(&mut rng, n * ic, 1.0);
    let dw0 = randn(&mut rng, oc * ic, 1.0);
    let mut want = dw0.clone();
    let weight_unused = vec![0.0; oc * ic];
    ops::matmul::matmul_backward(
        None,
        &mut want,
        None,
        &dout,
        &inp,
        &weight_unused,
        n,
        ic,
        oc,
    );
    [dout, inp, dw0, want]
}

/// dweight from the GPU: `splits` None runs the plain launcher (its own split choice and
/// workspace), Some(s) the workspace launcher with s splits.
fn run_backward_weight(
    dev: &dyn Device,
    case: &[Vec<f32>; 4],
    n: usize,
    ic: usize,
    oc: usize,
    splits: Option<usize>,
) -> Vec<f32> {
    let [dout, inp, dw0, _] = case;
    let d_dw = dev.upload(dw0).unwrap();
    let d_dout = dev.upload(dout).unwrap();
    let d_inp = dev.upload(inp).unwrap();
    match splits {
        None => kernels::matmul_backward_weight(
            dev,
            kernels::Precision::Fp32,
            d_dw,
            d_dout,
            d_inp,
            n,
            ic,
            oc,
        )
        .unwrap(),
        Some(s) => {
            let len = kernels::matmul_backward_weight_workspace_len(n, ic, oc, s);
            let ws = (len > 0).then(|| dev.alloc_slice::<f32>(len).unwrap());
            kernels::matmul_backward_weight_with_workspace(
                dev,
                kernels::Precision::Fp32,
                d_dw,
                d_dout,
                d_inp,
                ws,
                s,
                n,
                ic,
                oc,
            )
            .unwrap();
            if let Some(ws) = ws {
                dev.free_slice(ws).unwrap();
            }
        }
    }
    let got = dev.download(d_dw).unwrap();
    for s in [d_dw, d_dout, d_inp] {
        dev.free_slice(s).unwrap();
    }
    got
}

fn check_backward_weight(dev: &dyn Device, n: usize, ic: usize, oc: usize, splits: Option<usize>) {
    let case = backward_weight_case(n, ic, oc, (n * 1000 + ic * 10 + oc) as u64);
    let got = run_backward_weight(dev, &case, n, ic, oc, splits);
    // a sum over N products (sum_tol), split or not, added to the starting values (rel 1e-6)
    assert_close_all(
        &format!("matmul_backward_weight {n}x{ic}x{oc} splits={splits:?}"),
        &got,
        &case[3],
        sum_tol(n),
        1e-6,
    );
}

device_tests! {
    fn emu_matmul_backward_weight_matches_reference / gpu_matmul_backward_weight_matches_reference (dev) {
        check_backward_weight(&dev, 70, 45, 33, None);
        check_backward_weight(&dev, 1, 1, 1, None);
        check_backward_weight(&dev, 17, 65, 65, None);
        // OC and IC multiples of 4: both operands staged as float4 (ragged against the tile)
        check_backward_weight(&dev, 70, 36, 40, None);
        // N long enough that the plain launcher splits it (and allocates its own workspace)
        assert_eq!(kernels::matmul_backward_weight_splits(300, 45, 33), 2);
        check_backward_weight(&dev, 300, 45, 33, None);
        if let Some(n) = live(&dev) {
            assert_eq!(n, 0, "the launcher's workspace was freed");
        }
    }
}

device_tests! {
    fn emu_matmul_backward_weight_with_workspace_matches_reference_for_any_split / gpu_matmul_backward_weight_with_workspace_matches_reference_for_any_split (dev) {
        for splits in [1, 2, 3, 5] {
            check_backward_weight(&dev, 70, 45, 33, Some(splits)); // 5 chunks of 16 rows: last has 6
        }
        check_backward_weight(&dev, 17, 3, 5, Some(4)); // chunks of 16: only 2 are non-empty
        check_backward_weight(&dev, 70, 36, 40, Some(3)); // float4 staging, chunks of 24 rows
        check_backward_weight(&dev, 1, 1, 1, Some(3));
    }
}

#[test]
fn emu_matmul_backward_weight_is_deterministic() {
    let (n, ic, oc) = (300, 45, 33);
    let case = backward_weight_case(n, ic, oc, 31);
    let dev = EmuDevice::new();
    let reverse = EmuDevice::new().with_schedule(Schedule::Reverse);
    for splits in [None, Some(1), Some(5)] {
        let first = run_backward_weight(&dev, &case, n, ic, oc, splits);
        let again = run_backward_weight(&dev, &case, n, ic, oc, splits);
        let reversed = run_backward_weight(&reverse, &case, n, ic, oc, splits);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&first),
            bits(&again),
            "splits={splits:?}: two runs differ"
        );
        assert_eq!(
            bits(&first),
            bits(&reversed),
            "splits={splits:?}: the reverse thread schedule changes the result"
        );
    }
}

#[test]
fn emu_split_heuristics_fill_the_gpu_only_when_the_output_is_small() {
    // tiny output, long N: split (capped), every split at least 128 rows
    assert_eq!(kernels::matmul_backward_weight_splits(8192, 64, 64), 64);
    assert_eq!(kernels::matmul_backward_weight_splits(1000, 64, 64), 7);
    // 16 x 48 = 768 output tiles already fill the GPU
    assert_eq!(kernels::matmul_backward_weight_splits(8192, 3072, 1024), 1);
    assert_eq!(
        kernels::matmul_backward_weight_workspace_len(8192, 3072, 1024, 1),
        0
    );
    assert_eq!(kernels::bias_backward_splits(8192, 64), 64);
    assert_eq!(kernels::bias_backward_splits(100, 64), 1);
    assert_eq!(kernels::bias_backward_workspace_len(100, 64, 1), 0);
}

#[test]
#[should_panic(expected = "shape mismatch in matmul_backward_weight: inp expected shape")]
fn emu_matmul_backward_weight_wrong_shape_names_op_and_argument() {
    let dev = EmuDevice::new();
    let dweight = dev.alloc_slice::<f32>(3 * 4).unwrap();
    let dout = dev.alloc_slice::<f32>(2 * 3).unwrap();
    let inp = dev.alloc_slice::<f32>(5).unwrap(); // (N, IC) = (2, 4) needs 8
    let _ = kernels::matmul_backward_weight(
        &dev,
        kernels::Precision::Fp32,
        dweight,
        dout,
        inp,
        2,
        4,
        3,
    );
}

// ----------------------------------------------------------------------------------------------
// bias_backward

fn bias_case(n: usize, oc: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let dout = randn(&mut rng, n * oc, 1.0);
    let db0 = randn(&mut rng, oc, 1.0);
    let mut want = db0.clone();
    ops::matmul::column_sums_into(&mut want, &dout, oc);
    (dout, db0, want)
}

fn run_bias(
    dev: &dyn Device,
    dout: &[f32],
    db0: &[f32],
    n: usize,
    oc: usize,
    splits: Option<usize>,
) -> Vec<f32> {
    let d_db = dev.upload(db0).unwrap();
    let d_dout = dev.upload(dout).unwrap();
    match splits {
        None => kernels::bias_backward(dev, d_db, d_dout, n, oc).unwrap(),
        Some(s) => {
            let len = kernels::bias_backward_workspace_len(n, oc, s);
            let ws = (len > 0).then(|| dev.alloc_slice::<f32>(len).unwrap());
            kernels::bias_backward_with_workspace(dev, d_db, d_dout, ws, s, n, oc).unwrap();
            if let Some(ws) = ws {
                dev.free_slice(ws).unwrap();
            }
        }
    }
    let got = dev.download(d_db).unwrap();
    dev.free_slice(d_db).unwrap();
    dev.free_slice(d_dout).unwrap();
    got
}

device_tests! {
    fn emu_bias_backward_matches_reference / gpu_bias_backward_matches_reference (dev) {
        for &(n, oc, splits) in &[
            (70, 33, None),
            (1, 1, None),
            (17, 65, None),
            (70, 33, Some(1)),
            (70, 33, Some(3)),  // chunks of 24 rows: 24, 24, 22
            (70, 33, Some(64)), // more splits than sensible: chunks of 2 rows
            (300, 45, Some(2)),
        ] {
            let (dout, db0, want) = bias_case(n, oc, (n + oc) as u64);
            let got = run_bias(&dev, &dout, &db0, n, oc, splits);
            // both sum in f64 (the GPU rounds each split's partial sum to f32 once): only the final
            // f32 rounding and one partial rounding differ, a few ε relative to the partial sums
            assert_close_all(
                &format!("bias_backward N={n} OC={oc} splits={splits:?}"),
                &got,
                &want,
                1e-5,
                1e-6,
            );
        }
        if let Some(n) = live(&dev) {
            assert_eq!(n, 0, "the launcher's workspace was freed");
        }
    }
}

#[test]
fn emu_bias_backward_is_deterministic() {
    let (n, oc) = (300, 45);
    let (dout, db0, _) = bias_case(n, oc, 41);
    let dev = EmuDevice::new();
    let reverse = EmuDevice::new().with_schedule(Schedule::Reverse);
    for splits in [None, Some(5)] {
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let first = bits(run_bias(&dev, &dout, &db0, n, oc, splits));
        assert_eq!(
            first,
            bits(run_bias(&dev, &dout, &db0, n, oc, splits)),
            "splits={splits:?}: two runs differ"
        );
        assert_eq!(
            first,
            bits(run_bias(&reverse, &dout, &db0, n, oc, splits)),
            "splits={splits:?}: the reverse thread schedule changes the result"
        );
    }
}

// ----------------------------------------------------------------------------------------------
// the 128 x 128 tiles of the fp32 single-product kernels (matmul_forward_128, ...)

type Slice = robo_poet::gpu::DeviceSlice<f32>;

/// Launches `kernel` (one of the three single-product GEMMs, or its `_128` twin: parameters
/// (out, a, weight, [bias,] N, IC, OC)) on an (m, nc) output with `tile` x `tile` blocks.
#[allow(clippy::too_many_arguments)]
fn launch_single(
    dev: &dyn Device,
    kernel: &str,
    tile: u32,
    out: Slice,
    a: Slice,
    w: Slice,
    bias: Option<Slice>,
    (n, ic, oc): (usize, usize, usize),
) {
    let nc = if kernel.starts_with("matmul_backward_input") {
        ic
    } else {
        oc
    };
    let config = LaunchConfig::new(
        ((nc as u32).div_ceil(tile), (n as u32).div_ceil(tile), 1),
        (16, if tile == 128 { 16 } else { 8 }),
    );
    let mut args = KernelArgs::new().slice(out).slice(a).slice(w);
    if kernel.starts_with("matmul_forward_128") || kernel == "matmul_forward" {
        args = args.opt_slice(bias);
    }
    let mut args = args.i32(n as i32).i32(ic as i32).i32(oc as i32);
    // SAFETY: the parameter lists of matmul_forward(_128) (out, inp, weight, bias, N, IC, OC),
    // matmul_forward_accumulate(_128) and matmul_backward_input(_128) (out, a, weight, N, IC, OC)
    // in kernels/matmul.cu; out holds (N, OC) resp. (N, IC), a (N, IC) resp. (N, OC), the weight
    // (OC, IC), the bias OC floats.
    unsafe { dev.launch(kernel, &config, &mut args.params()) }
        .unwrap_or_else(|e| panic!("{kernel}: {e}"));
}

/// The three single-product kernels on 64 and on 128 tiles at (n, ic, oc): the same bits, and
/// the reference within sum_tol.
fn check_big_tiles(dev: &dyn Device, n: usize, ic: usize, oc: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let inp = randn(&mut rng, n * ic, 1.0);
    let weight = randn(&mut rng, oc * ic, 1.0);
    let bias = randn(&mut rng, oc, 1.0);
    let dout = randn(&mut rng, n * oc, 1.0);
    let start_out = randn(&mut rng, n * oc, 1.0);
    let start_in = randn(&mut rng, n * ic, 1.0);
    let (d_inp, d_w, d_b, d_dout) = (
        dev.upload(&inp).unwrap(),
        dev.upload(&weight).unwrap(),
        dev.upload(&bias).unwrap(),
        dev.upload(&dout).unwrap(),
    );
    let mut prod = vec![0.0; n * oc];
    ops::matmul::matmul_forward(&mut prod, &inp, &weight, None, n, ic, oc);
    let mut dinp = vec![0.0; n * ic];
    // dinp (N, IC) = dout (N, OC) · weight (OC, IC), in f64
    for i in 0..n {
        for c in 0..ic {
            dinp[i * ic + c] = (0..oc)
                .map(|o| dout[i * oc + o] as f64 * weight[o * ic + c] as f64)
                .sum::<f64>() as f32;
        }
    }
    // (kernel, start of the output (empty: written, not added to), operand a, bias, want, K)
    type Case<'a> = (&'a str, &'a [f32], Slice, Option<Slice>, Vec<f32>, usize);
    let cases: [Case; 3] = [
        (
            "matmul_forward",
            &[],
            d_inp,
            Some(d_b),
            (0..n * oc).map(|e| prod[e] + bias[e % oc]).collect(),
            ic,
        ),
        (
            "matmul_forward_accumulate",
            &start_out,
            d_inp,
            None,
            (0..n * oc).map(|e| start_out[e] + prod[e]).collect(),
            ic,
        ),
        (
            "matmul_backward_input",
            &start_in,
            d_dout,
            None,
            (0..n * ic).map(|e| start_in[e] + dinp[e]).collect(),
            oc,
        ),
    ];
    for (kernel, start, a, bias, want, k) in cases {
        let len = want.len();
        let run = |name: &str, tile: u32| {
            let out = if start.is_empty() {
                dev.alloc_slice::<f32>(len).unwrap()
            } else {
                dev.upload(start).unwrap()
            };
            launch_single(dev, name, tile, out, a, d_w, bias, (n, ic, oc));
            dev.download(out).unwrap()
        };
        let (small, big) = (run(kernel, 64), run(&format!("{kernel}_128"), 128));
        let what = format!("{kernel} {n}x{ic}x{oc}");
        assert!(
            small
                .iter()
                .zip(&big)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: the 128 x 128 tiles differ from the 64 x 64 ones"
        );
        assert_close_all(&what, &big, &want, sum_tol(k), 1e-6);
    }
}

device_tests! {
    fn emu_matmul_128_tiles_give_the_64_tile_bits_at_ragged_shapes / gpu_matmul_128_tiles_give_the_64_tile_bits_at_ragged_shapes (dev) {
        check_big_tiles(&dev, 200, 45, 150, 11); // ragged past one 128 tile both ways, scalar staging
        check_big_tiles(&dev, 1, 1, 1, 12);
        check_big_tiles(&dev, 129, 36, 260, 13); // k-contiguous float4 staging, one row past a tile
        check_big_tiles(&dev, 131, 68, 128, 14); // IC a multiple of 4: the weight's float4 rows too
    }
}

#[test]
fn emu_matmul_launchers_pick_128_tiles_for_large_fp32_outputs() {
    use kernels::{gemm_uses_big_tiles, GemmTiles, Precision};
    // 256 tiles of 128 x 128 (two waves over 132 SMs) or more, at fp32 only
    assert!(gemm_uses_big_tiles(Precision::Fp32, 2048, 2048));
    assert!(gemm_uses_big_tiles(Precision::Fp32, 4096, 4096));
    assert!(!gemm_uses_big_tiles(Precision::Fp32, 2048, 1920)); // 16 x 15 = 240 tiles
    assert!(!gemm_uses_big_tiles(Precision::Fp32, 4096, 512)); // the GPT's mlp: 32 x 4
    assert!(!gemm_uses_big_tiles(Precision::Tf32, 4096, 4096));
    assert!(!gemm_uses_big_tiles(Precision::Bf16, 4096, 4096));
    // the launcher at such a shape (128 x 128 tiles): the bits of the same product forced onto
    // 64 x 64 tiles
    let dev = EmuDevice::new();
    let (n, ic, oc) = (2048, 8, 2048);
    let mut rng = Rng::new(21);
    let (inp, weight) = (randn(&mut rng, n * ic, 1.0), randn(&mut rng, oc * ic, 1.0));
    let (d_inp, d_w) = (dev.upload(&inp).unwrap(), dev.upload(&weight).unwrap());
    let (a, b) = (
        dev.alloc_slice::<f32>(n * oc).unwrap(),
        dev.alloc_slice::<f32>(n * oc).unwrap(),
    );
    kernels::matmul_forward(&dev, Precision::Fp32, a, d_inp, d_w, None, n, ic, oc).unwrap();
    kernels::matmul_forward_on_tiles(
        &dev,
        Precision::Fp32,
        GemmTiles::Small,
        b,
        d_inp,
        d_w,
        None,
        n,
        ic,
        oc,
    )
    .unwrap();
    let (a, b) = (dev.download(a).unwrap(), dev.download(b).unwrap());
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "the launcher's result differs"
    );
}
