//! `robo-poet compare` end to end on a small text the tests write, with tiny models and tiny
//! budgets: the runs (normal run directories), report.md, compare.json and the charts agree with
//! what the runs wrote; steps / seconds / flops budgets; Ctrl-C and --halt-at keep finished runs
//! and --resume continues bit for bit; bad input is one line before anything trains.

mod cli_support;
use cli_support::*;

use robo_poet::model::ModelConfig;
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const ATT: &str = "--d-model 16 --layers 1 --heads 2 --seq-len 16 --batch 4";
const LSTM: &str = "--hidden 12 --embed 8 --seq-len 16 --batch 4";

fn compare(dir: &Path, book: &Path, out: &str, budget: &str, extra: &[&str]) -> Output {
    let mut a = vec![
        "compare",
        "--text",
        book.to_str().unwrap(),
        "--out",
        out,
        "--budget",
        budget,
        "--attention-args",
        ATT,
        "--lstm-args",
        LSTM,
        "--device",
        "cpu",
        "--no-progress",
    ];
    a.extend_from_slice(extra);
    run(&a, dir)
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn checkpoint_meta(run: &Path) -> Value {
    json(&checkpoint_dir(run).join("checkpoint.json"))
}

/// (width, height) of a PNG, from its IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// A run's metrics.jsonl without its timing fields, which differ from run to run.
fn untimed(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            for k in ["tokens_per_s", "elapsed_s"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

#[test]
fn a_compare_writes_its_runs_report_json_and_charts() {
    let (d, book) = workdir();
    let out = ok(&compare(d.path(), &book, "cmp", "steps:6", &[]));
    let dir = d.path().join("cmp");
    for name in ["attention", "lstm"] {
        assert!(out.contains(&format!("[{name}] done: 6 steps")), "{out}");
        assert!(
            out.contains(&format!("[{name}] step      6/6 | train ")),
            "{out}"
        );
    }
    assert!(out.contains("report: "), "{out}");
    let report = json(&dir.join("compare.json"));
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        let name = r["name"].as_str().unwrap();
        let run_dir = dir.join(name);
        let meta = checkpoint_meta(&run_dir);
        assert_eq!(meta["step"], 6);
        assert_eq!(r["steps"], 6);
        // The report's losses are the run's own, bit for bit, and eval agrees with them.
        assert_eq!(
            r["final_val_loss"].as_f64(),
            meta["val_loss"].as_f64(),
            "{name}"
        );
        assert_eq!(
            r["best_val_loss"].as_f64(),
            meta["best_val_loss"][0].as_f64(),
            "{name}"
        );
        let e = stdout_ok(&run(
            &[
                "eval",
                "--checkpoint",
                &format!("cmp/{name}"),
                "--json",
                "--device",
                "cpu",
            ],
            d.path(),
        ));
        let e: Value = serde_json::from_str(&e).unwrap();
        assert_eq!(
            e["val_loss"].as_f64(),
            r["final_val_loss"].as_f64(),
            "{name}: eval"
        );
        assert_eq!(e["val_tokens"], report["val_targets"], "{name}");
        // FLOPs and memory are the analytic counts of the configuration it trained.
        let cfg: ModelConfig = serde_json::from_value(r["model"].clone()).unwrap();
        let batch = r["batch"].as_u64().unwrap() as usize;
        let per_step = robo_poet::model::flops::total_flops(&cfg, batch).total();
        assert_eq!(r["flops_per_step"].as_u64(), Some(per_step), "{name}");
        assert_eq!(
            r["training_flops"].as_f64(),
            Some(6.0 * per_step as f64),
            "{name}"
        );
        let table = robo_poet::model::build(&cfg, batch).table().clone();
        assert_eq!(r["memory_bytes"].as_u64(), Some(table.total_bytes() as u64));
        assert_eq!(
            r["parameters"].as_u64(),
            Some(table.parameter_count() as u64)
        );
        assert!(r["median_tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["wall_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(
            r["val_curve"].as_array().unwrap().len(),
            6,
            "an evaluation per step"
        );
        assert_eq!(r["device"].as_str().unwrap().split(' ').next(), Some("cpu"));
    }
    // The seed's claims: each checked, with its figures.
    let claims = report["claims"].as_array().unwrap();
    assert_eq!(claims.len(), 5);
    for c in claims {
        assert!(
            c["verdict"] == "holds" || c["verdict"] == "does not hold",
            "{c}"
        );
    }
    // report.md says the same numbers.
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for r in runs {
        let row = format!(
            "| {} | {} | {:.4} (",
            r["name"].as_str().unwrap(),
            r["parameters"],
            r["best_val_loss"].as_f64().unwrap()
        );
        assert!(md.contains(&row), "no {row:?} in:\n{md}");
    }
    assert!(
        md.contains("attention uses 5.5x the memory of the LSTM"),
        "{md}"
    );
    // The charts, each linked from the report.
    for (file, size) in [
        ("val_loss_vs_step.png", (1100, 650)),
        ("val_loss_vs_time.png", (1100, 650)),
        ("val_loss_vs_flops.png", (1100, 650)),
        ("grad_flow.png", (1200, 650)),
        ("memory_vs_seq_len.png", (1100, 650)),
    ] {
        assert_eq!(png_size(&dir.join(file)), size, "{file}");
        assert!(
            md.contains(&format!("]({file})")),
            "{file} not linked:\n{md}"
        );
    }
    let sweep = &report["memory_sweep"];
    assert_eq!(sweep["seq_lens"][3], 128);
    // The runs are normal run directories.
    ok(&run(
        &["plot", "cmp/attention", "cmp/lstm", "--out", "charts"],
        d.path(),
    ));
    ok(&run(
        &[
            "generate",
            "--checkpoint",
            "cmp/lstm",
            "--prompt",
            "the",
            "--length",
            "5",
            "--device",
            "cpu",
        ],
        d.path(),
    ));
    // A second compare into the same folder is refused.
    fails_with(
        &compare(d.path(), &book, "cmp", "steps:6", &[]),
        "already holds a compare; pass --resume",
    );
}

#[test]
fn halted_compares_keep_finished_runs_and_resume_bit_for_bit() {
    let (d, book) = workdir();
    ok(&compare(d.path(), &book, "full", "steps:8", &[]));
    let out = ok(&compare(
        d.path(),
        &book,
        "cut",
        "steps:8",
        &["--halt-at", "lstm:3"],
    ));
    assert!(out.contains("[lstm] stopped after step 3"), "{out}");
    assert!(out.contains("robo-poet compare --resume cut"), "{out}");
    let cut = d.path().join("cut");
    assert_eq!(checkpoint_meta(&cut.join("attention"))["step"], 8);
    assert_eq!(checkpoint_meta(&cut.join("lstm"))["step"], 3);
    assert!(!cut.join("report.md").exists());
    fails_with(
        &run(
            &["compare", "--resume", "cut", "--budget", "steps:9"],
            d.path(),
        ),
        "--budget cannot be given with --resume",
    );
    let out = ok(&run(
        &[
            "compare",
            "--resume",
            "cut",
            "--no-progress",
            "--device",
            "cpu",
        ],
        d.path(),
    ));
    assert!(
        out.contains("[attention] finished earlier: 8 steps"),
        "{out}"
    );
    assert!(out.contains("resuming from step 3"), "{out}");
    let full = d.path().join("full");
    for name in ["attention", "lstm"] {
        assert_eq!(
            untimed(&cut.join(name)),
            untimed(&full.join(name)),
            "{name}"
        );
    }
    let (a, b) = (
        json(&full.join("compare.json")),
        json(&cut.join("compare.json")),
    );
    for (x, y) in a["runs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["runs"].as_array().unwrap())
    {
        assert_eq!(x["final_val_loss"], y["final_val_loss"]);
        assert_eq!(x["best_val_loss"], y["best_val_loss"]);
    }
}

#[test]
fn ctrl_c_during_the_second_run_exits_130_and_resume_finishes_it() {
    let (d, book) = workdir();
    // An LSTM slow enough (several ms a step) to be caught mid-run.
    let args = [
        "compare",
        "--text",
        book.to_str().unwrap(),
        "--out",
        "c",
        "--budget",
        "steps:400",
        "--run",
        &format!("attention={ATT}"),
        "--run",
        "lstm=--model lstm --hidden 64 --embed 16 --seq-len 32 --batch 8",
        "--device",
        "cpu",
        "--no-progress",
    ];
    let mut bg = Background::start(&args, d.path(), "compare");
    let lstm = d.path().join("c/lstm");
    wait_until(
        "the lstm run's first checkpoint",
        Duration::from_secs(120),
        || lstm.join("checkpoint.latest").is_file(),
    );
    kill(bg.pid(), libc::SIGINT);
    let (code, err) = bg.finish(Duration::from_secs(60));
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("Ctrl-C"), "{err}");
    assert!(
        err.contains("continue with: robo-poet compare --resume c")
            || err.contains("Continue with: robo-poet compare --resume c"),
        "{err}"
    );
    assert_eq!(checkpoint_meta(&d.path().join("c/attention"))["step"], 400);
    let stopped = checkpoint_meta(&lstm)["step"].as_u64().unwrap();
    assert!(stopped < 400, "{stopped}");
    let out = ok(&run(
        &["compare", "--resume", "c", "--no-progress"],
        d.path(),
    ));
    assert!(
        out.contains(&format!("resuming from step {stopped}")),
        "{out}"
    );
    assert_eq!(checkpoint_meta(&lstm)["step"], 400);
    assert!(d.path().join("c/report.md").is_file());
}

#[test]
fn seconds_and_flops_budgets_become_steps_and_train_as_train_would() {
    let (d, book) = workdir();
    ok(&compare(d.path(), &book, "s", "seconds:0.3", &[]));
    let plan = json(&d.path().join("s/plan.json"));
    let att = d.path().join("s/attention");
    let steps = checkpoint_meta(&att)["step"].as_u64().unwrap();
    let sps = plan["notes"]["attention"]["secs_per_step"]
        .as_f64()
        .unwrap();
    assert_eq!(plan["notes"]["attention"]["timed_s"].as_f64(), Some(0.1));
    assert_eq!(steps, ((0.3 / sps).floor() as u64).max(1), "{plan}");
    // The timed steps left nothing behind: `train` for the same steps gives the same losses.
    let mut a = vec![
        "train",
        "--text",
        book.to_str().unwrap(),
        "--out",
        "t",
        "--device",
        "cpu",
        "--no-progress",
    ];
    let steps_s = steps.to_string();
    a.extend(["--steps", &steps_s]);
    a.extend(ATT.split(' '));
    ok(&run(&a, d.path()));
    assert_eq!(untimed(&att), untimed(&d.path().join("t")));

    // flops:F buys floor(F / FLOPs per step) steps of each run.
    ok(&compare(d.path(), &book, "f", "flops:2e8", &[]));
    let r = json(&d.path().join("f/compare.json"));
    for run in r["runs"].as_array().unwrap() {
        let per = run["flops_per_step"].as_u64().unwrap();
        assert_eq!(
            run["steps"].as_u64(),
            Some((2e8 / per as f64).floor() as u64),
            "{run}"
        );
    }
    assert_ne!(
        r["runs"][0]["steps"], r["runs"][1]["steps"],
        "different models, different steps"
    );
}

#[test]
fn bad_input_is_one_line_before_anything_trains() {
    let (d, book) = workdir();
    let b = book.to_str().unwrap();
    for (args, says) in [
        (
            vec!["--attention-args", "--foo 3"],
            "unexpected argument '--foo'",
        ),
        (
            vec!["--lstm-args", "--tokenizer word"],
            "incompatible tokenizers",
        ),
        (
            vec![
                "--tokenizer",
                "word",
                "--attention-args",
                "--tokenizer char",
            ],
            "incompatible tokenizers",
        ),
        (
            vec!["--tokenizer", "word", "--lstm-args", "--min-count 3"],
            "incompatible tokenizers",
        ),
        (vec!["--budget", "steps:0"], "no training at all"),
        (vec!["--budget", "seconds:0"], "no training at all"),
        (vec!["--budget", "flops:0"], "no training at all"),
        (vec!["--budget", "minutes:3"], "unknown kind"),
        (vec!["--budget", "flops:10"], "less than one training step"),
        (
            vec!["--attention-args", "--steps 5"],
            "--steps cannot be given to one run",
        ),
        (
            vec!["--lstm-args", "--out x"],
            "--out cannot be given to one run",
        ),
        (
            vec!["--attention-args", "--model lstm"],
            "--model is set by the option itself",
        ),
        (
            vec!["--attention-args", "--d-model 15 --heads 2"],
            "the attention run: --d-model 15 is not divisible by --heads 2",
        ),
        (
            vec!["--lstm-args", "--threads 1"],
            "--threads applies to the whole compare",
        ),
        (vec!["--lstm-args", "--hidden \"8"], "unclosed"),
        (vec!["--run", "x y=--d-model 8"], "must be letters, digits"),
        (
            vec!["--run", "a=--d-model 8", "--run", "a=--d-model 16"],
            "given twice",
        ),
        (vec!["--run", "a"], "no flags part"),
        (vec!["--halt-at", "nobody:3"], "no run of that name"),
        (
            vec!["--lstm-args", "--precision bf16"],
            "the lstm run: --precision bf16 runs the matrix products on a GPU's tensor cores",
        ),
    ] {
        let mut a = vec![
            "compare",
            "--text",
            b,
            "--out",
            "never",
            "--device",
            "cpu",
            "--no-progress",
        ];
        a.extend(args.iter().copied());
        // A case that wrongly trains would take the default 15 minutes: a failure, not a hang.
        fails_with(
            &run_within(&a, d.path(), &[], Duration::from_secs(60)),
            says,
        );
        assert!(
            !d.path().join("never").exists(),
            "{args:?} left a folder behind"
        );
    }
    fails_with(
        &run(&["compare", "--resume", "nope"], d.path()),
        "no such folder",
    );
    std::fs::create_dir(d.path().join("plain")).unwrap();
    fails_with(
        &run(&["compare", "--resume", "plain"], d.path()),
        "has no plan.json",
    );
}
