//! `robo-poet compare`: its flags, each run's `train` flags checked before anything trains, the
//! compare's folder and its lock, and what it prints. The runs are trained by the library's
//! driver (`train::driver`), the report is `compare::report`.

use super::console::{hms, Console};
use super::interrupt::{self, Interrupted};
use super::train_cmd::{check_new_out, default_eval_every, new_run_config, warmup_note};
use super::{parse_tokenizer, Command, OnOff, TrainArgs};
use crate::backend::DeviceChoice;
use crate::compare::plan::{Plan, PlannedRun, PLAN_FILE};
use crate::compare::report::{self, Report};
use crate::data::tokenizer::TokenizerKind;
use crate::dataset::{self, DataRequest, Dataset};
use crate::model::ModelConfig;
use crate::train::budget::{self, Budget};
use crate::train::driver::{DriveOptions, Outcome, Trainer};
use crate::train::run_files::{self, RunMeta};
use crate::train::run_lock::RunLock;
use crate::train::TrainConfig;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The attention run's `train` flags, in one string (e.g. "--preset seed --pos-emb")
    /// [default: the default preset].
    #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
    pub attention_args: Option<String>,
    /// The LSTM run's `train` flags, in one string (e.g. "--hidden 512") [default: the default
    /// preset].
    #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
    pub lstm_args: Option<String>,
    /// A run NAME=FLAGS (`train` flags; `--model lstm` for an LSTM), instead of the default pair;
    /// repeat it for more runs.
    #[arg(long = "run", value_name = "NAME=FLAGS", allow_hyphen_values = true,
          conflicts_with_all = ["attention_args", "lstm_args"])]
    pub runs: Vec<String>,
    /// Every run's budget: steps:N, seconds:S (of training on this device; the steps are
    /// counted from timed steps first) or flops:F (analytic training FLOPs, as `memory` counts).
    #[arg(long, value_name = "KIND:N", default_value = "seconds:900")]
    pub budget: String,
    /// The tokenizer of every run (a run's own --tokenizer must agree). [default: char]
    #[arg(long, value_parser = parse_tokenizer)]
    pub tokenizer: Option<TokenizerKind>,
    /// Word tokenizer: words seen fewer times than this become <unk>. [default: 2]
    #[arg(long)]
    pub min_count: Option<usize>,
    /// Folder holding the corpus (else $ROBO_POET_DATA, then data/; downloaded if nowhere).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Compare on these UTF-8 text files instead of the two books.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "data")]
    pub text: Vec<PathBuf>,
    /// Where the runs train, one after the other.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// On the GPU, replay each training step as a CUDA graph.
    #[arg(long, value_enum, value_name = "on|off", default_value_t = OnOff::On)]
    pub cuda_graph: OnOff,
    /// The compare's folder (default: a new runs/compare-<UTC timestamp>).
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue an interrupted compare: finished runs are kept, the interrupted one resumes.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// No progress bars (also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Testing aid: stop run NAME after step STEP as Ctrl-C would, but exit 0.
    #[arg(long, hide = true, value_name = "NAME:STEP")]
    pub halt_at: Option<String>,
    /// The flags given on the command line (filled by `cli::parse`).
    #[arg(skip)]
    pub given: Vec<String>,
}

/// What `--resume` accepts besides itself: where the data is, where and how the runs train.
const RESUME_FLAGS: [&str; 6] = [
    "--resume",
    "--data",
    "--device",
    "--cuda-graph",
    "--no-progress",
    "--halt-at",
];

/// `train` flags a run may not set: the compare sets them for every run.
const OWNED: [(&str, &str); 10] = [
    ("--steps", "the budget sets every run's length (--budget)"),
    ("--epochs", "the budget sets every run's length (--budget)"),
    ("--out", "each run's folder is inside the compare's (--out)"),
    (
        "--resume",
        "a compare is resumed as a whole (compare --resume DIR)",
    ),
    (
        "--data",
        "every run trains on the same data (compare --data)",
    ),
    (
        "--text",
        "every run trains on the same data (compare --text)",
    ),
    (
        "--device",
        "every run trains on the same device (compare --device)",
    ),
    (
        "--cuda-graph",
        "it applies to every run (compare --cuda-graph)",
    ),
    (
        "--no-progress",
        "it applies to every run (compare --no-progress)",
    ),
    (
        "--halt-at",
        "it is a compare flag here (compare --halt-at NAME:STEP)",
    ),
];

/// One run, checked: its plan entry, its `train` flags parsed, its configuration.
struct Prepared {
    planned: PlannedRun,
    args: TrainArgs,
    model: ModelConfig,
    train: TrainConfig,
}

