//! Shared by the tests that run the `robo-poet` binary: running it in a clean environment, reading
//! what it printed, the one-error-line failure contract, and a small text to train on.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary, with no corpus or mirror from the caller's environment and two CPU threads.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_robo-poet"));
    c.env_remove("ROBO_POET_DATA")
        .env_remove("ROBO_POET_GUTENBERG_URL")
        .env("RAYON_NUM_THREADS", "2");
    c
}

/// Runs `robo-poet args` in `cwd`.
pub fn run(args: &[&str], cwd: &Path) -> Output {
    bin()
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run robo-poet")
}

/// Runs `robo-poet args` in the test's own working directory.
pub fn robo(args: &[&str]) -> Output {
    bin().args(args).output().expect("run robo-poet")
}

/// Everything it printed: stdout, then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts success; returns everything printed.
#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "expected success, got {:?}:\n{}",
        o.status,
        text(o)
    );
    text(o)
}

/// Asserts success; returns stdout only (for --json output).
#[track_caller]
pub fn stdout_ok(o: &Output) -> String {
    ok(o);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failure with exactly one `error:` line (no panic, no backtrace) that contains `needle`.
#[track_caller]
pub fn fails_with(o: &Output, needle: &str) {
    let all = text(o);
    assert!(!o.status.success(), "expected failure, got success:\n{all}");
    assert_ne!(o.status.code(), Some(101), "panicked:\n{all}");
    assert!(!all.contains("panicked"), "panicked:\n{all}");
    let err: Vec<&str> = all.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(err.len(), 1, "expected one error line:\n{all}");
    assert!(
        all.to_lowercase().contains(&needle.to_lowercase()),
        "error does not mention {needle:?}:\n{all}"
    );
}

/// The current checkpoint folder of a run: the one `checkpoint.latest` names.
#[track_caller]
pub fn checkpoint_dir(run: &Path) -> PathBuf {
    let pointer = run.join("checkpoint.latest");
    let name =
        std::fs::read_to_string(&pointer).unwrap_or_else(|e| panic!("{}: {e}", pointer.display()));
    run.join(name.trim())
}

/// ~30 KB of deterministic pseudo-English (enough for a validation split).
pub fn sample_text() -> String {
    let words = [
        "the", "queen", "said", "alice", "to", "be", "or", "not", "hamlet", "rabbit", "and", "a",
        "cat", "grin", "sleep", "dream",
    ];
    let mut s = String::new();
    let mut x: u64 = 12345;
    for i in 0..6000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push_str(words[(x >> 33) as usize % words.len()]);
        s.push(if i % 11 == 10 {
            '\n'
        } else if i % 7 == 6 {
            ','
        } else {
            ' '
        });
        if i % 7 == 6 {
            s.push(' ');
        }
    }
    s
}

/// A temporary folder holding `book.txt` (the sample text), and that file's path.
pub fn workdir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("book.txt");
    std::fs::write(&f, sample_text()).unwrap();
    (d, f)
}

/// A tiny attention model on the CPU, without a progress bar: a training step of a millisecond.
pub const TINY: &[&str] = &[
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

/// `head` then `tail`, as one argument list.
pub fn args<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(tail).copied().collect()
}

/// Runs `robo-poet args` in `cwd` with `env`, killing it after `limit`: a hang is a failure.
#[track_caller]
pub fn run_within(args: &[&str], cwd: &Path, env: &[(&str, &str)], limit: Duration) -> Output {
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

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child we started; at worst it is already gone (ESRCH).
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Polls `cond` every 20 ms for up to `limit`; panics naming `what` if it never holds.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
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
pub struct Background {
    child: Child,
    stderr: PathBuf,
}

impl Background {
    pub fn start(args: &[&str], cwd: &Path, name: &str) -> Background {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (at most `limit`) for the process to end: its exit code and stderr.
    #[track_caller]
    pub fn finish(&mut self, limit: Duration) -> (Option<i32>, String) {
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
pub fn big_text(dir: &Path) -> PathBuf {
    let f = dir.join("big.txt");
    std::fs::write(&f, sample_text().repeat(12)).unwrap();
    f
}

/// The step of a run's current checkpoint.
pub fn checkpoint_step(run: &Path) -> u64 {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(checkpoint_dir(run).join("checkpoint.json")).unwrap(),
    )
    .unwrap();
    meta["step"].as_u64().unwrap()
}
