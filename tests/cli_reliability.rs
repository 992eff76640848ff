//! Issue 16 (reliability), through the binary: sizes checked before any allocation, absurd thread
//! counts, one writer per run directory, readers that never see a half-swapped checkpoint, and
//! Ctrl-C / SIGTERM. Flags, messages and inputs are in tests/cli_messages.rs; the metrics side of
//! resume is in tests/cli.rs (`same_seed_same_losses_and_resume_is_bit_exact`); the save
//! protocol's failure and crash cases are unit tests in src/checkpoint/tests.rs.
//!
//! Every wait is bounded: a run that should be refused at once but hangs fails here instead.
#![cfg(unix)] // ulimit, kill(2)

mod cli_support;
use cli_support::*;

use std::process::Command;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------------
// 1. Sizes against the machine, before any allocation

#[test]
fn runs_that_cannot_fit_are_refused_up_front_with_what_they_need() {
    let (d, f) = workdir();
    let p = d.path();
    let fs = f.to_str().unwrap();
    let big = big_text(p);
    let bs = big.to_str().unwrap();
    let limit = Duration::from_secs(20);
    let cases: [(&[&str], &[&str]); 4] = [
        // Tens of TiB of parameters (the allocator aborted, exit 134).
        (
            &[
                "train",
                "--text",
                fs,
                "--d-model",
                "65536",
                "--device",
                "cpu",
            ],
            &[
                "needs",
                "available (MemAvailable",
                "parameters",
                "--d-model",
            ],
        ),
        // A T×T attention that does not fit: the suggestion is the sequence, not the width.
        (
            &[
                "train",
                "--text",
                bs,
                "--seq-len",
                "140000",
                "--batch",
                "1",
                "--device",
                "cpu",
            ],
            &["needs", "available", "--seq-len"],
        ),
        (
            &[
                "train", "--text", fs, "--model", "lstm", "--hidden", "60000", "--device", "cpu",
            ],
            &["needs", "available", "--hidden"],
        ),
        // Silent for 20 s while naming a million layers' tensors, then an abort.
        (
            &["train", "--text", fs, "--layers", "1000000"],
            &["--layers 1000000 is more than"],
        ),
    ];
    for (cmd, parts) in cases {
        let t0 = Instant::now();
        let o = run_within(&args(cmd, &["--no-progress"]), p, &[], limit);
        for part in parts {
            fails_with(&o, part);
        }
        assert_eq!(o.status.code(), Some(2), "{cmd:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{cmd:?} took {:?} to refuse",
            t0.elapsed()
        );
        assert!(!p.join("runs").exists(), "{cmd:?} left a run directory");
    }
    let t0 = Instant::now();
    fails_with(
        &run_within(&["memory", "--layers", "1000000"], p, &[], limit),
        "--layers 1000000 is more than",
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "memory took {:?}",
        t0.elapsed()
    );
    // The check reads the tensor table: a machine of 1000 bytes cannot hold even the tiny
    // model, one of a terabyte can.
    let tiny = args(
        &["train", "--text", fs, "--steps", "1", "--out"],
        &["runs/small"],
    );
    let o = run_within(
        &args(&tiny, TINY),
        p,
        &[("ROBO_POET_MEM_AVAILABLE", "1000")],
        limit,
    );
    fails_with(
        &o,
        "but the machine has 1000 B available ($ROBO_POET_MEM_AVAILABLE)",
    );
    ok(&run_within(
        &args(&tiny, TINY),
        p,
        &[("ROBO_POET_MEM_AVAILABLE", "1000000000000")],
        limit,
    ));
}

// ------------------------------------------------------------------------------------------------
// 2. Threads

#[test]
fn absurd_thread_counts_and_failed_thread_starts_are_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let limit = Duration::from_secs(20);
    let o = run_within(&["--threads", "100000", "memory"], d.path(), &[], limit);
    fails_with(&o, "--threads 100000 is more than");
    let o = run_within(
        &["memory"],
        d.path(),
        &[("RAYON_NUM_THREADS", "100000")],
        limit,
    );
    fails_with(&o, "RAYON_NUM_THREADS=100000 is more than");
    // Under a 100 MB address-space cap 64 threads' stacks (2 MiB each) do not fit, 2 do: rayon
    // used to panic later ("The global thread pool has not been initialized").
    let capped = |threads: &str| {
        let exe = env!("CARGO_BIN_EXE_robo-poet");
        Command::new("sh")
            .args([
                "-c",
                &format!("ulimit -v 100000 && exec {exe} --threads {threads} memory"),
            ])
            .current_dir(d.path())
            .output()
            .unwrap()
    };
    fails_with(&capped("64"), "could not start 64 CPU worker threads");
    ok(&capped("2"));
}

// ------------------------------------------------------------------------------------------------
// 3. One writer per run directory

