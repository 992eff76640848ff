//! `robo-poet memory`: what one training step of the attention model and of the LSTM holds in
//! memory, and how many FLOPs it does, side by side at the same width, read from the models'
//! tensor tables (`model::memory`) and counted analytically (`model::flops`). On a working GPU
//! it also allocates each configuration on the CUDA backend and shows what the driver measured.

use super::{MemoryArgs, MemoryAttention};
use crate::backend::cuda::{CudaBackend, DeviceMemory};
use crate::gpu::{CudaDevice, Device};
use crate::model::attention::{AttentionConfig, AttentionImpl, AttentionStyle};
use crate::model::flops::{step_flops, FlopTerm, Flops};
use crate::model::lstm::LstmConfig;
use crate::model::memory::{memory_rows, mib, MemoryRow};
use crate::model::{build, ModelConfig};
use crate::plot::memory::{draw_memory, MemorySeries};
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::fmt::Write as _;

/// One model at one sequence length.
#[derive(Serialize)]
struct ModelReport {
    config: ModelConfig,
    rows: Vec<RowBytes>,
    total_bytes: usize,
    total_mib: f64,
    flops: Flops,
    flops_total: u64,
    flop_terms: Vec<FlopTerm>,
    /// The CUDA backend's own accounting and the driver's, when a GPU was used.
    cuda: Option<CudaMemory>,
}

#[derive(Serialize)]
struct RowBytes {
    row: &'static str,
    label: &'static str,
    category: &'static str,
    bytes: usize,
    mib: f64,
}

#[derive(Serialize)]
struct CudaMemory {
    /// The table plus the backend's `cuda.*` workspace.
    analytic_bytes: usize,
    /// Driver free memory before the allocations minus after.
    measured_bytes: usize,
}

#[derive(Serialize)]
struct Pair {
    seq_len: usize,
    /// The attention model on the chosen path (the materialized one with `--attention both`).
    attention: ModelReport,
    /// With `--attention both`: the fused path.
    #[serde(skip_serializing_if = "Option::is_none")]
    attention_fused: Option<ModelReport>,
    lstm: ModelReport,
    /// attention total bytes / LSTM total bytes.
    memory_ratio: f64,
    /// attention FLOPs / LSTM FLOPs (forward + backward).
    flop_ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    fused_memory_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fused_flop_ratio: Option<f64>,
}

#[derive(Serialize)]
struct Gpu {
    measured: bool,
    /// The device, when measured; otherwise why not.
    note: String,
}

#[derive(Serialize)]
struct Report {
    style: AttentionStyle,
    vocab: usize,
    batch: usize,
    d_model: usize,
    layers: usize,
    heads: usize,
    gpu: Gpu,
    /// The attention path of `attention` (materialized with `--attention both`, `attention_fused`
    /// then holding the fused one).
    attention_path: AttentionImpl,
    configs: Vec<Pair>,
    /// Smallest swept seq_len where attention's total bytes exceed the LSTM's.
    memory_crossover_seq_len: Option<usize>,
    /// Smallest swept seq_len where attention's FLOPs exceed the LSTM's.
    flop_crossover_seq_len: Option<usize>,
    /// With `--attention both`: the same for the fused path.
    #[serde(skip_serializing_if = "Option::is_none")]
    fused_memory_crossover_seq_len: Option<Option<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fused_flop_crossover_seq_len: Option<Option<usize>>,
    /// With --plot: the file and the numbers drawn in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    plot: Option<PlotReport>,
}

#[derive(Serialize)]
struct PlotReport {
    path: std::path::PathBuf,
    #[serde(flatten)]
    series: MemorySeries,
}

/// The seq_len sweep of `--plot` when no --seq-len is given: powers of two over the lengths a
/// character model is trained on and past them, far enough to show the T^2 term take over.
pub const PLOT_SWEEP: [usize; 9] = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Parses `--seq-len 64,128,256`: positive integers, sorted, duplicates dropped.
fn parse_lengths(s: &str) -> Result<Vec<usize>> {
    ensure!(
        !s.trim().is_empty(),
        "--seq-len is empty; give a length or a list like 64,128,256"
    );
    let mut v = vec![];
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            bail!("--seq-len {s:?} has an empty entry; give lengths like 64,128,256");
        }
        let n: usize = part.parse().map_err(|_| {
            anyhow::anyhow!(
                "--seq-len: {part:?} is not a whole number; give lengths like 64,128,256"
            )
        })?;
        ensure!(n > 0, "--seq-len must be at least 1 (got 0)");
        v.push(n);
    }
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

