//! The LSTM baseline: token embedding (E), N LSTM layers (H), vocabulary projection.
//! Internally time-major: the batch (B, T) is uploaded transposed to (T, B) so that every
//! timestep is one contiguous block (see `ops::lstm`).

use super::{DropoutCtx, Init, LossPass, Model, ModelConfig, Param};
use crate::backend::Backend;
use crate::tensor::{Category, ParamIds, TensorId, TensorTable};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LstmConfig {
    pub vocab_size: usize,
    pub seq_len: usize,
    pub embed: usize,
    pub hidden: usize,
    pub n_layers: usize,
}

impl LstmConfig {
    pub fn describe(&self) -> String {
        format!(
            "LSTM: {} layer(s), hidden {}, embedding {}, seq_len {}, vocab {}",
            self.n_layers, self.hidden, self.embed, self.seq_len, self.vocab_size
        )
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.seq_len > 0, "--seq-len must be at least 1");
        anyhow::ensure!(self.hidden > 0, "--hidden must be at least 1");
        anyhow::ensure!(self.embed > 0, "--embed must be at least 1");
        anyhow::ensure!(self.n_layers > 0, "--layers must be at least 1");
        anyhow::ensure!(self.vocab_size > 0, "the vocabulary is empty");
        Ok(())
    }
}

struct Layer {
    w_ih: ParamIds,
    w_hh: ParamIds,
    bias: ParamIds,
    h: TensorId,     // (T,B,H)
    c: TensorId,     // (T,B,H)
    gates: TensorId, // (T,B,4H)
    dh: TensorId,
    dgates: TensorId,
}

pub struct LstmModel {
    cfg: ModelConfig,
    c: LstmConfig,
    batch: usize,
    table: TensorTable,
    params: Vec<Param>,
    wte: ParamIds,
    layers: Vec<Layer>,
    head_w: ParamIds,
    head_b: ParamIds,
    tokens: TensorId,
    targets: TensorId,
    emb: TensorId,
    demb: TensorId,
    logits: TensorId,
    dlogits: TensorId,
    losses: TensorId,
}

impl LstmModel {
    pub fn new(c: LstmConfig, batch: usize) -> Self {
        let (b, t, e, h, v) = (batch, c.seq_len, c.embed, c.hidden, c.vocab_size);
        let mut table = TensorTable::new();
        let mut params = vec![];
        let mut param =
            |table: &mut TensorTable, name: String, shape: &[usize], decay: bool, init: Init| {
                let ids = table.add_param(&name, shape, decay);
                params.push(Param { name, ids, init });
                ids
            };
        // PyTorch's defaults: Embedding N(0, 1); LSTM and Linear U(±1/sqrt(fan)).
        let k = 1.0 / (h as f32).sqrt();
        let wte = param(&mut table, "wte".into(), &[v, e], true, Init::Normal(1.0));
        let mut specs = vec![];
        for l in 0..c.n_layers {
            let inp = if l == 0 { e } else { h };
            let w_ih = param(
                &mut table,
                format!("lstm.{l}.w_ih"),
                &[4 * h, inp],
                true,
                Init::Uniform(k),
            );
            let w_hh = param(
                &mut table,
                format!("lstm.{l}.w_hh"),
                &[4 * h, h],
                true,
                Init::Uniform(k),
            );
            let bias = param(
                &mut table,
                format!("lstm.{l}.bias"),
                &[4 * h],
                false,
                Init::Uniform(k),
            );
            specs.push((w_ih, w_hh, bias));
        }
        let head_w = param(
            &mut table,
            "lm_head.weight".into(),
            &[v, h],
            true,
            Init::Uniform(k),
        );
        let head_b = param(
            &mut table,
            "lm_head.bias".into(),
            &[v],
            false,
            Init::Uniform(k),
        );
        let tokens = table.add_u32("tokens", Category::Input, &[t, b]);
        let targets = table.add_u32("targets", Category::Input, &[t, b]);
        let emb = table.add("emb", Category::Activation, &[t, b, e]);
        let demb = table.add("d.emb", Category::Workspace, &[t, b, e]);
        let layers = specs
            .into_iter()
            .enumerate()
            .map(|(l, (w_ih, w_hh, bias))| Layer {
                w_ih,
                w_hh,
                bias,
                h: table.add(format!("lstm.{l}.h"), Category::Activation, &[t, b, h]),
                c: table.add(format!("lstm.{l}.c"), Category::Activation, &[t, b, h]),
                gates: table.add(
                    format!("lstm.{l}.gates"),
                    Category::Activation,
                    &[t, b, 4 * h],
                ),
                dh: table.add(format!("d.lstm.{l}.h"), Category::Workspace, &[t, b, h]),
                dgates: table.add(
                    format!("d.lstm.{l}.gates"),
                    Category::Workspace,
                    &[t, b, 4 * h],
                ),
            })
            .collect();
        let logits = table.add("logits", Category::Activation, &[t, b, v]);
        let dlogits = table.add("d.logits", Category::Workspace, &[t, b, v]);
        let losses = table.add("losses", Category::Activation, &[t, b]);
        LstmModel {
            cfg: ModelConfig::Lstm(c.clone()),
            c,
            batch,
            table,
            params,
            wte,
            layers,
            head_w,
            head_b,
            tokens,
            targets,
            emb,
            demb,
            logits,
            dlogits,
            losses,
        }
    }

