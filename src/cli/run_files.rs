//! The files of a run directory: the checkpoint (through `crate::checkpoint`), its JSON metadata,
//! and metrics.jsonl.

use crate::backend::Backend;
use crate::checkpoint::{self, TensorRef};
use crate::data::tokenizer::Tokenizer;
use crate::dataset::DataSource;
use crate::model::{Model, ModelConfig};
use crate::tensor::Shape;
use crate::train::TrainConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const METRICS_FILE: &str = "metrics.jsonl";

/// Everything besides tensors that a checkpoint records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunMeta {
    /// Optimizer steps completed.
    pub step: u64,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub tokenizer: serde_json::Value,
    pub data: DataSource,
    pub train_tokens: usize,
    pub val_tokens: usize,
    /// Validation loss at the last evaluation, if any.
    pub val_loss: Option<f64>,
    /// The lowest validation loss seen so far and its step.
    #[serde(default)]
    pub best_val_loss: Option<(f64, u64)>,
    pub elapsed_s: f64,
    pub robo_poet_version: String,
}

impl RunMeta {
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        Tokenizer::from_json(&self.tokenizer).context("the checkpoint's tokenizer is damaged")
    }

    /// The run's tokenizer (checked against the model's vocabulary) and a prompt's token ids; words
    /// outside the vocabulary become <unk>, with a note on stderr.
    pub fn prompt_tokens(&self, prompt: &str) -> Result<(Tokenizer, Vec<u32>)> {
        let tok = self.tokenizer()?;
        anyhow::ensure!(
            tok.vocab_size() == self.model.vocab_size(),
            "the checkpoint is inconsistent: its tokenizer has {} tokens but its model {}",
            tok.vocab_size(),
            self.model.vocab_size()
        );
        let (ids, unknown) = tok.encode_prompt(prompt)?;
        if !unknown.is_empty() {
            eprintln!(
                "note: words not in the vocabulary were replaced by <unk>: {}",
                unknown.join(", ")
            );
        }
        Ok((tok, ids))
    }
}

/// Saves parameters, optimizer moments and metadata atomically into `run_dir/checkpoint/`.
pub fn save(run_dir: &Path, meta: &RunMeta, model: &dyn Model, be: &dyn Backend) -> Result<()> {
    let t = model.table();
    let mut params = vec![];
    let mut moments = vec![];
    for p in model.params() {
        params.push((
            p.name.clone(),
            t.shape(p.ids.param).to_vec(),
            be.read(p.ids.param),
        ));
        moments.push((
            format!("adam_m.{}", p.name),
            t.shape(p.ids.m).to_vec(),
            be.read(p.ids.m),
        ));
        moments.push((
            format!("adam_v.{}", p.name),
            t.shape(p.ids.v).to_vec(),
            be.read(p.ids.v),
        ));
    }
    let (pr, mr) = (refs(&params), refs(&moments));
    let json = serde_json::to_value(meta)?;
    checkpoint::save(run_dir, meta.step, &json, &pr, &mr)
}

/// Borrowed views of owned (name, shape, data) tensors, as `checkpoint::save` takes them.
fn refs(v: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<TensorRef<'_>> {
    v.iter()
        .map(|(name, shape, data)| TensorRef { name, shape, data })
        .collect()
}

/// Reads just the metadata of a run's checkpoint.
pub fn load_meta(run_dir: &Path) -> Result<RunMeta> {
    let (json, dir) = checkpoint::load_meta(run_dir)?;
    serde_json::from_value(json).with_context(|| {
        format!(
            "{} is not a robo-poet checkpoint of this version (unexpected metadata)",
            dir.join(checkpoint::META_FILE).display()
        )
    })
}