fn configs(a: &MemoryArgs, t: usize, path: AttentionImpl) -> Result<(ModelConfig, ModelConfig)> {
    let att = AttentionConfig {
        style: a.style,
        vocab_size: a.vocab,
        seq_len: t,
        d_model: a.d_model,
        n_layers: a.layers,
        n_heads: a.heads,
        // As the presets: the seed has no position embeddings, the GPT style learns them.
        pos_emb: a.style == AttentionStyle::Gpt,
        dropout: 0.1,
        attention: path,
    };
    att.validate()?;
    let lstm = LstmConfig {
        vocab_size: a.vocab,
        seq_len: t,
        embed: a.d_model,
        hidden: a.d_model,
        n_layers: a.layers,
    };
    lstm.validate()?;
    // A rough upper bound, in f64 so it cannot overflow, that keeps every byte and FLOP count
    // far inside u64.
    let (b, t, d, v, l, nh) = (
        a.batch as f64,
        t as f64,
        a.d_model as f64,
        a.vocab as f64,
        a.layers as f64 + 1.0,
        a.heads as f64,
    );
    let elems = 16.0 * l * (b * nh * t * t + b * t * (16.0 * d + v) + (v + t + 16.0 * d) * d);
    let flops = 64.0 * l * (b * t * (16.0 * d + v) * d + b * nh * t * t * d);
    ensure!(
        elems * 4.0 < 2f64.powi(50) && flops < 2f64.powi(62),
        "this configuration is too large to account for (more than a PiB of tensors or 2^62 FLOPs); \
         use a smaller --seq-len, --d-model, --batch, --heads or --layers"
    );
    Ok((ModelConfig::Attention(att), ModelConfig::Lstm(lstm)))
}

fn model_report(cfg: ModelConfig, batch: usize, gpu: bool) -> Result<ModelReport> {
    let model = build(&cfg, batch);
    let table = model.table();
    let rows = memory_rows(table)
        .into_iter()
        .map(|(r, bytes)| RowBytes {
            row: r.key(),
            label: r.label(),
            category: r.category().label(),
            bytes,
            mib: mib(bytes),
        })
        .collect();
    let terms = step_flops(&cfg, batch);
    let flops: Flops = terms.iter().map(|t| t.flops).sum();
    let cuda = if gpu {
        let m = measure(table.clone())
            .with_context(|| format!("measuring {} on the GPU", cfg.describe()))?;
        Some(CudaMemory {
            analytic_bytes: m.analytic_bytes,
            measured_bytes: m.measured_bytes,
        })
    } else {
        None
    };
    Ok(ModelReport {
        total_bytes: table.total_bytes(),
        total_mib: mib(table.total_bytes()),
        config: cfg,
        rows,
        flops,
        flops_total: flops.total(),
        flop_terms: terms,
        cuda,
    })
}