    fn transpose(&self, x: &[u32]) -> Vec<u32> {
        let (b, t) = (self.batch, self.c.seq_len);
        assert_eq!(x.len(), b * t, "LSTM batch: expected {b}x{t} tokens");
        let mut out = vec![0; b * t];
        for bi in 0..b {
            for ti in 0..t {
                out[ti * b + bi] = x[bi * t + ti];
            }
        }
        out
    }
}

impl Model for LstmModel {
    fn config(&self) -> &ModelConfig {
        &self.cfg
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
        let (i, t) = (self.transpose(inputs), self.transpose(targets));
        be.write_inputs(&[(self.tokens, &i), (self.targets, &t)]);
    }

    fn forward_with(&self, be: &mut dyn Backend, _dropout: Option<DropoutCtx>, loss: LossPass) {
        be.embedding_forward(self.emb, self.tokens, self.wte.param, None);
        let mut x = self.emb;
        for (l, ly) in self.layers.iter().enumerate() {
            be.range_push(&format!("layer {l} forward"));
            be.lstm_forward(
                ly.h,
                ly.c,
                ly.gates,
                x,
                ly.w_ih.param,
                ly.w_hh.param,
                ly.bias.param,
            );
            x = ly.h;
            be.range_pop();
        }
        be.matmul_forward(self.logits, x, self.head_w.param, Some(self.head_b.param));
        self.loss_op(be, loss);
    }

    fn dlogits(&self) -> TensorId {
        self.dlogits
    }

    fn backward_from_logits(&self, be: &mut dyn Backend, _dropout: Option<DropoutCtx>) {
        let top = self.layers.last().expect("at least one layer");
        be.matmul_backward(
            Some(top.dh),
            self.head_w.grad,
            Some(self.head_b.grad),
            self.dlogits,
            top.h,
            self.head_w.param,
        );
        for l in (0..self.layers.len()).rev() {
            let ly = &self.layers[l];
            be.range_push(&format!("layer {l} backward"));
            let (x, dx) = if l == 0 {
                (self.emb, self.demb)
            } else {
                (self.layers[l - 1].h, self.layers[l - 1].dh)
            };
            be.lstm_backward(
                Some(dx),
                ly.w_ih.grad,
                ly.w_hh.grad,
                ly.bias.grad,
                ly.dgates,
                ly.dh,
                ly.h,
                ly.c,
                ly.gates,
                x,
                ly.w_ih.param,
                ly.w_hh.param,
            );
            be.range_pop();
        }
        be.embedding_backward(self.wte.grad, None, self.demb, self.tokens);
    }

    fn logits(&self) -> TensorId {
        self.logits
    }
    fn logits_row(&self, b: usize, t: usize) -> usize {
        t * self.batch + b
    }
    fn losses(&self) -> TensorId {
        self.losses
    }
    fn targets(&self) -> TensorId {
        self.targets
    }
}
