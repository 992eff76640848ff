//! What the machine can give a run, checked before anything big is allocated: host memory
//! against the tensor table's bytes, sane model sizes, and CPU threads.
//!
//! A run that cannot fit used to find out from the allocator ("memory allocation of N bytes
//! failed", a backtrace, exit 134) or from the OOM killer minutes later. The tensor table knows
//! every byte a backend allocates (`model::footprint` knows it before the table is even built),
//! so a run that does not fit is refused up front with what it needs, what the machine has, and
//! what to change.

use crate::model::footprint::Footprint;
use crate::model::{ModelConfig, ModelKind};
use crate::tensor::{Category, TensorTable};
use anyhow::{bail, Result};

/// More layers than any model this tool is for (GPT-3 has 96); a table of a million layers takes
/// seconds and gigabytes just to name its tensors.
pub const MAX_LAYERS: usize = 1024;

/// More bytes than any one machine or GPU has (1 PiB). Below it every tensor's element count fits
/// `usize`, so building the table cannot overflow.
pub const ABSURD_BYTES: u128 = 1 << 50;

/// Overrides the host's available memory, in bytes (a testing aid: a machine of any size).
pub const MEM_ENV: &str = "ROBO_POET_MEM_AVAILABLE";

/// Host memory a run may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMemory {
    pub bytes: u64,
    /// Where the figure came from, for messages.
    pub source: &'static str,
}

/// The memory available to a new allocation now: `MemAvailable` of /proc/meminfo (what the
/// kernel can hand out without swapping, page cache included), or `$ROBO_POET_MEM_AVAILABLE`.
/// None where neither is known (not Linux): no check is made then.
pub fn host_memory() -> Option<HostMemory> {
    if let Some(bytes) = std::env::var(MEM_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return Some(HostMemory {
            bytes,
            source: "$ROBO_POET_MEM_AVAILABLE",
        });
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    Some(HostMemory {
        bytes: parse_mem_available(&text)?,
        source: "MemAvailable in /proc/meminfo",
    })
}

/// `MemAvailable:  123456 kB` → bytes.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let mut parts = line.split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// `1536` → "1.5 KiB"; sizes past a thousand TiB in powers of ten, so an absurd figure stays short.
pub fn human_bytes(b: u128) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit < UNITS.len() - 1 {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else if x >= 1000.0 {
        format!("{x:.1e} {}", UNITS[unit])
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}

/// A count with thousands separators: 1234567 → "1,234,567".
fn grouped(n: u128) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Which model a table belongs to, for the flag names in a suggestion.
fn kind_of(table: &TensorTable) -> ModelKind {
    if table.get("lstm.0.w_ih").is_some() {
        ModelKind::Lstm
    } else {
        ModelKind::Attention
    }
}

/// What to change when `bytes` per category do not fit: the flags behind the largest share.
fn suggestion(by_category: &[(Category, u128)], kind: ModelKind) -> &'static str {
    let of = |cats: &[Category]| -> u128 {
        by_category
            .iter()
            .filter(|(c, _)| cats.contains(c))
            .fold(0u128, |s, (_, b)| s.saturating_add(*b))
    };
    let per_token = of(&[Category::Activation, Category::Workspace, Category::Input]);
    let weights = of(&[
        Category::Parameter,
        Category::Gradient,
        Category::OptimizerState,
    ]);
    match (per_token >= weights, kind) {
        (true, ModelKind::Attention) => {
            "most of it is activations, which grow with --batch and with --seq-len squared: try a \
             smaller --batch or --seq-len"
        }
        (true, ModelKind::Lstm) => {
            "most of it is activations, which grow with --batch and --seq-len: try a smaller \
             --batch or --seq-len"
        }
        (false, ModelKind::Attention) => {
            "most of it is parameters, their gradients and AdamW moments: try a smaller --d-model \
             or fewer --layers"
        }
        (false, ModelKind::Lstm) => {
            "most of it is parameters, their gradients and AdamW moments: try a smaller --hidden \
             or --embed, or fewer --layers"
        }
    }
}

/// Refuses, before the table is built, a configuration no machine could hold: more than
/// [`MAX_LAYERS`] layers, or tensors of more than [`ABSURD_BYTES`].
pub fn check_model_size(cfg: &ModelConfig, batch: usize) -> Result<()> {
    let layers = match cfg {
        ModelConfig::Attention(c) => c.n_layers,
        ModelConfig::Lstm(c) => c.n_layers,
    };
    if layers > MAX_LAYERS {
        bail!("--layers {layers} is more than this tool builds (at most {MAX_LAYERS}); try --layers 4");
    }
    let f = Footprint::of(cfg, batch);
    let total = f.total_bytes();
    if total > ABSURD_BYTES {
        let by: Vec<(Category, u128)> = Category::ALL.iter().map(|&c| (c, f.bytes(c))).collect();
        bail!(
            "this configuration needs {} for its tensors ({} parameters), more than any machine has; {}",
            human_bytes(total),
            grouped(f.parameters),
            suggestion(&by, cfg.kind())
        );
    }
    Ok(())
}

/// Bytes of host memory that saving or loading a checkpoint needs beside the tensors: the
/// parameters and both AdamW moments read back from the backend, and their encoded file bytes.
pub fn checkpoint_copies_bytes(table: &TensorTable) -> u128 {
    6 * 4 * table.parameter_count() as u128
}

/// Refuses a CPU backend for `table` when the host cannot hold its tensors plus `reserve` bytes
/// (checkpoint copies), saying what is needed, what is available and what to change.
pub fn ensure_cpu_fits(table: &TensorTable, reserve: u128) -> Result<()> {
    let by: Vec<(Category, u128)> = table
        .bytes_by_category()
        .into_iter()
        .map(|(c, b)| (c, b as u128))
        .collect();
    let tensors = table.total_bytes() as u128;
    let Some(host) = host_memory() else {
        return Ok(());
    };
    let need = tensors + reserve;
    if need <= host.bytes as u128 {
        return Ok(());
    }
    let reserve_note = if reserve > 0 {
        format!(" + {} of checkpoint copies", human_bytes(reserve))
    } else {
        String::new()
    };
    bail!(
        "this run needs {} of memory (tensors {}{reserve_note}; {} parameters) but the machine has {} available ({}); {}",
        human_bytes(need),
        human_bytes(tensors),
        grouped(table.parameter_count() as u128),
        human_bytes(host.bytes as u128),
        host.source,
        suggestion(&by, kind_of(table))
    )
}

/// Refuses a GPU run whose host-side copies (`reserve` bytes: checkpoint staging) do not fit in
/// host memory; the device memory itself is checked by the CUDA backend against the driver.
pub fn ensure_host_reserve(reserve: u128, table: &TensorTable) -> Result<()> {
    let parameters = table.parameter_count();
    let Some(host) = host_memory() else {
        return Ok(());
    };
    if reserve <= host.bytes as u128 {
        return Ok(());
    }
    bail!(
        "this run needs {} of host memory for its checkpoint copies ({} parameters) but the machine has {} available ({}); {}",
        human_bytes(reserve),
        grouped(parameters as u128),
        human_bytes(host.bytes as u128),
        host.source,
        suggestion(&[(Category::Parameter, reserve)], kind_of(table))
    )
}

/// The most CPU threads `--threads` accepts: 4 per core this process may use, and at least 64
/// (a cgroup CPU quota can make the core count look tiny).
pub fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cores).max(64)
}

