use super::*;
use crate::model::attention::{AttentionConfig, AttentionStyle};
use crate::model::lstm::LstmConfig;

fn facts(
    name: &str,
    model: ModelConfig,
    best: f64,
    memory: usize,
    flops_per_token: f64,
) -> RunFacts {
    RunFacts {
        name: name.into(),
        args: String::new(),
        kind: model.kind(),
        description: model.describe(),
        model,
        parameters: 1000,
        batch: 4,
        seq_len: 8,
        steps: 10,
        steps_from: "steps:10".into(),
        device: "cpu".into(),
        best_val_loss: best,
        best_step: 10,
        best_perplexity: best.exp(),
        final_val_loss: best,
        final_perplexity: best.exp(),
        median_tokens_per_s: Some(1000.0),
        wall_s: 1.0,
        flops_per_step: (flops_per_token * 32.0) as u64,
        flops_per_token,
        training_flops: flops_per_token * 320.0,
        memory_bytes: memory,
        measured_bytes: None,
        cuda_analytic_bytes: None,
        val_curve: vec![],
    }
}

fn att() -> ModelConfig {
    ModelConfig::Attention(AttentionConfig {
        style: AttentionStyle::Seed,
        vocab_size: 5,
        seq_len: 8,
        d_model: 4,
        n_layers: 1,
        n_heads: 1,
        pos_emb: false,
        dropout: 0.1,
        attention: Default::default(),
    })
}

fn lstm() -> ModelConfig {
    ModelConfig::Lstm(LstmConfig {
        vocab_size: 5,
        seq_len: 8,
        embed: 4,
        hidden: 4,
        n_layers: 1,
    })
}

fn verdicts(c: &[Claim]) -> Vec<&str> {
    c.iter().map(|c| c.verdict.as_str()).collect()
}

#[test]
fn the_seeds_claims_hold_exactly_when_the_figures_say_so() {
    // The seed's world: LSTM 6.5, attention 4.9 at 5.5x the memory and half the FLOPs per token.
    let c = claims(&[
        facts("a", att(), 4.9, 5500, 1.0e6),
        facts("l", lstm(), 6.5, 1000, 2.0e6),
    ]);
    assert_eq!(verdicts(&c), ["holds"; 5], "{c:#?}");
    assert!(c[3].figures.starts_with("5.50x"), "{}", c[3].figures);
    assert!(
        c[4].figures.starts_with("attention does 2.00x fewer"),
        "{}",
        c[4].figures
    );
    // What the char-level default runs measure: close losses, less memory, comparable FLOPs.
    let c = claims(&[
        facts("a", att(), 1.44, 610, 1.0e6),
        facts("l", lstm(), 1.47, 1000, 1.1e6),
    ]);
    assert_eq!(
        verdicts(&c),
        [
            "does not hold",
            "holds",
            "holds",
            "does not hold",
            "does not hold"
        ],
        "{c:#?}"
    );
    assert!(c[0].figures.contains("1.4700"), "{}", c[0].figures);
    assert!(c[2].figures.contains("-0.0300"), "{}", c[2].figures);
    // The tolerance is 20% either side, inclusive.
    let c = claims(&[
        facts("a", att(), 6.0, 4400, 1.0e6),
        facts("l", lstm(), 7.8, 1000, 2.4e6),
    ]);
    assert_eq!(
        verdicts(&c),
        ["holds", "does not hold", "holds", "holds", "holds"],
        "{c:#?}"
    );
    let c = claims(&[
        facts("a", att(), 6.0, 4390, 1.0e6),
        facts("l", lstm(), 7.9, 1000, 2.41e6),
    ]);
    assert_eq!(
        verdicts(&c),
        [
            "does not hold",
            "does not hold",
            "holds",
            "does not hold",
            "does not hold"
        ]
    );
}

#[test]
fn claims_need_both_kinds_of_run() {
    let c = claims(&[
        facts("a", att(), 1.0, 1, 1.0),
        facts("b", att(), 2.0, 1, 1.0),
    ]);
    assert!(
        c.iter().all(|c| c.verdict.starts_with("not checked")),
        "{c:#?}"
    );
}

#[test]
fn medians_skip_non_finite_values() {
    assert_eq!(median(vec![]), None);
    assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(vec![4.0, 1.0, f64::NAN, 2.0, 3.0]), Some(2.5));
}

#[test]
fn the_markdown_has_every_run_claim_and_chart() {
    let runs = vec![
        facts("attention", att(), 1.5, 610, 1.0e6),
        facts("lstm", lstm(), 1.6, 1000, 1.1e6),
    ];
    let r = Report {
        budget: Budget::Steps(10),
        budget_text: Budget::Steps(10).describe(),
        data: "Alice + Hamlet from data".into(),
        tokenizer: "char".into(),
        vocab: 78,
        train_tokens: 100,
        val_targets: 9,
        started: "20261201-120000".into(),
        claims: claims(&runs),
        runs,
        memory_sweep: MemorySweep {
            seq_lens: vec![],
            runs: vec![],
        },
        charts: super::charts::CHARTS
            .iter()
            .map(|(f, t)| Chart {
                file: f.to_string(),
                title: t.to_string(),
            })
            .collect(),
    };
    let md = markdown(&r);
    for want in [
        "Budget `steps:10`: 10 steps per run.",
        "Started 2026-12-01 12:00:00 UTC",
        "| attention | (preset defaults) | seed attention",
        "| lstm | 1000 | 1.6000 (4.95) at step 10 | 1.6000 (4.95) | 1.0k | 1.0 s |",
        "| attention uses 5.5x the memory of the LSTM |",
        "**does not hold**",
        "- [Validation loss vs step](val_loss_vs_step.png)",
        "- [Memory per training step vs seq_len](memory_vs_seq_len.png)",
        "no GPU was used",
    ] {
        assert!(md.contains(want), "no {want:?} in:\n{md}");
    }
    assert!(!md.contains("memory per step (driver)"), "{md}");
}
