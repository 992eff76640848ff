//! `robo-poet eval`: validation loss and perplexity of a checkpoint.

use super::EvalArgs;
use crate::backend;
use crate::dataset;
use crate::model;
use crate::resources;
use crate::train;
use crate::train::run_files;
use anyhow::Result;
use serde_json::json;

pub fn run(a: &EvalArgs) -> Result<()> {
    // One read of one checkpoint folder (a run saving meanwhile publishes a new one beside it),
    // without the optimizer state, which evaluation does not use.
    let (meta, ck) = run_files::load_checkpoint(&a.checkpoint, false)?;
    let tok = meta.tokenizer()?;
    let (source, corpus) = dataset::reload(&meta.data, a.data.as_deref())?;
    let ds = dataset::tokenize(source, &corpus, tok.kind(), 2, Some(tok))?;
    resources::check_model_size(&meta.model, meta.train.batch)?;
    let model = model::build(&meta.model, meta.train.batch);
    let mut be = backend::create(a.device, model.table().clone(), a.json)?;
    run_files::write_tensors(&ck, model.as_ref(), be.as_mut(), false)?;
    let t0 = std::time::Instant::now();
    let (loss, n) = train::evaluate(model.as_ref(), be.as_mut(), &ds.val);
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            json!({
                "checkpoint": a.checkpoint, "step": meta.step, "model": meta.model.kind().to_string(),
                "tokenizer": ds.tokenizer.kind().to_string(), "val_loss": loss, "perplexity": loss.exp(),
                "val_tokens": n, "data": ds.source.describe(), "device": be.name(), "seconds": secs,
            })
        );
    } else {
        println!(
            "{}: step {}, {}",
            a.checkpoint.display(),
            meta.step,
            meta.model.describe()
        );
        println!(
            "val loss {loss:.4}  perplexity {:.3}  over {n} {} tokens of {} ({:.1}s)",
            loss.exp(),
            ds.tokenizer.kind(),
            ds.source.describe(),
            secs
        );
    }
    Ok(())
}
