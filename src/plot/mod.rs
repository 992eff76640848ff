//! PNG charts: the memory sweep (`memory --plot`), loss and gradient-flow curves of runs
//! (`plot`), attention heatmaps (`attention-map`) and the line charts of `compare`.
//!
//! Everything is drawn by plotters into an RGB buffer and written with the png crate. Text uses
//! DejaVu Sans, embedded in the binary (assets/fonts, Bitstream Vera license), through plotters'
//! ab_glyph renderer, so no system font or fontconfig is needed where the charts are drawn.

pub mod attention;
pub mod curves;
pub mod lines;
pub mod memory;
pub mod metrics;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// The font family name every chart asks for.
pub const FONT: &str = "sans-serif";

static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The drawing area charts draw on.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// What a drawing closure returns: plotters' errors, boxed.
pub type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// A qualitative palette (Tableau 10): distinguishable lines on white.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Registers the embedded font with plotters (once per process) as its "sans-serif" family:
/// plotters is built without system fonts, so anything else drawing with it in this process
/// (criterion's report charts in `cargo bench`) must call this first.
pub fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok()
    });
    anyhow::ensure!(
        ok,
        "the embedded chart font could not be loaded (a build problem)"
    );
    Ok(())
}

/// Draws a `width` x `height` picture with `draw` on a white background and writes it to `path`
/// as an 8-bit RGB PNG.
pub fn render_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area) -> DrawResult,
) -> Result<()> {
    register_font()?;
    // (H, W, 3) row-major RGB.
    let mut buf = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
        draw(&root).map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
        root.present()
            .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    }
    write_png(path, width, height, &buf)
}

fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    let what = || {
        format!(
            "could not write {}; check that its folder exists and is writable",
            path.display()
        )
    };
    let file = std::fs::File::create(path).with_context(what)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().with_context(what)?;
    w.write_image_data(rgb).with_context(what)?;
    w.finish().with_context(what)?;
    Ok(())
}

/// Draws a centred title and a smaller subtitle line at the top of `root`; returns the area
/// below them.
pub fn titled<'a>(
    root: &Area<'a>,
    title: &str,
    subtitle: &str,
) -> std::result::Result<Area<'a>, Box<dyn std::error::Error>> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let (w, _) = root.dim_in_pixel();
    let center = Pos::new(HPos::Center, VPos::Center);
    root.draw(&Text::new(
        title.to_string(),
        (w as i32 / 2, 20),
        (FONT, 19).into_font().color(&BLACK).pos(center),
    ))?;
    root.draw(&Text::new(
        subtitle.to_string(),
        (w as i32 / 2, 44),
        (FONT, 14)
            .into_font()
            .color(&RGBColor(70, 70, 70))
            .pos(center),
    ))?;
    Ok(root.split_vertically(58).1)
}

/// Tick positions for a log axis over [lo, hi] (lo > 0): the powers of ten inside, and the 2x
/// and 5x multiples too when the range spans too few decades for powers alone.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return vec![];
    }
    let decade = |mults: &[f64]| {
        let mut v = vec![];
        let mut p = 10f64.powf(lo.log10().floor());
        while p <= hi {
            for m in mults {
                let x = p * m;
                if x >= lo * (1.0 - 1e-9) && x <= hi * (1.0 + 1e-9) {
                    v.push(x);
                }
            }
            p *= 10.0;
        }
        v
    };
    let powers = decade(&[1.0]);
    if powers.len() >= 4 {
        return powers;
    }
    let v = decade(&[1.0, 2.0, 5.0]);
    if v.len() >= 3 {
        return v;
    }
    // Less than a decade or so: five points evenly spaced on the log axis, rounded to two
    // significant digits.
    let mut v: Vec<f64> = (0..5)
        .map(|i| {
            let x = lo * (hi / lo).powf(i as f64 / 4.0);
            let scale = 10f64.powf(x.log10().floor() - 1.0);
            (x / scale).round() * scale
        })
        .filter(|&x| x >= lo && x <= hi)
        .collect();
    v.dedup();
    v
}

/// A number for a tick label: no trailing zeros, three significant digits below 1.
pub fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    let s = if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        let digits = (-a.log10().floor()) as usize + 2;
        format!("{v:.digits$}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Shortens a label to at most `max` characters with an ellipsis in the middle.
pub fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || max < 5 {
        return s.to_string();
    }
    let head = (max - 1) / 2;
    let tail = max - 1 - head;
    let a: String = s.chars().take(head).collect();
    let b: String = s.chars().skip(n - tail).collect();
    format!("{a}…{b}")
}

/// One legend entry: a label, its colour, and how its line is drawn: thin (a secondary series),
/// dashed (a second run), with a marker.
pub struct LegendEntry {
    pub label: String,
    pub color: RGBColor,
    pub thin: bool,
    pub dashed: bool,
    pub marker: bool,
}

/// Draws a legend as a column of entries on its own area (beside the plot, so it never covers
/// data); entries that do not fit are summarised in a last line.
pub fn draw_legend(area: &Area, heading: &str, entries: &[LegendEntry]) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    let font = (FONT, 14).into_font();
    let line_h = 20i32;
    let max_chars = ((w as i32 - 50) / 8).max(8) as usize;
    area.draw(&Text::new(
        heading.to_string(),
        (8, 8),
        (FONT, 15).into_font().color(&BLACK),
    ))?;
    let fit = ((h as i32 - 40) / line_h).max(1) as usize;
    let shown = if entries.len() > fit {
        fit - 1
    } else {
        entries.len()
    };
    for (i, e) in entries.iter().take(shown).enumerate() {
        let y = 36 + i as i32 * line_h;
        let stroke = if e.thin { 1 } else { 3 };
        let segments: &[(i32, i32)] = if e.dashed {
            &[(8, 15), (19, 26), (30, 36)]
        } else {
            &[(8, 36)]
        };
        for &(a, b) in segments {
            area.draw(&PathElement::new(
                vec![(a, y + 7), (b, y + 7)],
                e.color.stroke_width(stroke),
            ))?;
        }
        if e.marker {
            area.draw(&Circle::new((22, y + 7), 4, e.color.filled()))?;
        }
        area.draw(&Text::new(
            shorten(&e.label, max_chars),
            (44, y),
            font.clone().color(&BLACK),
        ))?;
    }
    if shown < entries.len() {
        let y = 36 + shown as i32 * line_h;
        area.draw(&Text::new(
            format!("… and {} more", entries.len() - shown),
            (44, y),
            font.color(&BLACK),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_are_inside_the_range_and_increasing() {
        assert_eq!(log_ticks(0.05, 2000.0), vec![0.1, 1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(
            log_ticks(3.0, 1500.0),
            vec![5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
        assert_eq!(log_ticks(0.3, 20.0), vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0]);
        let v = log_ticks(1.1, 2.9);
        assert!(v.len() >= 3, "{v:?}");
        assert!(v.windows(2).all(|w| w[0] < w[1]) && v[0] >= 1.1 && v[v.len() - 1] <= 2.9);
        assert!(log_ticks(0.0, 1.0).is_empty());
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(1000.0), "1000");
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(0.1), "0.1");
        assert_eq!(tick_label(0.05), "0.05");
        assert_eq!(tick_label(10.0), "10");
    }

    #[test]
    fn shorten_keeps_both_ends() {
        assert_eq!(shorten("abc", 10), "abc");
        assert_eq!(shorten("attention-20261128-153000", 11), "atten…53000");
    }
}
