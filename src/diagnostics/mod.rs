//! The seed's validations as measurements: gradient norms per parameter and per layer against
//! the range [0.1, 10], attention row sums, and (in `checks`) the whole suite behind
//! `robo-poet check`. Training uses the first two as hooks (metrics.jsonl, warnings).

pub mod checks;
pub mod gradcheck;
pub mod parity;

use crate::backend::{Backend, RowCheck};
use crate::model::Model;
use crate::tensor::TensorId;
use std::collections::BTreeSet;

/// The seed's expected range of gradient norms.
pub const NORM_RANGE: (f64, f64) = (0.1, 10.0);

/// Tolerance of an attention row sum: f32 sums of T ≤ a few thousand terms near 1 are off by a few
/// ulps times log T, far below this.
pub const ROW_SUM_TOL: f32 = 1e-5;

pub fn in_range(norm: f64) -> bool {
    (NORM_RANGE.0..=NORM_RANGE.1).contains(&norm)
}

/// The layer a parameter belongs to: `embedding` (wte, wpe), `blocks.L` / `lstm.L`, or the
/// parameter's own first name part (`ln_f`, `lm_head`).
pub fn layer_of(param: &str) -> String {
    let mut parts = param.split('.');
    let first = parts.next().unwrap_or(param);
    if first == "wte" || first == "wpe" {
        return "embedding".into();
    }
    match parts.next() {
        Some(n) if n.parse::<usize>().is_ok() => format!("{first}.{n}"),
        _ => first.to_string(),
    }
}

/// Gradient norms of one backward pass: global, per layer (in parameter order) and per tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct GradNorms {
    pub global: f64,
    pub layers: Vec<(String, f64)>,
    pub params: Vec<(String, f64)>,
}

impl GradNorms {
    /// From each parameter gradient's Σ g² (as `Backend::sum_squares` returns them, in
    /// `model.params()` order).
    pub fn from_sums(model: &dyn Model, sums: &[f64]) -> GradNorms {
        assert_eq!(sums.len(), model.params().len(), "one sum per parameter");
        let mut layers: Vec<(String, f64)> = Vec::new();
        let mut params = Vec::with_capacity(sums.len());
        for (p, &s) in model.params().iter().zip(sums) {
            params.push((p.name.clone(), s.sqrt()));
            let layer = layer_of(&p.name);
            match layers.iter_mut().find(|(l, _)| *l == layer) {
                Some((_, acc)) => *acc += s,
                None => layers.push((layer, s)),
            }
        }
        for (_, acc) in &mut layers {
            *acc = acc.sqrt();
        }
        GradNorms {
            global: sums.iter().sum::<f64>().sqrt(),
            layers,
            params,
        }
    }

    /// The first parameter whose gradient is not finite.
    pub fn first_non_finite(&self) -> Option<&str> {
        self.params
            .iter()
            .find(|(_, n)| !n.is_finite())
            .map(|(name, _)| name.as_str())
    }

    pub fn to_json(&self) -> serde_json::Value {
        let map = |v: &[(String, f64)]| {
            serde_json::Value::Object(v.iter().map(|(k, n)| (k.clone(), (*n).into())).collect())
        };
        serde_json::json!({
            "grad_norm": self.global,
            "layer_grad_norms": map(&self.layers),
            "param_grad_norms": map(&self.params),
        })
    }
}

/// Warns when a gradient norm leaves [0.1, 10], at most once per tensor (or layer) between two
/// evaluations, so a persistent condition gives one line per evaluation period, not a flood.
#[derive(Default)]
pub struct NormWarnings {
    warned: BTreeSet<String>,
}

impl NormWarnings {
    /// A new evaluation period: everything may warn again.
    pub fn reset(&mut self) {
        self.warned.clear();
    }

    /// True the first time `what` is asked about in this period (other once-per-period warnings).
    pub fn first_in_period(&mut self, what: &str) -> bool {
        self.warned.insert(what.to_string())
    }

    /// The warning line for the norms out of range that have not warned in this period, if any.
    pub fn check(&mut self, step: u64, norms: &GradNorms) -> Option<String> {
        let mut fresh = Vec::new();
        let global = [("global".to_string(), norms.global)];
        for (kind, list) in [
            ("", &global[..]),
            ("layer ", &norms.layers[..]),
            ("", &norms.params[..]),
        ] {
            for (name, n) in list {
                let key = format!("{kind}{name}");
                if !in_range(*n) && self.warned.insert(key.clone()) {
                    fresh.push(format!("{key} {n:.3e}"));
                }
            }
        }
        if fresh.is_empty() {
            return None;
        }
        const SHOWN: usize = 6;
        let more = fresh.len().saturating_sub(SHOWN);
        fresh.truncate(SHOWN);
        Some(format!(
            "warning: step {step}: gradient norm{} outside [{}, {}]: {}{} (every norm is in metrics.jsonl)",
            if fresh.len() + more == 1 { "" } else { "s" },
            NORM_RANGE.0,
            NORM_RANGE.1,
            fresh.join(", "),
            if more > 0 { format!(", +{more} more") } else { String::new() }
        ))
    }
}

/// Each attention layer's probabilities tensor (B,NH,T,T) with its name, in layer order (none for
/// an LSTM).
pub fn attention_probs(model: &dyn Model) -> Vec<(String, TensorId)> {
    model
        .attention_probs()
        .into_iter()
        .map(|id| (model.table().name(id).to_string(), id))
        .collect()
}

