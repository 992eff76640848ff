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
    /// Tokens of the training split.
    pub train_tokens: usize,
    /// Validation targets an evaluation scores: every token of the validation split but the
    /// first (which is never a target).
    pub val_tokens: usize,
    /// Validation loss at the last evaluation, if any.
    pub val_loss: Option<f64>,
    /// The lowest validation loss seen so far and its step.
    #[serde(default)]
    pub best_val_loss: Option<(f64, u64)>,
    pub elapsed_s: f64,
    pub robo_poet_version: String,
    /// The train-loss log window open at this step (absent in older checkpoints: empty).
    #[serde(default)]
    pub log_window: LogWindow,
}

/// The steps since the last `train_loss` line of metrics.jsonl, whose mean the next line logs.
/// Saved in the checkpoint so a resumed run logs the same means, bit for bit, as one never
/// interrupted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogWindow {
    /// The f64 bits of the sum of the step losses (in step order): a JSON float is not
    /// guaranteed to parse back to the same bits, an integer is.
    pub loss_sum_bits: u64,
    pub steps: u64,
}

impl LogWindow {
    pub fn add(&mut self, loss: f64) {
        self.loss_sum_bits = (self.sum() + loss).to_bits();
        self.steps += 1;
    }
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.loss_sum_bits)
    }
    pub fn mean(&self) -> f64 {
        self.sum() / self.steps as f64
    }
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

/// Saves parameters, optimizer moments and metadata as the run's new checkpoint, published
/// atomically (`crate::checkpoint`).
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
    checkpoint::save(run_dir, meta.step, &meta_json(meta)?, &pr, &mr)
}

/// The metadata as checkpoint.json holds it. Through text, not `serde_json::to_value`: a JSON
/// value keeps an f32 as the f64 of the same bits, which prints as 0.10000000149011612, while the
/// text serializer writes an f32's shortest decimal (0.1). That decimal reads back as the same
/// f32, and every f64 as the same f64 (the `float_roundtrip` parser).
pub fn meta_json(meta: &RunMeta) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&serde_json::to_string(meta)?)?)
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
    parse_meta(json, &dir)
}

/// The metadata as a `RunMeta`; a field of the wrong type or missing is named, with its path.
fn parse_meta(json: serde_json::Value, dir: &Path) -> Result<RunMeta> {
    serde_path_to_error::deserialize(json).map_err(|e| {
        let field = e.path().to_string();
        anyhow::anyhow!(
            "{} is not a robo-poet checkpoint of this version: field `{field}`: {}; resume from another run or retrain",
            dir.join(checkpoint::META_FILE).display(),
            e.inner()
        )
    })
}

/// A run's checkpoint, read once: its metadata and tensors, from one folder. With `optimizer`
/// false the optimizer file is not read (generate, eval and attention-map do not need it).
pub fn load_checkpoint(
    run_dir: &Path,
    optimizer: bool,
) -> Result<(RunMeta, checkpoint::Checkpoint)> {
    let ck = if optimizer {
        checkpoint::load(run_dir)?
    } else {
        checkpoint::load_model(run_dir)?
    };
    let meta = parse_meta(ck.meta.clone(), &ck.dir)?;
    Ok((meta, ck))
}

/// Loads a checkpoint into a backend holding `model`; with `optimizer`, the AdamW moments too.
pub fn load_into(
    run_dir: &Path,
    model: &dyn Model,
    be: &mut dyn Backend,
    optimizer: bool,
) -> Result<RunMeta> {
    let (meta, ck) = load_checkpoint(run_dir, optimizer)?;
    write_tensors(&ck, model, be, optimizer)?;
    Ok(meta)
}

/// Writes a loaded checkpoint's parameters (and, with `optimizer`, its AdamW moments) into a
/// backend holding `model`, checking every name and shape against the model.
pub fn write_tensors(
    ck: &checkpoint::Checkpoint,
    model: &dyn Model,
    be: &mut dyn Backend,
    optimizer: bool,
) -> Result<()> {
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
    Ok(())
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

/// Creates a new `runs/<model>-<UTC timestamp>` (`-2`, `-3`, ... when taken) and returns it.
/// The folder is made with one `create_dir`, which fails if it exists, so two runs started in the
/// same second never share one.
pub fn create_default_run_dir(model: &str) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    create_unique_dir(Path::new("runs"), &format!("{model}-{}", utc_stamp(secs)))
}

