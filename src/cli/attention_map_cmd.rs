//! `robo-poet attention-map`: the attention probabilities of a trained attention model over a
//! prompt, drawn as heatmaps (and printed as JSON with --json).

use super::AttentionMapArgs;
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::data::tokenizer::{Tokenizer, TokenizerKind};
use crate::diagnostics::ROW_SUM_TOL;
use crate::model::attention::AttentionModel;
use crate::model::{Model, ModelConfig};
use crate::plot::attention::{draw_attention, HeadMap};
use crate::plot::shorten;
use crate::train::run_files;
use anyhow::{bail, ensure, Result};
use serde_json::json;

pub fn run(a: &AttentionMapArgs) -> Result<()> {
    // One read of one checkpoint folder, without the optimizer state.
    let (meta, ck) = run_files::load_checkpoint(&a.checkpoint, false)?;
    let c = match &meta.model {
        ModelConfig::Attention(c) => c.clone(),
        ModelConfig::Lstm(_) => bail!(
            "{} is an LSTM checkpoint, and an LSTM has no attention weights; pass a run trained \
             with --model attention",
            a.checkpoint.display()
        ),
    };
    let check = |flag: &str, v: Option<usize>, n: usize, what: &str| -> Result<()> {
        if let Some(v) = v {
            ensure!(
                v < n,
                "{flag} {v} is out of range: the model has {n} {what} (0 to {})",
                n - 1
            );
        }
        Ok(())
    };
    check("--layer", a.layer, c.n_layers, "layer(s)")?;
    check("--head", a.head, c.n_heads, "head(s)")?;
    let (tok, mut ids) = meta.prompt_tokens(&a.prompt)?;
    let t = c.seq_len;
    let truncated = ids.len() > t;
    if truncated {
        eprintln!(
            "note: the prompt has {} tokens; the model's context is {t}, so the map shows the last {t}",
            ids.len()
        );
        ids.drain(..ids.len() - t);
    }
    let n = ids.len();

    crate::resources::check_model_size(&meta.model, 1)?;
    let model = AttentionModel::new(c.clone(), 1);
    crate::resources::ensure_cpu_fits(model.table(), 0)?;
    let mut be = CpuBackend::new(model.table().clone());
    run_files::write_tensors(&ck, &model, &mut be, false)?;
    // The prompt fills the START of the window, padded after: causality keeps the padding out of
    // the prompt's rows (checked below), so no padded position needs to be shown.
    let mut inputs = ids.clone();
    inputs.resize(t, 0);
    model.set_batch(&mut be, &inputs, &vec![crate::ops::IGNORE; t]);
    model.forward(&mut be, None);

    let mut maps = vec![];
    for layer in (0..c.n_layers).filter(|l| a.layer.is_none_or(|x| x == *l)) {
        let probs = be.read(model.attention_probs()[layer]); // (B, NH, T, T), B = 1
        for head in (0..c.n_heads).filter(|h| a.head.is_none_or(|x| x == *h)) {
            let m: Vec<Vec<f32>> = (0..n)
                .map(|q| {
                    let row = (head * t + q) * t;
                    probs[row..row + n].to_vec()
                })
                .collect();
            for (q, row) in m.iter().enumerate() {
                let sum: f32 = row.iter().sum();
                ensure!(
                    (sum - 1.0).abs() < ROW_SUM_TOL && row[q + 1..].iter().all(|&p| p == 0.0),
                    "internal error: layer {layer} head {head} query {q} puts weight outside the \
                     causal prompt window (row sum {sum}); please report this"
                );
            }
            maps.push(HeadMap {
                layer,
                head,
                probs: m,
            });
        }
    }
    let labels: Vec<String> = ids.iter().map(|&id| token_label(&tok, id)).collect();
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.checkpoint.join("attention_map.png"));
    let name = a
        .checkpoint
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| a.checkpoint.display().to_string());
    let title = format!(
        "Attention of {} (step {}) over \"{}\"{}",
        name,
        meta.step,
        shorten(&tok.decode(&ids).replace('\n', "⏎"), 60),
        if truncated {
            " (last seq_len tokens)"
        } else {
            ""
        }
    );
    draw_attention(&out, &title, &labels, &maps)?;
    if a.json {
        let maps: Vec<_> = maps
            .iter()
            .map(|m| json!({ "layer": m.layer, "head": m.head, "probs": m.probs }))
            .collect();
        println!(
            "{}",
            json!({
                "checkpoint": a.checkpoint, "step": meta.step, "png": out,
                "tokens": labels, "token_ids": ids, "truncated": truncated,
                "seq_len": t, "maps": maps,
            })
        );
    } else {
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// A token as an axis label: characters made visible (space ␣, newline ⏎, tab ⇥, other control
/// characters as U+XXXX), words as they are.
fn token_label(tok: &Tokenizer, id: u32) -> String {
    let s = tok.token_text(id);
    if tok.kind() == TokenizerKind::Word {
        return s.to_string();
    }
    s.chars()
        .map(|c| match c {
            ' ' => "␣".to_string(),
            '\n' => "⏎".to_string(),
            '\t' => "⇥".to_string(),
            c if c.is_control() => format!("U+{:04X}", c as u32),
            c => c.to_string(),
        })
        .collect()
}
