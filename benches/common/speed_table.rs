//! The closing table of `cargo bench --bench attention_vs_lstm`: per seq_len, attention and LSTM
//! tokens/s for forward, forward+backward and the training step, their attention/LSTM ratios,
//! and each model's memory per training step (analytic; driver-measured beside it on a GPU),
//! as markdown for people and CSV / JSON for scripts.
//!
//! A figure is criterion's median: the median over its measurement samples of (sample time /
//! iterations). The bench times every sample itself (inside `iter_custom`: CUDA events on the
//! GPU) and records it here; criterion's measurement samples are the last `sample_size` calls of
//! a benchmark's routine (its warm-up calls come first), so those are the ones taken.
#![allow(dead_code)] // tests/bench_table.rs uses this file too

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What was timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Measure {
    Forward,
    ForwardBackward,
    TrainStep,
}

pub const MEASURES: [Measure; 3] = [
    Measure::Forward,
    Measure::ForwardBackward,
    Measure::TrainStep,
];
pub const MODELS: [&str; 2] = ["attention", "lstm"];

impl Measure {
    pub fn name(self) -> &'static str {
        match self {
            Measure::Forward => "forward",
            Measure::ForwardBackward => "forward+backward",
            Measure::TrainStep => "train step",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Measure::Forward => "forward",
            Measure::ForwardBackward => "forward_backward",
            Measure::TrainStep => "train_step",
        }
    }
}

/// (seq_len, model, measure).
pub type Key = (usize, &'static str, Measure);

/// (iterations, seconds) per call of a benchmark's routine, in call order.
pub type Samples = Vec<(u64, f64)>;

/// Every sample the bench timed, and what each model holds per step.
#[derive(Default)]
pub struct Records {
    pub samples: BTreeMap<Key, Samples>,
    /// (seq_len, model) → tokens per iteration.
    pub tokens: BTreeMap<(usize, &'static str), u64>,
    /// (seq_len, model) → (analytic bytes, driver-measured bytes on a GPU).
    pub memory: BTreeMap<(usize, &'static str), (u64, Option<u64>)>,
}

impl Records {
    pub fn record(&mut self, key: Key, iters: u64, secs: f64) {
        self.samples.entry(key).or_default().push((iters, secs));
    }
}

/// The median seconds per iteration of the last `n` samples (criterion's measurement samples).
pub fn median_secs(samples: &[(u64, f64)], n: usize) -> Option<f64> {
    let mut per: Vec<f64> = samples[samples.len().saturating_sub(n)..]
        .iter()
        .filter(|s| s.0 > 0)
        .map(|&(i, t)| t / i as f64)
        .collect();
    if per.is_empty() {
        return None;
    }
    per.sort_by(f64::total_cmp);
    let k = per.len();
    Some(if k % 2 == 1 {
        per[k / 2]
    } else {
        (per[k / 2 - 1] + per[k / 2]) / 2.0
    })
}

/// One seq_len of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub seq_len: usize,
    /// Tokens per second, [model][measure] (None: not measured, e.g. filtered out).
    pub tokens_per_s: [[Option<f64>; 3]; 2],
    pub bytes: [Option<u64>; 2],
    pub measured_bytes: [Option<u64>; 2],
}

impl Row {
    /// attention / LSTM tokens per second for a measure.
    pub fn ratio(&self, m: usize) -> Option<f64> {
        Some(self.tokens_per_s[0][m]? / self.tokens_per_s[1][m]?)
    }
}

/// The table's rows from the records, each figure the median of the last `samples` samples.
pub fn rows(r: &Records, samples: usize) -> Vec<Row> {
    let mut lens: Vec<usize> = r.samples.keys().map(|k| k.0).collect();
    lens.dedup();
    lens.into_iter()
        .map(|t| {
            let mut row = Row {
                seq_len: t,
                tokens_per_s: [[None; 3]; 2],
                bytes: [None; 2],
                measured_bytes: [None; 2],
            };
            for (i, model) in MODELS.into_iter().enumerate() {
                for (j, m) in MEASURES.into_iter().enumerate() {
                    let secs = r
                        .samples
                        .get(&(t, model, m))
                        .and_then(|s| median_secs(s, samples));
                    let tokens = r.tokens.get(&(t, model)).copied();
                    row.tokens_per_s[i][j] = secs.zip(tokens).map(|(s, n)| n as f64 / s);
                }
                if let Some(&(b, measured)) = r.memory.get(&(t, model)) {
                    row.bytes[i] = Some(b);
                    row.measured_bytes[i] = measured;
                }
            }
            row
        })
        .collect()
}

fn tok(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 1e6 => format!("{:.2}M", v / 1e6),
        Some(v) => format!("{:.1}k", v / 1e3),
        None => "-".into(),
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| {
        format!("{:.2}", b as f64 / (1024.0 * 1024.0))
    })
}

fn ratio(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.2}x"))
}