/// `parent/base`, else `parent/base-2`, `parent/base-3`, ...: the first that did not exist.
fn create_unique_dir(parent: &Path, base: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(parent)
        .with_context(|| format!("could not create {}", parent.display()))?;
    for i in 1u32.. {
        let dir = if i == 1 {
            parent.join(base)
        } else {
            parent.join(format!("{base}-{i}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => bail!("could not create the run directory {}: {e}", dir.display()),
        }
    }
    unreachable!("u32 suffixes ran out")
}

/// Whether `dir` holds nothing a run wrote (a leftover `train.lock` aside).
pub fn is_unused(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|d| {
        d.flatten()
            .all(|e| e.file_name() == super::run_lock::LOCK_FILE)
    })
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
    fn run_dirs_made_at_once_are_all_distinct() {
        let d = tempfile::tempdir().unwrap();
        let parent = d.path().join("runs");
        let dirs: Vec<std::path::PathBuf> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        super::create_unique_dir(&parent, "attention-20261201-120000").unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::BTreeSet<_> = dirs.iter().collect();
        assert_eq!(unique.len(), 8, "{dirs:?}");
        assert!(parent.join("attention-20261201-120000-8").is_dir());
        assert!(super::is_unused(&dirs[0]));
        std::fs::write(dirs[0].join(super::super::run_lock::LOCK_FILE), "").unwrap();
        assert!(
            super::is_unused(&dirs[0]),
            "a lock file alone leaves it unused"
        );
        std::fs::write(dirs[0].join("metrics.jsonl"), "").unwrap();
        assert!(!super::is_unused(&dirs[0]));
    }

    #[test]
    fn checkpoint_json_writes_each_f32_as_its_shortest_decimal() {
        use crate::model::attention::{AttentionConfig, AttentionStyle};
        let tcfg = crate::train::TrainConfig {
            batch: 4,
            steps: 10,
            lr: 2e-3,
            min_lr_ratio: 0.1,
            warmup: 3,
            adamw: crate::ops::adamw::AdamWConfig::default(),
            clip: 1.0,
            eval_every: 5,
            seed: 1,
            precision: Default::default(),
        };
        // An f64 with all 17 digits significant, and one that is exactly an f32 (0.1f32).
        let (val, best) = (std::f64::consts::PI / 2.0, 0.1f32 as f64);
        let meta = super::RunMeta {
            step: 7,
            model: crate::model::ModelConfig::Attention(AttentionConfig {
                style: AttentionStyle::Gpt,
                vocab_size: 5,
                seq_len: 8,
                d_model: 4,
                n_layers: 1,
                n_heads: 1,
                pos_emb: true,
                dropout: 0.1,
                attention: Default::default(),
            }),
            train: tcfg.clone(),
            tokenizer: serde_json::json!({}),
            data: crate::dataset::DataSource::Text { files: vec![] },
            train_tokens: 100,
            val_tokens: 9,
            val_loss: Some(val),
            best_val_loss: Some((best, 5)),
            elapsed_s: 1.25,
            robo_poet_version: "x".into(),
            log_window: super::LogWindow::default(),
        };
        let text = serde_json::to_string(&super::meta_json(&meta).unwrap()).unwrap();
        for want in [
            "\"lr\":0.002",
            "\"min_lr_ratio\":0.1",
            "\"beta1\":0.9",
            "\"beta2\":0.95",
            "\"eps\":1e-8",
            "\"weight_decay\":0.1",
            "\"clip\":1.0",
            "\"dropout\":0.1",
        ] {
            assert!(text.contains(want), "no {want} in {text}");
        }
        // An f64 keeps its own digits even where it equals an f32: only f32 fields are short.
        assert!(
            text.contains("\"best_val_loss\":[0.10000000149011612,5]"),
            "{text}"
        );
        assert_eq!(text.matches("0000000").count(), 1, "{text}");
        // And everything reads back as the same bits, f32 and f64 alike.
        let back: super::RunMeta = serde_json::from_str(&text).unwrap();
        assert_eq!(back.train, tcfg);
        assert_eq!(back.model, meta.model);
        assert_eq!(back.val_loss.unwrap().to_bits(), val.to_bits());
        assert_eq!(back.best_val_loss.unwrap().0.to_bits(), best.to_bits());
    }

    #[test]
    fn utc_stamp_known_dates() {
        assert_eq!(super::utc_stamp(0), "19700101-000000");
        assert_eq!(super::utc_stamp(1_795_879_380), "20261128-152300");
        assert_eq!(super::utc_stamp(951_782_400), "20000229-000000");
    }
}
