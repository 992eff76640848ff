//! `robo-poet train`: its flags (presets, resume rules), the run directory and its lock, and what
//! it prints; the run itself is the library's driver (`train::driver`).

use super::console::{hms, Console};
use super::interrupt::{self, Interrupted};
use super::presets::{self, Length};
use super::TrainArgs;
use crate::dataset::{self, DataRequest, Dataset};
use crate::model::ModelConfig;
use crate::sampler::Sampler;
use crate::train::driver::{DriveOptions, Outcome, Run, Trainer};
use crate::train::run_files::{self, RunMeta};
use crate::train::run_lock::RunLock;
use crate::train::TrainConfig;
use anyhow::{bail, Context, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// The flags `--resume` accepts besides itself: the run's length, its reporting, where the data
/// and the device are, and how it runs. `--model` and `--tokenizer` are accepted when they match
/// the checkpoint (`resume_checks`); every other flag would silently not apply, so it is refused.
const RESUME_FLAGS: [&str; 11] = [
    "--resume",
    "--steps",
    "--eval-every",
    "--check-every",
    "--data",
    "--device",
    "--cuda-graph",
    "--no-progress",
    "--halt-at",
    "--model",
    "--tokenizer",
];

pub fn run(a: &TrainArgs) -> Result<()> {
    if a.check_every == Some(0) {
        bail!(
            "--check-every must be at least 1 (every how many steps the gradient norms are logged)"
        );
    }
    let progress = !a.no_progress && std::io::stderr().is_terminal();
    // A resumed run is locked before its data is loaded, so a second writer is refused at once; a
    // new run's folder is created and locked once everything is known to work (a bad flag leaves
    // no empty folder behind).
    let (resume_dir, resume_lock, resume_meta) = match &a.resume {
        Some(dir) => {
            if dir.is_file() {
                bail!("--resume {} is a file, not a run directory; pass the folder `robo-poet train` wrote (runs/<name>)", dir.display());
            }
            if !dir.is_dir() {
                bail!(
                    "--resume {}: no such run directory; check the path (runs/<name>)",
                    dir.display()
                );
            }
            // Another train on it first (who), then not a run at all (before leaving a lock file
            // in someone's folder).
            RunLock::ensure_free(dir)?;
            run_files::load_meta(dir)?;
            let lock = RunLock::acquire(dir)?;
            (Some(dir.clone()), Some(lock), Some(resume_checks(dir, a)?))
        }
        None => {
            if let Some(dir) = &a.out {
                if dir.is_dir() {
                    RunLock::ensure_free(dir)?;
                }
                check_new_out(dir)?;
            }
            (None, None, None)
        }
    };

    // Data: a resumed run reloads its recorded source with its own tokenizer.
    let ds: Dataset = match &resume_meta {
        Some(m) => {
            let (source, corpus) = dataset::reload(&m.data, a.data.as_deref())?;
            let tok = m.tokenizer()?;
            dataset::tokenize(source, &corpus, tok.kind(), a.min_count, Some(tok))?
        }
        None => {
            let (source, corpus) = dataset::locate(&DataRequest {
                text_files: &a.text,
                data_dir: a.data.as_deref(),
                allow_download: true,
                show_progress: progress,
            })?;
            dataset::tokenize(
                source,
                &corpus,
                a.tokenizer
                    .unwrap_or(crate::data::tokenizer::TokenizerKind::Char),
                a.min_count,
                None,
            )?
        }
    };

    let (model_cfg, tcfg, start_step) = match &resume_meta {
        Some(m) => {
            let mut t = m.train.clone();
            // Only the run length and reporting may change on resume (extending a run).
            if let Some(s) = a.steps {
                presets::check_steps(s)?;
                t.steps = s;
            }
            if let Some(n) = a.eval_every {
                t.eval_every = n;
            }
            (m.model.clone(), t, m.step)
        }
        None => {
            let (model_cfg, t) = new_run_config(a, &ds)?;
            warmup_note(&t, "");
            (model_cfg, t, 0)
        }
    };
    model_cfg.validate()?;
    if let Some(dir) = resume_dir.as_ref().filter(|_| start_step >= tcfg.steps) {
        bail!("{} already finished its {} steps; pass --steps N (more than {start_step}) with --resume to train further", dir.display(), tcfg.steps);
    }

    // Sizes before any allocation: the model's footprint from its configuration, then the table
    // against the memory of the device that will hold it.
    let trainer = Trainer::new(&model_cfg, tcfg, &ds, a.device, a.cuda_graph.on())?;
    let (mut run, _lock) = match (resume_dir, resume_lock, &resume_meta) {
        (Some(dir), Some(lock), Some(m)) => (trainer.resume(&ds, dir, m)?, lock),
        _ => {
            let (dir, lock) = new_run_dir(a)?;
            (trainer.start(&ds, dir)?, lock)
        }
    };
    print_header(&ds, &run);
    let resume_cmd = format!("robo-poet train --resume {}", run.dir().display());
    interrupt::install(run.dir(), &resume_cmd);
    let t = &run.trainer;
    let mut console = Console::new(progress, t.train.steps, start_step, "");
    let opts = DriveOptions {
        check_every: a.check_every,
        halt_at: a.halt_at,
    };
    let outcome = run.drive(&ds, &opts, &mut console);
    let dir = run.dir().display();
    match outcome {
        Err(e) => {
            console.abandon();
            Err(e)
        }
        Ok(Outcome::Stopped { step, signal }) => {
            console.abandon();
            let why = signal.map_or(String::new(), |s| format!(" ({})", interrupt::name(s)));
            eprintln!(
                "stopped after step {step}{why}: checkpoint saved. Continue with: {resume_cmd}"
            );
            match signal {
                Some(signal) => Err(Interrupted { signal }.into()),
                None => Ok(()),
            }
        }
        Ok(Outcome::Finished(s)) => {
            console.finish();
            println!(
                "done: {} steps, val loss {:.4} (perplexity {:.2}; best {:.4} at step {}), {:.1}k tokens/s, {}",
                s.steps,
                s.val_loss,
                s.val_loss.exp(),
                s.best.0,
                s.best.1,
                s.tokens_per_s / 1e3,
                hms(s.elapsed_s)
            );
            println!("run saved in {dir}; generate with: robo-poet generate --checkpoint {dir} --prompt \"To be or not to be\"");
            Ok(())
        }
    }
}

/// The model and optimisation of a new run: the preset, the flags over it, the vocabulary of
/// the data, and the run length in steps (`--epochs` counted on this data).
pub(super) fn new_run_config(a: &TrainArgs, ds: &Dataset) -> Result<(ModelConfig, TrainConfig)> {
    let plan = presets::plan(a)?;
    let mut model_cfg = presets::with_vocab(&plan.model, ds.tokenizer.vocab_size());
    presets::default_attention(&mut model_cfg, a.shape.attention, a.device);
    let mut t = plan.train;
    let probe = Sampler::new(t.seed, ds.train.len(), t.batch, model_cfg.seq_len())?;
    t.steps = match plan.length {
        Length::Steps(s) => s,
        Length::Epochs(e) => presets::epochs_to_steps(e, probe.steps_per_epoch())?,
    };
    t.eval_every = a.eval_every.unwrap_or_else(|| default_eval_every(t.steps));
    t.precision = a.precision.unwrap_or_default();
    Ok((model_cfg, t))
}

/// A note when the warmup is not shorter than the run: the learning rate never reaches --lr.
pub(super) fn warmup_note(t: &TrainConfig, prefix: &str) {
    if t.warmup >= t.steps {
        eprintln!(
            "{prefix}note: the warmup ({} steps) is not shorter than the run ({} steps): the learning rate rises for the whole run and never reaches --lr {}; pass a smaller --warmup or more --steps",
            t.warmup, t.steps, t.lr
        );
    }
}

/// A tenth of the run, at most 500 steps.
pub(super) fn default_eval_every(steps: u64) -> u64 {
    (steps / 10).clamp(1, 500)
}

/// Refuses an `--out` that cannot hold a new run: a file, or a folder a run already wrote into.
pub(super) fn check_new_out(dir: &Path) -> Result<()> {
    if dir.is_file() {
        bail!(
            "--out {} is a file, not a folder; choose another --out (a new or empty folder)",
            dir.display()
        );
    }
    if dir.is_dir() && !run_files::is_unused(dir) {
        if crate::checkpoint::has_checkpoint(dir) {
            bail!(
                "{} already holds a run; pass --resume {} to continue it, or choose another --out",
                dir.display(),
                dir.display()
            );
        }
        bail!(
            "{} already exists and is not empty; choose another --out (a new or empty folder)",
            dir.display()
        );
    }
    Ok(())
}

/// Creates (or takes, when empty) the new run's folder and locks it. The emptiness check is
/// repeated under the lock: another `train` may have started there since the first look.
fn new_run_dir(a: &TrainArgs) -> Result<(PathBuf, RunLock)> {
    let dir = match &a.out {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("could not create the run directory {}", dir.display()))?;
            dir.clone()
        }
        None => run_files::create_default_run_dir(
            &a.model
                .unwrap_or(crate::model::ModelKind::Attention)
                .to_string(),
        )?,
    };
    let lock = RunLock::acquire(&dir)?;
    check_new_out(&dir)?;
    Ok((dir, lock))
}

