//! `robo-poet check`: the seed's validation suite (diagnostics::checks) as a table.

use super::presets::{self, Length};
use super::{CheckArgs, Preset, TrainArgs};
use crate::backend::{cpu::CpuBackend, cuda::CudaBackend, Backend, DeviceChoice};
use crate::dataset::{self, DataRequest};
use crate::diagnostics::checks::{self, Report, Setup, Status};
use crate::diagnostics::NORM_RANGE;
use crate::gpu::{CudaDevice, Device, EmuDevice};
use crate::model::ModelKind;
use crate::sampler::Sampler;
use crate::tensor::TensorTable;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

fn train_args(a: &CheckArgs) -> TrainArgs {
    let mut t = TrainArgs::defaults();
    t.model = a.model;
    t.preset = a.preset.unwrap_or(match a.model {
        Some(ModelKind::Lstm) => Preset::Default,
        _ => Preset::Seed,
    });
    t.tokenizer = a.tokenizer;
    t.data = a.data.clone();
    t.text = a.text.clone();
    t.shape = a.shape.clone();
    t.seed = a.seed;
    t
}

/// The second device, if any: how to open it again (each backend and the parity run own one).
enum Gpu {
    None(String),
    Cuda,
    Emu,
}

impl Gpu {
    fn open(&self) -> Result<Box<dyn Device>> {
        Ok(match self {
            Gpu::None(why) => anyhow::bail!("no GPU: {why}"),
            Gpu::Cuda => Box::new(CudaDevice::open().map_err(|e| anyhow::anyhow!("{e}"))?),
            Gpu::Emu => Box::<EmuDevice>::default(),
        })
    }
    fn label(&self) -> &'static str {
        match self {
            Gpu::Emu => "emu",
            _ => "gpu",
        }
    }
}

pub fn run(a: &CheckArgs) -> Result<()> {
    let progress = !a.no_progress && !a.json && std::io::stderr().is_terminal();
    let gpu = match a.device {
        DeviceChoice::Cpu => Gpu::None("--device cpu".into()),
        DeviceChoice::Emu => Gpu::Emu,
        DeviceChoice::Cuda => {
            CudaDevice::open()
                .map_err(|e| anyhow::anyhow!("--device cuda: {e}; use --device cpu"))?;
            Gpu::Cuda
        }
        DeviceChoice::Auto => match CudaDevice::open() {
            Ok(_) => Gpu::Cuda,
            Err(e) => Gpu::None(e.to_string()),
        },
    };

    if let (Gpu::None(why), p) = (&gpu, a.precision) {
        if p != crate::gpu::kernels::Precision::Fp32 {
            anyhow::bail!(
                "--precision {p} applies to the GPU run, and there is none ({why}); use --device cuda (or --device emu), \
                 or --precision fp32"
            );
        }
    }
    let ta = train_args(a);
    let plan = presets::plan(&ta)?;
    let (source, corpus) = dataset::locate(&DataRequest {
        text_files: &ta.text,
        data_dir: ta.data.as_deref(),
        allow_download: true,
        show_progress: progress,
    })?;
    let ds = dataset::tokenize(
        source,
        &corpus,
        ta.tokenizer
            .unwrap_or(crate::data::tokenizer::TokenizerKind::Char),
        ta.min_count,
        None,
    )?;
    let mut model_cfg = presets::with_vocab(&plan.model, ds.tokenizer.vocab_size());
    presets::default_attention(&mut model_cfg, a.shape.attention, a.device);
    model_cfg.validate()?;
    crate::resources::check_model_size(&model_cfg, plan.train.batch)?;
    let mut tcfg = plan.train;
    // The learning-rate schedule of the run this configuration would make.
    let sampler = Sampler::new(tcfg.seed, ds.train.len(), tcfg.batch, model_cfg.seq_len())?;
    tcfg.steps = match plan.length {
        Length::Steps(s) => s,
        Length::Epochs(e) => presets::epochs_to_steps(e, sampler.steps_per_epoch())?,
    };
    let setup = Setup {
        model: model_cfg.clone(),
        train: tcfg.clone(),
        tokens: &ds.train,
        train_steps: a.steps,
    };
    if !a.json {
        println!("robo-poet check: {}", model_cfg.describe());
        println!(
            "  batch {}, seed {}, lr {:.1e} (schedule of a {}-step run), data: {}",
            tcfg.batch,
            tcfg.seed,
            tcfg.lr,
            tcfg.steps,
            ds.source.describe()
        );
    }

    let mut report = Report::default();
    let mut devices: Vec<&str> = vec!["cpu"];
    if !matches!(gpu, Gpu::None(_)) {
        devices.push(gpu.label());
    }
    for device in devices {
        let pb = bar(progress, a.steps, device);
        let mut make = |table: TensorTable| -> Result<Box<dyn Backend>> {
            Ok(match device {
                "cpu" => {
                    crate::resources::ensure_cpu_fits(&table, 0)?;
                    Box::new(CpuBackend::new(table))
                }
                _ => {
                    let mut be = CudaBackend::new(gpu.open()?, table)?;
                    be.set_precision(a.precision);
                    Box::new(be)
                }
            })
        };
        checks::device_checks(
            &setup,
            device,
            &mut make,
            &mut |s| pb.set_position(s),
            &mut report,
        )?;
        pb.finish_and_clear();
    }
    checks::finite_differences(&model_cfg, tcfg.seed, &mut report);
    match &gpu {
        Gpu::None(why) => checks::parity_skipped(why, &mut report),
        g => checks::gpu_parity(
            &model_cfg,
            tcfg.batch,
            tcfg.seed,
            g.label(),
            g.open()?,
            &mut report,
        )?,
    }

    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "config": model_cfg, "batch": tcfg.batch, "seed": tcfg.seed, "train_steps": a.steps,
                "passed": report.passed(), "lines": report.lines, "gradient_norms": report.norms,
            })
        );
    } else {
        print_report(&report);
    }
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}

