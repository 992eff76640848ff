//! The project's kernels (kernels/*.cu) on the emulated device, launched through their host
//! launchers (src/gpu/kernels.rs), against the CPU reference (src/ops) at ragged shapes; and the
//! emulated device's memory and launch contract.

#[macro_use]
mod common;

use robo_poet::gpu::{
    kernels, Device, DeviceExt, DeviceSlice, EmuDevice, GpuError, KernelArgs, LaunchConfig,
};
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

// (matmul_forward and the other linear-layer kernels: tests/emu_matmul.rs)

// ----------------------------------------------------------------------------------------------
// causal_softmax_forward

fn check_softmax(dev: &dyn Device, r: usize, t: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut scores = randn(&mut rng, r * t * t, 3.0);
    // matrix 1 sits at +100: exp without the max subtraction would overflow f32
    for x in scores.iter_mut().skip(t * t).take(t * t) {
        *x += 100.0;
    }
    let mut want = vec![0.0; r * t * t];
    ops::attention::causal_softmax_forward(&mut want, &scores, r, t);

    let d_scores = dev.upload(&scores).unwrap();
    let d_probs = dev.alloc_slice::<f32>(r * t * t).unwrap();
    kernels::causal_softmax_forward(dev, d_probs, d_scores, r, t).unwrap();
    let got = dev.download(d_probs).unwrap();
    // __expf (exp2 of x·log2 e, rounded) and f32 sums against expf and f64 sums: the relative
    // difference is a few 1e-6 for these scores.
    let what = format!("causal_softmax_forward R={r} T={t}");
    assert_close_all(&what, &got, &want, 1e-7, 2e-5);
    for (k, &p) in got.iter().enumerate() {
        let (i, j) = ((k / t) % t, k % t);
        if j > i {
            assert_eq!(
                p.to_bits(),
                0,
                "{what}: entry {k} (i={i}, j={j}) above the diagonal must be exactly 0, got {p}"
            );
        }
    }
}

device_tests! {
    fn emu_causal_softmax_forward_matches_reference / gpu_causal_softmax_forward_matches_reference (dev) {
        check_softmax(&dev, 3, 1, 10);
        check_softmax(&dev, 3, 37, 11);
        check_softmax(&dev, 3, 128, 12);
    }
}

// ----------------------------------------------------------------------------------------------
// attention_row_sum_check

/// Runs the check kernel on probs (R, T, T) and compares with the direct formula.
fn check_row_sums(dev: &dyn Device, probs: &[f32], r: usize, t: usize, tol: f32) -> (f32, u32) {
    let mut want_max = 0.0f64;
    let mut want_bad = 0u32;
    let mut any_nan = false;
    for row in probs.chunks_exact(t) {
        let dev_ = (row.iter().map(|&p| p as f64).sum::<f64>() - 1.0).abs();
        any_nan |= dev_.is_nan();
        if dev_.is_nan() || dev_ > tol as f64 {
            want_bad += 1;
        }
        if dev_ > want_max {
            want_max = dev_;
        }
    }
    let d_probs = dev.upload(probs).unwrap();
    let d_result = dev.alloc_slice::<u32>(2).unwrap();
    kernels::attention_row_sum_check(dev, d_result, d_probs, r, t, tol).unwrap();
    let (got_max, got_bad) = kernels::read_row_sum_check(dev, d_result).unwrap();
    let what = format!("attention_row_sum_check R={r} T={t} tol={tol}");
    assert_eq!(got_bad, want_bad, "{what}: rows over tolerance");
    if any_nan {
        assert!(
            got_max.is_nan(),
            "{what}: a NaN row must make the max deviation NaN, got {got_max}"
        );
    } else {
        // the kernel sums a row in f32: within T·ε of the f64 sum
        let err = (got_max as f64 - want_max).abs();
        assert!(
            err <= 1e-6 * t as f64,
            "{what}: max deviation {got_max}, want {want_max}"
        );
    }
    (got_max, got_bad)
}

fn softmax_probs(r: usize, t: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let scores = randn(&mut rng, r * t * t, 2.0);
    let mut probs = vec![0.0; r * t * t];
    ops::attention::causal_softmax_forward(&mut probs, &scores, r, t);
    probs
}

