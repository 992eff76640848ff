//! `robo-poet memory` end to end: the default report names both models and a ratio, `--json`
//! agrees with the library's tables and FLOP counts, a sweep prints one summary row per length,
//! and bad input fails with one error line (never a panic).

mod cli_support;
use cli_support::*;

use robo_poet::model::attention::{AttentionConfig, AttentionStyle};
use robo_poet::model::flops::total_flops;
use robo_poet::model::lstm::LstmConfig;
use robo_poet::model::{build, ModelConfig};
use std::process::Output;

/// Runs `robo-poet memory args`.
fn memory(args: &[&str]) -> Output {
    let mut v = vec!["memory"];
    v.extend_from_slice(args);
    robo(&v)
}

fn seed_pair(t: usize) -> (ModelConfig, ModelConfig) {
    (
        ModelConfig::Attention(AttentionConfig {
            style: AttentionStyle::Seed,
            vocab_size: 78,
            seq_len: t,
            d_model: 256,
            n_layers: 1,
            n_heads: 1,
            pos_emb: false,
            dropout: 0.1,
            attention: Default::default(),
        }),
        ModelConfig::Lstm(LstmConfig {
            vocab_size: 78,
            seq_len: t,
            embed: 256,
            hidden: 256,
            n_layers: 1,
        }),
    )
}

#[test]
fn default_report_names_both_models_and_a_ratio() {
    let out = stdout_ok(&memory(&[]));
    for needle in [
        "attention",
        "LSTM",
        "attn/LSTM",
        "seq_len 128",
        "attention probabilities (B,NH,T,T)",
        "attention scratch (B,NH,T[,T])",
        "LSTM gates (T,B,4H)",
        "LSTM cell states (T,B,H)",
        "forward + backward",
        "crossover",
        "GPU:",
    ] {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }
    let total = out.lines().find(|l| l.trim_start().starts_with("total"));
    let total = total.unwrap_or_else(|| panic!("no total row:\n{out}"));
    assert!(
        total.trim_end().ends_with('x'),
        "total row has no ratio: {total}"
    );
}

#[test]
fn json_totals_equal_the_library() {
    let out = stdout_ok(&memory(&["--json", "--seq-len", "64,256"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    let configs = v["configs"].as_array().expect("configs array");
    assert_eq!(configs.len(), 2);
    for (c, t) in configs.iter().zip([64, 256]) {
        assert_eq!(c["seq_len"], t);
        let (att, lstm) = seed_pair(t);
        for (key, cfg) in [("attention", &att), ("lstm", &lstm)] {
            let table_total = build(cfg, 4).table().total_bytes() as u64;
            let m = &c[key];
            assert_eq!(m["total_bytes"].as_u64(), Some(table_total), "{key} T={t}");
            let rows: u64 = m["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["bytes"].as_u64().unwrap())
                .sum();
            assert_eq!(
                rows, table_total,
                "{key} T={t}: rows do not sum to the total"
            );
            assert_eq!(
                m["flops_total"].as_u64(),
                Some(total_flops(cfg, 4).total()),
                "{key} T={t}"
            );
        }
        let ratio = c["memory_ratio"].as_f64().unwrap();
        let want = build(&att, 4).table().total_bytes() as f64
            / build(&lstm, 4).table().total_bytes() as f64;
        assert!((ratio - want).abs() < 1e-12, "T={t}: {ratio} vs {want}");
    }
    // No GPU claims without a measurement.
    if v["gpu"]["measured"] == false {
        assert!(configs[0]["attention"]["cuda"].is_null());
    }
}

#[test]
fn sweep_prints_one_summary_row_per_length() {
    let out = stdout_ok(&memory(&["--seq-len", "32,64,128,256"]));
    let summary = out.split("Summary").nth(1).expect("a summary table");
    for t in [32, 64, 128, 256] {
        let rows = summary
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(&t.to_string()))
            .count();
        assert_eq!(rows, 1, "seq_len {t}: {rows} summary rows in:\n{summary}");
    }
}

#[test]
fn bad_input_fails_with_one_error_line() {
    for (args, needle) in [
        (&["--seq-len", "0"][..], "--seq-len"),
        (&["--seq-len", ""], "--seq-len"),
        (&["--seq-len", "64,,128"], "--seq-len"),
        (&["--d-model", "256", "--heads", "3"], "divisible"),
        (&["--batch", "0"], "--batch"),
    ] {
        let o = memory(args);
        let all = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}:\n{all}");
        assert!(!all.contains("panicked"), "{args:?} panicked:\n{all}");
        let errors: Vec<&str> = all.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: expected one error line:\n{all}");
        assert!(errors[0].contains(needle), "{args:?}: {}", errors[0]);
    }
}

#[test]
fn attention_both_shows_the_two_paths_and_each_crossover() {
    let out = stdout_ok(&memory(&[
        "--attention",
        "both",
        "--seq-len",
        "128,1024,4096",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let configs = v["configs"].as_array().unwrap();
    for c in configs {
        let t = c["seq_len"].as_u64().unwrap();
        let (m, f) = (&c["attention"], &c["attention_fused"]);
        assert_eq!(m["config"]["attention"], "materialized");
        assert_eq!(f["config"]["attention"], "fused");
        let row = |r: &serde_json::Value, key: &str| {
            r["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["row"] == key)
                .unwrap()["bytes"]
                .as_u64()
                .unwrap()
        };
        // materialized: (B,NH,T,T) probabilities and scratch; fused: a value per row of each
        assert_eq!(row(m, "attention_probs"), 4 * t * t * 4);
        assert_eq!(row(f, "attention_probs"), 0);
        assert_eq!(row(f, "attention_lse"), 4 * t * 4);
        assert_eq!(row(f, "attention_scratch"), 4 * t * 4);
        assert!(f["total_bytes"].as_u64() < m["total_bytes"].as_u64());
    }
    // at the seed width the materialized path passes the LSTM at 1024; the fused one does not
    assert_eq!(v["memory_crossover_seq_len"], 1024);
    assert!(
        v["fused_memory_crossover_seq_len"].is_null()
            || v["fused_memory_crossover_seq_len"].as_u64() > Some(1024)
    );
    let text = stdout_ok(&memory(&["--attention", "both", "--seq-len", "128,1024"]));
    for needle in ["materialized", "fused/LSTM", "Memory crossover (fused)"] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
}
