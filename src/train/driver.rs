//! The run driver: one training run in its run directory, the loop every command that trains
//! shares (`train`, `compare`). It owns the order of things (queue a step, read the finished
//! steps' records only when something needs them, log, check gradients, evaluate, checkpoint,
//! stop) and reports through an [`Observer`]; commands own only their arguments and printing.
//!
//! Steps are queued without waiting (on the GPU nothing waits for the host, a step may be a CUDA
//! graph replay); their records (loss, gradient norm, whether the update ran) are read back at a
//! log line, a gradient check, an evaluation or a stop, never per step. The train-loss window
//! open at a checkpoint is saved with it, so a resumed run logs the same metrics, bit for bit
//! (timing fields aside), as one never interrupted.

use super::run_files::{self, LogWindow, Metrics, RunMeta};
use super::{evaluate, queue_step, TrainConfig};
use crate::backend::{self, Backend, DeviceChoice};
use crate::dataset::Dataset;
use crate::diagnostics::{self, GradNorms, NormWarnings};
use crate::model::{self, Model, ModelConfig};
use crate::resources;
use crate::rng::Rng;
use crate::sampler::{self, Sampler};
use anyhow::{bail, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a run reports while it trains. Every method has a do-nothing default.
pub trait Observer {
    /// Steps were read back (at most every log interval): for a progress bar.
    fn progress(&mut self, _p: &Progress) {}
    /// A warning line: a gradient norm outside the expected range, attention rows off.
    fn warning(&mut self, _line: String) {}
    /// A one-line note about how the steps run, after the first one (a CUDA graph capture or a
    /// persistent LSTM that fell back, and why).
    fn note(&mut self, _line: String) {}
    /// An evaluation finished (its checkpoint is being written).
    fn evaluated(&mut self, _e: &Evaluation) {}
    /// Whether a signal asks the run to stop after the current step: the signal's number.
    fn stop_requested(&mut self) -> Option<i32> {
        None
    }
}

/// The steps just read back.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub step: u64,
    pub steps: u64,
    /// The loss of the last step read.
    pub loss: f64,
    /// Tokens per second of the steps read this time.
    pub tokens_per_s: f64,
}

/// One evaluation of the whole validation split.
#[derive(Clone, Copy, Debug)]
pub struct Evaluation {
    pub step: u64,
    pub steps: u64,
    /// The last step's training loss and gradient norm (before clipping).
    pub train_loss: f64,
    pub grad_norm: f64,
    pub lr: f32,
    pub val_loss: f64,
    pub val_tokens: usize,
    /// Training tokens per second of this process so far (evaluations not counted).
    pub tokens_per_s: f64,
    /// Wall time of the run, resumed parts included.
    pub elapsed_s: f64,
}

/// How a call to [`Run::drive`] ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    Finished(Summary),
    /// Stopped after `step` with a checkpoint saved: by a signal, or by `halt_at` (None).
    Stopped {
        step: u64,
        signal: Option<i32>,
    },
}

/// A finished run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub steps: u64,
    pub val_loss: f64,
    /// The lowest validation loss and its step.
    pub best: (f64, u64),
    /// Training tokens per second of this process (evaluations not counted).
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

/// How often a run reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct DriveOptions {
    /// Gradient norms and attention rows every this many steps [default: every log line].
    pub check_every: Option<u64>,
    /// Stop after this step as a signal would (save, then [`Outcome::Stopped`]): a testing aid.
    pub halt_at: Option<u64>,
}

/// A model built on a backend, sized against the device, not yet tied to a run directory.
pub struct Trainer {
    pub model: Box<dyn Model>,
    pub be: Box<dyn Backend>,
    pub config: ModelConfig,
    pub train: TrainConfig,
    pub sampler: Sampler,
}

impl Trainer {
    /// Checks `config` and its sizes against the machine before anything is allocated, then
    /// builds the model for `train.batch` on `device`.
    pub fn new(
        config: &ModelConfig,
        train: TrainConfig,
        ds: &Dataset,
        device: DeviceChoice,
        cuda_graph: bool,
    ) -> Result<Trainer> {
        config.validate()?;
        let sampler = Sampler::new(train.seed, ds.train.len(), train.batch, config.seq_len())?;
        resources::check_model_size(config, train.batch)?;
        let model = model::build(config, train.batch);
        let copies = resources::checkpoint_copies_bytes(model.table());
        let mut be = backend::create_reserving(device, model.table().clone(), false, copies)?;
        be.set_cuda_graph(cuda_graph);
        be.set_precision(train.precision)
            .map_err(anyhow::Error::msg)?;
        Ok(Trainer {
            model,
            be,
            config: config.clone(),
            train,
            sampler,
        })
    }

