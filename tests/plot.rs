//! The PNG charts end to end: `memory --plot`, `plot` and `attention-map`. Each picture must be a
//! PNG of the documented size, and the numbers behind it (printed with --json) must be the ones
//! the command computed: the memory report's totals and crossover, the values written into a
//! metrics.jsonl, attention rows that are causal probability distributions. Bad input fails with
//! one error line, never a panic.

mod cli_support;
use cli_support::*;

use robo_poet::plot::attention::layout;
use robo_poet::plot::curves::CURVES_SIZE;
use robo_poet::plot::memory::MEMORY_PLOT_SIZE;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

#[track_caller]
fn json_of(o: &Output) -> Value {
    let out = stdout_ok(o);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

/// Checks the PNG signature and IHDR, decodes the image, and returns (width, height).
#[track_caller]
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{}: no PNG signature",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR", "{}: first chunk", path.display());
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    let (w, h) = (be(16), be(20));
    let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes))
        .read_info()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!((info.width, info.height), (w, h));
    // A picture, not a blank page: more than a handful of distinct colours.
    let mut colours: Vec<&[u8]> = buf[..info.buffer_size()].chunks(3).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 10, "{}: nearly blank", path.display());
    (w, h)
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn memory_plot_draws_the_reported_totals_and_crossover() {
    let d = tempfile::tempdir().unwrap();
    let lens = "32,64,128,256,512,1024,2048";
    let r = json_of(&run(
        &["memory", "--seq-len", lens, "--json", "--plot", "m.png"],
        d.path(),
    ));
    assert_eq!(png_size(&d.path().join("m.png")), MEMORY_PLOT_SIZE);
    let plot = &r["plot"];
    let configs = r["configs"].as_array().unwrap();
    let col = |f: &dyn Fn(&Value) -> usize| configs.iter().map(f).collect::<Vec<_>>();
    assert_eq!(
        usizes(&plot["seq_lens"]),
        col(&|c| c["seq_len"].as_u64().unwrap() as usize)
    );
    assert_eq!(
        usizes(&plot["attention_bytes"]),
        col(&|c| c["attention"]["total_bytes"].as_u64().unwrap() as usize)
    );
    assert_eq!(
        usizes(&plot["lstm_bytes"]),
        col(&|c| c["lstm"]["total_bytes"].as_u64().unwrap() as usize)
    );
    // The marked crossover is the reported one, and it is where the totals actually cross.
    let cross = plot["crossover_seq_len"].as_u64().map(|t| t as usize);
    assert_eq!(
        cross,
        r["memory_crossover_seq_len"].as_u64().map(|t| t as usize)
    );
    let (att, lstm) = (
        usizes(&plot["attention_bytes"]),
        usizes(&plot["lstm_bytes"]),
    );
    let first = (0..att.len()).find(|&i| att[i] > lstm[i]);
    assert_eq!(cross, first.map(|i| usizes(&plot["seq_lens"])[i]));
    assert!(cross.is_some(), "the seed config crosses over below 2048");
    // ... and the text report prints the same crossover.
    let out = stdout_ok(&run(
        &["memory", "--seq-len", lens, "--plot", "t.png"],
        d.path(),
    ));
    let line = format!(
        "Memory crossover (smallest swept seq_len where attention's total exceeds the LSTM's): seq_len {}",
        cross.unwrap()
    );
    assert!(out.contains(&line), "{out}");
    assert!(out.contains("wrote t.png"), "{out}");
    png_size(&d.path().join("t.png"));
}

