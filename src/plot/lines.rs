//! A plain chart of named lines over one x axis, linear or log on either axis: what `compare`
//! draws its validation curves (against step, wall time and training FLOPs) and its memory sweep
//! with.

use super::{color, draw_legend, log_ticks, render_png, tick_label, titled, LegendEntry, FONT};
use anyhow::{ensure, Result};
use plotters::prelude::*;
use std::path::Path;

/// Width and height of the picture in pixels.
pub const LINES_SIZE: (u32, u32) = (1100, 650);
const LEGEND_W: u32 = 280;

/// One named line: (x, y) points in x order.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// What the chart says around its lines.
#[derive(Clone, Debug)]
pub struct Axes<'a> {
    pub title: &'a str,
    pub subtitle: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub log_x: bool,
    pub log_y: bool,
}

/// Draws `lines` (each with a marker per point) to a PNG at `path`. Points a log axis cannot
/// show (zero, negative) and non-finite ones are left out.
pub fn draw_lines(path: &Path, axes: &Axes, lines: &[Line]) -> Result<()> {
    let usable = |&(x, y): &(f64, f64)| {
        x.is_finite() && y.is_finite() && (!axes.log_x || x > 0.0) && (!axes.log_y || y > 0.0)
    };
    let lines: Vec<Line> = lines
        .iter()
        .map(|l| Line {
            label: l.label.clone(),
            points: l.points.iter().copied().filter(usable).collect(),
        })
        .collect();
    ensure!(
        lines.iter().any(|l| !l.points.is_empty()),
        "nothing to draw in {}: no line has a point",
        path.display()
    );
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.points.clone()).collect();
    let (xlo, xhi) = span(all.iter().map(|p| p.0), axes.log_x);
    let (ylo, yhi) = span(all.iter().map(|p| p.1), axes.log_y);
    render_png(path, LINES_SIZE, |root| {
        let body = titled(root, axes.title, axes.subtitle)?;
        let (plot, legend) = body.split_horizontally(LINES_SIZE.0 - LEGEND_W);
        // plotters types a log axis differently from a linear one: the same body for each.
        macro_rules! draw {
            ($x:expr, $y:expr) => {{
                let mut chart = ChartBuilder::on(&plot)
                    .margin(16)
                    .x_label_area_size(50)
                    .y_label_area_size(80)
                    .build_cartesian_2d($x, $y)?;
                chart
                    .configure_mesh()
                    .x_desc(axes.x_desc)
                    .y_desc(axes.y_desc)
                    .x_label_formatter(&|v| tick_label(*v))
                    .y_label_formatter(&|v| tick_label(*v))
                    .label_style((FONT, 14))
                    .axis_desc_style((FONT, 15))
                    .light_line_style(WHITE)
                    .bold_line_style(RGBColor(225, 225, 225))
                    .draw()?;
                for (i, l) in lines.iter().enumerate() {
                    let c = color(i);
                    chart.draw_series(LineSeries::new(l.points.clone(), c.stroke_width(3)))?;
                    chart.draw_series(l.points.iter().map(|&q| Circle::new(q, 4, c.filled())))?;
                }
            }};
        }
        let log = |lo: f64, hi: f64| (lo..hi).log_scale().with_key_points(log_ticks(lo, hi));
        match (axes.log_x, axes.log_y) {
            (false, false) => draw!(xlo..xhi, ylo..yhi),
            (true, false) => draw!(log(xlo, xhi), ylo..yhi),
            (false, true) => draw!(xlo..xhi, log(ylo, yhi)),
            (true, true) => draw!(log(xlo, xhi), log(ylo, yhi)),
        }
        let entries: Vec<LegendEntry> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| LegendEntry {
                label: l.label.clone(),
                color: color(i),
                thin: false,
                dashed: false,
                marker: true,
            })
            .collect();
        draw_legend(&legend.margin(16, 0, 0, 10), "Run", &entries)
    })
}

/// The axis range over `values` with a margin: 5% of the span on a linear axis (5% of the value
/// for a single one), a factor 1.3 on a log one.
fn span(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if log {
        (lo / 1.3, hi * 1.3)
    } else {
        let pad = if hi > lo {
            (hi - lo) * 0.05
        } else {
            0.05 * hi.abs().max(1.0)
        };
        (lo - pad, hi + pad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_hold_every_point_with_a_margin() {
        assert_eq!(span([1.0, 3.0].into_iter(), true), (1.0 / 1.3, 3.0 * 1.3));
        let (lo, hi) = span([2.0, 4.0].into_iter(), false);
        assert!(
            (lo - 1.9).abs() < 1e-12 && (hi - 4.1).abs() < 1e-12,
            "{lo} {hi}"
        );
        let (lo, hi) = span([5.0].into_iter(), false);
        assert!(lo < 5.0 && hi > 5.0, "{lo} {hi}");
    }
}
