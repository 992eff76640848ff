//! The charts of a compare: validation loss against step, wall time and training FLOPs (every
//! run on each), the gradient flow of every run, and memory per step against seq_len at the
//! runs' own widths.

use super::report::Report;
use crate::plot::curves::draw_grad_flow;
use crate::plot::lines::{draw_lines, Axes, Line};
use crate::plot::metrics::RunMetrics;
use anyhow::Result;
use std::path::Path;

/// The chart files and their titles, in the report's order.
pub const CHARTS: [(&str, &str); 5] = [
    ("val_loss_vs_step.png", "Validation loss vs step"),
    ("val_loss_vs_time.png", "Validation loss vs wall time"),
    ("val_loss_vs_flops.png", "Validation loss vs training FLOPs"),
    ("grad_flow.png", "Gradient flow (norm per layer and step)"),
    (
        "memory_vs_seq_len.png",
        "Memory per training step vs seq_len",
    ),
];

/// Draws every chart of [`CHARTS`] into `dir`.
pub fn draw(dir: &Path, r: &Report, metrics: &[RunMetrics]) -> Result<()> {
    let subtitle = format!("{}; {}", r.budget_text, r.data);
    let val = |x: &dyn Fn(&super::report::ValPoint) -> Option<f64>| -> Vec<Line> {
        r.runs
            .iter()
            .map(|run| Line {
                label: run.name.clone(),
                points: run
                    .val_curve
                    .iter()
                    .filter_map(|p| x(p).map(|x| (x, p.val_loss)))
                    .collect(),
            })
            .collect()
    };
    let loss = "validation loss (nats per target)";
    let axes = |title, x_desc| Axes {
        title,
        subtitle: &subtitle,
        x_desc,
        y_desc: loss,
        log_x: false,
        log_y: false,
    };
    draw_lines(
        &dir.join(CHARTS[0].0),
        &axes(CHARTS[0].1, "step"),
        &val(&|p| Some(p.step as f64)),
    )?;
    draw_lines(
        &dir.join(CHARTS[1].0),
        &axes(CHARTS[1].1, "wall time (s)"),
        &val(&|p| p.elapsed_s),
    )?;
    let most = r
        .runs
        .iter()
        .map(|x| x.training_flops)
        .fold(0.0f64, f64::max);
    let (unit, scale) = flop_unit(most);
    let x_desc = format!("training FLOPs ({unit})");
    draw_lines(
        &dir.join(CHARTS[2].0),
        &axes(CHARTS[2].1, &x_desc),
        &val(&|p| Some(p.training_flops / scale)),
    )?;
    draw_grad_flow(&dir.join(CHARTS[3].0), metrics)?;
    let lines: Vec<Line> = r
        .memory_sweep
        .runs
        .iter()
        .zip(&r.runs)
        .map(|((name, bytes), run)| Line {
            label: format!("{name} (trained at T = {})", run.seq_len),
            points: r
                .memory_sweep
                .seq_lens
                .iter()
                .zip(bytes)
                .map(|(&t, &b)| (t as f64, b as f64 / (1024.0 * 1024.0)))
                .collect(),
        })
        .collect();
    let widths: Vec<String> = r
        .runs
        .iter()
        .map(|x| format!("{}: batch {}", x.name, x.batch))
        .collect();
    let subtitle = format!(
        "each run's configuration at every seq_len (analytic, the tensor table); {}",
        widths.join(", ")
    );
    draw_lines(
        &dir.join(CHARTS[4].0),
        &Axes {
            title: CHARTS[4].1,
            subtitle: &subtitle,
            x_desc: "seq_len T (log scale)",
            y_desc: "MiB per training step (log scale)",
            log_x: true,
            log_y: true,
        },
        &lines,
    )
}

/// The unit a FLOP axis reads best in for values up to `most`.
fn flop_unit(most: f64) -> (&'static str, f64) {
    [
        ("PFLOP", 1e15),
        ("TFLOP", 1e12),
        ("GFLOP", 1e9),
        ("MFLOP", 1e6),
    ]
    .into_iter()
    .find(|&(_, s)| most >= s)
    .unwrap_or(("FLOP", 1.0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn flop_axes_use_a_readable_unit() {
        assert_eq!(super::flop_unit(6.9e13), ("TFLOP", 1e12));
        assert_eq!(super::flop_unit(2e9), ("GFLOP", 1e9));
        assert_eq!(super::flop_unit(500.0), ("FLOP", 1.0));
    }
}