device_tests! {
    fn emu_attention_row_sum_check_finds_perturbed_rows / gpu_attention_row_sum_check_finds_perturbed_rows (dev) {
        for (r, t, seed) in [(3, 37, 20), (5, 1, 21), (2, 100, 22)] {
            let mut probs = softmax_probs(r, t, seed);
            let (max, bad) = check_row_sums(&dev, &probs, r, t, 1e-3);
            assert_eq!(bad, 0, "R={r} T={t}: clean softmax rows");
            assert!(
                max < 1e-5,
                "R={r} T={t}: clean softmax rows deviate by {max}"
            );
            // perturb a few rows: scale one up by 1%, one down by 20%, push one entry by 0.5
            let rows = r * t;
            for (row, f) in [(0, 1.01f32), (rows / 2, 0.8), (rows - 1, 1.0)] {
                for p in &mut probs[row * t..(row + 1) * t] {
                    *p *= f;
                }
            }
            probs[(rows - 1) * t] += 0.5;
            let (max, bad) = check_row_sums(&dev, &probs, r, t, 1e-3);
            assert_eq!(
                bad,
                if rows / 2 == 0 || rows / 2 == rows - 1 {
                    2
                } else {
                    3
                },
                "R={r} T={t}: perturbed rows"
            );
            assert!(
                (max - 0.5).abs() < 1e-5,
                "R={r} T={t}: max deviation {max}, want 0.5"
            );
            // a NaN row counts as bad and poisons the max
            probs[t / 2] = f32::NAN;
            check_row_sums(&dev, &probs, r, t, 1e-3);
        }
    }
}

// ----------------------------------------------------------------------------------------------
// the device contract

#[test]
fn emu_device_memory_is_nan_filled_bounds_checked_and_copyable() {
    let dev = EmuDevice::new();
    let a = dev.alloc_slice::<f32>(10).unwrap();
    assert!(
        dev.download(a).unwrap().iter().all(|x| x.is_nan()),
        "fresh device memory reads as NaN"
    );
    assert_eq!(a.ptr() % 256, 0, "cudaMalloc alignment");
    dev.write(a, &[1.0; 10]).unwrap();
    let b = dev.alloc_slice::<f32>(10).unwrap();
    dev.copy_dtod(b.ptr(), a.ptr(), 40).unwrap();
    dev.memset_d8(b.slice(5..10).ptr(), 0, 20).unwrap();
    assert_eq!(
        dev.download(b).unwrap(),
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    );

    let past_end = dev.copy_htod(a.ptr() + 8, &[0u8; 36]).unwrap_err();
    assert!(
        matches!(
            past_end,
            GpuError::InvalidMemory {
                op: "copy_htod",
                ..
            }
        ),
        "{past_end}"
    );
    assert!(
        past_end.to_string().contains("run past the end"),
        "{past_end}"
    );
    let mut buf = [0u8; 4];
    assert!(
        dev.copy_dtoh(&mut buf, 16).is_err(),
        "address outside every allocation"
    );
    assert!(
        dev.copy_dtod(a.ptr(), a.ptr() + 4, 8).is_err(),
        "overlapping copy"
    );
    assert!(
        dev.free(a.ptr() + 4).is_err(),
        "free of an interior pointer"
    );
    assert!(dev.alloc(0).is_err(), "cuMemAlloc rejects 0 bytes");
    dev.free(a.ptr()).unwrap();
    assert!(dev.copy_dtoh(&mut buf, a.ptr()).is_err(), "use after free");
    assert!(dev.free(a.ptr()).is_err(), "double free");
    assert_eq!(dev.live_allocations(), 1);
}

#[test]
fn emu_launch_errors_name_the_kernel_and_launch_shape() {
    let dev = EmuDevice::new();
    let out: DeviceSlice<f32> = dev.alloc_slice(4).unwrap();
    let config = LaunchConfig::new(1, 32);

    // SAFETY (all launches below): rejected before the kernel could run.
    let mut args = KernelArgs::new().slice(out);
    let e = unsafe { dev.launch("no_such_kernel", &config, &mut args.params()) }.unwrap_err();
    assert!(
        e.to_string().contains("no_such_kernel") && e.to_string().contains("matmul_forward"),
        "{e}"
    );

    let e = unsafe { dev.launch("matmul_forward", &config, &mut args.params()) }.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, GpuError::InvalidLaunch { .. }), "{msg}");
    assert!(
        msg.contains("matmul_forward") && msg.contains("grid (1, 1, 1), block (32, 1, 1)"),
        "{msg}"
    );
    assert!(
        msg.contains("takes 7 parameters") && msg.contains("passed 1"),
        "{msg}"
    );

    let e = unsafe {
        dev.launch(
            "causal_softmax_forward",
            &LaunchConfig::new(1, 2048),
            &mut args.params(),
        )
    }
    .unwrap_err();
    assert!(
        e.to_string().contains("causal_softmax_forward") && e.to_string().contains("1024 threads"),
        "{e}"
    );
    let e = unsafe {
        dev.launch(
            "causal_softmax_forward",
            &config.with_shared_bytes(64 * 1024),
            &mut args.params(),
        )
    }
    .unwrap_err();
    assert!(e.to_string().contains("cuFuncSetAttribute"), "{e}");
    let names = dev.kernel_names();
    for k in [
        "attention_row_sum_check",
        "causal_softmax_forward",
        "matmul_forward",
    ] {
        assert!(
            names.contains(&k),
            "kernel {k} not found by build.rs (found {names:?})"
        );
    }
}