#[test]
fn a_second_writer_is_refused_naming_the_first_and_a_kill_releases_the_lock() {
    let (d, f) = workdir();
    let p = d.path();
    let fs = f.to_str().unwrap();
    let long = args(
        &[
            "train",
            "--text",
            fs,
            "--out",
            "runs/x",
            "--steps",
            "100000",
            "--eval-every",
            "100000",
        ],
        TINY,
    );
    let mut first = Background::start(&long, p, "first");
    let lock = p.join("runs/x/train.lock");
    let pid = format!("pid {} on host ", first.pid());
    wait_until("the first run's lock", Duration::from_secs(30), || {
        std::fs::read_to_string(&lock).is_ok_and(|s| s.contains(&pid))
    });
    for second in [
        args(
            &["train", "--text", fs, "--out", "runs/x", "--steps", "2"],
            TINY,
        ),
        vec![
            "train",
            "--resume",
            "runs/x",
            "--device",
            "cpu",
            "--no-progress",
        ],
    ] {
        let o = run_within(&second, p, &[], Duration::from_secs(20));
        fails_with(&o, "is in use by another `robo-poet train`");
        fails_with(&o, &pid);
    }
    wait_until("the first checkpoint", Duration::from_secs(30), || {
        p.join("runs/x/checkpoint.latest").is_file()
    });
    kill(first.pid(), libc::SIGKILL);
    first.finish(Duration::from_secs(20));
    // The kernel released the lock with the process.
    let o = run_within(
        &[
            "train",
            "--resume",
            "runs/x",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--no-progress",
        ],
        p,
        &[],
        Duration::from_secs(60),
    );
    assert!(ok(&o).contains("done: 2 steps"), "{}", text(&o));
}

#[test]
fn runs_started_in_the_same_second_get_their_own_directories() {
    let (d, f) = workdir();
    let p = d.path();
    let fs = f.to_str().unwrap();
    let one = args(&["train", "--text", fs, "--steps", "1"], TINY);
    let mut runs: Vec<Background> = (0..3)
        .map(|i| Background::start(&one, p, &format!("run{i}")))
        .collect();
    for r in &mut runs {
        let (code, err) = r.finish(Duration::from_secs(120));
        assert_eq!(code, Some(0), "{err}");
    }
    let dirs: Vec<String> = std::fs::read_dir(p.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    for dir in &dirs {
        assert!(dir.starts_with("attention-20"), "{dirs:?}");
        assert_eq!(checkpoint_step(&p.join("runs").join(dir)), 1, "{dir}");
    }
}

// ------------------------------------------------------------------------------------------------
// 4. Readers and the checkpoint being replaced

#[test]
fn eval_and_generate_read_whole_checkpoints_while_a_run_saves_every_step() {
    let (d, f) = workdir();
    let p = d.path();
    let fs = f.to_str().unwrap();
    let writer = args(
        &[
            "train",
            "--text",
            fs,
            "--out",
            "runs/w",
            "--steps",
            "100000",
            "--eval-every",
            "1",
        ],
        TINY,
    );
    let _w = Background::start(&writer, p, "writer");
    wait_until(
        "the writer's second checkpoint",
        Duration::from_secs(30),
        || p.join("runs/w/checkpoint.000002").is_dir(),
    );
    let t0 = Instant::now();
    let mut reads = 0;
    while t0.elapsed() < Duration::from_secs(4) {
        let o = if reads % 2 == 0 {
            run(
                &[
                    "eval",
                    "--checkpoint",
                    "runs/w",
                    "--device",
                    "cpu",
                    "--json",
                ],
                p,
            )
        } else {
            run(
                &[
                    "generate",
                    "--checkpoint",
                    "runs/w",
                    "--prompt",
                    "the",
                    "--length",
                    "3",
                    "--device",
                    "cpu",
                ],
                p,
            )
        };
        ok(&o);
        reads += 1;
    }
    assert!(reads >= 4, "only {reads} reads");
}

#[test]
fn readers_need_no_optimizer_state_and_old_layout_runs_still_load() {
    let (d, f) = workdir();
    let p = d.path();
    let tiny = args(
        &[
            "train",
            "--text",
            f.to_str().unwrap(),
            "--steps",
            "2",
            "--out",
        ],
        &["runs/a"],
    );
    ok(&run(&args(&tiny, TINY), p));
    let run_dir = p.join("runs/a");
    std::fs::write(
        checkpoint_dir(&run_dir).join("optimizer.safetensors"),
        b"garbage",
    )
    .unwrap();
    ok(&run(
        &["eval", "--checkpoint", "runs/a", "--device", "cpu"],
        p,
    ));
    ok(&run(
        &[
            "generate",
            "--checkpoint",
            "runs/a",
            "--prompt",
            "the",
            "--length",
            "3",
            "--device",
            "cpu",
        ],
        p,
    ));
    ok(&run(
        &[
            "attention-map",
            "--checkpoint",
            "runs/a",
            "--prompt",
            "the cat",
        ],
        p,
    ));
    // Resuming needs the moments, and says which file is broken.
    fails_with(
        &run(
            &[
                "train", "--resume", "runs/a", "--steps", "3", "--device", "cpu",
            ],
            p,
        ),
        "optimizer.safetensors is truncated or corrupt",
    );

    // A run written before the pointer file: one plain checkpoint/ folder.
    let (d2, f2) = workdir();
    let p2 = d2.path();
    let tiny2 = args(
        &[
            "train",
            "--text",
            f2.to_str().unwrap(),
            "--steps",
            "2",
            "--out",
        ],
        &["runs/old"],
    );
    ok(&run(&args(&tiny2, TINY), p2));
    let old = p2.join("runs/old");
    std::fs::rename(checkpoint_dir(&old), old.join("checkpoint")).unwrap();
    for e in std::fs::read_dir(&old).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("checkpoint.") {
            std::fs::remove_dir_all(e.path())
                .or_else(|_| std::fs::remove_file(e.path()))
                .unwrap();
        }
    }
    ok(&run(
        &["eval", "--checkpoint", "runs/old", "--device", "cpu"],
        p2,
    ));
    let r = ok(&run(
        &[
            "train",
            "--resume",
            "runs/old",
            "--steps",
            "4",
            "--device",
            "cpu",
            "--no-progress",
        ],
        p2,
    ));
    assert!(r.contains("resume: from step 2"), "{r}");
    assert_eq!(checkpoint_step(&old), 4);
}