/// Loads a checkpoint into a backend holding `model`; with `optimizer`, the AdamW moments too.
pub fn load_into(
    run_dir: &Path,
    model: &dyn Model,
    be: &mut dyn Backend,
    optimizer: bool,
) -> Result<RunMeta> {
    let ck = checkpoint::load(run_dir)?;
    let meta: RunMeta = serde_json::from_value(ck.meta.clone())
        .with_context(|| format!("{} has unexpected metadata", ck.dir.display()))?;
    let file = ck.dir.join(checkpoint::MODEL_FILE);
    let mut params: std::collections::HashMap<&str, &checkpoint::Tensor> =
        ck.model.iter().map(|t| (t.name.as_str(), t)).collect();
    let moments: std::collections::HashMap<&str, &checkpoint::Tensor> =
        ck.optimizer.iter().map(|t| (t.name.as_str(), t)).collect();
    let t = model.table();
    for p in model.params() {
        let want = t.shape(p.ids.param);
        let Some(x) = params.remove(p.name.as_str()) else {
            bail!(
                "{} has no tensor {:?}: it was not written for this model configuration",
                file.display(),
                p.name
            );
        };
        if x.shape != want {
            bail!(
                "{}: tensor {} has shape {}, the model expects {}",
                file.display(),
                p.name,
                Shape(&x.shape),
                Shape(want)
            );
        }
        be.write(p.ids.param, &x.data);
        if optimizer {
            for (prefix, id) in [("adam_m", p.ids.m), ("adam_v", p.ids.v)] {
                let name = format!("{prefix}.{}", p.name);
                let m = moments.get(name.as_str()).with_context(|| {
                    format!(
                        "{} has no tensor {name}",
                        ck.dir.join(checkpoint::OPTIMIZER_FILE).display()
                    )
                })?;
                if m.shape != want {
                    bail!(
                        "{}: tensor {name} has shape {}, expected {}",
                        ck.dir.join(checkpoint::OPTIMIZER_FILE).display(),
                        Shape(&m.shape),
                        Shape(want)
                    );
                }
                be.write(id, &m.data);
            }
        }
    }
    if let Some(extra) = params.keys().next() {
        bail!(
            "{} holds tensor {extra:?}, which this model configuration does not have",
            file.display()
        );
    }
    Ok(meta)
}

/// Appends JSON lines to `<run>/metrics.jsonl`.
pub struct Metrics {
    file: std::fs::File,
}

impl Metrics {
    /// Opens the metrics file; on resume, drops lines past `keep_through_step` (they belonged to
    /// steps after the last checkpoint, which will be recomputed).
    pub fn open(run_dir: &Path, keep_through_step: Option<u64>) -> Result<Self> {
        let path = run_dir.join(METRICS_FILE);
        if let Some(last) = keep_through_step {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let kept: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .ok()
                            .and_then(|v| v["step"].as_u64())
                            .is_some_and(|s| s <= last)
                    })
                    .collect();
                let mut body = kept.join("\n");
                if !body.is_empty() {
                    body.push('\n');
                }
                checkpoint::write_atomic(&path, body.as_bytes())
                    .with_context(|| format!("could not rewrite {}", path.display()))?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("could not open {} for writing", path.display()))?;
        Ok(Metrics { file })
    }

    pub fn write(&mut self, v: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").context("could not append to metrics.jsonl")?;
        Ok(())
    }
}

/// `runs/<model>-<UTC timestamp>`, made unique with a suffix if needed.
pub fn default_run_dir(model: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("runs/{model}-{}", utc_stamp(secs));
    let mut dir = PathBuf::from(&base);
    let mut i = 2;
    while dir.exists() {
        dir = PathBuf::from(format!("{base}-{i}"));
        i += 1;
    }
    dir
}

/// YYYYMMDD-HHMMSS in UTC for a Unix time (civil-from-days, proleptic Gregorian).
pub fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_stamp_known_dates() {
        assert_eq!(super::utc_stamp(0), "19700101-000000");
        assert_eq!(super::utc_stamp(1_795_879_380), "20261128-152300");
        assert_eq!(super::utc_stamp(951_782_400), "20000229-000000");
    }
}
