//! The heatmaps of `robo-poet attention-map`: one panel per (layer, head), query positions down
//! the y axis and key positions along x, labelled with the prompt's tokens, under one colour
//! scale (square-root, shared by all panels). Cells above the diagonal (masked by causality) are drawn light grey.

use super::{render_png, tick_label, Area, DrawResult, FONT};
use anyhow::{ensure, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// One head's attention probabilities over the prompt: `probs[query][key]`, (T, T).
#[derive(Clone, Debug)]
pub struct HeadMap {
    pub layer: usize,
    pub head: usize,
    pub probs: Vec<Vec<f32>>,
}

/// Pixel geometry of the picture, fixed by the number of tokens, their labels and the grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layout {
    /// Pixels per token cell.
    pub cell: u32,
    /// Width of the y-label column and height of the x-label row.
    pub label: u32,
    pub panel_w: u32,
    pub panel_h: u32,
    pub rows: u32,
    pub cols: u32,
    pub width: u32,
    pub height: u32,
}

const TITLE_H: u32 = 56;
const PANEL_TITLE_H: u32 = 26;
const COLORBAR_W: u32 = 110;
/// The largest picture drawn (its RGB buffer is 3 bytes a pixel): 64 megapixels.
const MAX_PIXELS: u64 = 64 << 20;

/// The layout for `tokens` (their display labels) in a grid of `rows` layers x `cols` heads.
pub fn layout(tokens: &[String], rows: usize, cols: usize) -> Layout {
    let n = tokens.len().max(1) as u32;
    let cell = (520 / n).clamp(6, 30);
    let longest = tokens.iter().map(|t| t.chars().count()).max().unwrap_or(1) as u32;
    let label = (14 + 8 * longest).clamp(26, 120);
    let panel_w = label + n * cell + 20;
    let panel_h = PANEL_TITLE_H + n * cell + label + 10;
    let (rows, cols) = (rows.max(1) as u32, cols.max(1) as u32);
    Layout {
        cell,
        label,
        panel_w,
        panel_h,
        rows,
        cols,
        width: (cols * panel_w + COLORBAR_W).max(520),
        height: TITLE_H + rows * panel_h,
    }
}

/// Maps t in [0, 1] to a colour of the viridis scale (dark blue, through teal and green, to
/// yellow), interpolated between five of its stops.
pub fn viridis(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws the maps, laid out in rows of layers and columns of heads, to `path`.
pub fn draw_attention(path: &Path, title: &str, tokens: &[String], maps: &[HeadMap]) -> Result<()> {
    let n = tokens.len();
    ensure!(
        !maps.is_empty() && n > 0,
        "nothing to draw: no attention maps"
    );
    for m in maps {
        ensure!(
            m.probs.len() == n && m.probs.iter().all(|r| r.len() == n),
            "attention map of layer {} head {} is not {n} x {n}",
            m.layer,
            m.head
        );
    }
    let (layers, heads) = grid(maps);
    let lay = layout(tokens, layers.len(), heads.len());
    ensure!(
        lay.width as u64 * lay.height as u64 <= MAX_PIXELS,
        "{} panels of {n} tokens would make a {} x {} pixel picture; draw fewer with --layer and \
         --head, or use a shorter prompt",
        maps.len(),
        lay.width,
        lay.height
    );
    render_png(path, (lay.width, lay.height), |root| {
        draw(root, &lay, title, tokens, maps, &layers, &heads)
    })
}

/// The distinct layers (rows) and heads (columns) of the maps, in order.
fn grid(maps: &[HeadMap]) -> (Vec<usize>, Vec<usize>) {
    let mut layers: Vec<usize> = maps.iter().map(|m| m.layer).collect();
    let mut heads: Vec<usize> = maps.iter().map(|m| m.head).collect();
    layers.sort_unstable();
    layers.dedup();
    heads.sort_unstable();
    heads.dedup();
    (layers, heads)
}

fn draw(
    root: &Area,
    lay: &Layout,
    title: &str,
    tokens: &[String],
    maps: &[HeadMap],
    layers: &[usize],
    heads: &[usize],
) -> DrawResult {
    let n = tokens.len() as i32;
    let cell = lay.cell as i32;
    let vmax = maps
        .iter()
        .flat_map(|m| m.probs.iter().flatten())
        .fold(0f32, |a, &b| a.max(b))
        .max(1e-6) as f64;
    let center = Pos::new(HPos::Center, VPos::Center);
    root.draw(&Text::new(
        title.to_string(),
        (lay.width as i32 / 2, 20),
        (FONT, 18).into_font().color(&BLACK).pos(center),
    ))?;
    root.draw(&Text::new(
        "rows: query position (the token attending); columns: key position (the token attended to)",
        (lay.width as i32 / 2, 42),
        (FONT, 13)
            .into_font()
            .color(&RGBColor(80, 80, 80))
            .pos(center),
    ))?;
    // Show every k-th label when cells are too small for one label each.
    let every = (14 / cell).max(1) as usize;
    let font_px = cell.clamp(9, 14);
    for m in maps {
        let r = layers.iter().position(|&l| l == m.layer).unwrap_or(0) as i32;
        let c = heads.iter().position(|&h| h == m.head).unwrap_or(0) as i32;
        let x0 = c * lay.panel_w as i32 + lay.label as i32;
        let y0 = TITLE_H as i32 + r * lay.panel_h as i32 + PANEL_TITLE_H as i32;
        root.draw(&Text::new(
            format!("layer {} · head {}", m.layer, m.head),
            (x0 + n * cell / 2, y0 - 13),
            (FONT, 14).into_font().color(&BLACK).pos(center),
        ))?;
        for (q, row) in m.probs.iter().enumerate() {
            for (k, &p) in row.iter().enumerate() {
                let fill = if k > q {
                    RGBColor(236, 236, 236)
                } else {
                    viridis(scale(p as f64, vmax))
                };
                let (x, y) = (x0 + k as i32 * cell, y0 + q as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    fill.filled(),
                ))?;
            }
        }
        root.draw(&Rectangle::new(
            [(x0, y0), (x0 + n * cell, y0 + n * cell)],
            RGBColor(120, 120, 120).stroke_width(1),
        ))?;
        let label_style = (FONT, font_px).into_font().color(&BLACK);
        for (i, t) in tokens.iter().enumerate().filter(|(i, _)| i % every == 0) {
            let mid = i as i32 * cell + cell / 2;
            root.draw(&Text::new(
                t.clone(),
                (x0 - 6, y0 + mid),
                label_style.clone().pos(Pos::new(HPos::Right, VPos::Center)),
            ))?;
            let below = (x0 + mid, y0 + n * cell + 6);
            if t.chars().count() <= 1 {
                root.draw(&Text::new(
                    t.clone(),
                    below,
                    label_style.clone().pos(Pos::new(HPos::Center, VPos::Top)),
                ))?;
            } else {
                // Word labels run downwards so that neighbours do not overlap.
                root.draw(&Text::new(
                    t.clone(),
                    below,
                    label_style
                        .clone()
                        .transform(FontTransform::Rotate90)
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                ))?;
            }
        }
    }
    colorbar(root, lay, vmax)
}