/// Checks that a resume target holds a checkpoint compatible with the flags given.
fn resume_checks(dir: &Path, a: &TrainArgs) -> Result<RunMeta> {
    let m = run_files::load_meta(dir)?;
    let kind = m.model.kind();
    if let Some(want) = a.model.filter(|&k| k != kind) {
        bail!(
            "{} holds an {kind} model, not {want}; drop --model or pass --model {kind}",
            dir.display()
        );
    }
    let tok = m.tokenizer()?.kind();
    if let Some(want) = a.tokenizer.filter(|&k| k != tok) {
        bail!(
            "{} was trained with the {tok} tokenizer, not {want}; drop --tokenizer",
            dir.display()
        );
    }
    let refused: Vec<&str> = a
        .given
        .iter()
        .map(String::as_str)
        .filter(|f| !RESUME_FLAGS.contains(f))
        .collect();
    if !refused.is_empty() {
        bail!("{} cannot be given with --resume: the run continues with the configuration saved in {} (only --steps, --eval-every, --check-every, --data and --device may be given)", refused.join(", "), dir.display());
    }
    Ok(m)
}

fn print_header(ds: &Dataset, run: &Run) {
    let (model, be, t) = (
        run.trainer.model.as_ref(),
        run.trainer.be.as_ref(),
        &run.trainer.train,
    );
    let table = be.table();
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "data:   {} | {} tokenizer, vocab {} | train {} tokens, val {} tokens",
        ds.source.describe(),
        ds.tokenizer.kind(),
        ds.tokenizer.vocab_size(),
        ds.train.len(),
        ds.val.len()
    );
    eprintln!(
        "model:  {} | {} parameters",
        model.config().describe(),
        table.parameter_count()
    );
    let cats: Vec<String> = table
        .bytes_by_category()
        .iter()
        .filter(|(_, b)| *b > 0)
        .map(|(c, b)| format!("{} {:.1}", c.label(), mib(*b)))
        .collect();
    eprintln!(
        "memory: {:.1} MiB analytic on {} ({} MiB)",
        mib(table.total_bytes()),
        be.describe(),
        cats.join(", ")
    );
    if let Some(m) = be.device_memory() {
        eprintln!(
            "device: {:.1} MiB measured by the driver for {:.1} MiB of tensors; {:.1} of {:.1} MiB free",
            mib(m.measured_bytes),
            mib(m.analytic_bytes),
            mib(m.free_bytes),
            mib(m.total_bytes)
        );
    }
    eprintln!(
        "train:  {} steps of batch {} x {} ({:.2} epochs), lr {} (warmup {}, cosine to {}x), AdamW wd {}, clip {}, eval every {}, seed {}",
        t.steps,
        t.batch,
        model.batch_shape().1,
        t.steps as f64 / run.trainer.sampler.steps_per_epoch() as f64,
        t.lr,
        t.warmup,
        t.min_lr_ratio,
        t.adamw.weight_decay,
        t.clip,
        t.eval_every,
        t.seed
    );
    if t.precision != crate::gpu::kernels::Precision::Fp32 {
        eprintln!(
            "matmul: {} tensor cores for the linear layers and the fused attention's products (f32 accumulation and storage; the LSTM recurrence, the materialized attention and every other op f32)",
            t.precision
        );
    }
    if run.meta().step > 0 {
        eprintln!(
            "resume: from step {} in {}",
            run.meta().step,
            run.dir().display()
        );
    } else {
        eprintln!("run:    {}", run.dir().display());
    }
}
