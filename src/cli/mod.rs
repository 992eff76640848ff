//! The command line: `train`, `compare`, `generate`, `eval`, `check`, `kernels`, `memory`,
//! `plot`, `attention-map`, `profile-step`.

mod attention_map_cmd;
mod check_cmd;
mod compare_cmd;
mod console;
mod eval_cmd;
mod generate_cmd;
pub mod interrupt;
mod kernels_cmd;
mod memory_cmd;
mod plot_cmd;
pub mod presets;
mod profile_cmd;
mod train_cmd;

use crate::backend::DeviceChoice;
use crate::data::tokenizer::TokenizerKind;
use crate::model::attention::AttentionStyle;
use crate::model::ModelKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

pub use compare_cmd::CompareArgs;
pub use interrupt::Interrupted;

#[derive(Parser, Debug)]
#[command(
    name = "robo-poet",
    version,
    about = "Attention vs LSTM language models on Alice's Adventures in Wonderland + Hamlet",
    long_about = "Trains a causal scaled-dot-product attention language model and an LSTM baseline on the same \
                  data and compares them: validation loss, speed and memory. Start with `robo-poet train`; \
                  every subcommand has its own --help.",
    after_help = "Examples:\n  robo-poet train\n  robo-poet train --model lstm\n  robo-poet compare --budget steps:300\n  robo-poet train --preset seed --pos-emb\n  \
                  robo-poet generate --checkpoint runs/<name> --prompt \"To be or not to be\" --temperature 0.9 --length 200\n  \
                  robo-poet eval --checkpoint runs/<name> --json\n  \
                  robo-poet check\n  \
                  robo-poet memory --seq-len 64,128,256,512,1024,2048,4096 --plot memory.png\n  \
                  robo-poet plot runs/<attention-run> runs/<lstm-run>\n  \
                  robo-poet attention-map --checkpoint runs/<name> --prompt \"To be or not\""
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// CPU threads to use (default: all cores; at most 4 per core, or 64).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (defaults: GPT-style attention, character level, on whatever hardware is there).
    Train(Box<TrainArgs>),
    /// Train attention and the LSTM on the same data under one budget, then one report:
    /// losses, speed, memory, the seed's claims, charts.
    #[command(
        long_about = "Trains an attention model and the LSTM (default: the two default presets; \
                      --attention-args / --lstm-args change them, repeated --run NAME=FLAGS replaces the pair) \
                      on the same data, split and tokenizer, one after the other, each for the same --budget: \
                      steps:N, seconds:S (of training on this device: the steps are counted from timed steps \
                      first) or flops:F (the analytic training FLOPs of `robo-poet memory`). Each run is a normal \
                      run directory inside --out; then report.md (configurations, results table, the seed's \
                      claims checked), compare.json (every number of the report) and the charts are written \
                      there. Ctrl-C keeps the finished runs; --resume DIR continues from the interrupted one.",
        after_help = "Examples:\n  robo-poet compare\n  robo-poet compare --budget steps:300\n  \
                      robo-poet compare --budget flops:2e15 --attention-args \"--preset seed --pos-emb\"\n  \
                      robo-poet compare --run small=\"--d-model 64\" --run big=\"--d-model 256\" --run lstm=\"--model lstm\"\n  \
                      robo-poet compare --resume runs/compare-20261201-120000"
    )]
    Compare(Box<CompareArgs>),
    /// Generate text from a trained checkpoint, streaming it as it is sampled.
    Generate(GenerateArgs),
    /// Validation loss and perplexity of a checkpoint on its validation split.
    Eval(EvalArgs),
    /// The seed's validation suite as measurements: attention rows, causality, dropout after
    /// softmax, gradient norms in [0.1, 10], finite differences, GPU vs CPU parity.
    #[command(
        long_about = "Runs the seed's validations on the seed configuration (seq_len 128, d_model 256, batch 4; \
                      flags change it) and prints a table: what was measured, what is expected, PASS or FAIL. \
                      On the CPU, and on the GPU when there is one (--device cpu: the CPU only):\n\
                      - attention weights: every row sums to 1 (the backend's own reduction, a kernel on the GPU), \
                      and no weight above the diagonal;\n\
                      - causal leakage: changing every token after the middle of the window changes no earlier logit;\n\
                      - dropout after softmax: the keep rate and the 1/(1-p) scaling, measured on the weights;\n\
                      - gradient norms after one backward pass on real data, at initialisation and after --steps \
                      steps of training: the global norm and each layer's against the seed's [0.1, 10]; every \
                      parameter's and every op input gradient's norm is listed below the table, out-of-range ones \
                      as warnings.\n\
                      Once: a finite-difference check of every gradient of a tiny model of the same kind (CPU), and \
                      one training step on the GPU against the CPU (skipped, visibly, without a GPU). Exits with 1 if \
                      any line fails.",
        after_help = "Examples:\n  robo-poet check\n  robo-poet check --model lstm --steps 100\n  \
                      robo-poet check --preset default --json > check.json"
    )]
    Check(Box<CheckArgs>),
    /// The CUDA kernels built into this binary: registers, shared memory and spills per kernel
    /// (ptxas's report from the NVRTC compile), or why they were not compiled.
    Kernels(KernelsArgs),
    /// Memory and FLOPs of one training step, attention vs LSTM at the same width: bytes per
    /// category from each model's tensor table, the attention/LSTM ratio, and a seq_len sweep.
    #[command(
        long_about = "Memory and FLOPs of one training step, attention vs LSTM at the same width, computed \
                      analytically: bytes per category (parameters, gradients, AdamW state, saved activations, \
                      workspace, inputs) read from each model's tensor table, with the attention T×T tensors and \
                      the LSTM gates and cell states as rows of their own; FLOPs of the forward and backward pass \
                      (a multiply-add counts 2). The attention model has --d-model channels; the LSTM has \
                      embed = hidden = --d-model and the same --layers, vocabulary, batch and seq_len. The default \
                      is the seed configuration. With a working GPU each configuration is also allocated on the \
                      CUDA backend and the driver-measured bytes are shown beside the analytic ones; otherwise one \
                      line says why no measurement was made.",
        after_help = "Examples:\n  robo-poet memory\n  robo-poet memory --seq-len 64,128,256,512,1024,2048,4096\n  \
                      robo-poet memory --style gpt --d-model 128 --heads 4 --layers 4 --batch 32 --json\n  \
                      robo-poet memory --seq-len 128,1024 --csv memory.csv\n  \
                      robo-poet memory --plot memory.png"
    )]
    Memory(MemoryArgs),
    /// PNG charts of training runs: loss.png (train and validation loss) and grad_flow.png
    /// (gradient norm per layer), every run on the same chart.
    #[command(
        long_about = "Reads each run directory's metrics.jsonl and draws two PNG charts: loss.png, the train \
                      loss (thin) and validation loss (thick, with markers) per step of every run, the legend \
                      naming the runs; and grad_flow.png, the gradient L2 norm per step of every (run, layer) on \
                      a log axis, with the band [0.1, 10] shaded. A run that logged no per-layer norms \
                      (layer_grad_norms) is drawn with its global grad_norm instead, as the legend says. A step \
                      logged twice (a resumed run) is read from its later line. A line that is not JSON with a \
                      \"step\" is skipped with a warning naming its line number; a run with no usable line is an \
                      error.",
        after_help = "Examples:\n  robo-poet plot runs/attention-20261128-153000\n  \
                      robo-poet plot runs/attention-20261128-153000 runs/lstm-20261128-160000 --out charts"
    )]
    Plot(PlotArgs),
    /// Heatmaps of a trained attention model's attention weights over a prompt, one per layer and
    /// head, to a PNG.
    #[command(
        long_about = "Loads an attention checkpoint on the CPU, runs one forward pass over the prompt (no \
                      dropout) and draws each layer's attention probabilities, one heatmap per (layer, head): \
                      query positions down, key positions across, both labelled with the prompt's tokens (a \
                      space shown as ␣, a newline as ⏎), one colour scale for all panels, the causally masked \
                      cells above the diagonal in grey. A prompt longer than the model's context keeps its \
                      last seq_len tokens, with a note.",
        after_help = "Examples:\n  robo-poet attention-map --checkpoint runs/<name> --prompt \"To be or not to be\"\n  \
                      robo-poet attention-map --checkpoint runs/<name> --prompt \"Alice\" --layer 0 --head 1 --out head.png\n  \
                      robo-poet attention-map --checkpoint runs/<name> --prompt \"Alice\" --json"
    )]
    AttentionMap(AttentionMapArgs),
    /// One training step on random tokens, timed, inside the NVTX range "profile-step" and (on
    /// the GPU) the profiler's capture window: what scripts/profile-nsys.sh and profile-ncu.sh run.
    #[command(
        name = "profile-step",
        long_about = "Builds a model from the same presets and flags as `train`, initialises it, runs --warmup \
                      training steps, then exactly one more step inside the NVTX range \"profile-step\" and, \
                      on the CUDA backend, between cuProfilerStart and cuProfilerStop, waits for the device and \
                      prints that step's wall time, tokens/s and the device. The batches are random tokens \
                      (no corpus needed): the step's cost does not depend on the text. Profile it with \
                      `nsys profile --capture-range=cudaProfilerApi` or `ncu --profile-from-start off` \
                      (scripts/profile-nsys.sh, scripts/profile-ncu.sh). On the CPU it is one timed step.",
        after_help = "Examples:\n  robo-poet profile-step\n  robo-poet profile-step --model lstm --batch 64\n  \
                      robo-poet profile-step --preset seed --device cuda --warmup 5\n  \
                      nsys profile --trace=cuda,nvtx --capture-range=cudaProfilerApi robo-poet profile-step --device cuda"
    )]
    ProfileStep(ProfileStepArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// A small GPT-style stack (attention) or a 1-layer, 256-unit LSTM, sized for a ~15-minute CPU run.
    Default,
    /// Exactly the seed's model: one attention layer, one head, d_model 256, seq_len 128, batch 4, 25 epochs.
    Seed,
}