pub fn run(a: &CompareArgs) -> Result<()> {
    let progress = !a.no_progress && std::io::stderr().is_terminal();
    let halt = a.halt_at.as_deref().map(parse_halt).transpose()?;
    // Everything that can be refused is refused before a folder is made or a step trained.
    let (dir, lock, plan) = match &a.resume {
        Some(dir) => {
            let plan = Plan::load(dir)?;
            let refused: Vec<&str> = a
                .given
                .iter()
                .map(String::as_str)
                .filter(|f| !RESUME_FLAGS.contains(f))
                .collect();
            ensure!(refused.is_empty(), "{} cannot be given with --resume: the compare continues with the runs and budget saved in {} (only --data, --device, --cuda-graph and --no-progress may be given)", refused.join(", "), dir.join(PLAN_FILE).display());
            (Some(dir.clone()), Some(RunLock::acquire(dir)?), Some(plan))
        }
        None => {
            if let Some(dir) = &a.out {
                if dir.join(PLAN_FILE).is_file() {
                    bail!("{} already holds a compare; pass --resume {} to continue it, or choose another --out", dir.display(), dir.display());
                }
                check_new_out(dir)?;
            }
            (None, None, None)
        }
    };
    let budget: Budget = match &plan {
        Some(p) => p.budget,
        None => a.budget.parse()?,
    };
    let planned = match &plan {
        Some(p) => p.runs.clone(),
        None => planned_runs(a)?,
    };
    let mut parsed = vec![];
    for p in &planned {
        parsed.push((p.clone(), parse_run(p)?));
    }
    let (tokenizer, min_count) = match &plan {
        Some(p) => (p.tokenizer, p.min_count),
        None => agreed_tokenizer(a, &parsed)?,
    };
    let ds = load_data(a, plan.as_ref(), &parsed, tokenizer, min_count, progress)?;
    let mut runs = vec![];
    for (planned, args) in parsed {
        let (model, mut train) = new_run_config(&args, &ds)
            .with_context(|| format!("the {} run ({})", planned.name, shown(&planned.args)))?;
        train.steps = match budget {
            Budget::Steps(n) => n,
            Budget::Flops(f) => {
                let per_step = budget::flops_per_step(&model, train.batch);
                budget::steps_for_flops(f, per_step, &format!("the {} run", planned.name))?
            }
            // Counted from timed steps when the run starts.
            Budget::Seconds(_) => 1,
        };
        ensure!(
            train.steps <= super::presets::MAX_STEPS,
            "--budget {budget} buys {} steps of the {} run, more than {}; give a smaller budget",
            train.steps,
            planned.name,
            super::presets::MAX_STEPS
        );
        train.eval_every = args.eval_every.unwrap_or(default_eval_every(train.steps));
        if !matches!(budget, Budget::Seconds(_)) {
            warmup_note(&train, &format!("the {} run: ", planned.name));
        }
        let what = || format!("the {} run", planned.name);
        model.validate().with_context(what)?;
        crate::resources::check_model_size(&model, train.batch).with_context(what)?;
        let p = train.precision;
        ensure!(
            p == crate::gpu::kernels::Precision::Fp32 || crate::backend::uses_cuda(a.device),
            "the {} run: --precision {p} runs the matrix products on a GPU's tensor cores, and this compare runs on \
             the CPU backend (fp32 only): use --device cuda, or drop --precision",
            planned.name
        );
        crate::sampler::Sampler::new(train.seed, ds.train.len(), train.batch, model.seq_len())
            .with_context(|| format!("the {} run", planned.name))?;
        runs.push(Prepared {
            planned,
            args,
            model,
            train,
        });
    }
    if let Some((name, _)) = &halt {
        ensure!(
            runs.iter().any(|r| &r.planned.name == name),
            "--halt-at {name}: no run of that name"
        );
    }

    let (dir, _lock, mut plan) = match (dir, lock, plan) {
        (Some(dir), Some(lock), Some(plan)) => (dir, lock, plan),
        _ => {
            let dir = match &a.out {
                Some(d) => {
                    std::fs::create_dir_all(d)
                        .with_context(|| format!("could not create {}", d.display()))?;
                    d.clone()
                }
                None => run_files::create_default_run_dir("compare")?,
            };
            let lock = RunLock::acquire(&dir)?;
            check_new_out(&dir)?;
            let started = dir_stamp();
            let plan = Plan::new(
                budget,
                runs.iter().map(|r| r.planned.clone()).collect(),
                tokenizer,
                min_count,
                ds.source.clone(),
                started,
            );
            plan.save(&dir)?;
            (dir, lock, plan)
        }
    };
    eprintln!(
        "compare: {} run(s) on {} ({} tokenizer, vocab {}), budget {} ({}), in {}",
        runs.len(),
        ds.source.describe(),
        ds.tokenizer.kind(),
        ds.tokenizer.vocab_size(),
        budget,
        budget.describe(),
        dir.display()
    );
    let resume_cmd = format!("robo-poet compare --resume {}", dir.display());
    for r in runs {
        let halt_at = halt
            .as_ref()
            .filter(|(n, _)| *n == r.planned.name)
            .map(|h| h.1);
        if let Some(stopped) = train_one(
            a,
            &dir,
            &mut plan,
            r,
            &ds,
            budget,
            halt_at,
            progress,
            &resume_cmd,
        )? {
            return stopped;
        }
    }
    let (report, metrics) = report::gather(&dir, &plan)?;
    report::write(&dir, &report, &metrics)?;
    print_summary(&report, &dir);
    Ok(())
}