/// Starts the global thread pool with `threads` (else `$RAYON_NUM_THREADS`, else one per core),
/// refusing an absurd count and turning a failed start into an error instead of a later panic.
pub fn start_threads(threads: Option<usize>) -> Result<()> {
    let max = max_threads();
    let env = std::env::var("RAYON_NUM_THREADS").ok();
    match (threads, env.as_deref().and_then(|v| v.trim().parse::<usize>().ok())) {
        (Some(0), _) => bail!("--threads must be at least 1"),
        (Some(n), _) if n > max => bail!(
            "--threads {n} is more than {max} (4 per core, at least 64); this machine has {} cores: try --threads {}",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        (None, Some(n)) if n > max => bail!(
            "RAYON_NUM_THREADS={n} is more than {max} threads (4 per core, at least 64); unset it or pass --threads N"
        ),
        _ => {}
    }
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        builder = builder.num_threads(n);
    }
    builder
        .build_global()
        .map_err(|e| pool_error(threads, &e.to_string()))
}

fn pool_error(threads: Option<usize>, e: &str) -> anyhow::Error {
    let n = threads.map_or("the".to_string(), |n| n.to_string());
    anyhow::anyhow!(
        "could not start {n} CPU worker threads ({e}); the machine (or a limit such as ulimit -u or -v) allows fewer: try a smaller --threads"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attention::{AttentionConfig, AttentionStyle};

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text =
            "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   12345678 kB\n";
        assert_eq!(parse_mem_available(text), Some(12_345_678 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots\n"), None);
    }

    #[test]
    fn sizes_print_short() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(24_624 << 20), "24.0 GiB");
        assert_eq!(human_bytes(u128::MAX), "3.1e26 TiB");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(12), "12");
    }

    fn gpt(layers: usize, d: usize, t: usize) -> ModelConfig {
        ModelConfig::Attention(AttentionConfig {
            style: AttentionStyle::Gpt,
            vocab_size: 78,
            seq_len: t,
            d_model: d,
            n_layers: layers,
            n_heads: 4,
            pos_emb: true,
            dropout: 0.1,
            attention: Default::default(),
        })
    }

    #[test]
    fn absurd_models_are_refused_before_the_table_exists() {
        let e = check_model_size(&gpt(1_000_000, 128, 128), 32).unwrap_err();
        assert!(
            e.to_string().contains("--layers 1000000 is more than"),
            "{e}"
        );
        let e = check_model_size(&gpt(4, 1 << 40, 128), 32).unwrap_err();
        assert!(e.to_string().contains("more than any machine has"), "{e}");
        assert!(e.to_string().contains("--d-model"), "{e}");
        let e = check_model_size(&gpt(4, 128, usize::MAX / 4), 1).unwrap_err();
        assert!(e.to_string().contains("--seq-len"), "{e}");
        check_model_size(&gpt(4, 128, 128), 32).unwrap();
    }

    #[test]
    fn a_failed_pool_start_is_an_error_that_says_what_to_do() {
        // A spawn that fails as it does under a thread or memory limit.
        let err = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .spawn_handler(|_| Err(std::io::Error::other("Resource temporarily unavailable")))
            .build()
            .unwrap_err();
        let msg = pool_error(Some(3), &err.to_string()).to_string();
        assert!(
            msg.contains("could not start 3 CPU worker threads"),
            "{msg}"
        );
        assert!(msg.contains("--threads"), "{msg}");
    }
}
