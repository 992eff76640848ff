//! The numbers of a finished compare, read back from its run directories, the seed's claims
//! checked against them, and `report.md` / `compare.json`.
//!
//! Every figure comes from a file a run wrote (its last checkpoint's metadata and its
//! metrics.jsonl) or from the analytic counts of the configuration it trained (`model::flops`,
//! the tensor table), plus what `plan.json` noted at the run's start (device, driver-measured
//! memory, the timing of a seconds budget). So a compare interrupted and resumed reports exactly
//! as one that was not.

use super::charts;
use super::plan::Plan;
use crate::model::footprint::Footprint;
use crate::model::{self, ModelConfig, ModelKind};
use crate::plot::metrics::{read_run, RunMetrics};
use crate::train::budget::{flops_per_step, Budget};
use crate::train::run_files::load_meta;
use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

pub const REPORT_FILE: &str = "report.md";
pub const JSON_FILE: &str = "compare.json";

/// The seq_len sweep of the memory chart: the lengths these models train at and far past them,
/// where attention's T×T tensors take over.
pub const MEMORY_SWEEP: [usize; 9] = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// A claim holds when the measured ratio (or loss) is within this fraction of the claimed one.
pub const CLAIM_TOLERANCE: f64 = 0.2;

/// Everything the report says, in numbers (`compare.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub budget: Budget,
    pub budget_text: String,
    pub data: String,
    pub tokenizer: String,
    pub vocab: usize,
    pub train_tokens: usize,
    /// Validation targets every evaluation scores.
    pub val_targets: usize,
    pub started: String,
    pub runs: Vec<RunFacts>,
    pub claims: Vec<Claim>,
    pub memory_sweep: MemorySweep,
    pub charts: Vec<Chart>,
}

/// One run's figures.
#[derive(Clone, Debug, Serialize)]
pub struct RunFacts {
    pub name: String,
    /// The flags it was given ("" for its preset's defaults).
    pub args: String,
    pub kind: ModelKind,
    pub model: ModelConfig,
    pub description: String,
    pub parameters: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub steps: u64,
    /// How the budget became `steps`.
    pub steps_from: String,
    pub device: String,
    pub best_val_loss: f64,
    pub best_step: u64,
    pub best_perplexity: f64,
    pub final_val_loss: f64,
    pub final_perplexity: f64,
    /// The median of the tokens/s of its metrics.jsonl lines (each over one log interval).
    pub median_tokens_per_s: Option<f64>,
    /// Wall time of the whole run: steps, evaluations and checkpoints, resumed parts added.
    pub wall_s: f64,
    pub flops_per_step: u64,
    pub flops_per_token: f64,
    pub training_flops: f64,
    /// Bytes of its tensor table: what one training step holds.
    pub memory_bytes: usize,
    /// On a GPU: the driver's measurement and the CUDA backend's own total.
    pub measured_bytes: Option<u64>,
    pub cuda_analytic_bytes: Option<u64>,
    pub val_curve: Vec<ValPoint>,
}

/// One evaluation of a run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ValPoint {
    pub step: u64,
    pub val_loss: f64,
    pub elapsed_s: Option<f64>,
    pub training_flops: f64,
}

/// One of the seed's claims against these runs.
#[derive(Clone, Debug, Serialize)]
pub struct Claim {
    pub claim: &'static str,
    /// When it counts as holding.
    pub rule: String,
    /// What was measured.
    pub figures: String,
    /// "holds", "does not hold", or "not checked: <why>".
    pub verdict: String,
}

/// Bytes of one training step per run at each swept seq_len, the rest of its configuration kept.
#[derive(Clone, Debug, Serialize)]
pub struct MemorySweep {
    pub seq_lens: Vec<usize>,
    pub runs: Vec<(String, Vec<u64>)>,
}

/// A chart file and what it shows.
#[derive(Clone, Debug, Serialize)]
pub struct Chart {
    pub file: String,
    pub title: String,
}

