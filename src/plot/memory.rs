//! The memory chart of `robo-poet memory --plot`: total bytes of one training step vs seq_len,
//! attention and LSTM, both axes log scale, with the memory crossover marked.

use super::{
    color, draw_legend, log_ticks, render_png, tick_label, titled, Area, DrawResult, LegendEntry,
    FONT,
};
use anyhow::{ensure, Result};
use plotters::prelude::*;
use serde::Serialize;
use std::path::Path;

/// Width and height of the picture in pixels.
pub const MEMORY_PLOT_SIZE: (u32, u32) = (1100, 650);

/// The numbers behind the chart, exactly as the memory command computed them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemorySeries {
    /// The configuration, for the title.
    pub config: String,
    pub seq_lens: Vec<usize>,
    /// Total bytes of one training step, per seq_len.
    pub attention_bytes: Vec<usize>,
    pub lstm_bytes: Vec<usize>,
    /// The smallest swept seq_len where attention's total exceeds the LSTM's.
    pub crossover_seq_len: Option<usize>,
}

const MIB: f64 = 1024.0 * 1024.0;

pub fn draw_memory(path: &Path, s: &MemorySeries) -> Result<()> {
    let n = s.seq_lens.len();
    ensure!(
        n >= 2 && s.attention_bytes.len() == n && s.lstm_bytes.len() == n,
        "a memory plot needs at least two seq_len values (got {n})"
    );
    render_png(path, MEMORY_PLOT_SIZE, |root| draw(root, s))
}

fn draw(root: &Area, s: &MemorySeries) -> DrawResult {
    let body = titled(
        root,
        "Memory of one training step vs context length",
        &s.config,
    )?;
    let (plot, legend) = body.split_horizontally(MEMORY_PLOT_SIZE.0 - 230);
    let mib = |b: usize| b as f64 / MIB;
    let ys: Vec<f64> = s
        .attention_bytes
        .iter()
        .chain(&s.lstm_bytes)
        .map(|&b| mib(b))
        .collect();
    let (ylo, yhi) = ys
        .iter()
        .fold((f64::INFINITY, 0f64), |(a, b), &y| (a.min(y), b.max(y)));
    let (ylo, yhi) = (ylo / 1.6, yhi * 1.6);
    let (xlo, xhi) = (
        s.seq_lens[0] as f64 / 1.3,
        s.seq_lens[s.seq_lens.len() - 1] as f64 * 1.3,
    );
    let xticks: Vec<f64> = s.seq_lens.iter().map(|&t| t as f64).collect();
    let mut chart = ChartBuilder::on(&plot)
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (xlo..xhi).log_scale().with_key_points(xticks),
            (ylo..yhi).log_scale().with_key_points(log_ticks(ylo, yhi)),
        )?;
    chart
        .configure_mesh()
        .x_desc("seq_len T (log scale)")
        .y_desc("MiB (log scale)")
        .x_label_formatter(&|x| format!("{}", x.round()))
        .y_label_formatter(&|y| tick_label(*y))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    if let Some(t) = s.crossover_seq_len {
        let x = t as f64;
        let grey = RGBColor(90, 90, 90);
        chart.draw_series(DashedLineSeries::new(
            vec![(x, ylo), (x, yhi)],
            6,
            4,
            grey.stroke_width(2),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            format!(" crossover: T = {t}"),
            (x, yhi / 1.15),
            (FONT, 15).into_font().color(&grey),
        )))?;
    }
    let mut entries = vec![];
    for (i, (label, bytes)) in [("attention", &s.attention_bytes), ("LSTM", &s.lstm_bytes)]
        .into_iter()
        .enumerate()
    {
        let c = color(i);
        let pts: Vec<(f64, f64)> = s
            .seq_lens
            .iter()
            .zip(bytes.iter())
            .map(|(&t, &b)| (t as f64, mib(b)))
            .collect();
        chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(3)))?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        entries.push(LegendEntry {
            label: format!("{label} (total)"),
            color: c,
            thin: false,
            dashed: false,
            marker: true,
        });
    }
    let legend = legend.margin(16, 0, 0, 10);
    draw_legend(&legend, "Model", &entries)?;
    let note = match s.crossover_seq_len {
        Some(t) => format!("attention needs more from T = {t}"),
        None => "no crossover in the sweep".into(),
    };
    legend.draw(&Text::new(
        note,
        (8, 100),
        (FONT, 13).into_font().color(&BLACK),
    ))?;
    Ok(())
}
