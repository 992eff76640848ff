//! Default configurations per (model, preset, tokenizer), and how flags override them.
//!
//! The defaults are sized so that `robo-poet train` and `robo-poet train --model lstm` finish in
//! about 15 minutes on a 2-core CPU; docs/RESULTS.md records what they reach.

use super::{Preset, TrainArgs};
use crate::backend::DeviceChoice;
use crate::data::tokenizer::TokenizerKind;
use crate::model::attention::{AttentionConfig, AttentionImpl, AttentionStyle};
use crate::model::lstm::LstmConfig;
use crate::model::{ModelConfig, ModelKind};
use crate::ops::adamw::AdamWConfig;
use crate::train::TrainConfig;
use anyhow::{bail, ensure, Result};

/// The longest run accepted, in steps: days at the smallest model's speed. A larger --steps (or
/// --epochs times the steps per epoch) is a typo, and would otherwise just run "forever".
pub const MAX_STEPS: u64 = 1_000_000_000;

/// Refuses a run length past [`MAX_STEPS`].
pub fn check_steps(steps: u64) -> Result<()> {
    ensure!(
        steps <= MAX_STEPS,
        "--steps {steps} is more than {MAX_STEPS} steps (at a millisecond a step, years); pass a smaller --steps"
    );
    Ok(())
}

/// The steps of `epochs` passes over data of `steps_per_epoch` steps (at least 1), refusing a
/// run past [`MAX_STEPS`].
pub fn epochs_to_steps(epochs: f64, steps_per_epoch: u64) -> Result<u64> {
    let steps = (epochs * steps_per_epoch as f64).round();
    ensure!(
        steps <= MAX_STEPS as f64,
        "--epochs {epochs:e} is {steps:.3e} steps of this data ({steps_per_epoch} per epoch), more than {MAX_STEPS}; pass a smaller --epochs"
    );
    Ok((steps as u64).max(1))
}

/// How long to train: a number of steps or of epochs (resolved once the data is known).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Length {
    Steps(u64),
    Epochs(f64),
}

/// A resolved plan: the model (vocabulary filled in later), optimisation, and run length.
#[derive(Clone, Debug)]
pub struct Plan {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub length: Length,
}

pub fn plan(a: &TrainArgs) -> Result<Plan> {
    let word = a.tokenizer == Some(TokenizerKind::Word);
    let (model, mut train, mut length) = match (a.model.unwrap_or(ModelKind::Attention), a.preset) {
        (ModelKind::Attention, Preset::Seed) => (
            ModelConfig::Attention(AttentionConfig {
                style: AttentionStyle::Seed,
                vocab_size: 0,
                seq_len: 128,
                d_model: 256,
                n_layers: 1,
                n_heads: 1,
                pos_emb: false,
                dropout: 0.1,
                attention: Default::default(),
            }),
            base_train(4, 1e-3, 100, 0.0, 1.0),
            Length::Epochs(25.0),
        ),
        (ModelKind::Attention, Preset::Default) => (
            ModelConfig::Attention(AttentionConfig {
                style: AttentionStyle::Gpt,
                vocab_size: 0,
                seq_len: 128,
                d_model: if word { 256 } else { 128 },
                n_layers: 4,
                n_heads: 4,
                pos_emb: true,
                dropout: if word { 0.2 } else { 0.1 },
                attention: Default::default(),
            }),
            base_train(32, if word { 1e-3 } else { 2e-3 }, if word { 20 } else { 100 }, 0.1, 1.0),
            Length::Steps(if word { 250 } else { 3000 }),
        ),
        (ModelKind::Lstm, Preset::Default) => (
            ModelConfig::Lstm(LstmConfig { vocab_size: 0, seq_len: 128, embed: if word { 256 } else { 64 }, hidden: 256, n_layers: 1 }),
            base_train(32, if word { 2e-3 } else { 4e-3 }, if word { 20 } else { 50 }, 0.01, 1.0),
            Length::Steps(if word { 400 } else { 1500 }),
        ),
        (ModelKind::Lstm, Preset::Seed) => bail!("--preset seed is the seed's attention model; use it with --model attention (the default)"),
    };
    let mut model = model;
    match &mut model {
        ModelConfig::Attention(c) => {
            set(&mut c.seq_len, a.shape.seq_len);
            set(&mut c.d_model, a.shape.d_model);
            set(&mut c.n_layers, a.shape.layers);
            set(&mut c.n_heads, a.shape.heads);
            set(&mut c.dropout, a.shape.dropout);
            set(&mut c.attention, a.shape.attention);
            c.pos_emb |= a.shape.pos_emb;
            ensure!(
                a.shape.hidden.is_none() && a.shape.embed.is_none(),
                "--hidden and --embed are LSTM flags; the attention model's width is --d-model"
            );
        }
        ModelConfig::Lstm(c) => {
            set(&mut c.seq_len, a.shape.seq_len);
            set(&mut c.hidden, a.shape.hidden);
            set(&mut c.embed, a.shape.embed);
            set(&mut c.n_layers, a.shape.layers);
            ensure!(a.shape.d_model.is_none() && a.shape.heads.is_none(), "--d-model and --heads are attention flags; the LSTM's sizes are --hidden and --embed");
            ensure!(
                a.shape.dropout.is_none() && !a.shape.pos_emb && a.shape.attention.is_none(),
                "--dropout, --pos-emb and --attention apply to the attention model only"
            );
        }
    }
    set(&mut train.batch, a.shape.batch);
    set(&mut train.lr, a.lr);
    set(&mut train.warmup, a.warmup);
    set(&mut train.adamw.weight_decay, a.weight_decay);
    set(&mut train.clip, a.clip);
    train.seed = a.seed;
    if let Some(s) = a.steps {
        length = Length::Steps(s);
    }
    if let Some(e) = a.epochs {
        length = Length::Epochs(e);
    }
    ensure!(train.batch > 0, "--batch must be at least 1");
    ensure!(model.seq_len() > 0, "--seq-len must be at least 1");
    ensure!(
        train.lr > 0.0 && train.lr.is_finite(),
        "--lr must be positive (got {})",
        train.lr
    );
    ensure!(
        train.clip >= 0.0,
        "--clip must be >= 0 (0 turns clipping off), got {}",
        train.clip
    );
    ensure!(
        train.adamw.weight_decay >= 0.0,
        "--weight-decay must be >= 0, got {}",
        train.adamw.weight_decay
    );
    match length {
        Length::Steps(0) => bail!("--steps must be at least 1"),
        Length::Steps(s) => check_steps(s)?,
        Length::Epochs(e) if !(e > 0.0 && e.is_finite()) => {
            bail!("--epochs must be a positive number, got {e}")
        }
        Length::Epochs(_) => {}
    }
    if let Some(n) = a.eval_every {
        ensure!(n > 0, "--eval-every must be at least 1");
    }
    Ok(Plan {
        model,
        train,
        length,
    })
}