/// Trains one run to its end (or resumes it; a finished one is left alone). Returns what the
/// compare ends with when the run was stopped.
#[allow(clippy::too_many_arguments)]
fn train_one(
    a: &CompareArgs,
    dir: &Path,
    plan: &mut Plan,
    r: Prepared,
    ds: &Dataset,
    budget: Budget,
    halt_at: Option<u64>,
    progress: bool,
    resume_cmd: &str,
) -> Result<Option<Result<()>>> {
    let name = r.planned.name.clone();
    let run_dir = dir.join(&name);
    let prefix = format!("[{name}] ");
    let saved: Option<RunMeta> = crate::checkpoint::has_checkpoint(&run_dir)
        .then(|| run_files::load_meta(&run_dir))
        .transpose()?;
    if let Some(m) = saved.as_ref().filter(|m| m.step >= m.train.steps) {
        eprintln!(
            "{prefix}finished earlier: {} steps, val loss {:.4}",
            m.step,
            m.val_loss.unwrap_or(f64::NAN)
        );
        return Ok(None);
    }
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("could not create {}", run_dir.display()))?;
    let _lock = RunLock::acquire(&run_dir)?;
    let (model, train) = match &saved {
        Some(m) => (m.model.clone(), m.train.clone()),
        None => (r.model, r.train),
    };
    let mut trainer = Trainer::new(&model, train, ds, a.device, a.cuda_graph.on())?;
    let mut notes = plan.notes.get(&name).cloned().unwrap_or_default();
    notes.device = trainer.be.describe();
    if let Some(m) = trainer.be.device_memory() {
        notes.measured_bytes = Some(m.measured_bytes as u64);
        notes.cuda_analytic_bytes = Some(m.analytic_bytes as u64);
    }
    if let (Budget::Seconds(s), None) = (budget, &saved) {
        let timed = budget::timing_seconds(s);
        eprintln!("{prefix}timing steps for {timed:.1} s to size a {s} s budget ...");
        let secs = trainer.time_steps(ds, 3, timed)?;
        trainer.train.steps = budget::steps_for_seconds(s, secs);
        trainer.train.eval_every = r
            .args
            .eval_every
            .unwrap_or(default_eval_every(trainer.train.steps));
        warmup_note(&trainer.train, &prefix);
        notes.secs_per_step = Some(secs);
        notes.timed_s = Some(timed);
    }
    plan.notes.insert(name.clone(), notes);
    plan.save(dir)?;
    let mut run = match &saved {
        Some(m) => trainer.resume(ds, run_dir, m)?,
        None => trainer.start(ds, run_dir)?,
    };
    let t = &run.trainer;
    eprintln!(
        "{prefix}{} | {} parameters | {} steps of batch {} | {:.1} MiB per step (analytic) on {}{}",
        t.config.describe(),
        t.be.table().parameter_count(),
        t.train.steps,
        t.train.batch,
        t.be.table().total_bytes() as f64 / (1024.0 * 1024.0),
        t.be.describe(),
        if run.meta().step > 0 {
            format!(" | resuming from step {}", run.meta().step)
        } else {
            String::new()
        }
    );
    interrupt::install(run.dir(), resume_cmd);
    let mut console = Console::new(progress, t.train.steps, run.meta().step, &prefix);
    let opts = DriveOptions {
        check_every: r.args.check_every,
        halt_at,
    };
    match run.drive(ds, &opts, &mut console) {
        Err(e) => {
            console.abandon();
            Err(e.context(format!("the {name} run")))
        }
        Ok(Outcome::Stopped { step, signal }) => {
            console.abandon();
            let why = signal.map_or(String::new(), |s| format!(" ({})", interrupt::name(s)));
            eprintln!("{prefix}stopped after step {step}{why}: checkpoint saved; the runs before it are finished and intact. Continue with: {resume_cmd}");
            Ok(Some(match signal {
                Some(signal) => Err(Interrupted { signal }.into()),
                None => Ok(()),
            }))
        }
        Ok(Outcome::Finished(s)) => {
            console.finish();
            eprintln!(
                "{prefix}done: {} steps, val loss {:.4} (best {:.4} at step {}), {:.1}k tokens/s, {}",
                s.steps,
                s.val_loss,
                s.best.0,
                s.best.1,
                s.tokens_per_s / 1e3,
                hms(s.elapsed_s)
            );
            Ok(None)
        }
    }
}

