//! The two language models, written once against the `Backend` trait.
//!
//! Both map a batch of token windows (B, T) to next-token logits and a mean cross-entropy loss.
//! Each model declares every buffer it needs in a `TensorTable` when it is built for a given
//! batch size, and its parameters carry documented names (they are the safetensors tensor names
//! of a checkpoint; see README "Checkpoint format").

pub mod attention;
pub mod flops;
pub mod footprint;
pub mod lstm;
pub mod memory;

use crate::backend::Backend;
use crate::rng::Rng;
use crate::tensor::{ParamIds, TensorId, TensorTable};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Causal self-attention (the seed's layer, or a GPT-style stack of blocks).
    Attention,
    /// The LSTM baseline.
    Lstm,
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelKind::Attention => "attention",
            ModelKind::Lstm => "lstm",
        })
    }
}

/// Everything that fixes a model's parameter shapes and computation (not the batch size).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelConfig {
    Attention(attention::AttentionConfig),
    Lstm(lstm::LstmConfig),
}

impl ModelConfig {
    pub fn kind(&self) -> ModelKind {
        match self {
            ModelConfig::Attention(_) => ModelKind::Attention,
            ModelConfig::Lstm(_) => ModelKind::Lstm,
        }
    }
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Attention(c) => c.vocab_size,
            ModelConfig::Lstm(c) => c.vocab_size,
        }
    }
    /// The context length the model is trained on (window length T).
    pub fn seq_len(&self) -> usize {
        match self {
            ModelConfig::Attention(c) => c.seq_len,
            ModelConfig::Lstm(c) => c.seq_len,
        }
    }
    /// A one-line description for logs.
    pub fn describe(&self) -> String {
        match self {
            ModelConfig::Attention(c) => c.describe(),
            ModelConfig::Lstm(c) => c.describe(),
        }
    }
    /// Checks the configuration, with a user-facing message on failure.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self {
            ModelConfig::Attention(c) => c.validate(),
            ModelConfig::Lstm(c) => c.validate(),
        }
    }
}

/// One trainable tensor: its ids and how to initialise it.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub ids: ParamIds,
    pub init: Init,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Normal(f32),
    Uniform(f32),
}

impl Init {
    pub fn sample(self, n: usize, rng: &mut Rng) -> Vec<f32> {
        match self {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => (0..n).map(|_| (rng.normal() * std as f64) as f32).collect(),
            Init::Uniform(a) => (0..n)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * a as f64) as f32)
                .collect(),
        }
    }
}

/// Dropout context of a training step: the run seed and the optimizer step.
#[derive(Clone, Copy, Debug)]
pub struct DropoutCtx {
    pub seed: u64,
    pub step: u64,
}

/// How a forward pass ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossPass {
    /// The per-position losses only (evaluation, checks).
    Forward,
    /// Training: the losses and, in the same op, their gradient dlogits at this scale (1 /
    /// scored targets), so the backward starts below the loss.
    ForwardBackward(f32),
}

/// A language model bound to a batch size: its tensor table and how to run it.
pub trait Model: Send {
    fn config(&self) -> &ModelConfig;
    fn table(&self) -> &TensorTable;
    fn params(&self) -> &[Param];
    /// Batch geometry (B, T).
    fn batch_shape(&self) -> (usize, usize);
    /// Uploads a batch: inputs and targets (B, T) row-major; IGNORE targets are not scored.
    fn set_batch(&self, be: &mut dyn Backend, inputs: &[u32], targets: &[u32]);

    /// The loss op at the end of the forward pass, as `loss` says.
    fn loss_op(&self, be: &mut dyn Backend, loss: LossPass) {
        match loss {
            LossPass::Forward => {
                be.cross_entropy_forward(self.losses(), self.logits(), self.targets())
            }
            LossPass::ForwardBackward(scale) => be.cross_entropy_forward_backward(
                self.losses(),
                self.dlogits(),
                self.logits(),
                self.targets(),
                scale,
            ),
        }
    }
    /// Forward pass to per-position losses (and with `LossPass::ForwardBackward`, dlogits too:
    /// gradients and workspace must then be zeroed first); dropout only when `dropout` is given.
    fn forward_with(&self, be: &mut dyn Backend, dropout: Option<DropoutCtx>, loss: LossPass);
    /// The backward pass below the loss: from dlogits (already holding the loss's gradient) to
    /// every parameter's gradient. The same `dropout` as the forward.
    fn backward_from_logits(&self, be: &mut dyn Backend, dropout: Option<DropoutCtx>);
    /// The gradient of the logits (workspace).
    fn dlogits(&self) -> TensorId;

    /// Forward pass to per-position losses; dropout only when `dropout` is given (training).
    fn forward(&self, be: &mut dyn Backend, dropout: Option<DropoutCtx>) {
        self.forward_with(be, dropout, LossPass::Forward);
    }
    /// Backward pass of the mean loss (gradients and workspace must be zeroed first); `loss_scale`
    /// is 1 / (number of scored targets). The same `dropout` as the forward.
    fn backward(&self, be: &mut dyn Backend, loss_scale: f32, dropout: Option<DropoutCtx>) {
        be.cross_entropy_backward(self.dlogits(), self.logits(), self.targets(), loss_scale);
        self.backward_from_logits(be, dropout);
    }
    /// A training step's forward and backward (gradients and workspace zeroed first): the loss
    /// and its gradient in one op at the end of the forward, then the backward below it.
    fn train_pass(&self, be: &mut dyn Backend, dropout: DropoutCtx, loss_scale: f32) {
        self.forward_with(be, Some(dropout), LossPass::ForwardBackward(loss_scale));
        self.backward_from_logits(be, Some(dropout));
    }
    /// The logits tensor and the row in it that holds position (b, t).
    fn logits(&self) -> TensorId;
    fn logits_row(&self, b: usize, t: usize) -> usize;
    fn losses(&self) -> TensorId;
    fn targets(&self) -> TensorId;
    /// Each attention layer's probabilities (B, NH, T, T), in layer order (none for an LSTM or
    /// fused attention).
    fn attention_probs(&self) -> Vec<TensorId> {
        Vec::new()
    }
    /// Each fused attention layer's (q, k, lse): what its row check recomputes the probabilities
    /// from (none for an LSTM or materialized attention).
    fn attention_lse(&self) -> Vec<(TensorId, TensorId, TensorId)> {
        Vec::new()
    }
}

/// Builds the model for a batch size.
pub fn build(cfg: &ModelConfig, batch: usize) -> Box<dyn Model> {
    match cfg {
        ModelConfig::Attention(c) => Box::new(attention::AttentionModel::new(c.clone(), batch)),
        ModelConfig::Lstm(c) => Box::new(lstm::LstmModel::new(c.clone(), batch)),
    }
}

/// Initial parameter values, drawn in the table's parameter order from `rng`.
pub fn init_params(model: &dyn Model, rng: &mut Rng) -> Vec<(TensorId, Vec<f32>)> {
    model
        .params()
        .iter()
        .map(|p| {
            let n = model.table().numel(p.ids.param);
            (p.ids.param, p.init.sample(n, rng))
        })
        .collect()
}

/// Counts the scored (non-IGNORE) targets of a batch.
pub fn scored(targets: &[u32]) -> usize {
    targets.iter().filter(|&&t| t != crate::ops::IGNORE).count()
}

#[cfg(test)]
mod tests;
