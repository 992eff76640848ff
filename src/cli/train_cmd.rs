//! `robo-poet train`: data, model, sizes against the machine, the run directory and its lock, the
//! loop with progress, evaluation, metrics, checkpoints, Ctrl-C / SIGTERM and resume.

use super::interrupt::{self, Interrupted};
use super::presets::{self, Length};
use super::run_files::{self, LogWindow, Metrics, RunMeta};
use super::run_lock::RunLock;
use super::TrainArgs;
use crate::backend::{self, Backend};
use crate::dataset::{self, DataRequest, Dataset};
use crate::diagnostics::{self, GradNorms, NormWarnings};
use crate::model::{self, Model};
use crate::resources;
use crate::rng::Rng;
use crate::sampler::Sampler;
use crate::train::{self, TrainConfig};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

    let (model_cfg, mut tcfg, start_step) = match &resume_meta {
        Some(m) => {
            let mut t = m.train.clone();
            // Only the run length may change on resume (extending a run).
            if let Some(s) = a.steps {
                presets::check_steps(s)?;
                t.steps = s;
            }
            (m.model.clone(), t, m.step)
        }
        None => {
            let plan = presets::plan(a)?;
            let mut model_cfg = presets::with_vocab(&plan.model, ds.tokenizer.vocab_size());
            presets::default_attention(&mut model_cfg, a.shape.attention, a.device);
            let mut t = plan.train;
            let probe = Sampler::new(t.seed, ds.train.len(), t.batch, model_cfg.seq_len())?;
            t.steps = match plan.length {
                Length::Steps(s) => s,
                Length::Epochs(e) => presets::epochs_to_steps(e, probe.steps_per_epoch())?,
            };
            t.eval_every = a.eval_every.unwrap_or_else(|| (t.steps / 10).clamp(1, 500));
            if t.warmup >= t.steps {
                eprintln!(
                    "note: the warmup ({} steps) is not shorter than the run ({} steps): the learning rate rises for the whole run and never reaches --lr {}; pass a smaller --warmup or more --steps",
                    t.warmup, t.steps, t.lr
                );
            }
            (model_cfg, t, 0)
        }
    };
    if let Some(n) = a.eval_every {
        tcfg.eval_every = n;
    }
    model_cfg.validate()?;
    let mut sampler = Sampler::new(tcfg.seed, ds.train.len(), tcfg.batch, model_cfg.seq_len())?;
    if let Some(dir) = resume_dir.as_ref().filter(|_| start_step >= tcfg.steps) {
        bail!("{} already finished its {} steps; pass --steps N (more than {start_step}) with --resume to train further", dir.display(), tcfg.steps);
    }

    // Sizes before any allocation: the model's footprint from its configuration, then the table
    // against the memory of the device that will hold it.
    resources::check_model_size(&model_cfg, tcfg.batch)?;
    let model = model::build(&model_cfg, tcfg.batch);
    let copies = resources::checkpoint_copies_bytes(model.table());
    let mut be = backend::create_reserving(a.device, model.table().clone(), false, copies)?;
    be.set_cuda_graph(a.cuda_graph.on());

    let (run_dir, _lock) = match (resume_dir, resume_lock) {
        (Some(dir), Some(lock)) => (dir, lock),
        _ => new_run_dir(a)?,
    };
    let mut elapsed0 = 0.0;
    if resume_meta.is_some() {
        let m = run_files::load_into(&run_dir, model.as_ref(), be.as_mut(), true)?;
        elapsed0 = m.elapsed_s;
    } else {
        let mut rng = Rng::derive(tcfg.seed, "init");
        for (id, v) in model::init_params(model.as_ref(), &mut rng) {
            be.write(id, &v);
        }
    }

    print_header(
        &ds,
        model.as_ref(),
        be.as_ref(),
        &tcfg,
        &sampler,
        &run_dir,
        start_step,
    );
    let mut metrics = Metrics::open(&run_dir, resume_meta.as_ref().map(|m| m.step))?;
    interrupt::install(&run_dir);

    let mut meta = RunMeta {
        step: start_step,
        model: model_cfg.clone(),
        train: tcfg.clone(),
        tokenizer: ds.tokenizer.to_json(),
        data: ds.source.clone(),
        train_tokens: ds.train.len(),
        val_tokens: ds.val.len(),
        val_loss: resume_meta.as_ref().and_then(|m| m.val_loss),
        best_val_loss: resume_meta.as_ref().and_then(|m| m.best_val_loss),
        elapsed_s: elapsed0,
        robo_poet_version: env!("CARGO_PKG_VERSION").to_string(),
        log_window: LogWindow::default(),
    };
    if start_step == 0 {
        // A checkpoint of the initial state: the run can be resumed even if the first eval never comes.
        run_files::save(&run_dir, &meta, model.as_ref(), be.as_ref())?;
    }

    let pb = if progress {
        ProgressBar::new(tcfg.steps)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    pb.set_position(start_step);
    let tokens_per_step = (tcfg.batch * model_cfg.seq_len()) as f64;
    let t_start = Instant::now();
    let mut train_secs = 0.0f64;
    // The losses since the last log line, carried over a resume (their mean is the next logged
    // train_loss), and the steps and seconds timed in this process since then (tokens_per_s).
    // Steps are queued without waiting (on the GPU nothing waits for the host); their records
    // are read back when a log line, a gradient check, an evaluation or a stop needs them.
    let mut window = resume_meta
        .as_ref()
        .map(|m| m.log_window)
        .unwrap_or_default();
    let mut timed = (0usize, 0.0f64);
    let mut since_read = Instant::now();
    let log_every = (tcfg.eval_every / 5).clamp(1, 50);
    let check_every = a.check_every.unwrap_or(log_every);
    let mut warnings = NormWarnings::default();
    let mut step = start_step;
    let mut last = None;
    let mut noted = false;
    while step < tcfg.steps {
        let (inputs, targets) = sampler.batch(step, &ds.train);
        step += 1;
        train::queue_step(model.as_ref(), be.as_mut(), &tcfg, step, &inputs, &targets);
        if !noted {
            // after the first step: a CUDA graph capture that failed has fallen back by now
            if let Some(note) = be.step_note().filter(|_| a.cuda_graph.on()) {
                say(&pb, format!("note: {note}"));
            }
            noted = true;
        }
        let halted = a.halt_at == Some(step);
        let signalled = interrupt::requested();
        let stopping = halted || signalled.is_some();
        let log_now = step % log_every == 0 || step == tcfg.steps;
        let check_now = step % check_every == 0;
        let eval_now = step % tcfg.eval_every == 0 || step == tcfg.steps;
        if !(log_now || check_now || eval_now || stopping) {
            continue;
        }
        let records = be.take_step_records();
        let dt = since_read.elapsed().as_secs_f64();
        train_secs += dt;
        for r in &records {
            if !r.loss.is_finite() || !r.grad_norm.is_finite() || !r.updated {
                pb.abandon();
                let norms = GradNorms::from_sums(model.as_ref(), &be.last_grad_sq());
                let first = norms
                    .first_non_finite()
                    .map(|p| format!("; first non-finite gradient: {p}"))
                    .unwrap_or_default();
                bail!(
                    "step {}: the loss ({}) or gradient norm ({}{first}) is not finite, so training stopped; the last good checkpoint in {} is intact. Try a lower --lr (now {:e}) or a smaller --clip",
                    r.step, r.loss, r.grad_norm, run_dir.display(), tcfg.lr
                );
            }
            window.add(r.loss);
        }
        timed = (timed.0 + records.len(), timed.1 + dt);
        let Some(st) = records.last().copied().or(last) else {
            continue;
        };
        last = Some(st);
        pb.set_position(step);
        pb.set_message(format!(
            "loss {:.4}  {:.1}k tok/s",
            st.loss,
            tokens_per_step * records.len() as f64 / dt.max(1e-9) / 1e3
        ));
        let lr = tcfg.lr_at(step);
        if log_now && window.steps > 0 {
            metrics.write(&json!({
                "step": step, "train_loss": window.mean(), "grad_norm": st.grad_norm, "lr": lr,
                "tokens_per_s": tokens_per_step * timed.0 as f64 / timed.1.max(1e-9), "elapsed_s": elapsed0 + t_start.elapsed().as_secs_f64(),
            }))?;
            window = LogWindow::default();
            timed = (0, 0.0);
        }
        if check_now {
            let norms = GradNorms::from_sums(model.as_ref(), &be.last_grad_sq());
            if let Some(w) = warnings.check(step, &norms) {
                say(&pb, w);
            }
            let mut line = norms.to_json();
            if let Some(rows) = diagnostics::attention_row_check(model.as_ref(), be.as_mut()) {
                let (worst, bad) = (rows.max_dev, rows.bad_rows);
                line["attn_row_max_dev"] = json!(worst);
                line["attn_bad_rows"] = json!(bad);
                if bad > 0 && warnings.first_in_period("attention rows") {
                    say(&pb, format!("warning: step {step}: {bad} attention row(s) do not sum to 1 within {} (largest deviation {worst:.3e}); this is a bug, please report it", diagnostics::ROW_SUM_TOL));
                }
            }
            line["step"] = json!(step);
            metrics.write(&line)?;
        }
        if eval_now {
            let (val, n) = train::evaluate(model.as_ref(), be.as_mut(), &ds.val);
            meta.val_loss = Some(val);
            if meta.best_val_loss.is_none_or(|b| val < b.0) {
                meta.best_val_loss = Some((val, step));
            }
            warnings.reset();
            metrics.write(&json!({ "step": step, "val_loss": val, "val_tokens": n, "elapsed_s": elapsed0 + t_start.elapsed().as_secs_f64() }))?;
            say(&pb, format!(
                "step {step:>6}/{} | train {:.4} | val {val:.4} (ppl {:.2}) | grad norm {:.3} | lr {:.2e} | {:.1}k tok/s | {}",
                tcfg.steps,
                st.loss,
                val.exp(),
                st.grad_norm,
                lr,
                tokens_per_step * (step - start_step) as f64 / train_secs.max(1e-9) / 1e3,
                hms(elapsed0 + t_start.elapsed().as_secs_f64())
            ));
        }
        if eval_now || stopping {
            meta.step = step;
            meta.elapsed_s = elapsed0 + t_start.elapsed().as_secs_f64();
            meta.log_window = window;
            run_files::save(&run_dir, &meta, model.as_ref(), be.as_ref())?;
        }
        if stopping {
            pb.abandon();
            let why = signalled.map_or(String::new(), |s| {
                format!(" ({})", interrupt::name(s.signal))
            });
            eprintln!("stopped after step {step}{why}: checkpoint saved. Continue with: robo-poet train --resume {}", run_dir.display());
            return match signalled {
                Some(s) => Err(Interrupted { signal: s.signal }.into()),
                None => Ok(()),
            };
        }
        since_read = Instant::now();
    }
    pb.finish_and_clear();
    let val = meta.val_loss.unwrap_or(f64::NAN);
    let (best, best_step) = meta.best_val_loss.unwrap_or((val, tcfg.steps));
    println!(
        "done: {} steps, val loss {val:.4} (perplexity {:.2}; best {best:.4} at step {best_step}), {:.1}k tokens/s, {}",
        tcfg.steps,
        val.exp(),
        tokens_per_step * (tcfg.steps - start_step) as f64 / train_secs.max(1e-9) / 1e3,
        hms(meta.elapsed_s)
    );
    println!("run saved in {}; generate with: robo-poet generate --checkpoint {} --prompt \"To be or not to be\"", run_dir.display(), run_dir.display());
    Ok(())
}

/// Refuses an `--out` that cannot hold a new run: a file, or a folder a run already wrote into.
fn check_new_out(dir: &Path) -> Result<()> {
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

fn print_header(
    ds: &Dataset,
    model: &dyn Model,
    be: &dyn Backend,
    t: &TrainConfig,
    sampler: &Sampler,
    run_dir: &Path,
    start: u64,
) {
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
        t.steps as f64 / sampler.steps_per_epoch() as f64,
        t.lr,
        t.warmup,
        t.min_lr_ratio,
        t.adamw.weight_decay,
        t.clip,
        t.eval_every,
        t.seed
    );
    if start > 0 {
        eprintln!("resume: from step {start} in {}", run_dir.display());
    } else {
        eprintln!("run:    {}", run_dir.display());
    }
}

/// A line above the progress bar, or on stdout when there is no bar (pb.println of a hidden
/// bar prints nothing).
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        println!("{line}");
    } else {
        pb.println(line);
    }
}

pub fn hms(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
