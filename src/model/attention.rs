//! The attention language model, in two styles:
//! - `seed`: exactly the seed's model. Token embedding (learned position embedding only with
//!   `pos_emb`), then per layer separate Q/K/V projections, scaled causal softmax, dropout after
//!   softmax, weighted values; then the vocabulary projection. No layernorm, output projection,
//!   MLP or residual.
//! - `gpt`: a small GPT-style stack. Token + learned position embeddings, N pre-layernorm blocks
//!   (multi-head attention with output projection, MLP 4C with GELU, residuals), final
//!   layernorm, vocabulary projection.

use super::{DropoutCtx, Init, LossPass, Model, ModelConfig, Param};
use crate::backend::Backend;
use crate::philox::DropoutKey;
use crate::tensor::{Category, ParamIds, TensorId, TensorTable};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttentionStyle {
    Seed,
    Gpt,
}

/// How the attention layer is computed (the same math either way; the tensor table differs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttentionImpl {
    /// Step by step, the probabilities (B, NH, T, T) saved for the backward pass, a T×T scratch
    /// shared by the layers: the seed's exact structure.
    #[default]
    Materialized,
    /// Flash-style: nothing T×T; the output and the row logsumexp (B, NH, T) saved, the
    /// probabilities recomputed in the backward pass (one launch forward, three backward).
    Fused,
}

impl std::fmt::Display for AttentionImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttentionImpl::Materialized => "materialized",
            AttentionImpl::Fused => "fused",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionConfig {
    pub style: AttentionStyle,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub pos_emb: bool,
    /// Dropout on the attention weights, after softmax.
    pub dropout: f32,
    /// How attention is computed (checkpoints from before the option are materialized).
    #[serde(default)]
    pub attention: AttentionImpl,
}

impl AttentionConfig {
    pub fn describe(&self) -> String {
        let style = match self.style {
            AttentionStyle::Seed => "seed attention",
            AttentionStyle::Gpt => "GPT-style attention",
        };
        format!(
            "{style}: {} layer(s), {} head(s), d_model {}, seq_len {}, vocab {}, {}position embeddings, attention dropout {}, {} attention",
            self.n_layers,
            self.n_heads,
            self.d_model,
            self.seq_len,
            self.vocab_size,
            if self.pos_emb { "learned " } else { "no " },
            self.dropout,
            self.attention
        )
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.seq_len > 0, "--seq-len must be at least 1");
        anyhow::ensure!(self.d_model > 0, "--d-model must be at least 1");
        anyhow::ensure!(self.n_layers > 0, "--layers must be at least 1");
        anyhow::ensure!(self.n_heads > 0, "--heads must be at least 1");
        anyhow::ensure!(
            self.d_model.is_multiple_of(self.n_heads),
            "--d-model {} is not divisible by --heads {}: each head gets d_model / heads channels",
            self.d_model,
            self.n_heads
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.dropout),
            "--dropout must be in [0, 1), got {}",
            self.dropout
        );
        anyhow::ensure!(self.vocab_size > 0, "the vocabulary is empty");
        if self.attention == AttentionImpl::Fused {
            let hs = self.d_model / self.n_heads;
            let max = crate::gpu::kernels::fused_max_head_size(
                crate::gpu::device::SHARED_OPTIN_SM90 as usize,
            );
            anyhow::ensure!(
                hs <= max,
                "--attention fused takes head sizes up to {max} (d_model / heads = {hs} here: the GPU kernels' tiles must fit 227 KiB of shared memory); use more --heads or --attention materialized"
            );
        }
        Ok(())
    }
}

struct Linear {
    w: ParamIds,
    b: ParamIds,
}

impl Linear {
    /// out = inp · Wᵀ + b.
    fn forward(&self, be: &mut dyn Backend, out: TensorId, inp: TensorId) {
        be.matmul_forward(out, inp, self.w.param, Some(self.b.param));
    }
    /// dinp += dout · W; dW, db += their gradients.
    fn backward(&self, be: &mut dyn Backend, dinp: TensorId, dout: TensorId, inp: TensorId) {
        be.matmul_backward(
            Some(dinp),
            self.w.grad,
            Some(self.b.grad),
            dout,
            inp,
            self.w.param,
        );
    }
}

struct Norm {
    w: ParamIds,
    b: ParamIds,
    out: TensorId,
    mean: TensorId,
    rstd: TensorId,
    dout: TensorId,
}

