//! Shared by the tests that run the `robo-poet` binary: running it in a clean environment, reading
//! what it printed, the one-error-line failure contract, and a small text to train on.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