/// The row-sum check of every attention layer after a forward pass, as one (None for an LSTM).
pub fn attention_row_check(model: &dyn Model, be: &mut dyn Backend) -> Option<RowCheck> {
    // materialized layers: their saved probabilities; fused ones: Σ_j exp(s_ij − lse_i)
    // recomputed from q, k and the saved logsumexp
    let probs: Vec<RowCheck> = model
        .attention_probs()
        .into_iter()
        .map(|id| be.attention_row_check(id, ROW_SUM_TOL))
        .collect();
    let lse: Vec<RowCheck> = model
        .attention_lse()
        .into_iter()
        .map(|(q, k, lse)| be.attention_lse_check(q, k, lse, ROW_SUM_TOL))
        .collect();
    probs.into_iter().chain(lse).reduce(RowCheck::merge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::{self, attention::AttentionConfig, attention::AttentionStyle, ModelConfig};

    #[test]
    fn parameters_group_into_layers() {
        for (p, l) in [
            ("wte", "embedding"),
            ("wpe", "embedding"),
            ("blocks.0.attn.q.weight", "blocks.0"),
            ("blocks.11.mlp.fc.bias", "blocks.11"),
            ("lstm.1.w_hh", "lstm.1"),
            ("ln_f.weight", "ln_f"),
            ("lm_head.weight", "lm_head"),
            ("lm_head.bias", "lm_head"),
        ] {
            assert_eq!(layer_of(p), l, "{p}");
        }
    }

    fn tiny() -> Box<dyn Model> {
        model::build(
            &ModelConfig::Attention(AttentionConfig {
                style: AttentionStyle::Gpt,
                vocab_size: 9,
                seq_len: 5,
                d_model: 4,
                n_layers: 2,
                n_heads: 2,
                pos_emb: true,
                dropout: 0.0,
                attention: Default::default(),
            }),
            2,
        )
    }

    #[test]
    fn layer_norms_are_the_root_of_their_tensors_squares() {
        let m = tiny();
        let sums: Vec<f64> = (0..m.params().len()).map(|i| (i + 1) as f64).collect();
        let n = GradNorms::from_sums(m.as_ref(), &sums);
        assert_eq!(n.params.len(), sums.len());
        let total: f64 = sums.iter().sum();
        assert!((n.global - total.sqrt()).abs() < 1e-12);
        // The layers partition the parameters: their squares add up to the global square.
        let by_layers: f64 = n.layers.iter().map(|(_, x)| x * x).sum();
        assert!(
            (by_layers - total).abs() < 1e-9 * total,
            "{by_layers} vs {total}"
        );
        let names: Vec<&str> = n.layers.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            names,
            ["embedding", "blocks.0", "blocks.1", "ln_f", "lm_head"]
        );
        let b0: f64 = m
            .params()
            .iter()
            .zip(&sums)
            .filter(|(p, _)| p.name.starts_with("blocks.0."))
            .map(|(_, s)| s)
            .sum();
        assert!((n.layers[1].1 - b0.sqrt()).abs() < 1e-12);
        let j = n.to_json();
        assert_eq!(j["layer_grad_norms"]["blocks.1"], n.layers[2].1);
        assert_eq!(j["param_grad_norms"]["wte"], 1.0);
    }

    #[test]
    fn warnings_come_once_per_tensor_per_period() {
        let norms = GradNorms {
            global: 1.0,
            layers: vec![("blocks.0".into(), 20.0)],
            params: vec![("a".into(), 0.01), ("b".into(), 1.0)],
        };
        let mut w = NormWarnings::default();
        let line = w.check(10, &norms).expect("two norms out of range");
        assert!(line.contains("layer blocks.0 2.000e1"), "{line}");
        assert!(line.contains("a 1.000e-2"), "{line}");
        assert!(!line.contains("b 1"), "{line}");
        assert_eq!(w.check(20, &norms), None, "no repeat within a period");
        w.reset();
        assert!(
            w.check(30, &norms).is_some(),
            "warns again after an evaluation"
        );
        let nan = GradNorms {
            global: f64::NAN,
            ..norms.clone()
        };
        assert!(w.check(40, &nan).unwrap().contains("global NaN"));
    }

    #[test]
    fn row_checks_find_a_broken_row() {
        let m = tiny();
        let mut be = CpuBackend::new(m.table().clone());
        let mut rng = crate::rng::Rng::new(3);
        for (id, v) in model::init_params(m.as_ref(), &mut rng) {
            be.write(id, &v);
        }
        let toks = vec![1u32; 10];
        m.set_batch(&mut be, &toks, &toks);
        m.forward(&mut be, None);
        let probs = attention_probs(m.as_ref());
        assert_eq!(probs.len(), 2);
        for (name, id) in &probs {
            let c = be.attention_row_check(*id, ROW_SUM_TOL);
            assert_eq!(c.rows, 2 * 2 * 5, "{name}");
            assert!(c.max_dev <= 1e-6 && c.bad_rows == 0, "{name}: {c:?}");
        }
        let all = attention_row_check(m.as_ref(), &mut be).expect("two layers");
        assert_eq!((all.rows, all.bad_rows), (2 * 2 * 2 * 5, 0));
        let id = attention_probs(m.as_ref())[1].1;
        let mut p = be.read(id);
        p[7] += 0.01;
        p[12] = f32::NAN;
        be.write(id, &p);
        let c = be.attention_row_check(id, ROW_SUM_TOL);
        assert_eq!(c.bad_rows, 2);
        assert!(c.max_dev.is_nan());
        let all = attention_row_check(m.as_ref(), &mut be).unwrap();
        assert_eq!((all.rows, all.bad_rows), (40, 2));
        assert!(all.max_dev.is_nan(), "a NaN row is the worst row");
    }
}