/// The runs the flags ask for: the default pair, or the `--run NAME=FLAGS` list.
fn planned_runs(a: &CompareArgs) -> Result<Vec<PlannedRun>> {
    if a.runs.is_empty() {
        let mut v = vec![];
        for (name, flag, args) in [
            ("attention", "--attention-args", &a.attention_args),
            ("lstm", "--lstm-args", &a.lstm_args),
        ] {
            let args = args.clone().unwrap_or_default();
            let mut argv = split_flags(&args).with_context(|| format!("{flag} {args:?}"))?;
            if argv
                .iter()
                .any(|f| f == "--model" || f.starts_with("--model="))
            {
                bail!("{flag}: --model is set by the option itself ({flag} trains the {name} model); use --run NAME=FLAGS for other pairs");
            }
            argv.splice(0..0, ["--model".to_string(), name.to_string()]);
            v.push(PlannedRun {
                name: name.into(),
                args,
                argv,
            });
        }
        return Ok(v);
    }
    let mut v: Vec<PlannedRun> = vec![];
    for spec in &a.runs {
        let Some((name, args)) = spec.split_once('=') else {
            bail!("--run {spec:?} has no flags part; give --run NAME=FLAGS, e.g. --run big=\"--d-model 256\"");
        };
        let name = name.trim();
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "--run {spec:?}: the name {name:?} must be letters, digits, - or _ (it is the run's folder name)"
        );
        ensure!(
            !v.iter().any(|r| r.name == name),
            "--run {name}=... is given twice; every run needs its own name"
        );
        v.push(PlannedRun {
            name: name.into(),
            args: args.to_string(),
            argv: split_flags(args).with_context(|| format!("--run {spec:?}"))?,
        });
    }
    Ok(v)
}

/// A run's flags as `train` flags, refused in one line when `train` would refuse them or when
/// they are the compare's own.
fn parse_run(p: &PlannedRun) -> Result<TrainArgs> {
    let what = format!("the {} run's flags ({})", p.name, shown(&p.args));
    let mut argv = vec!["robo-poet".to_string(), "train".to_string()];
    argv.extend(p.argv.iter().cloned());
    let cli = super::try_parse_from(&argv).map_err(|e| {
        let first = e.to_string();
        let first = first
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        anyhow::anyhow!("{what}: {first}; they are `robo-poet train` flags (see train --help)")
    })?;
    ensure!(
        cli.threads.is_none(),
        "{what}: --threads applies to the whole compare; give it before `compare`"
    );
    let Command::Train(args) = cli.command else {
        unreachable!("parsed as train")
    };
    for (flag, why) in OWNED {
        if args.given.iter().any(|g| g == flag) {
            bail!("{what}: {flag} cannot be given to one run: {why}");
        }
    }
    Ok(*args)
}

/// The tokenizer of every run: the compare's (--tokenizer, --min-count, or their defaults);
/// a run's own must be the same, since losses over different tokens cannot be compared.
fn agreed_tokenizer(
    a: &CompareArgs,
    runs: &[(PlannedRun, TrainArgs)],
) -> Result<(TokenizerKind, usize)> {
    let kind = a.tokenizer.unwrap_or(TokenizerKind::Char);
    let min_count = a.min_count.unwrap_or(2);
    let given = |flag: &str| {
        if a.given.iter().any(|g| g == flag) {
            "".to_string()
        } else {
            " (the default)".to_string()
        }
    };
    for (p, args) in runs {
        if let Some(k) = args.tokenizer.filter(|&k| k != kind) {
            bail!("incompatible tokenizers: the {} run's --tokenizer is {k}, the compare's is {kind}{}; every run of a compare uses the same tokens: give --tokenizer {k} to compare (before the run flags) instead", p.name, given("--tokenizer"));
        }
        if args.given.iter().any(|g| g == "--min-count") && args.min_count != min_count {
            bail!("incompatible tokenizers: the {} run's --min-count is {}, the compare's is {min_count}{}; every run of a compare uses the same vocabulary: give --min-count {} to compare instead", p.name, args.min_count, given("--min-count"), args.min_count);
        }
    }
    Ok((kind, min_count))
}

