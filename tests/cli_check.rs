//! `robo-poet check` end to end: the seed configuration on the CPU (every line there, with the
//! figures the suite promises), a tiny configuration on the emulated CUDA backend (the device
//! lines and the GPU-vs-CPU parity line through the CUDA host path), and bad input.

mod cli_support;
use cli_support::*;

use serde_json::Value;
use std::process::Output;

/// The JSON report; the exit code must be 1 exactly when a line failed (0 otherwise).
#[track_caller]
fn report(o: &Output) -> Value {
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{}", text(o)));
    let failed = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["status"] == "fail");
    assert_eq!(v["passed"], !failed, "{v}");
    assert_eq!(
        o.status.code(),
        Some(if failed { 1 } else { 0 }),
        "{}",
        text(o)
    );
    v
}

fn line<'a>(v: &'a Value, check_starts: &str, device: &str) -> &'a Value {
    v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["check"].as_str().unwrap().starts_with(check_starts) && l["device"] == device)
        .unwrap_or_else(|| panic!("no line {check_starts:?} on {device}: {v}"))
}

#[test]
fn check_on_the_seed_config_measures_every_line() {
    let (d, f) = workdir();
    let f = f.to_str().unwrap();
    let o = run(
        &[
            "check", "--text", f, "--device", "cpu", "--steps", "60", "--json",
        ],
        d.path(),
    );
    let v = report(&o);
    assert_eq!(v["config"]["seq_len"], 128);
    assert_eq!(v["config"]["d_model"], 256);
    assert_eq!(v["batch"], 4);
    for c in [
        "attention weights",
        "causal leakage",
        "dropout after softmax",
        "finite-difference",
        "training on real data lowers the loss",
    ] {
        let l = line(&v, c, "cpu");
        assert_eq!(l["status"], "pass", "{l}");
    }
    let drop = line(&v, "dropout after softmax", "cpu")["measured"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(drop.starts_with("p 0.1: kept 0."), "{drop}");
    let parity = line(&v, "GPU vs CPU", "gpu");
    assert_eq!(parity["status"], "skipped");
    assert!(parity["measured"]
        .as_str()
        .unwrap()
        .contains("--device cpu"));

    // Gradient norms: a line for the global norm and for each layer, at both moments, whose
    // verdict is exactly the range test of the figure it shows.
    for when in ["at initialisation", "after 60 steps"] {
        for layer in ["global", "embedding", "blocks.0", "lm_head"] {
            let l = line(&v, &format!("gradient norm {when}: {layer}"), "cpu");
            let x: f64 = l["measured"].as_str().unwrap().parse().unwrap();
            let inside = (0.1..=10.0).contains(&x);
            assert_eq!(l["status"], if inside { "pass" } else { "fail" }, "{l}");
        }
    }
    let norms = v["gradient_norms"].as_array().unwrap();
    assert_eq!(norms.len(), 2);
    for n in norms {
        let layers: f64 = n["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l[1].as_f64().unwrap().powi(2))
            .sum();
        let global = n["global"].as_f64().unwrap();
        assert!((layers.sqrt() - global).abs() <= 1e-9 * global, "{n}");
        assert_eq!(n["params"].as_array().unwrap().len(), 9, "{n}");
        let acts = n["activations"].as_array().unwrap();
        assert!(acts.iter().any(|a| a[0] == "d.logits"), "{n}");
    }

    // The table says the same.
    let o = run(
        &[
            "check",
            "--text",
            f,
            "--device",
            "cpu",
            "--steps",
            "5",
            "--no-progress",
        ],
        d.path(),
    );
    let t = text(&o);
    assert!(t.contains("robo-poet check: seed attention"), "{t}");
    assert!(t.contains("GPU vs CPU: one training step"), "{t}");
    assert!(t.contains("lines passed"), "{t}");
    assert!(t.contains("op input gradients (d.*):"), "{t}");
}

#[test]
fn emu_check_runs_the_device_lines_and_parity_on_the_cuda_backend() {
    let (d, f) = workdir();
    let f = f.to_str().unwrap();
    let o = run(
        &[
            "check",
            "--text",
            f,
            "--device",
            "emu",
            "--steps",
            "2",
            "--json",
            "--d-model",
            "8",
            "--heads",
            "2",
            "--seq-len",
            "8",
            "--batch",
            "2",
            "--layers",
            "1",
        ],
        d.path(),
    );
    let v = report(&o);
    for c in [
        "attention weights",
        "causal leakage",
        "dropout after softmax",
    ] {
        for dev in ["cpu", "emu"] {
            assert_eq!(line(&v, c, dev)["status"], "pass", "{c} on {dev}: {v}");
        }
    }
    let parity = line(&v, "GPU vs CPU", "emu");
    assert_eq!(parity["status"], "pass", "{parity}");
    // The same gradient on both backends at initialisation: the same verdicts and figures to 4
    // decimals.
    for layer in ["global", "embedding", "blocks.0", "lm_head"] {
        let c = format!("gradient norm at initialisation: {layer}");
        assert_eq!(
            line(&v, &c, "cpu")["measured"],
            line(&v, &c, "emu")["measured"],
            "{c}"
        );
    }
}

#[test]
fn check_rejects_bad_input_with_one_line() {
    let (d, f) = workdir();
    let f = f.to_str().unwrap();
    let mut cases = vec![
        (vec!["--model", "lstm", "--heads", "2"], "--heads"),
        (vec!["--seq-len", "0"], "seq"),
    ];
    if robo_poet::gpu::CudaDevice::open().is_err() {
        cases.push((vec!["--device", "cuda"], "--device cpu"));
    }
    for (args, needle) in cases {
        let mut a = vec!["check", "--text", f, "--steps", "1"];
        a.extend(args);
        let o = run(&a, d.path());
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {t}");
        assert!(!t.contains("panicked"), "{t}");
        assert!(t.contains(needle), "{a:?}: {t}");
    }
}