#[test]
fn memory_plot_defaults_to_a_sweep_and_needs_two_lengths() {
    let d = tempfile::tempdir().unwrap();
    let r = json_of(&run(&["memory", "--json", "--plot", "s.png"], d.path()));
    assert_eq!(
        usizes(&r["plot"]["seq_lens"]),
        [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    );
    png_size(&d.path().join("s.png"));
    // Without --plot the default stays the single seq_len 128, and no plot key.
    let r = json_of(&run(&["memory", "--json"], d.path()));
    assert_eq!(r["configs"].as_array().unwrap().len(), 1);
    assert!(r.get("plot").is_none());
    fails_with(
        &run(&["memory", "--seq-len", "128", "--plot", "x.png"], d.path()),
        "at least two lengths",
    );
    fails_with(
        &run(
            &[
                "memory",
                "--seq-len",
                "64,128",
                "--plot",
                "no/such/dir/x.png",
            ],
            d.path(),
        ),
        "could not write",
    );
}

/// Writes a run directory with a metrics.jsonl of `lines`.
fn run_dir(root: &Path, name: &str, lines: &[String]) -> PathBuf {
    let dir = root.join("runs").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    dir
}

fn pairs(v: &Value) -> Vec<(u64, f64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

#[test]
fn plot_reads_the_metrics_it_is_given() {
    let d = tempfile::tempdir().unwrap();
    // An attention run with per-layer norms, resumed after step 4: steps 3 and 4 are logged twice
    // and the later lines win. blocks.1 is missing from step 2's norms.
    let mut lines = vec![];
    let train = |s: u64, x: f64| {
        format!(
            r#"{{"step":{s},"train_loss":{x},"grad_norm":{},"lr":0.001,"tokens_per_s":10.0,"elapsed_s":1.0}}"#,
            x / 2.0
        )
    };
    let norms = |s: u64, e: f64, b1: Option<f64>| {
        let b1 = b1
            .map(|x| format!(r#","blocks.1":{x}"#))
            .unwrap_or_default();
        format!(
            r#"{{"step":{s},"grad_norm":1.5,"layer_grad_norms":{{"embed":{e},"blocks.0":0.9{b1},"head":0.5}},"param_grad_norms":{{"blocks.0.attn.q.weight":0.2}}}}"#
        )
    };
    for s in 1..=4 {
        lines.push(train(s, 4.0 - s as f64 * 0.25));
        lines.push(norms(s, 0.1 * s as f64, (s != 2).then_some(2.0 * s as f64)));
    }
    lines.push(r#"{"step":4,"val_loss":3.5,"val_tokens":100,"elapsed_s":2.0}"#.into());
    for s in 3..=6 {
        lines.push(train(s, 5.0 - s as f64 * 0.5));
        lines.push(norms(s, 0.01 * s as f64, Some(20.0)));
    }
    lines.push(r#"{"step":6,"val_loss":2.5,"val_tokens":100,"elapsed_s":3.0}"#.into());
    let att = run_dir(d.path(), "attention-a", &lines);
    // An older LSTM run: no layer norms, a line cut short by a crash.
    let lstm = run_dir(
        d.path(),
        "lstm-b",
        &[
            train(1, 4.1),
            train(2, 3.9),
            r#"{"step":2,"val_loss":3.95,"val_tokens":50,"elapsed_s":1.0}"#.into(),
            r#"{"step":3,"train_lo"#.into(),
        ],
    );
    let o = run(
        &[
            "plot",
            att.to_str().unwrap(),
            lstm.to_str().unwrap(),
            "--json",
            "--out",
            "charts",
        ],
        d.path(),
    );
    let r = json_of(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("metrics.jsonl line 4") && err.contains("skipped"),
        "{err}"
    );
    assert!(
        err.contains("lstm-b logged no per-layer gradient norms"),
        "{err}"
    );
    assert_eq!(png_size(&d.path().join("charts/loss.png")), CURVES_SIZE);
    assert_eq!(
        png_size(&d.path().join("charts/grad_flow.png")),
        CURVES_SIZE
    );

    let a = &r["runs"][0];
    assert_eq!(a["name"], "attention-a");
    let want_train: Vec<(u64, f64)> = (1..=6)
        .map(|s| {
            let x = if s <= 2 {
                4.0 - s as f64 * 0.25
            } else {
                5.0 - s as f64 * 0.5
            };
            (s, x)
        })
        .collect();
    assert_eq!(pairs(&a["train_loss"]), want_train);
    assert_eq!(
        pairs(&a["grad_norm"]),
        (1..=6).map(|s| (s, 1.5)).collect::<Vec<_>>(),
        "the norms line of each step comes after its train line, so 1.5 wins"
    );
    assert_eq!(pairs(&a["val_loss"]), vec![(4, 3.5), (6, 2.5)]);
    let layers = a["layer_grad_norms"].as_array().unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l[0].as_str().unwrap()).collect();
    assert_eq!(names, ["blocks.0", "blocks.1", "embed", "head"]);
    let layer = |n: &str| pairs(&layers.iter().find(|l| l[0] == n).unwrap()[1]);
    assert_eq!(
        layer("blocks.1"),
        vec![(1, 2.0), (3, 20.0), (4, 20.0), (5, 20.0), (6, 20.0)]
    );
    let embed: Vec<(u64, f64)> = (1..=6)
        .map(|s| {
            (
                s,
                if s <= 2 {
                    0.1 * s as f64
                } else {
                    0.01 * s as f64
                },
            )
        })
        .collect();
    assert_eq!(layer("embed"), embed);

    let b = &r["runs"][1];
    assert_eq!(b["name"], "lstm-b");
    assert_eq!(pairs(&b["train_loss"]), vec![(1, 4.1), (2, 3.9)]);
    assert_eq!(pairs(&b["grad_norm"]), vec![(1, 2.05), (2, 1.95)]);
    assert!(b["layer_grad_norms"].as_array().unwrap().is_empty());

    // Default output: next to the first run.
    stdout_ok(&run(&["plot", lstm.to_str().unwrap()], d.path()));
    png_size(&lstm.join("loss.png"));
    png_size(&lstm.join("grad_flow.png"));
}

#[test]
fn plot_errors_say_what_to_do() {
    let d = tempfile::tempdir().unwrap();
    fails_with(&run(&["plot", "runs/nope"], d.path()), "does not exist");
    std::fs::create_dir_all(d.path().join("bare")).unwrap();
    fails_with(&run(&["plot", "bare"], d.path()), "has no metrics.jsonl");
    let empty = run_dir(d.path(), "empty", &[]);
    fails_with(
        &run(&["plot", empty.to_str().unwrap()], d.path()),
        "is empty",
    );
    let junk = run_dir(d.path(), "junk", &["not json".into(), "[1]".into()]);
    fails_with(
        &run(&["plot", junk.to_str().unwrap()], d.path()),
        "no usable line",
    );
    fails_with(&run(&["plot"], d.path()), "RUN");
}

/// Trains a tiny model for 3 steps on the CPU into `dir/out`.
fn train(dir: &Path, out: &str, model: &[&str]) {
    let book = dir.join("book.txt");
    if !book.exists() {
        std::fs::write(&book, sample_text()).unwrap();
    }
    let mut args = vec![
        "train",
        "--text",
        book.to_str().unwrap(),
        "--out",
        out,
        "--steps",
        "3",
        "--seq-len",
        "16",
        "--batch",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ];
    args.extend_from_slice(model);
    stdout_ok(&run(&args, dir));
}

#[track_caller]
fn check_causal_rows(m: &Value, n: usize) {
    let probs = m["probs"].as_array().unwrap();
    assert_eq!(probs.len(), n);
    for (q, row) in probs.iter().enumerate() {
        let row: Vec<f64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(row.len(), n);
        let sum: f64 = row.iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "layer {} head {} row {q} sums to {sum}",
            m["layer"],
            m["head"]
        );
        assert!(
            row[q + 1..].iter().all(|&p| p == 0.0),
            "layer {} head {} row {q} attends to the future: {row:?}",
            m["layer"],
            m["head"]
        );
        assert!(row[..=q].iter().all(|&p| p > 0.0), "row {q}: {row:?}");
    }
}

#[test]
fn attention_map_draws_causal_probabilities() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    train(
        p,
        "att",
        &["--d-model", "16", "--layers", "2", "--heads", "2"],
    );
    let prompt = "to be or\nnot";
    let r = json_of(&run(
        &[
            "attention-map",
            "--checkpoint",
            "att",
            "--prompt",
            prompt,
            "--json",
        ],
        p,
    ));
    let tokens: Vec<String> = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let shown: String = prompt
        .chars()
        .map(|c| match c {
            ' ' => '␣',
            '\n' => '⏎',
            c => c,
        })
        .collect();
    assert_eq!(tokens.concat(), shown);
    assert_eq!(r["truncated"], false);
    let maps = r["maps"].as_array().unwrap();
    assert_eq!(maps.len(), 4, "2 layers x 2 heads");
    for m in maps {
        check_causal_rows(m, tokens.len());
    }
    let lay = layout(&tokens, 2, 2);
    assert_eq!(
        png_size(&p.join("att/attention_map.png")),
        (lay.width, lay.height)
    );

    // Causality: the map of a prefix of the prompt is the top-left block of the prompt's map
    // (the padding after the shorter prompt changes nothing).
    let short = json_of(&run(
        &[
            "attention-map",
            "--checkpoint",
            "att",
            "--prompt",
            "to be",
            "--json",
            "--out",
            "s.png",
        ],
        p,
    ));
    for (a, b) in short["maps"].as_array().unwrap().iter().zip(maps) {
        for (q, row) in a["probs"].as_array().unwrap().iter().enumerate() {
            for (k, x) in row.as_array().unwrap().iter().enumerate() {
                let (x, y) = (x.as_f64().unwrap(), b["probs"][q][k].as_f64().unwrap());
                assert!(
                    (x - y).abs() < 1e-6,
                    "layer {} head {} ({q}, {k}): prefix {x} vs full prompt {y}",
                    a["layer"],
                    a["head"]
                );
            }
        }
    }

    // One layer and head, to a chosen file; a prompt longer than seq_len keeps its last 16.
    let long = "the queen said alice to be or not";
    let o = run(
        &[
            "attention-map",
            "--checkpoint",
            "att",
            "--prompt",
            long,
            "--layer",
            "1",
            "--head",
            "0",
            "--out",
            "one.png",
            "--json",
        ],
        p,
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the map shows the last 16"),
        "{}",
        text(&o)
    );
    let r = json_of(&o);
    assert_eq!(r["truncated"], true);
    let tokens: Vec<String> = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let tail: String = long.chars().skip(long.chars().count() - 16).collect();
    assert_eq!(tokens.concat(), tail.replace(' ', "␣"));
    let maps = r["maps"].as_array().unwrap();
    assert_eq!(maps.len(), 1);
    assert_eq!(
        (maps[0]["layer"].as_u64(), maps[0]["head"].as_u64()),
        (Some(1), Some(0))
    );
    check_causal_rows(&maps[0], 16);
    let lay = layout(&tokens, 1, 1);
    assert_eq!(png_size(&p.join("one.png")), (lay.width, lay.height));

    fails_with(
        &run(&["attention-map", "--checkpoint", "att", "--prompt", ""], p),
        "prompt is empty",
    );
    fails_with(
        &run(
            &["attention-map", "--checkpoint", "att", "--prompt", "XYZ"],
            p,
        ),
        "not in the vocabulary",
    );
    fails_with(
        &run(
            &[
                "attention-map",
                "--checkpoint",
                "att",
                "--prompt",
                "to",
                "--layer",
                "2",
            ],
            p,
        ),
        "--layer 2 is out of range",
    );
    fails_with(
        &run(
            &["attention-map", "--checkpoint", "nope", "--prompt", "to"],
            p,
        ),
        "nope",
    );
}

#[test]
fn attention_map_of_an_lstm_is_refused() {
    let d = tempfile::tempdir().unwrap();
    train(
        d.path(),
        "lstm",
        &["--model", "lstm", "--hidden", "8", "--embed", "8"],
    );
    fails_with(
        &run(
            &["attention-map", "--checkpoint", "lstm", "--prompt", "to be"],
            d.path(),
        ),
        "an LSTM has no attention weights",
    );
}