fn bar(show: bool, steps: u64, device: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(steps);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{device}: training {{bar:30.cyan/blue}} {{pos}}/{{len}} steps [{{elapsed_precise}} < {{eta_precise}}]"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb
}

fn print_report(r: &Report) {
    let w = |f: &dyn Fn(&checks::Line) -> usize| r.lines.iter().map(f).max().unwrap_or(0);
    let wc = w(&|l| l.check.chars().count());
    let wd = w(&|l| l.device.len()).max(6);
    let we = w(&|l| l.expected.chars().count()).max(8);
    println!();
    println!(
        "{:wc$}  {:wd$}  result   {:we$}  measured",
        "check", "device", "expected"
    );
    for l in &r.lines {
        println!(
            "{:wc$}  {:wd$}  {:7}  {:we$}  {}",
            l.check,
            l.device,
            l.status.label(),
            l.expected,
            l.measured
        );
    }
    for n in &r.norms {
        println!();
        println!(
            "gradient norms {} ({}): global {:.4}; outside [{}, {}] marked with !",
            n.when, n.device, n.global, NORM_RANGE.0, NORM_RANGE.1
        );
        let mark = |x: f64| {
            if crate::diagnostics::in_range(x) {
                ' '
            } else {
                '!'
            }
        };
        println!("  layers:");
        for (name, x) in &n.layers {
            println!("  {} {name:40} {x:.4e}", mark(*x));
        }
        println!("  parameters:");
        for (name, x) in &n.params {
            println!("  {} {name:40} {x:.4e}", mark(*x));
        }
        println!("  op input gradients (d.*):");
        for (name, x) in &n.activations {
            println!("  {} {name:40} {x:.4e}", mark(*x));
        }
        let warn = n.warnings();
        if !warn.is_empty() {
            println!(
                "  warning: {} tensor norm(s) outside [{}, {}] (not a failure; the pass/fail lines are the global and per-layer norms)",
                warn.len(),
                NORM_RANGE.0,
                NORM_RANGE.1
            );
        }
    }
    let failed = r.lines.iter().filter(|l| l.status == Status::Fail).count();
    let skipped = r
        .lines
        .iter()
        .filter(|l| l.status == Status::Skipped)
        .count();
    println!();
    println!(
        "{} of {} lines passed, {failed} failed, {skipped} skipped",
        r.lines.iter().filter(|l| l.status == Status::Pass).count(),
        r.lines.len()
    );
}