// ------------------------------------------------------------------------------------------------
// 9. Signals

/// A run that would take hours, stopped by `signal` once it is training: it saves, says how to
/// continue, and exits 128 + signal.
fn stop_with(signal: i32, name: &str, code: i32) {
    let (d, f) = workdir();
    let p = d.path();
    let long = args(
        &[
            "train",
            "--text",
            f.to_str().unwrap(),
            "--out",
            "runs/s",
            "--steps",
            "1000000",
            "--eval-every",
            "1000000",
            "--check-every",
            "1",
        ],
        TINY,
    );
    let mut bg = Background::start(&long, p, "train");
    let metrics = p.join("runs/s/metrics.jsonl");
    wait_until("a few training steps", Duration::from_secs(60), || {
        std::fs::read_to_string(&metrics).is_ok_and(|m| m.lines().count() >= 3)
    });
    kill(bg.pid(), signal);
    let (got, err) = bg.finish(Duration::from_secs(60));
    assert_eq!(got, Some(code), "{name}: {err}");
    assert!(
        err.contains(&format!("{name} received: finishing this step")),
        "{err}"
    );
    assert!(
        err.contains("Continue with: robo-poet train --resume runs/s"),
        "{err}"
    );
    assert!(!err.contains("error:"), "{err}");
    let step = checkpoint_step(&p.join("runs/s"));
    assert!(
        err.contains(&format!("stopped after step {step} (")),
        "the checkpoint holds step {step}:\n{err}"
    );
    assert!(step >= 3, "{err}");
}

#[test]
fn sigterm_is_handled_like_ctrl_c_and_exits_143() {
    stop_with(libc::SIGTERM, "SIGTERM", 143);
}

#[test]
fn ctrl_c_saves_and_exits_130() {
    stop_with(libc::SIGINT, "Ctrl-C (SIGINT)", 130);
}

/// The second Ctrl-C quits at once and says which checkpoint is left. Both are sent early in a
/// step of the default model at batch 64 (~2 s on 2 cores, far more than the ~50 ms the two
/// signals take), so the second one arrives while the first one's step still runs.
#[test]
fn a_second_ctrl_c_quits_at_once_naming_the_checkpoint_kept() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let big = big_text(p);
    let slow = [
        "train",
        "--text",
        big.to_str().unwrap(),
        "--out",
        "runs/s",
        "--steps",
        "1000",
        "--eval-every",
        "1000",
        "--check-every",
        "1",
        "--batch",
        "64",
        "--device",
        "cpu",
        "--no-progress",
    ];
    let mut bg = Background::start(&slow, p, "train");
    let metrics = p.join("runs/s/metrics.jsonl");
    // Step 1's gradient-norm line is written just before step 2 starts; polled closely, so that
    // the signals land early in step 2 (past its stop check, which follows the line at once).
    let t0 = Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| !m.is_empty()) {
        assert!(t0.elapsed() < Duration::from_secs(120), "no first step");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(30));
    kill(bg.pid(), libc::SIGINT);
    wait_until(
        "the first interrupt's message",
        Duration::from_secs(20),
        || bg.stderr().contains("received: finishing this step"),
    );
    kill(bg.pid(), libc::SIGINT);
    let (code, err) = bg.finish(Duration::from_secs(60));
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains("Ctrl-C (SIGINT) again: quitting at once without saving; the last checkpoint, step 0 (runs/s/checkpoint.000001), is intact; continue with: robo-poet train --resume runs/s"),
        "{err}"
    );
    assert!(!err.contains("stopped after step"), "{err}");
}