/// Position of probability `p` on the colour scale: square root of p / vmax, so that the small
/// weights of long rows stay distinguishable beside the first row's certain 1.
fn scale(p: f64, vmax: f64) -> f64 {
    (p / vmax).max(0.0).sqrt()
}

fn colorbar(root: &Area, lay: &Layout, vmax: f64) -> DrawResult {
    let x = (lay.width - COLORBAR_W) as i32 + 20;
    let top = TITLE_H as i32 + PANEL_TITLE_H as i32;
    let h = (lay.height as i32 - top - 40).clamp(60, 400);
    for i in 0..h {
        let t = 1.0 - i as f64 / (h - 1) as f64;
        root.draw(&Rectangle::new(
            [(x, top + i), (x + 18, top + i + 1)],
            viridis(t).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(x, top), (x + 18, top + h)],
        RGBColor(120, 120, 120).stroke_width(1),
    ))?;
    let style = (FONT, 12)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for f in [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0] {
        let y = top + ((1.0 - scale(f * vmax, vmax)) * (h - 1) as f64) as i32;
        root.draw(&PathElement::new(vec![(x + 18, y), (x + 22, y)], BLACK))?;
        root.draw(&Text::new(tick_label(vmax * f), (x + 25, y), style.clone()))?;
    }
    root.draw(&Text::new(
        "probability (√ scale)",
        (x - 40, top - 16),
        (FONT, 12).into_font().color(&BLACK),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_ends_and_clamps() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(2.0), viridis(1.0));
        assert_eq!(viridis(f64::NAN), viridis(0.0));
    }

    #[test]
    fn oversized_grids_are_refused_before_drawing() {
        let n = 256;
        let toks: Vec<String> = (0..n).map(|i| format!("{}", i % 10)).collect();
        let maps: Vec<HeadMap> = (0..64)
            .map(|i| HeadMap {
                layer: i / 8,
                head: i % 8,
                probs: vec![vec![0.0; n]; n],
            })
            .collect();
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("big.png");
        let e = draw_attention(&path, "t", &toks, &maps)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--layer") && e.contains("pixel"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn layout_grows_with_the_grid() {
        let toks: Vec<String> = "abcd".chars().map(String::from).collect();
        let one = layout(&toks, 1, 1);
        let four = layout(&toks, 2, 2);
        assert_eq!(four.width, (2 * one.panel_w + COLORBAR_W).max(520));
        assert_eq!(four.height - TITLE_H, 2 * (one.height - TITLE_H));
    }
}