/// The flags that size a model and its batch, shared by `train`, `check` and `profile-step`
/// (each overrides the preset's value when given).
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Model and batch shape (override the preset)")]
pub struct ShapeArgs {
    /// Sequences per batch.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Context length T (tokens per sequence).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Model width (attention).
    #[arg(long)]
    pub d_model: Option<usize>,
    /// Layers (attention blocks or LSTM layers).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Attention heads.
    #[arg(long)]
    pub heads: Option<usize>,
    /// LSTM hidden size.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// LSTM embedding size.
    #[arg(long)]
    pub embed: Option<usize>,
    /// Dropout on the attention weights, after softmax.
    #[arg(long, allow_negative_numbers = true)]
    pub dropout: Option<f32>,
    /// Learned position embeddings (the seed preset has none by default).
    #[arg(long)]
    pub pos_emb: bool,
    /// How attention is computed: fused (flash-style, nothing T×T stored) or materialized (the
    /// probabilities stored, the seed's exact structure); the same math. [default: fused where
    /// the CUDA backend runs, materialized on the CPU]
    #[arg(long, value_enum)]
    pub attention: Option<crate::model::attention::AttentionImpl>,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Which model to train [default: attention].
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// Starting configuration; the flags below override it.
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    pub preset: Preset,
    /// Character- or word-level tokens (word: lower-cased words and punctuation marks).
    /// [default: char]
    #[arg(long, value_parser = parse_tokenizer)]
    pub tokenizer: Option<TokenizerKind>,
    /// Folder holding the corpus (else $ROBO_POET_DATA, then data/; downloaded if nowhere).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Train on these UTF-8 text files instead of the two books.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "data")]
    pub text: Vec<PathBuf>,
    /// Passes over the training tokens (instead of --steps).
    #[arg(long, allow_negative_numbers = true, conflicts_with = "steps")]
    pub epochs: Option<f64>,
    /// Optimizer steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Peak learning rate.
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// Warmup steps.
    #[arg(long)]
    pub warmup: Option<u64>,
    /// AdamW weight decay (matrices and embeddings only).
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f32>,
    /// Global gradient-norm clipping threshold (0 turns it off).
    #[arg(long, allow_negative_numbers = true)]
    pub clip: Option<f32>,
    /// Word tokenizer: words seen fewer times than this in training become <unk>.
    #[arg(long, default_value_t = 2)]
    pub min_count: usize,
    /// Evaluate on the whole validation split and checkpoint every N steps (and at the end).
    #[arg(long, value_name = "N")]
    pub eval_every: Option<u64>,
    /// Every N steps, write every parameter's and layer's gradient norm to metrics.jsonl (with a
    /// warning when one leaves [0.1, 10]) and check the attention rows sum to 1 on the device.
    /// [default: the log interval, eval-every / 5, at most 50]
    #[arg(long, value_name = "N")]
    pub check_every: Option<u64>,
    /// Seed for initialisation, batch order and dropout.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Run directory (default: a new runs/<model>-<timestamp>).
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue an interrupted run from its last checkpoint (bit-for-bit the same losses).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Where to train.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// On the GPU, record the training step once as a CUDA graph and replay it (falls back to
    /// eager launches, with a note, where capture fails).
    #[arg(long, value_enum, value_name = "on|off", default_value_t = OnOff::On)]
    pub cuda_graph: OnOff,
    /// The matrix products on the GPU (the linear layers', and the fused attention's q·kᵀ and
    /// p·v): fp32 (exact, the default), or the tensor cores with tf32 or bf16 operands (f32
    /// accumulation; weights, softmax and everything else f32). Saved in the checkpoint
    /// (--resume keeps it); the CPU backend has fp32 only.
    #[arg(long, value_enum)]
    pub precision: Option<crate::gpu::kernels::Precision>,
    /// No progress bar (also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Testing aid: stop after this step as Ctrl-C would (save, print the resume command), but
    /// exit 0.
    #[arg(long, hide = true)]
    pub halt_at: Option<u64>,
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// The flags given on the command line (`--seed`, ...), whatever their value: a flag with a
    /// default cannot be told from its absence by its value (filled by [`parse`]).
    #[arg(skip)]
    pub given: Vec<String>,
}

