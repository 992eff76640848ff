//! `robo-poet check`: the seed's validation suite, each line a measurement with its expected
//! range and a verdict. The per-device lines run on every backend given (the CPU, and the GPU when
//! there is one); the finite-difference check runs once, on the CPU; parity needs a GPU.

use super::gradcheck::whole_model_fd;
use super::{attention_probs, in_range, GradNorms, NORM_RANGE, ROW_SUM_TOL};
use crate::backend::{Backend, RowCheck};
use crate::diagnostics::parity::training_parity;
use crate::gpu::Device;
use crate::model::attention::AttentionConfig;
use crate::model::lstm::LstmConfig;
use crate::model::{self, DropoutCtx, Model, ModelConfig};
use crate::philox::DropoutKey;
use crate::rng::Rng;
use crate::sampler::Sampler;
use crate::tensor::{Category, TensorTable};
use crate::train::{train_step, TrainConfig};
use anyhow::Result;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
}

impl Status {
    fn of(ok: bool) -> Status {
        if ok {
            Status::Pass
        } else {
            Status::Fail
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skipped => "SKIPPED",
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    pub check: String,
    pub device: String,
    pub measured: String,
    pub expected: String,
    pub status: Status,
}

/// Every gradient norm of one backward pass, for the report below the table.
#[derive(Clone, Debug, Serialize)]
pub struct NormReport {
    pub device: String,
    /// "at initialisation" or "after N steps".
    pub when: String,
    pub global: f64,
    pub layers: Vec<(String, f64)>,
    pub params: Vec<(String, f64)>,
    /// Gradients with respect to each op's inputs (the `d.*` tensors of the backward pass).
    pub activations: Vec<(String, f64)>,
}

impl NormReport {
    /// Parameter tensors and activation gradients outside [0.1, 10]: warnings, not failures.
    pub fn warnings(&self) -> Vec<String> {
        self.params
            .iter()
            .chain(&self.activations)
            .filter(|(_, n)| !in_range(*n))
            .map(|(name, n)| format!("{name} {n:.3e}"))
            .collect()
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub lines: Vec<Line>,
    pub norms: Vec<NormReport>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.lines.iter().all(|l| l.status != Status::Fail)
    }
    fn push(
        &mut self,
        check: &str,
        device: &str,
        measured: String,
        expected: &str,
        status: Status,
    ) {
        self.lines.push(Line {
            check: check.into(),
            device: device.into(),
            measured,
            expected: expected.into(),
            status,
        });
    }
}

/// What the suite runs on: a model configuration (vocabulary set), its training settings, real
/// training tokens, and how many steps to train before the second gradient-norm measurement.
pub struct Setup<'a> {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub tokens: &'a [u32],
    pub train_steps: u64,
}

/// Makes a backend over a tensor table (the CPU, the GPU...).
pub type BackendFactory<'a> = dyn FnMut(TensorTable) -> Result<Box<dyn Backend>> + 'a;

/// The per-device lines: attention rows, causality, dropout after softmax, gradient norms at
/// initialisation and after `train_steps` steps of training on real data. `on_step` is called
/// after each training step (progress).
pub fn device_checks(
    s: &Setup,
    device: &str,
    make: &mut BackendFactory,
    on_step: &mut dyn FnMut(u64),
    report: &mut Report,
) -> Result<()> {
    let model = model::build(&s.model, s.train.batch);
    let mut be = make(model.table().clone())?;
    let mut rng = Rng::derive(s.train.seed, "init");
    for (id, v) in model::init_params(model.as_ref(), &mut rng) {
        be.write(id, &v);
    }
    let (b, t) = model.batch_shape();
    let mut sampler = Sampler::new(s.train.seed, s.tokens.len(), b, t)?;
    let (inputs, targets) = sampler.batch(0, s.tokens);

    attention_rows(
        model.as_ref(),
        be.as_mut(),
        device,
        &inputs,
        &targets,
        s.train.seed,
        report,
    );
    causal_leakage(
        model.as_ref(),
        be.as_mut(),
        device,
        &inputs,
        &targets,
        s.train.seed,
        report,
    );
    dropout_after_softmax(&s.model, b, device, s.train.seed, make, report)?;

    // Gradient norms: the gradient of step 1 (at initialisation), then training on real batches;
    // the gradient of step N+1 is the one "after N steps" (measured before its update).
    let at_init = train_step(model.as_ref(), be.as_mut(), &s.train, 1, &inputs, &targets);
    norm_lines(
        model.as_ref(),
        be.as_mut(),
        device,
        "at initialisation",
        &at_init.grad_sq,
        report,
    );
    let mut last = at_init.clone();
    for step in 1..=s.train_steps {
        let (i, tg) = sampler.batch(step, s.tokens);
        last = train_step(model.as_ref(), be.as_mut(), &s.train, step + 1, &i, &tg);
        on_step(step);
        if !last.loss.is_finite() {
            break;
        }
    }
    let when = format!("after {} steps", s.train_steps);
    norm_lines(
        model.as_ref(),
        be.as_mut(),
        device,
        &when,
        &last.grad_sq,
        report,
    );
    report.push(
        "training on real data lowers the loss",
        device,
        format!(
            "batch loss {:.4} at step 1, {:.4} at step {}",
            at_init.loss,
            last.loss,
            s.train_steps + 1
        ),
        "lower",
        Status::of(last.loss < at_init.loss),
    );
    Ok(())
}

fn attention_rows(
    model: &dyn Model,
    be: &mut dyn Backend,
    device: &str,
    inputs: &[u32],
    targets: &[u32],
    seed: u64,
    report: &mut Report,
) {
    const CHECK: &str = "attention weights: rows sum to 1, nothing above the diagonal";
    let probs = attention_probs(model);
    let fused = model.attention_lse().len();
    if probs.is_empty() && fused > 0 {
        model.set_batch(be, inputs, targets);
        model.forward(be, Some(DropoutCtx { seed, step: 1 }));
        // Fused attention stores no probabilities: every row's Σ_j exp(s_ij − lse_i) is
        // recomputed from q, k and the saved logsumexp (a kernel on the GPU). Tiles above the
        // diagonal are never computed (the causal leakage line checks causality).
        let RowCheck {
            max_dev,
            bad_rows: bad,
            rows,
        } = super::attention_row_check(model, be).expect("an attention model");
        report.push(
            CHECK,
            device,
            format!(
                "fused: max |Σ exp(s − lse) − 1| {max_dev:.2e} over {rows} rows of {fused} layer(s), {bad} over tolerance; nothing above the diagonal is computed"
            ),
            &format!("≤ {ROW_SUM_TOL:.0e}"),
            Status::of(bad == 0 && max_dev <= ROW_SUM_TOL),
        );
        return;
    }
    if probs.is_empty() {
        report.push(
            CHECK,
            device,
            "an LSTM has no attention weights".into(),
            "-",
            Status::Skipped,
        );
        return;
    }
    model.set_batch(be, inputs, targets);
    model.forward(be, Some(DropoutCtx { seed, step: 1 }));
    // The sums come from the backend's own reduction (a kernel on the GPU).
    let RowCheck {
        max_dev,
        bad_rows: bad,
        rows,
    } = super::attention_row_check(model, be).expect("an attention model");
    let mut above = 0.0f32;
    for (_, id) in &probs {
        let t = *be.table().shape(*id).last().unwrap();
        for (r, row) in be.read(*id).chunks_exact(t.max(1)).enumerate() {
            for &p in &row[r % t + 1..] {
                above = above.max(p.abs());
            }
        }
    }
    report.push(
        CHECK,
        device,
        format!(
            "max |Σp − 1| {max_dev:.2e} over {rows} rows of {} layer(s), {bad} over tolerance; max |p| above the diagonal {above:.1e}",
            probs.len()
        ),
        &format!("≤ {ROW_SUM_TOL:.0e}; 0"),
        Status::of(bad == 0 && max_dev <= ROW_SUM_TOL && above == 0.0),
    );
}

fn causal_leakage(
    model: &dyn Model,
    be: &mut dyn Backend,
    device: &str,
    inputs: &[u32],
    targets: &[u32],
    seed: u64,
    report: &mut Report,
) {
    let (b, t) = model.batch_shape();
    let v = model.config().vocab_size();
    let pos = t / 2;
    let d = Some(DropoutCtx { seed, step: 1 });
    model.set_batch(be, inputs, targets);
    model.forward(be, d);
    let before = be.read(model.logits());
    // Every token after `pos` replaced by another one.
    let mut rng = Rng::derive(seed, "causal-leakage");
    let mut changed = inputs.to_vec();
    for bi in 0..b {
        for ti in pos + 1..t {
            let x = &mut changed[bi * t + ti];
            *x = ((*x as u64 + 1 + rng.below(v as u64 - 1)) % v as u64) as u32;
        }
    }
    model.set_batch(be, &changed, targets);
    model.forward(be, d);
    let after = be.read(model.logits());
    let (mut leak, mut later_changed) = (0.0f32, 0usize);
    for bi in 0..b {
        for ti in 0..t {
            let r = model.logits_row(bi, ti);
            let diff = before[r * v..(r + 1) * v]
                .iter()
                .zip(&after[r * v..(r + 1) * v])
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            if ti <= pos {
                leak = leak.max(diff);
            } else if diff > 0.0 {
                later_changed += 1;
            }
        }
    }
    let later = b * (t - pos - 1);
    report.push(
        "causal leakage: changing future tokens changes no earlier output",
        device,
        format!(
            "tokens after position {pos} changed: max |Δ logit| at positions ≤ {pos} {leak:.1e}; {later_changed} of {later} later positions changed"
        ),
        "0; later ones change",
        Status::of(leak == 0.0 && (later == 0 || later_changed > 0)),
    );
}

/// Dropout measured on the attention weights themselves: with V = one-hot rows (head size T,
/// v[j] = e_j), each output row IS that query's row of weights, exactly (one product by 1, the rest
/// by 0). Kept weights must equal the softmax probability times 1/(1 − p), dropped ones 0, and the
/// keep rate 1 − p within sampling error.
fn dropout_after_softmax(
    cfg: &ModelConfig,
    b: usize,
    device: &str,
    seed: u64,
    make: &mut BackendFactory,
    report: &mut Report,
) -> Result<()> {
    const CHECK: &str = "dropout after softmax: keep rate and 1/(1−p) scaling of the weights";
    let ModelConfig::Attention(c) = cfg else {
        report.push(
            CHECK,
            device,
            "an LSTM has no attention weights".into(),
            "-",
            Status::Skipped,
        );
        return Ok(());
    };
    let (nh, t) = (c.n_heads, c.seq_len);
    // The config's rate, or 0.1 when it trains without dropout (the op is checked either way).
    let p = if c.dropout > 0.0 { c.dropout } else { 0.1 };
    let hs = t;
    let mut table = TensorTable::new();
    let btc = [b, t, nh * hs];
    let [q, k, v, out] = ["q", "k", "v", "out"].map(|n| table.add(n, Category::Activation, &btc));
    let probs = table.add("probs", Category::Activation, &[b, nh, t, t]);
    let scratch = table.add("scratch", Category::Workspace, &[b, nh, t, t]);
    let fused = c.attention == crate::model::attention::AttentionImpl::Fused;
    let (lse, fused_out) = (
        table.add("lse", Category::Activation, &[b, nh, t]),
        table.add("fused_out", Category::Activation, &btc),
    );
    let mut be = make(table)?;
    let mut rng = Rng::derive(seed, "dropout-check");
    let n = b * t * nh * hs;
    be.write(q, &(0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>());
    be.write(k, &(0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>());
    let mut one_hot = vec![0.0f32; n];
    for bi in 0..b {
        for j in 0..t {
            for h in 0..nh {
                one_hot[(bi * t + j) * nh * hs + h * hs + j] = 1.0;
            }
        }
    }
    be.write(v, &one_hot);
    let key = DropoutKey {
        p,
        seed,
        step: 1,
        tensor: 0,
    };
    be.attention_forward(out, probs, q, k, v, scratch, Some(key));
    // Fused attention: its output with one-hot values is its dropped-out weights, checked against
    // the step-by-step probabilities (the same mask bits; kept weights to f32 rounding of the
    // online softmax).
    if fused {
        be.attention_fused_forward(fused_out, lse, q, k, v, Some(key));
    }
    let (w, pr) = (be.read(if fused { fused_out } else { out }), be.read(probs));
    let scale_tol = if fused { 1e-5 } else { 1e-6 };
    let scale = 1.0 / (1.0 - p as f64);
    let (mut total, mut kept, mut scale_err, mut above, mut max_dev) =
        (0usize, 0usize, 0.0f64, 0.0f32, 0.0f64);
    for bi in 0..b {
        for h in 0..nh {
            for i in 0..t {
                let prow = &pr[((bi * nh + h) * t + i) * t..][..t];
                max_dev = max_dev.max((prow.iter().map(|&x| x as f64).sum::<f64>() - 1.0).abs());
                for j in 0..t {
                    let wij = w[(bi * t + i) * nh * hs + h * hs + j];
                    if j > i {
                        above = above.max(wij.abs());
                    } else if prow[j] > 0.0 {
                        total += 1;
                        if wij != 0.0 {
                            kept += 1;
                            let want = prow[j] as f64 * scale;
                            scale_err = scale_err.max((wij as f64 - want).abs() / want);
                        }
                    }
                }
            }
        }
    }
    let keep = kept as f64 / total.max(1) as f64;
    let sigma = (p as f64 * (1.0 - p as f64) / total.max(1) as f64).sqrt();
    let note = if c.dropout > 0.0 {
        String::new()
    } else {
        " (the config has no dropout; checked at p 0.1)".into()
    };
    let path = if fused { "fused " } else { "" };
    report.push(
        CHECK,
        device,
        format!(
            "{path}p {p}: kept {keep:.4} of {total} weights; kept = prob/(1−p) within {scale_err:.1e} (relative), dropped = 0; probs rows sum to 1 within {max_dev:.1e}; max |w| above the diagonal {above:.0e}{note}"
        ),
        &format!("{:.4} ± {:.4}; ≤ {scale_tol:.0e}", 1.0 - p as f64, 5.0 * sigma),
        Status::of(
            (keep - (1.0 - p as f64)).abs() <= 5.0 * sigma
                && scale_err <= scale_tol
                && above == 0.0
                && max_dev <= ROW_SUM_TOL as f64,
        ),
    );
    Ok(())
}

/// Lines for the global and each layer's gradient norm (pass/fail against [0.1, 10]); every
/// tensor's norm and the op input gradients go into the report's norm section.
fn norm_lines(
    model: &dyn Model,
    be: &mut dyn Backend,
    device: &str,
    when: &str,
    grad_sq: &[f64],
    report: &mut Report,
) {
    let n = GradNorms::from_sums(model, grad_sq);
    let expected = format!("[{}, {}]", NORM_RANGE.0, NORM_RANGE.1);
    report.push(
        &format!("gradient norm {when}: global"),
        device,
        format!("{:.4}", n.global),
        &expected,
        Status::of(in_range(n.global)),
    );
    for (layer, x) in &n.layers {
        report.push(
            &format!("gradient norm {when}: {layer}"),
            device,
            format!("{x:.4}"),
            &expected,
            Status::of(in_range(*x)),
        );
    }
    let acts: Vec<(String, crate::tensor::TensorId)> = model
        .table()
        .iter()
        .filter(|(_, s)| s.category == Category::Workspace && s.name.starts_with("d."))
        .map(|(id, s)| (s.name.clone(), id))
        .collect();
    let ids: Vec<_> = acts.iter().map(|a| a.1).collect();
    let sums = be.sum_squares(&ids);
    report.norms.push(NormReport {
        device: device.into(),
        when: when.into(),
        global: n.global,
        layers: n.layers,
        params: n.params,
        activations: acts
            .into_iter()
            .zip(sums)
            .map(|((name, _), s)| (name, s.sqrt()))
            .collect(),
    });
}

/// A tiny configuration of the same kind, for the finite-difference check.
pub fn tiny_like(cfg: &ModelConfig) -> ModelConfig {
    match cfg {
        ModelConfig::Attention(c) => ModelConfig::Attention(AttentionConfig {
            style: c.style,
            vocab_size: 11,
            seq_len: 7,
            d_model: 6,
            n_layers: c.n_layers.min(2),
            n_heads: 2,
            pos_emb: c.pos_emb,
            dropout: 0.2,
            attention: Default::default(),
        }),
        ModelConfig::Lstm(c) => ModelConfig::Lstm(LstmConfig {
            vocab_size: 11,
            seq_len: 7,
            embed: 5,
            hidden: 6,
            n_layers: c.n_layers.min(2),
        }),
    }
}

/// The finite-difference check of every parameter of a tiny model of the same kind (CPU).
pub fn finite_differences(cfg: &ModelConfig, seed: u64, report: &mut Report) {
    let tiny = tiny_like(cfg);
    let params = whole_model_fd(&tiny, 3, seed);
    let worst = params
        .iter()
        .max_by(|a, b| a.worst.ratio.total_cmp(&b.worst.ratio))
        .expect("a model has parameters");
    let zero: Vec<&str> = params
        .iter()
        .filter(|p| !p.nonzero)
        .map(|p| p.name.as_str())
        .collect();
    let positions: usize = params.iter().map(|p| p.worst.checked).sum();
    report.push(
        "finite-difference gradient check, whole model (tiny config)",
        "cpu",
        format!(
            "{}: worst |g − fd| / tol {:.3} ({}[{}]: {:.4e} vs {:.4e}) over {} positions of {} tensors{}",
            tiny.describe(),
            worst.worst.ratio,
            worst.name,
            worst.worst.index,
            worst.worst.analytic,
            worst.worst.finite_difference,
            positions,
            params.len(),
            if zero.is_empty() { String::new() } else { format!("; all-zero gradient: {}", zero.join(", ")) }
        ),
        "≤ 1 (tol 3e-3 + 3e-2·|g|)",
        Status::of(worst.worst.ratio <= 1.0 && zero.is_empty()),
    );
}

pub const PARITY_CHECK: &str = "GPU vs CPU: one training step (loss, every gradient)";

/// One training step of `cfg` on the CPU and on `dev` from the same parameters and batch.
pub fn gpu_parity(
    cfg: &ModelConfig,
    batch: usize,
    seed: u64,
    device: &str,
    dev: Box<dyn Device>,
    report: &mut Report,
) -> Result<()> {
    let p = training_parity(cfg, batch, 1, seed, dev)?;
    let s = &p.steps[0];
    report.push(
        PARITY_CHECK,
        device,
        format!(
            "loss {:.6} vs {:.6} (rel. {:.1e}); worst gradient {:.1e} of its scale ({})",
            s.dev_loss,
            s.cpu_loss,
            s.loss_rel_err(),
            s.grad_rel_err,
            s.worst_grad
        ),
        "≤ 1e-5; ≤ 1e-4",
        Status::of(s.loss_rel_err() <= 1e-5 && s.grad_rel_err <= 1e-4),
    );
    Ok(())
}

/// The parity line when there is no GPU: visibly skipped, with the reason.
pub fn parity_skipped(why: &str, report: &mut Report) {
    report.push(
        PARITY_CHECK,
        "gpu",
        format!("no GPU: {why}"),
        "-",
        Status::Skipped,
    );
}