/// One layer's tensors. GPT-only parts are None in the seed style.
struct Layer {
    ln1: Option<Norm>,
    q: Linear,
    k: Linear,
    v: Linear,
    proj: Option<Linear>,
    ln2: Option<Norm>,
    fc: Option<Linear>,
    fc_proj: Option<Linear>,
    // activations (B,T,C) unless noted
    qa: TensorId,
    ka: TensorId,
    va: TensorId,
    /// (B,NH,T,T), materialized attention only.
    probs: Option<TensorId>,
    /// (B,NH,T), fused attention only: each row's logsumexp.
    lse: Option<TensorId>,
    att: TensorId,
    attproj: Option<TensorId>,
    res1: Option<TensorId>,
    fch: Option<TensorId>,      // (B,T,4C)
    fch_gelu: Option<TensorId>, // (B,T,4C)
    fcproj: Option<TensorId>,
    res2: Option<TensorId>,
    // gradients of activations (workspace)
    dqa: TensorId,
    dka: TensorId,
    dva: TensorId,
    datt: TensorId,
    dres1: Option<TensorId>,
    dfch: Option<TensorId>,
    dfch_gelu: Option<TensorId>,
    dres2: Option<TensorId>,
}

impl Layer {
    /// The layer's output activation and its gradient.
    fn output(&self) -> (TensorId, TensorId) {
        match (self.res2, self.dres2) {
            (Some(r), Some(d)) => (r, d),
            _ => (self.att, self.datt),
        }
    }
}

pub struct AttentionModel {
    cfg: ModelConfig,
    c: AttentionConfig,
    batch: usize,
    table: TensorTable,
    params: Vec<Param>,
    wte: ParamIds,
    wpe: Option<ParamIds>,
    layers: Vec<Layer>,
    ln_f: Option<Norm>,
    head: Linear,
    tokens: TensorId,
    targets: TensorId,
    emb: TensorId,
    demb: TensorId,
    /// Workspace of every layer's attention: (B,NH,T,T) materialized, (B,NH,T) fused (the rows'
    /// dO · O of the backward pass).
    attn_scratch: TensorId,
    logits: TensorId,
    dlogits: TensorId,
    losses: TensorId,
}

struct Builder {
    table: TensorTable,
    params: Vec<Param>,
}

impl Builder {
    fn param(&mut self, name: String, shape: &[usize], decay: bool, init: Init) -> ParamIds {
        let ids = self.table.add_param(&name, shape, decay);
        self.params.push(Param { name, ids, init });
        ids
    }
    fn linear(&mut self, name: &str, oc: usize, ic: usize, std: f32) -> Linear {
        Linear {
            w: self.param(format!("{name}.weight"), &[oc, ic], true, Init::Normal(std)),
            b: self.param(format!("{name}.bias"), &[oc], false, Init::Zeros),
        }
    }
    fn act(&mut self, name: String, shape: &[usize]) -> TensorId {
        self.table.add(name, Category::Activation, shape)
    }
    fn work(&mut self, name: String, shape: &[usize]) -> TensorId {
        self.table.add(name, Category::Workspace, shape)
    }
    fn norm(&mut self, name: &str, b: usize, t: usize, c: usize) -> Norm {
        Norm {
            w: self.param(format!("{name}.weight"), &[c], false, Init::Ones),
            b: self.param(format!("{name}.bias"), &[c], false, Init::Zeros),
            out: self.act(format!("{name}.out"), &[b, t, c]),
            mean: self.act(format!("{name}.mean"), &[b, t]),
            rstd: self.act(format!("{name}.rstd"), &[b, t]),
            dout: self.work(format!("d.{name}.out"), &[b, t, c]),
        }
    }
}

