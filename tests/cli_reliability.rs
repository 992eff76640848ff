//! Issue 16 (reliability), through the binary: sizes checked before any allocation, absurd thread
//! counts, one writer per run directory, readers that never see a half-swapped checkpoint,
//! resume refusing flags it would ignore, honest messages, degenerate inputs, signals, and the
//! first lines a new user reads. The metrics side of resume is in tests/cli.rs
//! (`same_seed_same_losses_and_resume_is_bit_exact`); the save protocol's failure and crash cases
//! are unit tests in src/checkpoint.rs.
//!
//! Every wait is bounded: a run that should be refused at once but hangs fails here instead.

mod cli_support;
use cli_support::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TINY: &[&str] = &[
    "--d-model",
    "16",
    "--layers",
    "2",
    "--heads",
    "2",
    "--seq-len",
    "16",
    "--batch",
    "4",
    "--device",
    "cpu",
    "--no-progress",
];

fn args<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(tail).copied().collect()
}

/// Runs `robo-poet args` in `cwd` with `env`, killing it after `limit`: a hang is a failure.
#[track_caller]
fn run_within(args: &[&str], cwd: &Path, env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = bin();
    cmd.args(args).current_dir(cwd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t0 = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if t0.elapsed() > limit {
            kill(pid, libc::SIGKILL);
            let o = waiter.join().unwrap();
            panic!(
                "robo-poet {args:?} still ran after {limit:?} (killed):\n{}",
                text(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child we started; at worst it is already gone (ESRCH).
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Polls `cond` every 20 ms for up to `limit`; panics naming `what` if it never holds.
#[track_caller]
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `robo-poet train` in the background, its output in files; killed if the test ends first.
struct Background {
    child: Child,
    stderr: PathBuf,
}

impl Background {
    fn start(args: &[&str], cwd: &Path, name: &str) -> Background {
        let (out, err) = (
            cwd.join(format!("{name}.out")),
            cwd.join(format!("{name}.err")),
        );
        let child = bin()
            .args(args)
            .current_dir(cwd)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Background { child, stderr: err }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (at most `limit`) for the process to end: its exit code and stderr.
    #[track_caller]
    fn finish(&mut self, limit: Duration) -> (Option<i32>, String) {
        let mut status = None;
        wait_until("the background train to exit", limit, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        (status.unwrap().code(), self.stderr())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A text of ~340 KB (the sample text repeated): two windows of 140,000 tokens.
fn big_text(dir: &Path) -> PathBuf {
    let f = dir.join("big.txt");
    std::fs::write(&f, sample_text().repeat(12)).unwrap();
    f
}

fn checkpoint_step(run: &Path) -> u64 {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(checkpoint_dir(run).join("checkpoint.json")).unwrap(),
    )
    .unwrap();
    meta["step"].as_u64().unwrap()
}

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
// 6. --resume refuses every flag it would ignore

#[test]
fn resume_refuses_every_flag_that_would_not_apply() {
    let (d, f) = workdir();
    let p = d.path();
    let fs = f.to_str().unwrap();
    ok(&run(
        &args(
            &["train", "--text", fs, "--steps", "2", "--out", "runs/a"],
            TINY,
        ),
        p,
    ));
    let resume = [
        "train",
        "--resume",
        "runs/a",
        "--device",
        "cpu",
        "--no-progress",
    ];
    // --seed 1337 and --preset default are the defaults: refused for being given, not for
    // their value.
    for (flag, value) in [
        ("--seed", Some("1337")),
        ("--seed", Some("5")),
        ("--preset", Some("default")),
        ("--preset", Some("seed")),
        ("--min-count", Some("3")),
        ("--pos-emb", None),
        ("--lr", Some("0.1")),
        ("--batch", Some("2")),
        ("--text", Some(fs)),
        ("--epochs", Some("1")),
        ("--warmup", Some("1")),
    ] {
        let mut a = resume.to_vec();
        a.push(flag);
        a.extend(value);
        let o = run(&a, p);
        fails_with(&o, &format!("{flag} cannot be given with --resume"));
    }
    let r = ok(&run(
        &args(
            &resume,
            &[
                "--steps",
                "4",
                "--eval-every",
                "2",
                "--check-every",
                "1",
                "--model",
                "attention",
            ],
        ),
        p,
    ));
    assert!(r.contains("resume: from step 2"), "{r}");
}

// ------------------------------------------------------------------------------------------------
// 7. Messages that misled

#[test]
fn messages_say_what_is_actually_wrong() {
    let (d, f) = workdir();
    let p = d.path();
    let fs = f.to_str().unwrap();
    // A negative number is a value, then validated ("unexpected argument '-0' found" before).
    fails_with(
        &run(&["train", "--text", fs, "--lr", "-0.01"], p),
        "--lr must be positive (got -0.01)",
    );
    fails_with(
        &run(&["train", "--text", fs, "--weight-decay", "-1"], p),
        "--weight-decay must be >= 0",
    );
    fails_with(
        &run(&["generate", "--checkpoint", "x", "--temperature", "-1"], p),
        "--temperature must be > 0",
    );
    // A file where a folder belongs.
    let o = run(&["train", "--data", fs], p);
    fails_with(&o, "a file, not a folder");
    assert!(!text(&o).contains("no such folder"), "{}", text(&o));
    fails_with(
        &run(&["eval", "--checkpoint", fs], p),
        "is a file, not a run directory",
    );
    fails_with(
        &run(&["train", "--text", fs, "--out", fs], p),
        "is a file, not a folder",
    );
    fails_with(
        &run(&["train", "--resume", fs], p),
        "is a file, not a run directory",
    );
    // A folder without a checkpoint that is not empty: not "train --out <that folder>".
    std::fs::create_dir(p.join("notes")).unwrap();
    std::fs::write(p.join("notes/todo.txt"), "x").unwrap();
    let o = run(&["eval", "--checkpoint", "notes"], p);
    fails_with(&o, "--out NEW_DIR");
    assert!(!text(&o).contains("--out notes"), "{}", text(&o));
    // The corpus error names the missing book.
    std::fs::create_dir(p.join("books")).unwrap();
    std::fs::write(p.join("books/alice_wonderland.txt"), sample_text()).unwrap();
    let o = run(&["train", "--data", "books"], p);
    fails_with(
        &o,
        "lacks Hamlet (hamlet_shakespeare.txt or hamlet_raw.txt)",
    );
    // A field of the wrong type in checkpoint.json is named.
    ok(&run(
        &args(
            &["train", "--text", fs, "--steps", "1", "--out", "runs/a"],
            TINY,
        ),
        p,
    ));
    let meta_path = checkpoint_dir(&p.join("runs/a")).join("checkpoint.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["train"]["batch"] = serde_json::json!("four");
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    fails_with(
        &run(&["eval", "--checkpoint", "runs/a"], p),
        "field `train.batch`: invalid type: string \"four\"",
    );
}

// ------------------------------------------------------------------------------------------------
// 8. Degenerate but accepted inputs

#[test]
fn degenerate_inputs_are_refused_or_noted() {
    let (d, f) = workdir();
    let p = d.path();
    let fs = f.to_str().unwrap();
    let limit = Duration::from_secs(60);
    fails_with(
        &run(
            &args(
                &[
                    "train",
                    "--text",
                    fs,
                    "--tokenizer",
                    "word",
                    "--min-count",
                    "1000000",
                ],
                TINY,
            ),
            p,
        ),
        "every word of the training text occurs fewer than --min-count 1000000 times",
    );
    fails_with(
        &run(
            &args(&["train", "--text", fs, "--check-every", "0"], TINY),
            p,
        ),
        "--check-every must be at least 1",
    );
    // Used to train "forever" (1e30 epochs rounded to u64::MAX steps).
    let o = run_within(
        &args(&["train", "--text", fs, "--epochs", "1e30"], TINY),
        p,
        &[],
        limit,
    );
    fails_with(&o, "--epochs 1e30 is");
    let o = ok(&run(
        &args(
            &[
                "train", "--text", fs, "--steps", "3", "--warmup", "50", "--out", "runs/w",
            ],
            TINY,
        ),
        p,
    ));
    assert!(
        o.contains("note: the warmup (50 steps) is not shorter than the run (3 steps)"),
        "{o}"
    );
    let o = ok(&run(
        &[
            "generate",
            "--checkpoint",
            "runs/w",
            "--prompt",
            "the",
            "--top-k",
            "1000",
            "--length",
            "5",
            "--device",
            "cpu",
        ],
        p,
    ));
    assert!(
        o.contains("note: --top-k 1000 is more than the vocabulary ("),
        "{o}"
    );
    // plot skips one line of bytes that are not UTF-8 and draws the rest.
    let metrics = p.join("runs/w/metrics.jsonl");
    let mut bytes = std::fs::read(&metrics).unwrap();
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    bytes.extend_from_slice(b"\xff\xfe garbage\n");
    std::fs::write(&metrics, bytes).unwrap();
    let o = ok(&run(&["plot", "runs/w"], p));
    assert!(
        o.contains(&format!("line {}: not UTF-8 text; skipped", lines + 1)),
        "{o}"
    );
    assert!(p.join("runs/w/loss.png").is_file());
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

/// The second Ctrl-C quits at once and says which checkpoint is left. Steps of ~1 s (the default
/// model at batch 32) leave time to send it while the first one's step is still running.
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
        "--device",
        "cpu",
        "--no-progress",
    ];
    let mut bg = Background::start(&slow, p, "train");
    let metrics = p.join("runs/s/metrics.jsonl");
    wait_until("the first step", Duration::from_secs(120), || {
        std::fs::read_to_string(&metrics).is_ok_and(|m| !m.is_empty())
    });
    // Well inside the next step.
    std::thread::sleep(Duration::from_millis(150));
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

// ------------------------------------------------------------------------------------------------
// 10. The first lines a new user reads

#[test]
fn the_cpu_fallback_note_is_one_short_line() {
    if robo_poet::gpu::CudaDevice::open().is_ok() {
        return; // the GPU is used: no note
    }
    let (d, f) = workdir();
    let o = ok(&run(
        &[
            "train",
            "--text",
            f.to_str().unwrap(),
            "--steps",
            "1",
            "--device",
            "auto",
            "--no-progress",
            "--d-model",
            "16",
            "--layers",
            "1",
            "--seq-len",
            "16",
            "--batch",
            "2",
        ],
        d.path(),
    ));
    let notes: Vec<&str> = o
        .lines()
        .filter(|l| l.starts_with("note: running on the CPU"))
        .collect();
    assert_eq!(notes.len(), 1, "{o}");
    assert!(
        notes[0].len() <= 100,
        "{} characters: {}",
        notes[0].len(),
        notes[0]
    );
}