/// Allocates the table on a freshly opened GPU (freed again on return) and reads the driver.
fn measure(table: crate::tensor::TensorTable) -> Result<DeviceMemory> {
    let dev = CudaDevice::open().map_err(|why| anyhow::anyhow!("{why}"))?;
    let be = CudaBackend::new(Box::new(dev), table)?;
    Ok(be.memory())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

pub fn run(a: &MemoryArgs) -> Result<()> {
    let lengths = match (&a.seq_len, &a.plot) {
        (Some(s), _) => parse_lengths(s)?,
        (None, Some(_)) => PLOT_SWEEP.to_vec(),
        (None, None) => vec![128],
    };
    ensure!(
        a.plot.is_none() || lengths.len() >= 2,
        "--plot draws memory against seq_len, so it needs at least two lengths: give a list like \
         --seq-len 64,128,256,512, or leave --seq-len out for the sweep 16,32,...,4096"
    );
    ensure!(a.batch > 0, "--batch must be at least 1");
    ensure!(
        a.layers <= crate::resources::MAX_LAYERS,
        "--layers {} is more than this tool builds (at most {})",
        a.layers,
        crate::resources::MAX_LAYERS
    );
    ensure!(
        a.vocab > 0,
        "--vocab must be at least 1 (78 is the character vocabulary of Alice + Hamlet)"
    );
    let (path, both) = match a.attention {
        Some(MemoryAttention::Fused) => (AttentionImpl::Fused, false),
        Some(MemoryAttention::Materialized) => (AttentionImpl::Materialized, false),
        Some(MemoryAttention::Both) => (AttentionImpl::Materialized, true),
        None if crate::backend::uses_cuda(crate::backend::DeviceChoice::Auto) => {
            (AttentionImpl::Fused, false)
        }
        None => (AttentionImpl::Materialized, false),
    };
    let pairs: Vec<(usize, ModelConfig, ModelConfig, Option<ModelConfig>)> = lengths
        .iter()
        .map(|&t| {
            let (x, y) = configs(a, t, path)?;
            let fused = if both {
                Some(configs(a, t, AttentionImpl::Fused)?.0)
            } else {
                None
            };
            Ok((t, x, y, fused))
        })
        .collect::<Result<_>>()?;
    let gpu = match CudaDevice::open() {
        Ok(dev) => Gpu {
            measured: true,
            note: dev.name(),
        },
        Err(why) => Gpu {
            measured: false,
            note: why.to_string(),
        },
    };
    let mut configs = vec![];
    for (t, att, lstm, fused) in pairs {
        let attention = model_report(att, a.batch, gpu.measured)?;
        let lstm = model_report(lstm, a.batch, gpu.measured)?;
        let attention_fused = fused
            .map(|f| model_report(f, a.batch, gpu.measured))
            .transpose()?;
        configs.push(Pair {
            seq_len: t,
            memory_ratio: ratio(attention.total_bytes as f64, lstm.total_bytes as f64),
            flop_ratio: ratio(attention.flops_total as f64, lstm.flops_total as f64),
            fused_memory_ratio: attention_fused
                .as_ref()
                .map(|f| ratio(f.total_bytes as f64, lstm.total_bytes as f64)),
            fused_flop_ratio: attention_fused
                .as_ref()
                .map(|f| ratio(f.flops_total as f64, lstm.flops_total as f64)),
            attention,
            attention_fused,
            lstm,
        });
    }
    let crossover = |f: &dyn Fn(&Pair) -> bool| configs.iter().find(|p| f(p)).map(|p| p.seq_len);
    fn fused_of(p: &Pair) -> &ModelReport {
        p.attention_fused.as_ref().expect("--attention both")
    }
    let mut report = Report {
        style: a.style,
        vocab: a.vocab,
        batch: a.batch,
        d_model: a.d_model,
        layers: a.layers,
        heads: a.heads,
        memory_crossover_seq_len: crossover(&|p| p.attention.total_bytes > p.lstm.total_bytes),
        flop_crossover_seq_len: crossover(&|p| p.attention.flops_total > p.lstm.flops_total),
        fused_memory_crossover_seq_len: both
            .then(|| crossover(&|p| fused_of(p).total_bytes > p.lstm.total_bytes)),
        fused_flop_crossover_seq_len: both
            .then(|| crossover(&|p| fused_of(p).flops_total > p.lstm.flops_total)),
        attention_path: path,
        gpu,
        configs,
        plot: None,
    };
    if let Some(path) = &a.plot {
        let series = plot_series(&report);
        draw_memory(path, &series)?;
        report.plot = Some(PlotReport {
            path: path.clone(),
            series,
        });
    }
    if let Some(path) = &a.csv {
        std::fs::write(path, csv(&report))
            .with_context(|| format!("writing --csv {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
        if let Some(path) = &a.csv {
            println!("\nwrote {}", path.display());
        }
        if let Some(path) = &a.plot {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The chart's numbers: each configuration's totals and the crossover, as the report has them.
fn plot_series(r: &Report) -> MemorySeries {
    let style = match r.style {
        AttentionStyle::Seed => "seed-style",
        AttentionStyle::Gpt => "GPT-style",
    };
    MemorySeries {
        config: format!(
            "{style} attention vs LSTM, d_model {}, {} layer(s), {} head(s), batch {}, vocab {}",
            r.d_model, r.layers, r.heads, r.batch, r.vocab
        ),
        seq_lens: r.configs.iter().map(|p| p.seq_len).collect(),
        attention_bytes: r.configs.iter().map(|p| p.attention.total_bytes).collect(),
        lstm_bytes: r.configs.iter().map(|p| p.lstm.total_bytes).collect(),
        crossover_seq_len: r.memory_crossover_seq_len,
    }
}

fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}x")
    } else {
        "-".into()
    }
}

fn fmt_mib(bytes: usize) -> String {
    format!("{:.3} MiB", mib(bytes))
}

fn gflop(f: u64) -> String {
    format!("{:.3} GFLOP", f as f64 / 1e9)
}

/// The attention columns of the text report: (title, ratio title, the report of a pair).
type Column = (&'static str, &'static str, fn(&Pair) -> &ModelReport);

fn columns(r: &Report) -> Vec<Column> {
    if r.configs
        .first()
        .is_some_and(|p| p.attention_fused.is_some())
    {
        vec![
            ("materialized", "mat/LSTM", |p| &p.attention),
            ("fused", "fused/LSTM", |p| {
                p.attention_fused.as_ref().expect("both paths")
            }),
        ]
    } else {
        vec![("attention", "attn/LSTM", |p| &p.attention)]
    }
}

fn text(r: &Report) -> String {
    let mut s = String::new();
    let style = match r.style {
        AttentionStyle::Seed => "seed-style attention (no position embeddings)",
        AttentionStyle::Gpt => "GPT-style attention (learned position embeddings)",
    };
    let cols = columns(r);
    let paths = if cols.len() == 2 {
        "materialized and fused".to_string()
    } else {
        r.attention_path.to_string()
    };
    let _ = writeln!(
        s,
        "Memory and FLOPs of one training step, analytic (every tensor of each model's table, f32/u32):\n  \
         {style}: {} layer(s), {} head(s), d_model {}, {paths} attention\n  \
         LSTM: {} layer(s), embed = hidden = {}\n  \
         vocab {}, batch {}",
        r.layers, r.heads, r.d_model, r.layers, r.d_model, r.vocab, r.batch
    );
    let w = 44;
    let line = |s: &mut String, label: &str, cells: Vec<String>| {
        let mut l = format!("  {label:<w$}");
        for c in cells {
            let _ = write!(l, " {c:>14}");
        }
        let _ = writeln!(s, "{}", l.trim_end());
    };
    let cell = |b: usize| if b == 0 { "-".to_string() } else { fmt_mib(b) };
    let share = |x: f64, y: f64| {
        if x > 0.0 && y > 0.0 {
            fmt_ratio(x / y)
        } else {
            "-".into()
        }
    };
    for p in &r.configs {
        let _ = writeln!(s, "\nseq_len {}", p.seq_len);
        let mut head: Vec<String> = cols.iter().map(|c| c.0.to_string()).collect();
        head.push("LSTM".into());
        head.extend(cols.iter().map(|c| c.1.to_string()));
        line(&mut s, "memory", head);
        for (i, row) in MemoryRow::ALL.iter().enumerate() {
            let y = p.lstm.rows[i].bytes;
            let xs: Vec<usize> = cols.iter().map(|c| (c.2)(p).rows[i].bytes).collect();
            let mut cells: Vec<String> = xs.iter().map(|&x| cell(x)).collect();
            cells.push(cell(y));
            cells.extend(xs.iter().map(|&x| share(x as f64, y as f64)));
            line(&mut s, row.label(), cells);
        }
        let mut cells: Vec<String> = cols.iter().map(|c| fmt_mib((c.2)(p).total_bytes)).collect();
        cells.push(fmt_mib(p.lstm.total_bytes));
        cells.extend(cols.iter().map(|c| {
            fmt_ratio(ratio(
                (c.2)(p).total_bytes as f64,
                p.lstm.total_bytes as f64,
            ))
        }));
        line(&mut s, "total", cells);
        if let Some(y) = p
            .lstm
            .cuda
            .as_ref()
            .filter(|_| cols.iter().all(|c| (c.2)(p).cuda.is_some()))
        {
            for (label, pick) in [
                (
                    "CUDA backend: table + cuda.* workspace",
                    (|m: &CudaMemory| m.analytic_bytes) as fn(&CudaMemory) -> usize,
                ),
                (
                    "CUDA: driver-measured (free before - after)",
                    |m: &CudaMemory| m.measured_bytes,
                ),
            ] {
                let xs: Vec<usize> = cols
                    .iter()
                    .map(|c| pick((c.2)(p).cuda.as_ref().expect("checked")))
                    .collect();
                let mut cells: Vec<String> = xs.iter().map(|&x| fmt_mib(x)).collect();
                cells.push(fmt_mib(pick(y)));
                cells.extend(xs.iter().map(|&x| fmt_ratio(x as f64 / pick(y) as f64)));
                line(&mut s, label, cells);
            }
        }
        let mut head: Vec<String> = cols.iter().map(|c| c.0.to_string()).collect();
        head.push("LSTM".into());
        head.extend(cols.iter().map(|c| c.1.to_string()));
        line(&mut s, "FLOPs per step (multiply-add = 2)", head);
        for (label, pick) in [
            (
                "forward",
                (|f: &ModelReport| f.flops.forward) as fn(&ModelReport) -> u64,
            ),
            ("backward", |f: &ModelReport| f.flops.backward),
            ("forward + backward", |f: &ModelReport| f.flops_total),
        ] {
            let xs: Vec<u64> = cols.iter().map(|c| pick((c.2)(p))).collect();
            let mut cells: Vec<String> = xs.iter().map(|&x| gflop(x)).collect();
            cells.push(gflop(pick(&p.lstm)));
            cells.extend(
                xs.iter()
                    .map(|&x| fmt_ratio(x as f64 / pick(&p.lstm) as f64)),
            );
            line(&mut s, label, cells);
        }
    }
    if r.configs.len() > 1 {
        let _ = writeln!(s, "\nSummary");
        let mut head = vec!["seq_len".to_string()];
        for c in &cols {
            head.push(format!("{} MiB", c.0));
        }
        head.push("LSTM MiB".into());
        for c in &cols {
            head.push(format!("mem {}", c.1));
        }
        for c in &cols {
            head.push(format!("FLOP {}", c.1));
        }
        let row = |cells: Vec<String>| -> String {
            let mut l = String::from(" ");
            for c in cells {
                let _ = write!(l, " {c:>16}");
            }
            l.trim_end().to_string()
        };
        let _ = writeln!(s, "{}", row(head));
        for p in &r.configs {
            let mut cells = vec![p.seq_len.to_string()];
            for c in &cols {
                cells.push(fmt_mib((c.2)(p).total_bytes));
            }
            cells.push(fmt_mib(p.lstm.total_bytes));
            for c in &cols {
                cells.push(fmt_ratio(ratio(
                    (c.2)(p).total_bytes as f64,
                    p.lstm.total_bytes as f64,
                )));
            }
            for c in &cols {
                cells.push(fmt_ratio(ratio(
                    (c.2)(p).flops_total as f64,
                    p.lstm.flops_total as f64,
                )));
            }
            let _ = writeln!(s, "{}", row(cells));
        }
    }
    let cross = |c: Option<usize>| match c {
        Some(t) => format!("seq_len {t}"),
        None => "none in the sweep".into(),
    };
    let first = if cols.len() == 2 {
        " (materialized)"
    } else {
        ""
    };
    let _ = writeln!(
        s,
        "\nMemory crossover{first} (smallest swept seq_len where attention's total exceeds the LSTM's): {}",
        cross(r.memory_crossover_seq_len)
    );
    let _ = writeln!(
        s,
        "FLOP crossover{first} (smallest swept seq_len where attention's FLOPs exceed the LSTM's): {}",
        cross(r.flop_crossover_seq_len)
    );
    if let (Some(m), Some(f)) = (
        r.fused_memory_crossover_seq_len,
        r.fused_flop_crossover_seq_len,
    ) {
        let _ = writeln!(s, "Memory crossover (fused): {}", cross(m));
        let _ = writeln!(s, "FLOP crossover (fused): {}", cross(f));
    }
    if r.gpu.measured {
        let _ = writeln!(
            s,
            "GPU: each configuration was allocated on {} and the driver's free memory read before and after.",
            r.gpu.note
        );
    } else {
        let _ = writeln!(
            s,
            "GPU: no measurement made, all figures are analytic: {}",
            r.gpu.note
        );
    }
    s
}

fn csv(r: &Report) -> String {
    let mut s = String::from("seq_len,model,quantity,name,value,unit\n");
    for p in &r.configs {
        let mut models = vec![("attention", &p.attention), ("lstm", &p.lstm)];
        if let Some(f) = &p.attention_fused {
            models.insert(1, ("attention_fused", f));
        }
        for (model, m) in models {
            let mut line = |q: &str, name: &str, v: u64, unit: &str| {
                let _ = writeln!(s, "{},{model},{q},{name},{v},{unit}", p.seq_len);
            };
            for row in &m.rows {
                line("memory", row.row, row.bytes as u64, "bytes");
            }
            line("memory", "total", m.total_bytes as u64, "bytes");
            if let Some(c) = &m.cuda {
                line("memory", "cuda_analytic", c.analytic_bytes as u64, "bytes");
                line("memory", "cuda_measured", c.measured_bytes as u64, "bytes");
            }
            line("flops", "forward", m.flops.forward, "flop");
            line("flops", "backward", m.flops.backward, "flop");
            line("flops", "total", m.flops_total, "flop");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_len_lists_parse_or_fail_with_the_flag_named() {
        assert_eq!(parse_lengths("128").unwrap(), vec![128]);
        assert_eq!(parse_lengths("256, 64,128,64").unwrap(), vec![64, 128, 256]);
        for bad in ["", "64,,128", "0", "64,x", "-3"] {
            let e = parse_lengths(bad).unwrap_err().to_string();
            assert!(e.contains("--seq-len"), "{bad:?}: {e}");
        }
    }
}
