//! The corpus ships with the project: a fresh clone trains offline, with no ../shared beside it,
//! no `$ROBO_POET_DATA` and no network, on the committed data/ (issue 17, item 1).

mod cli_support;
use cli_support::*;

use std::path::Path;

/// Copies the files git tracks in this checkout into `dest`: what `git clone` would give a new
/// user (no build outputs, no downloads, no untracked files, no ../shared).
fn clone_tracked_files(dest: &Path) -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .expect("this test copies the tracked files with `git ls-files`: git must be on the PATH");
    assert!(
        out.status.success(),
        "`git ls-files` failed in {root} (not a git checkout?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = out
        .stdout
        .split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| String::from_utf8(f.to_vec()).unwrap())
        .collect();
    for f in &files {
        let (from, to) = (Path::new(root).join(f), dest.join(f));
        // A file deleted in the work tree but still in the index is not in a clone either.
        if from.is_file() {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&from, &to).unwrap();
        }
    }
    files
}

#[test]
fn a_fresh_clone_trains_offline_on_the_committed_corpus() {
    let d = tempfile::tempdir().unwrap();
    let clone = d.path().join("robo-poet");
    let files = clone_tracked_files(&clone);
    for f in ["data/alice_wonderland.txt", "data/hamlet_shakespeare.txt"] {
        assert!(
            files.iter().any(|t| t == f),
            "{f} is not tracked by git (.gitignore?)"
        );
    }
    // A download attempt would fail at once: nothing listens on port 9 of the loopback address.
    let mut cmd = bin();
    cmd.args(args(
        &[
            "train",
            "--out",
            "runs/first",
            "--steps",
            "2",
            "--eval-every",
            "2",
        ],
        TINY,
    ))
    .current_dir(&clone)
    .env("ROBO_POET_GUTENBERG_URL", "http://127.0.0.1:9");
    let out = ok(&cmd.output().unwrap());
    assert!(!out.contains("downloading"), "{out}");
    assert!(
        out.contains("data:   Alice + Hamlet from data | char tokenizer, vocab 78"),
        "{out}"
    );
    let text =
        std::fs::read_to_string(checkpoint_dir(&clone.join("runs/first")).join("checkpoint.json"))
            .unwrap();
    // f32 settings as their shortest decimals (the README's schema), not 0.10000000149011612.
    for want in [
        "\"lr\": 0.002,",
        "\"beta2\": 0.95,",
        "\"dropout\": 0.1",
        "\"eps\": 1e-8,",
    ] {
        assert!(text.contains(want), "no {want} in {text}");
    }
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(meta["data"]["kind"], "books", "{meta}");
    assert_eq!(meta["data"]["dir"], "data", "{meta}");
    assert_eq!(meta["step"], 2);
    // The two books' character counts minus their validation blocks (every 10th ~1 KiB block);
    // eval scores every validation target once, the first token being no target.
    assert_eq!(meta["train_tokens"], 290_971, "{meta}");
    assert_eq!(meta["val_tokens"], 31_595, "{meta}");
    let e = stdout_ok(&run(
        &[
            "eval",
            "--checkpoint",
            "runs/first",
            "--json",
            "--device",
            "cpu",
        ],
        &clone,
    ));
    let e: serde_json::Value = serde_json::from_str(&e).unwrap();
    assert_eq!(e["val_tokens"], 31_595, "{e}");
}