impl TrainArgs {
    /// Every flag at its default: what `robo-poet train` alone means.
    pub fn defaults() -> TrainArgs {
        #[derive(Parser)]
        struct Alone {
            #[command(flatten)]
            train: TrainArgs,
        }
        Alone::parse_from(["robo-poet"]).train
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Run directory of a trained model.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "The")]
    pub prompt: String,
    /// Softmax temperature (> 0; lower is more conservative).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.9)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub length: usize,
    /// Sampling seed: the same seed gives the same text.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Run directory of a trained model.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Corpus folder, if it moved since training.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Which model to check [default: attention].
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// Starting configuration [default: seed for attention, default for the LSTM]; the flags below
    /// override it, as in `train`.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Character- or word-level tokens. [default: char]
    #[arg(long, value_parser = parse_tokenizer)]
    pub tokenizer: Option<TokenizerKind>,
    /// Folder holding the corpus (else $ROBO_POET_DATA, then data/; downloaded if nowhere).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Use these UTF-8 text files instead of the two books.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "data")]
    pub text: Vec<PathBuf>,
    /// Training steps before the second gradient-norm measurement.
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub steps: u64,
    /// Seed for initialisation, batches and dropout.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// cpu: the CPU only; auto: the CPU, and the GPU when one works; cuda: both, the GPU required.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// The GPU run's linear-layer matrix products: fp32, or the tensor cores at tf32 / bf16 (as
    /// `train --precision`); the CPU run, the reference, is fp32.
    #[arg(long, value_enum, default_value_t = crate::gpu::kernels::Precision::Fp32)]
    pub precision: crate::gpu::kernels::Precision,
    /// Print one JSON object (every line and every norm) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar (also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub shape: ShapeArgs,
}

