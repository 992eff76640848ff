//! Issue 16 (reliability), through the binary: `--resume` refusing the flags it would ignore,
//! messages that used to mislead, degenerate inputs that were accepted silently, and the first
//! lines a new user reads. Sizes, locks, readers and signals are in tests/cli_reliability.rs.
#![cfg(unix)] // kill(2) in the shared helpers

mod cli_support;
use cli_support::*;

use std::time::Duration;

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
