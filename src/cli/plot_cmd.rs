//! `robo-poet plot`: loss.png and grad_flow.png from the metrics.jsonl of one or more runs.

use super::PlotArgs;
use crate::plot::curves::{draw_grad_flow, draw_loss, grad_lines};
use crate::plot::metrics::read_run;
use anyhow::{ensure, Context, Result};
use serde_json::json;

pub fn run(a: &PlotArgs) -> Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|d| read_run(d))
        .collect::<Result<Vec<_>>>()?;
    for r in &runs {
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
    }
    let has_loss = runs
        .iter()
        .any(|r| !r.train_loss.is_empty() || !r.val_loss.is_empty());
    let has_grad = grad_lines(&runs)
        .iter()
        .any(|l| l.points.iter().any(|p| p.1 > 0.0));
    ensure!(
        has_loss || has_grad,
        "no losses or gradient norms to plot in the metrics.jsonl of {}; plot a run after it has logged a step",
        a.runs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let out = a.out.clone().unwrap_or_else(|| a.runs[0].clone());
    std::fs::create_dir_all(&out)
        .with_context(|| format!("could not create the output folder {}", out.display()))?;
    let loss = out.join("loss.png");
    let grad = out.join("grad_flow.png");
    let mut written = vec![];
    if has_loss {
        draw_loss(&loss, &runs)?;
        written.push(&loss);
    } else {
        eprintln!("note: no train_loss or val_loss lines, so no loss.png");
    }
    if has_grad {
        draw_grad_flow(&grad, &runs)?;
        written.push(&grad);
    } else {
        eprintln!("note: no gradient norms (grad_norm or layer_grad_norms), so no grad_flow.png");
    }
    for r in runs
        .iter()
        .filter(|r| has_grad && r.layer_grad_norms.is_empty())
    {
        eprintln!(
            "note: {} logged no per-layer gradient norms (layer_grad_norms); grad_flow.png shows its global grad_norm",
            r.name
        );
    }
    if a.json {
        println!(
            "{}",
            json!({
                "loss_png": has_loss.then_some(&loss),
                "grad_flow_png": has_grad.then_some(&grad),
                "runs": runs,
            })
        );
    } else {
        for p in written {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}