    /// Seconds per training step here, over timed groups of `group` steps until `min_secs` have
    /// passed; the first step pays for one-time work (a CUDA graph's capture, caches) and is not
    /// timed. The steps move the parameters: [`Trainer::start`] initialises them again. A step
    /// that is not finite is an error (the device's halt flag would carry it into the run).
    pub fn time_steps(&mut self, ds: &Dataset, group: u64, min_secs: f64) -> Result<f64> {
        let group = group.max(1);
        let mut step = 0u64;
        let mut records = vec![];
        let one = |t: &mut Trainer, step: &mut u64| {
            let (inputs, targets) = t.sampler.batch(*step, &ds.train);
            *step += 1;
            queue_step(
                t.model.as_ref(),
                t.be.as_mut(),
                &t.train,
                *step,
                &inputs,
                &targets,
            );
        };
        one(self, &mut step);
        records.extend(self.be.take_step_records());
        let t0 = Instant::now();
        loop {
            for _ in 0..group {
                one(self, &mut step);
            }
            records.extend(self.be.take_step_records());
            if t0.elapsed().as_secs_f64() >= min_secs {
                break;
            }
        }
        let secs = t0.elapsed().as_secs_f64() / (step - 1) as f64;
        if let Some(r) = records
            .iter()
            .find(|r| !r.loss.is_finite() || !r.grad_norm.is_finite() || !r.updated)
        {
            bail!(
                "timing the steps before the run: step {} has a loss of {} and a gradient norm of {}, not finite; try a lower --lr (now {:e}) or a smaller --clip",
                r.step, r.loss, r.grad_norm, self.train.lr
            );
        }
        Ok(secs)
    }

    /// A new run in `run_dir` (created and locked by the caller): initial parameters, zeroed AdamW
    /// moments, a fresh metrics.jsonl and a checkpoint of step 0, so the run can be resumed even
    /// if its first evaluation never comes.
    pub fn start(mut self, ds: &Dataset, run_dir: PathBuf) -> Result<Run> {
        let mut rng = Rng::derive(self.train.seed, "init");
        for (id, v) in model::init_params(self.model.as_ref(), &mut rng) {
            self.be.write(id, &v);
        }
        for p in self.model.params() {
            for id in [p.ids.m, p.ids.v] {
                self.be.zero(id);
            }
        }
        self.be.take_step_records();
        let metrics = Metrics::open(&run_dir, None)?;
        let meta = new_meta(&self, ds, 0);
        run_files::save(&run_dir, &meta, self.model.as_ref(), self.be.as_ref())?;
        Ok(Run::new(self, run_dir, meta, metrics))
    }

    /// Continues the run whose checkpoint `saved` describes (its parameters, AdamW moments, step,
    /// validation losses and log window), with this trainer's configuration (`--steps` and
    /// `--eval-every` may have changed). Metrics past the checkpoint's step are dropped: they
    /// will be recomputed.
    pub fn resume(mut self, ds: &Dataset, run_dir: PathBuf, saved: &RunMeta) -> Result<Run> {
        let loaded = run_files::load_into(&run_dir, self.model.as_ref(), self.be.as_mut(), true)?;
        let metrics = Metrics::open(&run_dir, Some(saved.step))?;
        let mut meta = new_meta(&self, ds, saved.step);
        meta.val_loss = saved.val_loss;
        meta.best_val_loss = saved.best_val_loss;
        meta.log_window = saved.log_window;
        meta.elapsed_s = loaded.elapsed_s;
        Ok(Run::new(self, run_dir, meta, metrics))
    }
}

fn new_meta(t: &Trainer, ds: &Dataset, step: u64) -> RunMeta {
    RunMeta {
        step,
        model: t.config.clone(),
        train: t.train.clone(),
        tokenizer: ds.tokenizer.to_json(),
        data: ds.source.clone(),
        train_tokens: ds.train.len(),
        val_tokens: sampler::eval_targets(ds.val.len()),
        val_loss: None,
        best_val_loss: None,
        elapsed_s: 0.0,
        robo_poet_version: env!("CARGO_PKG_VERSION").to_string(),
        log_window: LogWindow::default(),
    }
}

/// A trainer bound to its run directory, at the step of its last checkpoint.
pub struct Run {
    pub trainer: Trainer,
    run_dir: PathBuf,
    meta: RunMeta,
    metrics: Metrics,
}