/// The report of the compare in `dir`, whose runs have all finished, and their metrics.
pub fn gather(dir: &Path, plan: &Plan) -> Result<(Report, Vec<RunMetrics>)> {
    let mut runs = vec![];
    let mut all_metrics = vec![];
    let mut dataset = None;
    for p in &plan.runs {
        let run_dir = dir.join(&p.name);
        let meta = load_meta(&run_dir)
            .with_context(|| format!("reading the {} run for the report", p.name))?;
        let metrics = read_run(&run_dir)?;
        let notes = plan.notes.get(&p.name).cloned().unwrap_or_default();
        let (cfg, batch) = (meta.model.clone(), meta.train.batch);
        let table = model::build(&cfg, batch).table().clone();
        let per_step = flops_per_step(&cfg, batch);
        let tokens_per_step = (batch * cfg.seq_len()) as f64;
        let elapsed: std::collections::BTreeMap<u64, f64> =
            metrics.val_elapsed_s.iter().copied().collect();
        let final_val = meta.val_loss.unwrap_or(f64::NAN);
        let (best, best_step) = meta.best_val_loss.unwrap_or((final_val, meta.step));
        let steps_from = match plan.budget {
            Budget::Steps(n) => format!("steps:{n}"),
            Budget::Flops(f) => format!("{f:.3e} FLOPs / {:.3e} per step", per_step as f64),
            Budget::Seconds(s) => match (notes.secs_per_step, notes.timed_s) {
                (Some(sps), Some(t)) => {
                    format!("{s} s / {sps:.4} s per step, timed over {t:.1} s")
                }
                _ => format!("{s} s of training"),
            },
        };
        dataset.get_or_insert((
            meta.data.describe(),
            meta.tokenizer()?.kind().to_string(),
            cfg.vocab_size(),
            meta.train_tokens,
            meta.val_tokens,
        ));
        runs.push(RunFacts {
            name: p.name.clone(),
            args: p.args.clone(),
            kind: cfg.kind(),
            description: cfg.describe(),
            parameters: table.parameter_count(),
            batch,
            seq_len: cfg.seq_len(),
            steps: meta.step,
            steps_from,
            device: notes.device.clone(),
            best_val_loss: best,
            best_step,
            best_perplexity: best.exp(),
            final_val_loss: final_val,
            final_perplexity: final_val.exp(),
            median_tokens_per_s: median(metrics.tokens_per_s.iter().map(|p| p.1).collect()),
            wall_s: meta.elapsed_s,
            flops_per_step: per_step,
            flops_per_token: per_step as f64 / tokens_per_step,
            training_flops: per_step as f64 * meta.step as f64,
            memory_bytes: table.total_bytes(),
            measured_bytes: notes.measured_bytes,
            cuda_analytic_bytes: notes.cuda_analytic_bytes,
            val_curve: metrics
                .val_loss
                .iter()
                .map(|&(step, val_loss)| ValPoint {
                    step,
                    val_loss,
                    elapsed_s: elapsed.get(&step).copied(),
                    training_flops: per_step as f64 * step as f64,
                })
                .collect(),
            model: cfg,
        });
        all_metrics.push(metrics);
    }
    let (data, tokenizer, vocab, train_tokens, val_targets) =
        dataset.context("a compare without runs has nothing to report")?;
    let memory_sweep = MemorySweep {
        seq_lens: MEMORY_SWEEP.to_vec(),
        runs: runs
            .iter()
            .map(|r| {
                let bytes = MEMORY_SWEEP
                    .iter()
                    .map(|&t| {
                        let b = Footprint::of(&with_seq_len(&r.model, t), r.batch).total_bytes();
                        u64::try_from(b).unwrap_or(u64::MAX)
                    })
                    .collect();
                (r.name.clone(), bytes)
            })
            .collect(),
    };
    let report = Report {
        budget: plan.budget,
        budget_text: plan.budget.describe(),
        data,
        tokenizer,
        vocab,
        train_tokens,
        val_targets,
        started: plan.started.clone(),
        claims: claims(&runs),
        runs,
        memory_sweep,
        charts: charts::CHARTS
            .iter()
            .map(|(file, title)| Chart {
                file: file.to_string(),
                title: title.to_string(),
            })
            .collect(),
    };
    Ok((report, all_metrics))
}