impl AttentionModel {
    pub fn new(c: AttentionConfig, batch: usize) -> Self {
        let (b, t, d, v) = (batch, c.seq_len, c.d_model, c.vocab_size);
        let nh = c.n_heads;
        let gpt = c.style == AttentionStyle::Gpt;
        let mut bd = Builder {
            table: TensorTable::new(),
            params: vec![],
        };
        // GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 L).
        let std = 0.02;
        let resid_std = std / (2.0 * c.n_layers as f32).sqrt();
        let wte = bd.param(
            "wte".into(),
            &[v, d],
            true,
            Init::Normal(if gpt { std } else { 1.0 }),
        );
        let wpe = c.pos_emb.then(|| {
            bd.param(
                "wpe".into(),
                &[t, d],
                true,
                Init::Normal(if gpt { std } else { 1.0 }),
            )
        });
        let tokens = bd.table.add_u32("tokens", Category::Input, &[b, t]);
        let targets = bd.table.add_u32("targets", Category::Input, &[b, t]);
        let emb = bd.act("emb".into(), &[b, t, d]);
        let demb = bd.work("d.emb".into(), &[b, t, d]);
        // One scratch shared by every layer's attention, forward and backward: T×T materialized,
        // a value per row fused.
        let fused = c.attention == AttentionImpl::Fused;
        let attn_scratch = if fused {
            bd.work("attn.delta".into(), &[b, nh, t])
        } else {
            bd.work("attn.scratch".into(), &[b, nh, t, t])
        };
        // The seed style uses PyTorch's Linear default, U(±1/sqrt(in)), expressed as a normal of
        // the same variance so both styles share one init path.
        let seed_std = 1.0 / (3.0 * d as f32).sqrt();
        let qkv_std = if gpt { std } else { seed_std };
        let mut layers = vec![];
        for l in 0..c.n_layers {
            let p = format!("blocks.{l}");
            let ln1 = gpt.then(|| bd.norm(&format!("{p}.ln1"), b, t, d));
            let q = bd.linear(&format!("{p}.attn.q"), d, d, qkv_std);
            let k = bd.linear(&format!("{p}.attn.k"), d, d, qkv_std);
            let vv = bd.linear(&format!("{p}.attn.v"), d, d, qkv_std);
            let proj = gpt.then(|| bd.linear(&format!("{p}.attn.proj"), d, d, resid_std));
            let ln2 = gpt.then(|| bd.norm(&format!("{p}.ln2"), b, t, d));
            let fc = gpt.then(|| bd.linear(&format!("{p}.mlp.fc"), 4 * d, d, std));
            let fc_proj = gpt.then(|| bd.linear(&format!("{p}.mlp.proj"), d, 4 * d, resid_std));
            let qa = bd.act(format!("{p}.q"), &[b, t, d]);
            let ka = bd.act(format!("{p}.k"), &[b, t, d]);
            let va = bd.act(format!("{p}.v"), &[b, t, d]);
            let probs = (!fused).then(|| bd.act(format!("{p}.attn.probs"), &[b, nh, t, t]));
            let lse = fused.then(|| bd.act(format!("{p}.attn.lse"), &[b, nh, t]));
            let att = bd.act(format!("{p}.attn.out"), &[b, t, d]);
            let attproj = gpt.then(|| bd.work(format!("{p}.attn.proj.out"), &[b, t, d]));
            let res1 = gpt.then(|| bd.act(format!("{p}.res1"), &[b, t, d]));
            let fch = gpt.then(|| bd.act(format!("{p}.mlp.fc.out"), &[b, t, 4 * d]));
            let fch_gelu = gpt.then(|| bd.act(format!("{p}.mlp.gelu.out"), &[b, t, 4 * d]));
            let fcproj = gpt.then(|| bd.work(format!("{p}.mlp.proj.out"), &[b, t, d]));
            let res2 = gpt.then(|| bd.act(format!("{p}.res2"), &[b, t, d]));
            let dqa = bd.work(format!("d.{p}.q"), &[b, t, d]);
            let dka = bd.work(format!("d.{p}.k"), &[b, t, d]);
            let dva = bd.work(format!("d.{p}.v"), &[b, t, d]);
            let datt = bd.work(format!("d.{p}.attn.out"), &[b, t, d]);
            let dres1 = gpt.then(|| bd.work(format!("d.{p}.res1"), &[b, t, d]));
            let dfch = gpt.then(|| bd.work(format!("d.{p}.mlp.fc.out"), &[b, t, 4 * d]));
            let dfch_gelu = gpt.then(|| bd.work(format!("d.{p}.mlp.gelu.out"), &[b, t, 4 * d]));
            let dres2 = gpt.then(|| bd.work(format!("d.{p}.res2"), &[b, t, d]));
            layers.push(Layer {
                ln1,
                q,
                k,
                v: vv,
                proj,
                ln2,
                fc,
                fc_proj,
                qa,
                ka,
                va,
                probs,
                lse,
                att,
                attproj,
                res1,
                fch,
                fch_gelu,
                fcproj,
                res2,
                dqa,
                dka,
                dva,
                datt,
                dres1,
                dfch,
                dfch_gelu,
                dres2,
            });
        }
        let ln_f = gpt.then(|| bd.norm("ln_f", b, t, d));
        let head = bd.linear("lm_head", v, d, if gpt { std } else { seed_std });
        let logits = bd.act("logits".into(), &[b, t, v]);
        let dlogits = bd.work("d.logits".into(), &[b, t, v]);
        let losses = bd.act("losses".into(), &[b, t]);
        AttentionModel {
            cfg: ModelConfig::Attention(c.clone()),
            c,
            batch,
            table: bd.table,
            params: bd.params,
            wte,
            wpe,
            layers,
            ln_f,
            head,
            tokens,
            targets,
            emb,
            demb,
            attn_scratch,
            logits,
            dlogits,
            losses,
        }
    }