#[derive(Args, Debug)]
pub struct ProfileStepArgs {
    /// Which model [default: attention].
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// Starting configuration, as for `train`; the flags below override it.
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    pub preset: Preset,
    /// Vocabulary size of the random tokens (78: the character vocabulary of the two books).
    #[arg(long, default_value_t = 78)]
    pub vocab: usize,
    /// Training steps before the profiled one (kernel JIT, caches and clocks settle).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub warmup: u64,
    /// Seed for initialisation, the random tokens and dropout.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// On the GPU, replay the step as a CUDA graph (on) or launch it eagerly (off).
    #[arg(long, value_enum, value_name = "on|off", default_value_t = OnOff::On)]
    pub cuda_graph: OnOff,
    /// On the GPU, how the LSTM runs its recurrence: one cooperative launch per layer and
    /// direction with W_hh kept on chip (persistent; layers that do not fit fall back, with a
    /// note), or a GEMM and a cell kernel per timestep (per-timestep, the comparison).
    #[arg(long, value_enum, default_value_t = LstmRecurrence::Persistent)]
    pub lstm_recurrence: LstmRecurrence,
    /// The matrix products on the GPU (linear layers, fused attention): fp32, or the tensor
    /// cores at tf32 / bf16 (as `train --precision`).
    #[arg(long, value_enum, default_value_t = crate::gpu::kernels::Precision::Fp32)]
    pub precision: crate::gpu::kernels::Precision,
    #[command(flatten)]
    pub shape: ShapeArgs,
}