/// The data of every run, loaded and tokenized once. A resumed compare reloads its recorded
/// source, with the tokenizer of a run that already has a checkpoint.
fn load_data(
    a: &CompareArgs,
    plan: Option<&Plan>,
    runs: &[(PlannedRun, TrainArgs)],
    kind: TokenizerKind,
    min_count: usize,
    progress: bool,
) -> Result<Dataset> {
    let Some(plan) = plan else {
        let (source, corpus) = dataset::locate(&DataRequest {
            text_files: &a.text,
            data_dir: a.data.as_deref(),
            allow_download: true,
            show_progress: progress,
        })?;
        return dataset::tokenize(source, &corpus, kind, min_count, None);
    };
    let (source, corpus) = dataset::reload(&plan.data, a.data.as_deref())?;
    let dir = a.resume.as_deref().unwrap_or(Path::new("."));
    let existing = runs
        .iter()
        .map(|(p, _)| dir.join(&p.name))
        .find(|d| crate::checkpoint::has_checkpoint(d))
        .map(|d| run_files::load_meta(&d).and_then(|m| m.tokenizer()))
        .transpose()?;
    dataset::tokenize(source, &corpus, kind, min_count, existing)
}

/// `--halt-at NAME:STEP`.
fn parse_halt(s: &str) -> Result<(String, u64)> {
    let parsed = s
        .rsplit_once(':')
        .and_then(|(n, k)| Some((n.to_string(), k.parse().ok()?)));
    parsed.with_context(|| format!("--halt-at {s:?}: give NAME:STEP"))
}

/// Splits a flags string as a shell would: on whitespace, with '…' and "…" quoting and \ escapes.
pub fn split_flags(s: &str) -> Result<Vec<String>> {
    let (mut out, mut cur, mut any) = (vec![], String::new(), false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                any = true;
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => cur.extend(chars.next()),
                        Some(x) => cur.push(x),
                        None => bail!("unclosed {c} quote"),
                    }
                }
            }
            '\\' => {
                any = true;
                cur.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn shown(args: &str) -> String {
    if args.trim().is_empty() {
        "none: the preset's defaults".into()
    } else {
        format!("\"{}\"", args.trim())
    }
}

fn dir_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    run_files::utc_stamp(secs)
}

fn print_summary(r: &Report, dir: &Path) {
    println!(
        "{:<12} {:>10} {:>16} {:>16} {:>12} {:>10} {:>12}",
        "run", "params", "best val (ppl)", "final val", "tok/s", "wall", "MiB/step"
    );
    for x in &r.runs {
        println!(
            "{:<12} {:>10} {:>16} {:>16} {:>12} {:>10} {:>12.2}",
            x.name,
            x.parameters,
            format!("{:.4} ({:.2})", x.best_val_loss, x.best_perplexity),
            format!("{:.4}", x.final_val_loss),
            x.median_tokens_per_s
                .map_or("-".into(), |t| format!("{:.1}k", t / 1e3)),
            hms(x.wall_s),
            x.memory_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    for c in &r.claims {
        println!("claim: {}: {} ({})", c.claim, c.verdict, c.figures);
    }
    println!(
        "report: {}; the runs are in {} (robo-poet eval --checkpoint {})",
        dir.join(report::REPORT_FILE).display(),
        dir.display(),
        dir.join(r.runs.first().map_or("<run>", |x| x.name.as_str()))
            .display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_split_as_a_shell_would() {
        assert_eq!(split_flags("").unwrap(), Vec::<String>::new());
        assert_eq!(
            split_flags("  --d-model 16\t--lr 1e-3 ").unwrap(),
            ["--d-model", "16", "--lr", "1e-3"]
        );
        assert_eq!(
            split_flags(r#"--text "my book.txt" 'b c' d\ e """#).unwrap(),
            ["--text", "my book.txt", "b c", "d e", ""]
        );
        assert!(split_flags("--text \"open")
            .unwrap_err()
            .to_string()
            .contains("unclosed"));
    }

    #[test]
    fn halt_at_names_a_run_and_a_step() {
        assert_eq!(parse_halt("lstm:3").unwrap(), ("lstm".to_string(), 3));
        assert!(parse_halt("lstm").is_err() && parse_halt("lstm:x").is_err());
    }
}