    fn dropout_key(&self, ctx: Option<DropoutCtx>, layer: usize) -> Option<DropoutKey> {
        ctx.filter(|_| self.c.dropout > 0.0).map(|d| DropoutKey {
            p: self.c.dropout,
            seed: d.seed,
            step: d.step,
            tensor: layer as u32,
        })
    }
}

fn some<T: Copy>(x: &Option<T>) -> T {
    x.expect("GPT-only tensor used by the seed style")
}

impl Model for AttentionModel {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn attention_probs(&self) -> Vec<TensorId> {
        self.layers.iter().filter_map(|l| l.probs).collect()
    }
    fn attention_lse(&self) -> Vec<(TensorId, TensorId, TensorId)> {
        self.layers
            .iter()
            .filter_map(|l| l.lse.map(|lse| (l.qa, l.ka, lse)))
            .collect()
    }
    fn table(&self) -> &TensorTable {
        &self.table
    }
    fn params(&self) -> &[Param] {
        &self.params
    }
    fn batch_shape(&self) -> (usize, usize) {
        (self.batch, self.c.seq_len)
    }

    fn set_batch(&self, be: &mut dyn Backend, inputs: &[u32], targets: &[u32]) {
        be.write_inputs(&[(self.tokens, inputs), (self.targets, targets)]);
    }

    fn forward_with(&self, be: &mut dyn Backend, dropout: Option<DropoutCtx>, loss: LossPass) {
        be.embedding_forward(
            self.emb,
            self.tokens,
            self.wte.param,
            self.wpe.map(|p| p.param),
        );
        let mut x = self.emb;
        // A GPT block's closing residual add is fused with the layernorm that reads its result:
        // the next block's ln1, or ln_f after the last block. `normed` says whether x's ln1 has
        // been computed that way already.
        let mut normed = false;
        let n_layers = self.layers.len();
        for (l, ly) in self.layers.iter().enumerate() {
            be.range_push(&format!("layer {l} forward"));
            let inp = match &ly.ln1 {
                Some(n) => {
                    if !normed {
                        be.layernorm_forward(n.out, n.mean, n.rstd, x, n.w.param, n.b.param);
                    }
                    n.out
                }
                None => x,
            };
            be.qkv_forward(
                [ly.qa, ly.ka, ly.va],
                inp,
                [ly.q.w.param, ly.k.w.param, ly.v.w.param],
                [Some(ly.q.b.param), Some(ly.k.b.param), Some(ly.v.b.param)],
            );
            match (ly.probs, ly.lse) {
                (Some(probs), _) => be.attention_forward(
                    ly.att,
                    probs,
                    ly.qa,
                    ly.ka,
                    ly.va,
                    self.attn_scratch,
                    self.dropout_key(dropout, l),
                ),
                (None, Some(lse)) => be.attention_fused_forward(
                    ly.att,
                    lse,
                    ly.qa,
                    ly.ka,
                    ly.va,
                    self.dropout_key(dropout, l),
                ),
                (None, None) => unreachable!("a layer saves probabilities or a logsumexp"),
            }
            normed = false;
            if let (Some(proj), Some(ln2), Some(fc), Some(fp)) =
                (&ly.proj, &ly.ln2, &ly.fc, &ly.fc_proj)
            {
                let (attproj, res1, fch, fch_gelu, fcproj, res2) = (
                    some(&ly.attproj),
                    some(&ly.res1),
                    some(&ly.fch),
                    some(&ly.fch_gelu),
                    some(&ly.fcproj),
                    some(&ly.res2),
                );
                proj.forward(be, attproj, ly.att);
                be.add_layernorm_forward(
                    res1,
                    ln2.out,
                    ln2.mean,
                    ln2.rstd,
                    x,
                    attproj,
                    ln2.w.param,
                    ln2.b.param,
                );
                be.linear_gelu_forward(fch, fch_gelu, ln2.out, fc.w.param, Some(fc.b.param));
                fp.forward(be, fcproj, fch_gelu);
                // res2 = res1 + fcproj, with the layernorm that reads it
                let next = if l + 1 < n_layers {
                    self.layers[l + 1].ln1.as_ref()
                } else {
                    self.ln_f.as_ref()
                };
                match next {
                    Some(n) => {
                        be.add_layernorm_forward(
                            res2, n.out, n.mean, n.rstd, res1, fcproj, n.w.param, n.b.param,
                        );
                        normed = true;
                    }
                    None => be.add(res2, res1, fcproj),
                }
            }
            x = ly.output().0;
            be.range_pop();
        }
        if let Some(n) = &self.ln_f {
            if !normed {
                be.layernorm_forward(n.out, n.mean, n.rstd, x, n.w.param, n.b.param);
            }
            x = n.out;
        }
        self.head.forward(be, self.logits, x);
        self.loss_op(be, loss);
    }