impl Run {
    fn new(trainer: Trainer, run_dir: PathBuf, meta: RunMeta, metrics: Metrics) -> Run {
        Run {
            trainer,
            run_dir,
            meta,
            metrics,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.run_dir
    }

    /// What the last checkpoint holds (step, configuration, validation losses, ...).
    pub fn meta(&self) -> &RunMeta {
        &self.meta
    }

    /// Trains from the current step to the configured number of steps, or until a stop.
    pub fn drive(
        &mut self,
        ds: &Dataset,
        opts: &DriveOptions,
        obs: &mut dyn Observer,
    ) -> Result<Outcome> {
        let Run {
            trainer: t,
            run_dir,
            meta,
            metrics,
        } = self;
        let (model, be, tcfg) = (t.model.as_ref(), t.be.as_mut(), &t.train);
        let start_step = meta.step;
        let elapsed0 = meta.elapsed_s;
        let tokens_per_step = (tcfg.batch * t.config.seq_len()) as f64;
        let t_start = Instant::now();
        let mut train_secs = 0.0f64;
        // The losses since the last log line, carried over a resume (their mean is the next
        // logged train_loss), and the steps and seconds timed in this process since then.
        let mut window = meta.log_window;
        let mut timed = (0usize, 0.0f64);
        let mut since_read = Instant::now();
        let log_every = (tcfg.eval_every / 5).clamp(1, 50);
        let check_every = opts.check_every.unwrap_or(log_every);
        let mut warnings = NormWarnings::default();
        let mut step = start_step;
        let mut last = None;
        while step < tcfg.steps {
            let (inputs, targets) = t.sampler.batch(step, &ds.train);
            step += 1;
            queue_step(model, be, tcfg, step, &inputs, &targets);
            if step == start_step + 1 {
                if let Some(note) = be.step_note() {
                    obs.note(format!("note: {note}"));
                }
            }
            let halted = opts.halt_at == Some(step);
            let signal = obs.stop_requested();
            let stopping = halted || signal.is_some();
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
                    let norms = GradNorms::from_sums(model, &be.last_grad_sq());
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
            obs.progress(&Progress {
                step,
                steps: tcfg.steps,
                loss: st.loss,
                tokens_per_s: tokens_per_step * records.len() as f64 / dt.max(1e-9),
            });
            let lr = tcfg.lr_at(step);
            let elapsed = |t_start: &Instant| elapsed0 + t_start.elapsed().as_secs_f64();
            if log_now && window.steps > 0 {
                metrics.write(&json!({
                    "step": step, "train_loss": window.mean(), "grad_norm": st.grad_norm, "lr": lr,
                    "tokens_per_s": tokens_per_step * timed.0 as f64 / timed.1.max(1e-9), "elapsed_s": elapsed(&t_start),
                }))?;
                window = LogWindow::default();
                timed = (0, 0.0);
            }
            if check_now {
                let norms = GradNorms::from_sums(model, &be.last_grad_sq());
                if let Some(w) = warnings.check(step, &norms) {
                    obs.warning(w);
                }
                let mut line = norms.to_json();
                if let Some(rows) = diagnostics::attention_row_check(model, be) {
                    let (worst, bad) = (rows.max_dev, rows.bad_rows);
                    line["attn_row_max_dev"] = json!(worst);
                    line["attn_bad_rows"] = json!(bad);
                    if bad > 0 && warnings.first_in_period("attention rows") {
                        obs.warning(format!("warning: step {step}: {bad} attention row(s) do not sum to 1 within {} (largest deviation {worst:.3e}); this is a bug, please report it", diagnostics::ROW_SUM_TOL));
                    }
                }
                line["step"] = json!(step);
                metrics.write(&line)?;
            }
            if eval_now {
                let (val, n) = evaluate(model, be, &ds.val);
                meta.val_loss = Some(val);
                if meta.best_val_loss.is_none_or(|b| val < b.0) {
                    meta.best_val_loss = Some((val, step));
                }
                warnings.reset();
                metrics.write(&json!({ "step": step, "val_loss": val, "val_tokens": n, "elapsed_s": elapsed(&t_start) }))?;
                obs.evaluated(&Evaluation {
                    step,
                    steps: tcfg.steps,
                    train_loss: st.loss,
                    grad_norm: st.grad_norm,
                    lr,
                    val_loss: val,
                    val_tokens: n,
                    tokens_per_s: tokens_per_step * (step - start_step) as f64
                        / train_secs.max(1e-9),
                    elapsed_s: elapsed(&t_start),
                });
            }
            if eval_now || stopping {
                meta.step = step;
                meta.elapsed_s = elapsed(&t_start);
                meta.log_window = window;
                run_files::save(run_dir, meta, model, be)?;
            }
            if stopping {
                return Ok(Outcome::Stopped { step, signal });
            }
            since_read = Instant::now();
        }
        let val = meta.val_loss.unwrap_or(f64::NAN);
        Ok(Outcome::Finished(Summary {
            steps: tcfg.steps,
            val_loss: val,
            best: meta.best_val_loss.unwrap_or((val, tcfg.steps)),
            tokens_per_s: tokens_per_step * (tcfg.steps - start_step) as f64 / train_secs.max(1e-9),
            elapsed_s: meta.elapsed_s,
        }))
    }
}