/// Writes report.md, compare.json and the charts into `dir`.
pub fn write(dir: &Path, report: &Report, metrics: &[RunMetrics]) -> Result<()> {
    charts::draw(dir, report, metrics)?;
    let mut json = serde_json::to_string_pretty(report)?;
    json.push('\n');
    for (file, body) in [(JSON_FILE, json), (REPORT_FILE, markdown(report))] {
        let path = dir.join(file);
        crate::checkpoint::write_atomic(&path, body.as_bytes())
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

fn with_seq_len(cfg: &ModelConfig, t: usize) -> ModelConfig {
    let mut c = cfg.clone();
    match &mut c {
        ModelConfig::Attention(a) => a.seq_len = t,
        ModelConfig::Lstm(l) => l.seq_len = t,
    }
    c
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn within(measured: f64, claimed: f64) -> bool {
    (measured / claimed - 1.0).abs() <= CLAIM_TOLERANCE
}

fn verdict(holds: bool) -> String {
    if holds { "holds" } else { "does not hold" }.to_string()
}

/// The seed's claims, checked on the first attention run against the first LSTM run.
pub fn claims(runs: &[RunFacts]) -> Vec<Claim> {
    let tol = CLAIM_TOLERANCE * 100.0;
    let att = runs.iter().find(|r| r.kind == ModelKind::Attention);
    let lstm = runs.iter().find(|r| r.kind == ModelKind::Lstm);
    let mut out = vec![];
    let mut claim = |claim: &'static str, rule: String, check: Option<(bool, String)>| {
        let (verdict, figures) = match check {
            Some((holds, figures)) => (verdict(holds), figures),
            None => (
                "not checked: the compare needs an attention run and an LSTM run".to_string(),
                "-".to_string(),
            ),
        };
        out.push(Claim {
            claim,
            rule,
            figures,
            verdict,
        });
    };
    let pair = att.zip(lstm);
    let best = |r: &RunFacts| format!("{:.4} (step {})", r.best_val_loss, r.best_step);
    claim(
        "the LSTM baseline reaches a validation loss of 6.5",
        format!(
            "the LSTM's best validation loss within {tol:.0}% of 6.5 ({:.1} to {:.1})",
            6.5 * (1.0 - CLAIM_TOLERANCE),
            6.5 * (1.0 + CLAIM_TOLERANCE)
        ),
        lstm.filter(|_| att.is_some()).map(|l| {
            (
                within(l.best_val_loss, 6.5),
                format!("LSTM best {}", best(l)),
            )
        }),
    );
    claim(
        "attention reaches a validation loss below 5.0",
        "attention's best validation loss < 5.0".into(),
        att.filter(|_| lstm.is_some())
            .map(|a| (a.best_val_loss < 5.0, format!("attention best {}", best(a)))),
    );
    claim(
        "attention beats the LSTM (the point of 6.5 against < 5.0)",
        "attention's best validation loss below the LSTM's".into(),
        pair.map(|(a, l)| {
            (
                a.best_val_loss < l.best_val_loss,
                format!(
                    "attention {:.4} vs LSTM {:.4} ({:+.4})",
                    a.best_val_loss,
                    l.best_val_loss,
                    a.best_val_loss - l.best_val_loss
                ),
            )
        }),
    );
    claim(
        "attention uses 5.5x the memory of the LSTM",
        format!(
            "attention's memory per training step / the LSTM's within {tol:.0}% of 5.5 ({:.1}x to {:.1}x), analytic (the tensor tables)",
            5.5 * (1.0 - CLAIM_TOLERANCE),
            5.5 * (1.0 + CLAIM_TOLERANCE)
        ),
        pair.map(|(a, l)| {
            let r = a.memory_bytes as f64 / l.memory_bytes as f64;
            let mut figures = format!(
                "{r:.2}x ({} vs {} analytic)",
                mib(a.memory_bytes as u64),
                mib(l.memory_bytes as u64)
            );
            if let (Some(x), Some(y)) = (a.measured_bytes, l.measured_bytes) {
                let _ = write!(
                    figures,
                    "; driver-measured {:.2}x ({} vs {})",
                    x as f64 / y as f64,
                    mib(x),
                    mib(y)
                );
            }
            (within(r, 5.5), figures)
        }),
    );
    claim(
        "attention needs 2x fewer operations than the LSTM",
        format!(
            "the LSTM's training FLOPs per token / attention's within {tol:.0}% of 2 ({:.1}x to {:.1}x)",
            2.0 * (1.0 - CLAIM_TOLERANCE),
            2.0 * (1.0 + CLAIM_TOLERANCE)
        ),
        pair.map(|(a, l)| {
            let r = l.flops_per_token / a.flops_per_token;
            let how = if r >= 1.0 {
                format!("attention does {r:.2}x fewer")
            } else {
                format!("attention does {:.2}x more", 1.0 / r)
            };
            (
                within(r, 2.0),
                format!(
                    "{how} (attention {:.3} MFLOP per token, LSTM {:.3})",
                    a.flops_per_token / 1e6,
                    l.flops_per_token / 1e6
                ),
            )
        }),
    );
    out
}

pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// "12.3 s", "12m05s", "1h02m05s".
fn hms(secs: f64) -> String {
    let s = secs.round() as u64;
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// report.md.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# Attention vs LSTM: robo-poet compare\n");
    let devices: Vec<&str> = r.runs.iter().map(|x| x.device.as_str()).collect();
    let device = if devices.windows(2).all(|p| p[0] == p[1]) {
        devices.first().copied().unwrap_or("-").to_string()
    } else {
        devices.join(" / ")
    };
    let _ = writeln!(
        w,
        "Budget `{}`: {}. Data: {}, {} tokenizer (vocabulary {}), {} training tokens, {} validation targets per evaluation. Device: {device}. Started {} UTC.\n",
        r.budget, r.budget_text, r.data, r.tokenizer, r.vocab, r.train_tokens, r.val_targets, stamp(&r.started)
    );
    let _ = writeln!(w, "## Configurations\n");
    let _ = writeln!(
        w,
        "| run | flags | model | batch x seq_len | steps (from the budget) |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|");
    for x in &r.runs {
        let flags = if x.args.trim().is_empty() {
            "(preset defaults)".to_string()
        } else {
            format!("`{}`", x.args.trim())
        };
        let _ = writeln!(
            w,
            "| {} | {flags} | {} | {} x {} | {} ({}) |",
            x.name, x.description, x.batch, x.seq_len, x.steps, x.steps_from
        );
    }
    let _ = writeln!(w, "\n## Results\n");
    let measured = r.runs.iter().any(|x| x.measured_bytes.is_some());
    let _ = writeln!(
        w,
        "| run | parameters | best val loss (ppl) | final val loss (ppl) | tokens/s (median) | wall time | training FLOPs | memory per step (analytic) |{}",
        if measured { " memory per step (driver) |" } else { "" }
    );
    let _ = writeln!(
        w,
        "|---|---:|---:|---:|---:|---:|---:|---:|{}",
        if measured { "---:|" } else { "" }
    );
    for x in &r.runs {
        let tps = x
            .median_tokens_per_s
            .map_or("-".into(), |t| format!("{:.1}k", t / 1e3));
        let driver = if measured {
            format!(" {} |", x.measured_bytes.map_or("-".into(), mib))
        } else {
            String::new()
        };
        let _ = writeln!(
            w,
            "| {} | {} | {:.4} ({:.2}) at step {} | {:.4} ({:.2}) | {tps} | {} | {:.3e} | {} |{driver}",
            x.name,
            x.parameters,
            x.best_val_loss,
            x.best_perplexity,
            x.best_step,
            x.final_val_loss,
            x.final_perplexity,
            hms(x.wall_s),
            x.training_flops,
            mib(x.memory_bytes as u64),
        );
    }
    let _ = writeln!(
        w,
        "\nLosses are mean cross-entropy in nats per validation target (README, \"Evaluation protocol\"); tokens/s is over training steps only; wall time includes evaluations and checkpoints; FLOPs and memory are analytic (`robo-poet memory` counts them the same way){}.",
        if measured {
            ", the driver column is the device memory the GPU's driver reported for the run's allocations"
        } else {
            "; no GPU was used, so there is no driver-measured memory"
        }
    );
    let _ = writeln!(w, "\n## The seed's claims, checked against these runs\n");
    let _ = writeln!(w, "| claim | holds when | measured | verdict |");
    let _ = writeln!(w, "|---|---|---|---|");
    for c in &r.claims {
        let _ = writeln!(
            w,
            "| {} | {} | {} | **{}** |",
            c.claim, c.rule, c.figures, c.verdict
        );
    }
    let _ = writeln!(
        w,
        "\nThe seed's figures were for its own configuration; these verdicts are for the configurations above (the first attention run against the first LSTM run)."
    );
    let _ = writeln!(w, "\n## Charts\n");
    for c in &r.charts {
        let _ = writeln!(w, "- [{}]({})", c.title, c.file);
    }
    let _ = writeln!(w, "\n## Runs\n");
    let _ = writeln!(
        w,
        "Each run is a normal run directory beside this report: `robo-poet eval --checkpoint <this folder>/{0}`, `robo-poet generate --checkpoint <this folder>/{0}`, `robo-poet plot` work on it. Every number above is in `compare.json`.",
        r.runs.first().map_or("<run>", |x| x.name.as_str())
    );
    s
}

/// "20261201-120000" → "2026-12-01 12:00:00".
fn stamp(s: &str) -> String {
    match (
        s.get(0..4),
        s.get(4..6),
        s.get(6..8),
        s.get(9..11),
        s.get(11..13),
        s.get(13..15),
    ) {
        (Some(y), Some(m), Some(d), Some(h), Some(mi), Some(se)) => {
            format!("{y}-{m}-{d} {h}:{mi}:{se}")
        }
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests;