/// The markdown table, headed by the device it ran on.
pub fn markdown(device: &str, rows: &[Row]) -> String {
    let gpu = rows
        .iter()
        .any(|r| r.measured_bytes.iter().any(Option::is_some));
    let mut s = format!(
        "attention_vs_lstm on {device}: tokens/s (criterion medians), memory per training step\n\n"
    );
    s.push_str("| seq_len | attention fwd | attention fwd+bwd | attention step | LSTM fwd | LSTM fwd+bwd | LSTM step | attention/LSTM fwd | fwd+bwd | step | attention MiB | LSTM MiB |");
    s.push_str(if gpu {
        " attention MiB (driver) | LSTM MiB (driver) |\n"
    } else {
        "\n"
    });
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    s.push_str(if gpu { "---:|---:|\n" } else { "\n" });
    for r in rows {
        let _ = write!(s, "| {} |", r.seq_len);
        for model in &r.tokens_per_s {
            for &x in model {
                let _ = write!(s, " {} |", tok(x));
            }
        }
        for m in 0..3 {
            let _ = write!(s, " {} |", ratio(r.ratio(m)));
        }
        let _ = write!(s, " {} | {} |", mib(r.bytes[0]), mib(r.bytes[1]));
        if gpu {
            let _ = write!(
                s,
                " {} | {} |",
                mib(r.measured_bytes[0]),
                mib(r.measured_bytes[1])
            );
        }
        s.push('\n');
    }
    s.push_str("\nMemory is analytic (every tensor of each model's table, as `robo-poet memory` reports it)");
    s.push_str(if gpu {
        "; the driver columns are what the GPU's driver reported for each model's allocations.\n"
    } else {
        "; no GPU, so no driver-measured memory.\n"
    });
    s
}

/// The same numbers, one line per seq_len (empty fields where not measured).
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from("seq_len");
    for model in MODELS {
        for m in MEASURES {
            let _ = write!(s, ",{model}_{}_tokens_per_s", m.key());
        }
    }
    for m in MEASURES {
        let _ = write!(s, ",ratio_{}", m.key());
    }
    s.push_str(",attention_bytes,lstm_bytes,attention_measured_bytes,lstm_measured_bytes\n");
    let f = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v}"));
    let u = |x: Option<u64>| x.map_or(String::new(), |v| v.to_string());
    for r in rows {
        let _ = write!(s, "{}", r.seq_len);
        for model in &r.tokens_per_s {
            for &x in model {
                let _ = write!(s, ",{}", f(x));
            }
        }
        for m in 0..3 {
            let _ = write!(s, ",{}", f(r.ratio(m)));
        }
        let _ = writeln!(
            s,
            ",{},{},{},{}",
            u(r.bytes[0]),
            u(r.bytes[1]),
            u(r.measured_bytes[0]),
            u(r.measured_bytes[1])
        );
    }
    s
}

/// The same numbers as one JSON object.
pub fn json(device: &str, rows: &[Row]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            o.insert("seq_len".into(), r.seq_len.into());
            for (i, model) in MODELS.into_iter().enumerate() {
                let mut m = serde_json::Map::new();
                for (j, x) in MEASURES.into_iter().enumerate() {
                    m.insert(
                        format!("{}_tokens_per_s", x.key()),
                        r.tokens_per_s[i][j].into(),
                    );
                }
                m.insert("bytes".into(), r.bytes[i].into());
                m.insert("measured_bytes".into(), r.measured_bytes[i].into());
                o.insert(model.into(), m.into());
            }
            let ratios: serde_json::Map<String, serde_json::Value> = MEASURES
                .into_iter()
                .enumerate()
                .map(|(j, x)| (x.key().to_string(), r.ratio(j).into()))
                .collect();
            o.insert("attention_over_lstm".into(), ratios.into());
            o.into()
        })
        .collect();
    serde_json::json!({ "device": device, "rows": rows })
}

/// Where criterion writes (CRITERION_HOME, else $CARGO_TARGET_DIR/criterion, else
/// target/criterion: criterion's own order, `cargo metadata` aside, which gives target/ here).
pub fn criterion_dir() -> std::path::PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return h.into();
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => std::path::PathBuf::from(t).join("criterion"),
        None => "target/criterion".into(),
    }
}