/// How the CUDA backend runs an LSTM layer's time loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LstmRecurrence {
    /// The whole loop in one cooperative launch forward and one backward.
    Persistent,
    /// A recurrence GEMM and a cell kernel per timestep.
    PerTimestep,
}

/// `memory --attention`: one attention path, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MemoryAttention {
    Fused,
    Materialized,
    Both,
}

/// A switch given as `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn on(self) -> bool {
        self == OnOff::On
    }
}

#[derive(Args, Debug)]
pub struct KernelsArgs {
    /// Exit with an error if any kernel spills registers (or if no kernels were compiled).
    #[arg(long)]
    pub check_spills: bool,
}

#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// Context length T, or a comma-separated list (64,128,256) for a sweep: one table per length,
    /// then a summary of totals and ratios per length. [default: 128; with --plot, the sweep
    /// 16,32,64,...,4096]
    #[arg(long, value_name = "T[,T...]")]
    pub seq_len: Option<String>,
    /// Width: the attention model's d_model, and the LSTM's embedding and hidden size.
    #[arg(long, value_name = "D", default_value_t = 256)]
    pub d_model: usize,
    /// Sequences per batch.
    #[arg(long, value_name = "B", default_value_t = 4)]
    pub batch: usize,
    /// Attention heads (must divide --d-model).
    #[arg(long, value_name = "NH", default_value_t = 1)]
    pub heads: usize,
    /// Layers of both models (attention layers or blocks, LSTM layers).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub layers: usize,
    /// Vocabulary size (78: the character vocabulary of Alice + Hamlet).
    #[arg(long, value_name = "V", default_value_t = 78)]
    pub vocab: usize,
    /// Attention style: the seed's layer (Q/K/V, softmax, dropout, values; no position
    /// embeddings) or GPT-style blocks (layernorm, output projection, 4x MLP, position embeddings).
    #[arg(long, value_enum, default_value_t = AttentionStyle::Seed)]
    pub style: AttentionStyle,
    /// The attention path accounted: fused (nothing T×T), materialized (the probabilities
    /// stored) or both side by side, each with its crossover with the LSTM. [default: fused where
    /// the CUDA backend runs, materialized on the CPU, as `train`]
    #[arg(long, value_enum)]
    pub attention: Option<MemoryAttention>,
    /// Print one JSON object (every row of every configuration, in bytes and MiB) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write every row as CSV (seq_len,model,quantity,name,value,unit) to FILE.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Also draw total memory vs seq_len (attention and LSTM, log-log, crossover marked) to this
    /// PNG. Needs at least two lengths; without --seq-len it sweeps powers of two from 16 to 4096.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run directories (made by `robo-poet train`) to draw on the same charts.
    #[arg(value_name = "RUN", required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// Folder for loss.png and grad_flow.png (created if missing) [default: the first RUN].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Also print the series read from each run as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AttentionMapArgs {
    /// Run directory of a trained attention model.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Text whose attention weights to draw.
    #[arg(long)]
    pub prompt: String,
    /// PNG to write [default: <checkpoint>/attention_map.png].
    #[arg(long, value_name = "FILE.png")]
    pub out: Option<PathBuf>,
    /// Only this layer (0-based) [default: all].
    #[arg(long, value_name = "L")]
    pub layer: Option<usize>,
    /// Only this head (0-based) [default: all].
    #[arg(long, value_name = "H")]
    pub head: Option<usize>,
    /// Also print the tokens and every drawn matrix as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Parses the process's command line (exiting with clap's message on a bad one), noting which
