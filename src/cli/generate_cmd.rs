//! `robo-poet generate`: sample text from a checkpoint, streaming it.

use super::GenerateArgs;
use crate::backend;
use crate::data::tokenizer::TokenizerKind;
use crate::model;
use crate::resources;
use crate::rng::Rng;
use crate::train::run_files;
use anyhow::{ensure, Result};
use std::io::Write;

pub fn run(a: &GenerateArgs) -> Result<()> {
    ensure!(
        a.temperature > 0.0 && a.temperature.is_finite(),
        "--temperature must be > 0 (got {}); lower values give more conservative text",
        a.temperature
    );
    ensure!(a.length > 0, "--length must be at least 1 token");
    // One read of one checkpoint folder, without the optimizer state (sampling does not use it).
    let (meta, ck) = run_files::load_checkpoint(&a.checkpoint, false)?;
    let (tok, mut ids) = meta.prompt_tokens(&a.prompt)?;
    let t = meta.model.seq_len();
    resources::check_model_size(&meta.model, 1)?;
    let model = model::build(&meta.model, 1);
    let mut be = backend::create(a.device, model.table().clone(), true)?;
    run_files::write_tensors(&ck, model.as_ref(), be.as_mut(), false)?;
    drop(ck);
    if ids.len() > t {
        eprintln!(
            "note: the prompt has {} tokens; the model's context is {t}, so it sees the last {t}",
            ids.len()
        );
    }
    let v = meta.model.vocab_size();
    if a.top_k > v {
        eprintln!(
            "note: --top-k {} is more than the vocabulary ({v} tokens), so every token is a candidate (as with --top-k 0)",
            a.top_k
        );
    }
    let mut rng = Rng::derive(a.seed, "generate");
    let mut out = std::io::stdout().lock();
    write!(out, "{}", tok.decode(&ids))?;
    out.flush()?;
    let mut prev = ids.last().copied();
    let ignore = vec![crate::ops::IGNORE; t];
    for _ in 0..a.length {
        // The last T tokens, padded at the end: causality makes the padding invisible to the
        // position we read (tested in model::tests).
        let ctx = &ids[ids.len().saturating_sub(t)..];
        let mut inputs = ctx.to_vec();
        inputs.resize(t, 0);
        model.set_batch(be.as_mut(), &inputs, &ignore);
        model.forward(be.as_mut(), None);
        let logits = be.read(model.logits());
        let row = model.logits_row(0, ctx.len() - 1);
        let next = sample(
            &logits[row * v..(row + 1) * v],
            a.temperature,
            a.top_k,
            &mut rng,
        );
        write!(out, "{}", tok.decode_piece(prev, next))?;
        out.flush()?;
        prev = Some(next);
        ids.push(next);
    }
    writeln!(out)?;
    if tok.kind() == TokenizerKind::Word {
        eprintln!("(word-level model: spacing is reconstructed, the text is lower-cased)");
    }
    Ok(())
}

/// Samples from softmax(logits / temperature), restricted to the top k (0 = all).
pub fn sample(logits: &[f32], temperature: f32, top_k: usize, rng: &mut Rng) -> u32 {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if top_k > 0 && top_k < logits.len() {
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        idx.truncate(top_k);
    }
    let max = idx
        .iter()
        .map(|&i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i] - max) / temperature) as f64).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut u = rng.uniform() * total;
    for (k, &wi) in w.iter().enumerate() {
        if u < wi {
            return idx[k] as u32;
        }
        u -= wi;
    }
    *idx.last().unwrap() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_distribution_and_top_k() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY, 0.0];
        let mut rng = Rng::new(1);
        let mut counts = [0usize; 4];
        for _ in 0..50_000 {
            counts[sample(&logits, 1.0, 0, &mut rng) as usize] += 1;
        }
        // p = (0.2, 0.6, 0, 0.2); binomial standard error ~0.002.
        assert_eq!(counts[2], 0);
        assert!(
            (counts[1] as f64 / 50_000.0 - 0.6).abs() < 0.01,
            "{counts:?}"
        );
        for _ in 0..1000 {
            assert_eq!(sample(&logits, 1.0, 1, &mut rng), 1);
        }
        // Very low temperature is greedy.
        assert_eq!(sample(&[0.1, 0.3, 0.2], 1e-4, 0, &mut rng), 1);
    }
}