fn base_train(batch: usize, lr: f32, warmup: u64, weight_decay: f32, clip: f32) -> TrainConfig {
    TrainConfig {
        batch,
        steps: 0,
        lr,
        min_lr_ratio: 0.1,
        warmup,
        adamw: AdamWConfig {
            weight_decay,
            ..AdamWConfig::default()
        },
        clip,
        eval_every: 0,
        seed: 0,
        precision: Default::default(),
    }
}

fn set<T: Copy>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

/// Fills in the vocabulary size once the tokenizer exists.
/// The attention implementation when `--attention` was not given: fused where the CUDA backend
/// will run (it has the fused kernels), materialized on the CPU (whose reference GEMMs are faster
/// with the probabilities stored).
pub fn default_attention(
    model: &mut ModelConfig,
    given: Option<AttentionImpl>,
    device: DeviceChoice,
) {
    if let (ModelConfig::Attention(c), None) = (model, given) {
        c.attention = if crate::backend::uses_cuda(device) {
            AttentionImpl::Fused
        } else {
            AttentionImpl::Materialized
        };
    }
}

pub fn with_vocab(model: &ModelConfig, vocab: usize) -> ModelConfig {
    let mut m = model.clone();
    match &mut m {
        ModelConfig::Attention(c) => c.vocab_size = vocab,
        ModelConfig::Lstm(c) => c.vocab_size = vocab,
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn plan_of(args: &[&str]) -> Result<Plan> {
        let mut v = vec!["robo-poet", "train"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v).unwrap().command {
            Command::Train(a) => plan(&a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn seed_preset_is_exactly_the_seed_model() {
        let p = plan_of(&["--preset", "seed"]).unwrap();
        let ModelConfig::Attention(c) = &p.model else {
            panic!("not attention")
        };
        assert_eq!(
            (c.style, c.n_layers, c.n_heads, c.d_model, c.seq_len, c.pos_emb),
            (AttentionStyle::Seed, 1, 1, 256, 128, false)
        );
        assert!(c.dropout > 0.0, "the seed has dropout after softmax");
        assert_eq!(p.train.batch, 4);
        assert_eq!(p.length, Length::Epochs(25.0));
        let p = plan_of(&["--preset", "seed", "--pos-emb"]).unwrap();
        let ModelConfig::Attention(c) = &p.model else {
            panic!()
        };
        assert!(c.pos_emb);
    }

    #[test]
    fn flags_override_presets_and_misuse_is_an_error() {
        let p = plan_of(&[
            "--layers",
            "2",
            "--heads",
            "8",
            "--d-model",
            "64",
            "--batch",
            "3",
            "--steps",
            "7",
            "--lr",
            "0.01",
        ])
        .unwrap();
        let ModelConfig::Attention(c) = &p.model else {
            panic!()
        };
        assert_eq!(
            (c.style, c.n_layers, c.n_heads, c.d_model),
            (AttentionStyle::Gpt, 2, 8, 64)
        );
        assert_eq!(
            (p.train.batch, p.length, p.train.lr),
            (3, Length::Steps(7), 0.01)
        );
        let p = plan_of(&["--model", "lstm", "--hidden", "32", "--epochs", "2"]).unwrap();
        assert!(matches!(&p.model, ModelConfig::Lstm(c) if c.hidden == 32));
        assert_eq!(p.length, Length::Epochs(2.0));
        for bad in [
            &["--model", "lstm", "--preset", "seed"][..],
            &["--model", "lstm", "--heads", "2"],
            &["--hidden", "8"],
            &["--steps", "0"],
            &["--epochs=-1"],
            &["--epochs", "-1"],
            &["--lr", "0"],
            &["--lr", "-0.01"],
            &["--clip", "-1"],
            &["--steps", "2000000000"],
        ] {
            let e = plan_of(bad).unwrap_err().to_string();
            assert!(e.contains("--"), "{bad:?}: {e}");
        }
        assert!(
            Cli::try_parse_from(["robo-poet", "train", "--steps", "3", "--epochs", "2"]).is_err()
        );
        let e = plan_of(&["--lr", "-0.01"]).unwrap_err().to_string();
        assert_eq!(e, "--lr must be positive (got -0.01)");
        assert!(epochs_to_steps(1e30, 100)
            .unwrap_err()
            .to_string()
            .contains("--epochs 1e30 is 1.000e32 steps"));
        assert_eq!(epochs_to_steps(0.001, 100).unwrap(), 1);
    }
}