/// flags of `train` were given.
pub fn parse() -> Cli {
    let matches = Cli::command().get_matches();
    from_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// As [`parse`], from `args` (the first is the program name).
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    from_matches(&Cli::command().try_get_matches_from(args)?)
}

fn from_matches(matches: &ArgMatches) -> Result<Cli, clap::Error> {
    let mut cli = Cli::from_arg_matches(matches)?;
    let cmd = Cli::command();
    match (&mut cli.command, matches.subcommand()) {
        (Command::Train(a), Some((name, sub))) => {
            if let Some(c) = cmd.find_subcommand(name) {
                a.given = given_flags(c, sub);
            }
        }
        (Command::Compare(a), Some((name, sub))) => {
            if let Some(c) = cmd.find_subcommand(name) {
                a.given = given_flags(c, sub);
            }
        }
        _ => {}
    }
    Ok(cli)
}

/// The long names of `cmd`'s arguments that `m` got from the command line.
fn given_flags(cmd: &clap::Command, m: &ArgMatches) -> Vec<String> {
    cmd.get_arguments()
        .filter(|arg| m.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine))
        .map(|arg| format!("--{}", arg.get_long().unwrap_or(arg.get_id().as_str())))
        .collect()
}

pub(crate) fn parse_tokenizer(s: &str) -> Result<TokenizerKind, String> {
    s.parse::<TokenizerKind>().map_err(|e| e.to_string())
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    crate::resources::start_threads(cli.threads)?;
    match cli.command {
        Command::Train(a) => train_cmd::run(&a),
        Command::Compare(a) => compare_cmd::run(&a),
        Command::Generate(a) => generate_cmd::run(&a),
        Command::Eval(a) => eval_cmd::run(&a),
        Command::Check(a) => check_cmd::run(&a),
        Command::Kernels(a) => kernels_cmd::run(&a),
        Command::Memory(a) => memory_cmd::run(&a),
        Command::Plot(a) => plot_cmd::run(&a),
        Command::AttentionMap(a) => attention_map_cmd::run(&a),
        Command::ProfileStep(a) => profile_cmd::run(&a),
    }
}
