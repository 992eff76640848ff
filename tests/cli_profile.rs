//! `robo-poet profile-step` on the CPU and on the emulated CUDA backend, and the profiling scripts'
//! own checks: scripts/ncu_summary.py on a hand-made CSV in the shape `ncu --csv --page raw`
//! writes, and the clear failure of scripts/profile-{nsys,ncu}.sh where nsys / ncu are missing.

mod cli_support;
use cli_support::*;

use std::path::Path;
use std::process::Command;

/// The "profiled step N: X ms, Y tokens/s, loss L" line's (ms, tokens/s, loss).
fn step_line(out: &str) -> (f64, f64, f64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("profiled step"))
        .unwrap_or_else(|| panic!("no `profiled step` line in:\n{out}"));
    let nums: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 4, "step, ms, tokens/s, loss in `{line}`");
    (nums[1], nums[2], nums[3])
}

const TINY_ATTENTION: [&str; 10] = [
    "--d-model",
    "16",
    "--heads",
    "2",
    "--layers",
    "1",
    "--batch",
    "2",
    "--seq-len",
    "8",
];

#[test]
fn profile_step_times_one_step_on_the_cpu() {
    for (model, extra) in [
        ("attention", &TINY_ATTENTION[..]),
        (
            "lstm",
            &[
                "--hidden",
                "16",
                "--embed",
                "8",
                "--batch",
                "2",
                "--seq-len",
                "8",
            ][..],
        ),
    ] {
        let mut args = vec![
            "profile-step",
            "--device",
            "cpu",
            "--model",
            model,
            "--warmup",
            "2",
        ];
        args.extend_from_slice(extra);
        let out = ok(&robo(&args));
        let (ms, tps, loss) = step_line(&out);
        assert!(ms > 0.0 && tps > 0.0, "{model}: {out}");
        // Random tokens over 78 symbols at initialisation: the loss is near ln 78 = 4.36.
        assert!(
            (loss - 78f64.ln()).abs() < 0.3,
            "{model}: loss {loss}\n{out}"
        );
        assert!(
            out.contains("device: cpu") && out.contains("2 x 8 random tokens"),
            "{out}"
        );
        assert!(
            out.contains("profiled step 3"),
            "two warm-up steps, then step 3: {out}"
        );
        assert!(!out.contains("nvtx"), "the CPU sends no NVTX ranges: {out}");
    }
}

#[test]
fn emu_cli_profile_step_runs_on_the_emulated_cuda_backend() {
    let mut args = vec!["profile-step", "--device", "emu", "--warmup", "0"];
    args.extend_from_slice(&TINY_ATTENTION);
    let out = ok(&robo(&args));
    let (_, _, loss) = step_line(&out);
    assert!((loss - 78f64.ln()).abs() < 0.3, "loss {loss}\n{out}");
    assert!(out.contains("emulated CUDA device"), "{out}");
}

#[test]
fn profile_step_rejects_bad_flags_with_one_line() {
    for (args, needle) in [
        (&["profile-step", "--vocab", "1"][..], "--vocab"),
        (
            &["profile-step", "--model", "lstm", "--heads", "2"],
            "--heads",
        ),
        (
            &["profile-step", "--model", "lstm", "--preset", "seed"],
            "--preset seed",
        ),
        (&["profile-step", "--batch", "0"], "--batch"),
        (
            &["profile-step", "--d-model", "30", "--heads", "4"],
            "heads",
        ),
    ] {
        let o = robo(args);
        let t = text(&o);
        assert!(!o.status.success(), "{args:?} should fail:\n{t}");
        assert!(t.contains(needle), "{args:?}: `{needle}` not in:\n{t}");
        assert!(!t.contains("panicked"), "{args:?} panicked:\n{t}");
    }
}

fn python3() -> bool {
    Command::new("python3").arg("--version").output().is_ok()
}

#[test]
fn ncu_summary_turns_the_raw_csv_into_a_per_kernel_table() {
    if !python3() {
        eprintln!("SKIPPED: no python3");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("python3")
        .arg(root.join("scripts/ncu_summary.py"))
        .arg(root.join("tests/data/ncu_raw.csv"))
        .output()
        .expect("run python3");
    let md = ok(&o);
    let rows: Vec<Vec<&str>> = md
        .lines()
        .skip(2)
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    // By hand from tests/data/ncu_raw.csv: matmul_forward ran 10 µs at 1200 GB/s and 30 µs at
    // 600 GB/s (time-weighted: 750 GB/s), 40 % and 60 % occupancy (55 %); 45 µs in all.
    assert_eq!(
        rows[0],
        [
            "matmul_forward",
            "2",
            "40.0",
            "88.9 %",
            "20.00",
            "750.0",
            "64",
            "55.0 %"
        ],
        "{md}"
    );
    assert_eq!(
        rows[1],
        [
            "causal_softmax_dropout_forward",
            "1",
            "4.0",
            "8.9 %",
            "4.00",
            "800.0",
            "32",
            "75.0 %"
        ]
    );
    assert_eq!(
        rows[2],
        [
            "adamw_update",
            "1",
            "1.0",
            "2.2 %",
            "1.00",
            "n/a",
            "24",
            "n/a"
        ]
    );
    assert_eq!(rows[3][..3], ["**all kernels**", "4", "45.0"]);

    // Not an ncu CSV: one line saying so, no traceback.
    let o = Command::new("python3")
        .arg(root.join("scripts/ncu_summary.py"))
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("run python3");
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("ncu --csv --page raw"),
        "{t}"
    );
    assert!(!t.contains("Traceback"), "{t}");
}

#[test]
fn profile_scripts_say_what_is_missing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (script, tool) in [("profile-nsys.sh", "nsys"), ("profile-ncu.sh", "ncu")] {
        // A PATH without the CUDA toolkit (skip where the tool is installed system-wide).
        let path = "/usr/bin:/bin";
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .env("PATH", path)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(true);
        if found {
            eprintln!("SKIPPED: {tool} is in {path}");
            continue;
        }
        let o = Command::new("bash")
            .arg(root.join("scripts").join(script))
            .args(["--bin", env!("CARGO_BIN_EXE_robo-poet")])
            .env("PATH", path)
            .output()
            .expect("run bash");
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{script}: {t}");
        assert!(
            t.contains(&format!("{tool} not found on PATH")),
            "{script}: {t}"
        );
    }
}