    fn dlogits(&self) -> TensorId {
        self.dlogits
    }

    fn backward_from_logits(&self, be: &mut dyn Backend, dropout: Option<DropoutCtx>) {
        let last = self.layers.last().expect("at least one layer").output();
        let (x, dx) = match &self.ln_f {
            Some(n) => (n.out, n.dout),
            None => last,
        };
        self.head.backward(be, dx, self.dlogits, x);
        if let Some(n) = &self.ln_f {
            be.layernorm_backward(
                last.1, n.w.grad, n.b.grad, n.dout, last.0, n.w.param, n.mean, n.rstd,
            );
        }
        for l in (0..self.layers.len()).rev() {
            let ly = &self.layers[l];
            be.range_push(&format!("layer {l} backward"));
            let (x_in, dx_in) = if l == 0 {
                (self.emb, self.demb)
            } else {
                self.layers[l - 1].output()
            };
            if let (Some(proj), Some(ln2), Some(fc), Some(fp)) =
                (&ly.proj, &ly.ln2, &ly.fc, &ly.fc_proj)
            {
                let (res1, fch, fch_gelu, dres1, dfch, dfch_gelu, dres2) = (
                    some(&ly.res1),
                    some(&ly.fch),
                    some(&ly.fch_gelu),
                    some(&ly.dres1),
                    some(&ly.dfch),
                    some(&ly.dfch_gelu),
                    some(&ly.dres2),
                );
                be.linear_gelu_backward(
                    dfch,
                    fp.w.grad,
                    Some(fp.b.grad),
                    dres2,
                    fch_gelu,
                    fp.w.param,
                    fch,
                    dfch_gelu,
                );
                fc.backward(be, ln2.dout, dfch, ln2.out);
                be.layernorm_backward_residual(
                    dres1,
                    ln2.w.grad,
                    ln2.b.grad,
                    ln2.dout,
                    res1,
                    ln2.w.param,
                    ln2.mean,
                    ln2.rstd,
                    dres2,
                );
                proj.backward(be, ly.datt, dres1, ly.att);
            }
            match (ly.probs, ly.lse) {
                (Some(probs), _) => be.attention_backward(
                    ly.dqa,
                    ly.dka,
                    ly.dva,
                    ly.datt,
                    ly.qa,
                    ly.ka,
                    ly.va,
                    probs,
                    self.attn_scratch,
                    self.dropout_key(dropout, l),
                ),
                (None, Some(lse)) => be.attention_fused_backward(
                    ly.dqa,
                    ly.dka,
                    ly.dva,
                    ly.datt,
                    ly.qa,
                    ly.ka,
                    ly.va,
                    ly.att,
                    lse,
                    self.attn_scratch,
                    self.dropout_key(dropout, l),
                ),
                (None, None) => unreachable!("a layer saves probabilities or a logsumexp"),
            }
            let (inp, dinp) = match &ly.ln1 {
                Some(n) => (n.out, n.dout),
                None => (x_in, dx_in),
            };
            be.qkv_backward(
                dinp,
                [ly.q.w.grad, ly.k.w.grad, ly.v.w.grad],
                [Some(ly.q.b.grad), Some(ly.k.b.grad), Some(ly.v.b.grad)],
                [ly.dqa, ly.dka, ly.dva],
                inp,
                [ly.q.w.param, ly.k.w.param, ly.v.w.param],
            );
            if let Some(n) = &ly.ln1 {
                be.layernorm_backward_residual(
                    dx_in,
                    n.w.grad,
                    n.b.grad,
                    n.dout,
                    x_in,
                    n.w.param,
                    n.mean,
                    n.rstd,
                    some(&ly.dres1),
                );
            }
            be.range_pop();
        }
        be.embedding_backward(
            self.wte.grad,
            self.wpe.map(|p| p.grad),
            self.demb,
            self.tokens,
        );
    }

    fn logits(&self) -> TensorId {
        self.logits
    }
    fn logits_row(&self, b: usize, t: usize) -> usize {
        b * self.c.seq_len + t
    }
    fn losses(&self) -> TensorId {
        self.losses
    }
    fn targets(&self) -> TensorId {
        self.targets
    }
}
