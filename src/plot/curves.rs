//! The charts of `robo-poet plot`: loss curves (train and validation, every run on one chart) and
//! gradient flow (per-layer gradient norms on a log axis, the healthy band [0.1, 10] shaded).

use super::metrics::{RunMetrics, Series};
use super::{
    color, draw_legend, log_ticks, render_png, tick_label, Area, DrawResult, LegendEntry, FONT,
};
use anyhow::{ensure, Result};
use plotters::prelude::*;
use std::path::Path;

/// Width and height of loss.png and grad_flow.png in pixels.
pub const CURVES_SIZE: (u32, u32) = (1200, 650);
const LEGEND_W: u32 = 330;

/// The band of gradient norms shaded as healthy.
pub const GRAD_BAND: (f64, f64) = (0.1, 10.0);

/// One line of the gradient-flow chart.
#[derive(Clone, Debug, PartialEq)]
pub struct GradLine {
    pub run: String,
    /// The layer name, or None for the global norm (a run without per-layer norms).
    pub layer: Option<String>,
    pub points: Series,
}

/// The lines of the gradient-flow chart: per (run, layer), or the global grad_norm of a run that
/// logged no per-layer norms.
pub fn grad_lines(runs: &[RunMetrics]) -> Vec<GradLine> {
    let mut v = vec![];
    for r in runs {
        if r.layer_grad_norms.is_empty() {
            v.push(GradLine {
                run: r.name.clone(),
                layer: None,
                points: r.grad_norm.clone(),
            });
        } else {
            for (layer, s) in &r.layer_grad_norms {
                v.push(GradLine {
                    run: r.name.clone(),
                    layer: Some(layer.clone()),
                    points: s.clone(),
                });
            }
        }
    }
    v
}

fn max_step(series: &[&Series]) -> u64 {
    series
        .iter()
        .flat_map(|s| s.iter().map(|p| p.0))
        .max()
        .unwrap_or(0)
        .max(1)
}

pub fn draw_loss(path: &Path, runs: &[RunMetrics]) -> Result<()> {
    ensure!(
        runs.iter()
            .any(|r| !r.train_loss.is_empty() || !r.val_loss.is_empty()),
        "no run has a train_loss or val_loss line to plot"
    );
    render_png(path, CURVES_SIZE, |root| loss(root, runs))
}

fn loss(root: &Area, runs: &[RunMetrics]) -> DrawResult {
    let (plot, legend) = root.split_horizontally(CURVES_SIZE.0 - LEGEND_W);
    let all: Vec<&Series> = runs
        .iter()
        .flat_map(|r| [&r.train_loss, &r.val_loss])
        .collect();
    let xmax = max_step(&all) as f64;
    let (lo, hi) = all
        .iter()
        .flat_map(|s| s.iter().map(|p| p.1))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
    let pad = ((hi - lo) * 0.05).max(0.05);
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            "Loss per step: train (thin) and validation (thick)",
            (FONT, 18),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax * 1.02, (lo - pad).max(0.0)..hi + pad)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy loss (nats per token)")
        .x_label_formatter(&|x| format!("{}", x.round()))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(245, 245, 245))
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    let mut entries = vec![];
    for (i, r) in runs.iter().enumerate() {
        let c = color(i);
        let pts = |s: &Series| s.iter().map(|&(x, y)| (x as f64, y)).collect::<Vec<_>>();
        if !r.train_loss.is_empty() {
            chart.draw_series(LineSeries::new(
                pts(&r.train_loss),
                c.mix(0.55).stroke_width(1),
            ))?;
            entries.push(LegendEntry {
                label: format!("{} train", r.name),
                color: c,
                thin: true,
                dashed: false,
                marker: false,
            });
        }
        if !r.val_loss.is_empty() {
            let v = pts(&r.val_loss);
            chart.draw_series(LineSeries::new(v.clone(), c.stroke_width(3)))?;
            chart.draw_series(v.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
            entries.push(LegendEntry {
                label: format!("{} val", r.name),
                color: c,
                thin: false,
                dashed: false,
                marker: true,
            });
        }
    }
    draw_legend(&legend.margin(60, 0, 0, 10), "Run", &entries)
}

pub fn draw_grad_flow(path: &Path, runs: &[RunMetrics]) -> Result<()> {
    let lines = grad_lines(runs);
    ensure!(
        lines.iter().any(|l| l.points.iter().any(|p| p.1 > 0.0)),
        "no run has a positive gradient norm to plot (no grad_norm or layer_grad_norms lines)"
    );
    render_png(path, CURVES_SIZE, |root| grad_flow(root, &lines))
}

fn grad_flow(root: &Area, lines: &[GradLine]) -> DrawResult {
    let (plot, legend) = root.split_horizontally(CURVES_SIZE.0 - LEGEND_W);
    let all: Vec<&Series> = lines.iter().map(|l| &l.points).collect();
    let xmax = max_step(&all) as f64;
    // A log axis cannot show zero: zero norms (a layer with no gradient yet) are left out.
    let positive = |l: &GradLine| -> Vec<(f64, f64)> {
        l.points
            .iter()
            .filter(|p| p.1 > 0.0)
            .map(|&(x, y)| (x as f64, y))
            .collect()
    };
    let (lo, hi) = lines
        .iter()
        .flat_map(positive)
        .fold((GRAD_BAND.0, GRAD_BAND.1), |(a, b), (_, y)| {
            (a.min(y), b.max(y))
        });
    let (lo, hi) = (lo / 2.0, hi * 2.0);
    let global_only = lines.iter().all(|l| l.layer.is_none());
    let title = if global_only {
        "Gradient norm per step: global norm (no per-layer norms logged)"
    } else {
        "Gradient norm per layer and step"
    };
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, 18))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0f64..xmax * 1.02,
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
        )?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("gradient L2 norm (log scale)")
        .x_label_formatter(&|x| format!("{}", x.round()))
        .y_label_formatter(&|y| tick_label(*y))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    chart.draw_series(std::iter::once(Rectangle::new(
        [(0.0, GRAD_BAND.0), (xmax * 1.02, GRAD_BAND.1)],
        RGBColor(44, 160, 44).mix(0.10).filled(),
    )))?;
    // Colours tell the lines apart; every other run is dashed as well, so runs stay apart when
    // the palette repeats.
    let mut runs: Vec<&str> = vec![];
    let mut entries = vec![];
    for (i, l) in lines.iter().enumerate() {
        let c = color(i);
        let pts = positive(l);
        if !runs.contains(&l.run.as_str()) {
            runs.push(&l.run);
        }
        let dashed = runs.len().is_multiple_of(2);
        if dashed {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 9, 5, c.stroke_width(2)))?;
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
        }
        if pts.len() <= 30 {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
        entries.push(LegendEntry {
            label: match &l.layer {
                Some(layer) => format!("{}: {layer}", l.run),
                None => format!("{}: global grad_norm", l.run),
            },
            color: c,
            thin: false,
            dashed,
            marker: false,
        });
    }
    let legend = legend.margin(60, 0, 0, 10);
    draw_legend(&legend, "Run: layer", &entries)?;
    let (_, h) = legend.dim_in_pixel();
    legend.draw(&Text::new(
        "shaded: norms in [0.1, 10]",
        (8, h as i32 - 70),
        (FONT, 13).into_font().color(&BLACK),
    ))?;
    Ok(())
}
