//! From corpus files to token streams: locate (or download) the corpus, clean, split, tokenize.

use crate::data::corpus::{self, Corpus};
use crate::data::download;
use crate::data::split::{self, BLOCK_BYTES, VAL_EVERY};
use crate::data::tokenizer::{Tokenizer, TokenizerKind};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the text came from, recorded in checkpoints so `eval` can find it again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataSource {
    /// The two books, from a corpus folder.
    Books { dir: PathBuf },
    /// Arbitrary UTF-8 text files given with --text.
    Text { files: Vec<PathBuf> },
}

impl DataSource {
    pub fn describe(&self) -> String {
        match self {
            DataSource::Books { dir } => format!("Alice + Hamlet from {}", dir.display()),
            DataSource::Text { files } => {
                let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                format!("text files {}", names.join(", "))
            }
        }
    }
}

/// Tokenized training and validation streams.
pub struct Dataset {
    pub source: DataSource,
    pub tokenizer: Tokenizer,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

/// What to load: `--text` files, or the books found through `--data` / the env var / `data/`.
pub struct DataRequest<'a> {
    pub text_files: &'a [PathBuf],
    pub data_dir: Option<&'a Path>,
    /// Download the books into `data/` when they are nowhere to be found (train only).
    pub allow_download: bool,
    pub show_progress: bool,
}

/// Finds the corpus per the request (downloading when allowed) and loads it.
pub fn locate(req: &DataRequest) -> Result<(DataSource, Corpus)> {
    if !req.text_files.is_empty() {
        let corpus = corpus::load_text_files(req.text_files)?;
        return Ok((
            DataSource::Text {
                files: req.text_files.to_vec(),
            },
            corpus,
        ));
    }
    if let Some(dir) = corpus::find_corpus_dir(req.data_dir) {
        let corpus = corpus::load_books(&dir)?;
        return Ok((DataSource::Books { dir }, corpus));
    }
    let searched = corpus::corpus_search_path(req.data_dir);
    if req.allow_download && req.data_dir.is_none() {
        let dest = PathBuf::from("data");
        let base = download::gutenberg_base_url();
        eprintln!(
            "The corpus is not in {}; downloading the two books from {base} into {}/ ...",
            list(&searched),
            dest.display()
        );
        download::download_books(&dest, &base, req.show_progress)
            .with_context(|| corpus::missing_corpus_message(&searched))?;
        let corpus = corpus::load_books(&dest)?;
        return Ok((DataSource::Books { dir: dest }, corpus));
    }
    bail!("{}", corpus::missing_corpus_message(&searched))
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads a recorded data source again (eval, resume); `data_dir` overrides a books folder.
pub fn reload(source: &DataSource, data_dir: Option<&Path>) -> Result<(DataSource, Corpus)> {
    match (source, data_dir) {
        (DataSource::Text { files }, _) => Ok((source.clone(), corpus::load_text_files(files)?)),
        (DataSource::Books { .. }, Some(_)) => locate(&DataRequest {
            text_files: &[],
            data_dir,
            allow_download: false,
            show_progress: false,
        }),
        (DataSource::Books { dir }, None) => {
            if corpus::find_corpus_dir(Some(dir)).is_some() {
                Ok((source.clone(), corpus::load_books(dir)?))
            } else {
                locate(&DataRequest {
                    text_files: &[],
                    data_dir: None,
                    allow_download: false,
                    show_progress: false,
                })
                .with_context(|| {
                    format!(
                        "the corpus this run was trained on ({}) is gone; pass --data DIR",
                        dir.display()
                    )
                })
            }
        }
    }
}

/// Refuses a vocabulary with a single token: every target would be that token, the loss would
/// drop to 0 and the model learn nothing (`--min-count` above every word's count does that).
fn check_vocabulary(t: &Tokenizer, train_texts: &[&str], min_count: usize) -> Result<()> {
    if t.vocab_size() >= 2 {
        return Ok(());
    }
    match t.kind() {
        TokenizerKind::Word => {
            let mut counts = std::collections::HashMap::new();
            for w in train_texts.iter().flat_map(|t| crate::data::tokenizer::word_tokens(t)) {
                *counts.entry(w).or_insert(0usize) += 1;
            }
            let top = counts.values().copied().max().unwrap_or(0);
            bail!("every word of the training text occurs fewer than --min-count {min_count} times, so the vocabulary would be only <unk> and the model would learn nothing; pass a smaller --min-count (the most frequent word occurs {top} times)")
        }
        TokenizerKind::Char => bail!(
            "the text has a single distinct character, so there is nothing to predict; train on other text"
        ),
    }
}

/// Splits the corpus (interleaved 1 KiB blocks, every 10th to validation), fits a tokenizer on
/// the training split unless one is given (from a checkpoint), and encodes both splits.
pub fn tokenize(
    source: DataSource,
    corpus: &Corpus,
    kind: TokenizerKind,
    min_count: usize,
    existing: Option<Tokenizer>,
) -> Result<Dataset> {
    let sp = split::split_corpus(corpus, BLOCK_BYTES, VAL_EVERY);
    let train_texts: Vec<&str> = sp.train.iter().map(|s| s.as_str()).collect();
    let all_texts: Vec<&str> = corpus.documents.iter().map(|d| d.text.as_str()).collect();
    let tokenizer = match existing {
        Some(t) => t,
        None => {
            let t = Tokenizer::fit(kind, &train_texts, &all_texts, min_count);
            check_vocabulary(&t, &train_texts, min_count)?;
            t
        }
    };
    let encode = |texts: &[String]| -> Result<Vec<u32>> {
        let mut out = vec![];
        for t in texts.iter().filter(|t| !t.is_empty()) {
            match tokenizer.kind() {
                // A char vocabulary from another corpus may lack some characters: say which.
                TokenizerKind::Char => out.extend(
                    tokenizer
                        .encode_prompt(t)
                        .context("the text does not fit this checkpoint's character vocabulary")?
                        .0,
                ),
                TokenizerKind::Word => out.extend(tokenizer.encode(t)),
            }
        }
        Ok(out)
    };
    let train = encode(&sp.train)?;
    let val = encode(&sp.val)?;
    if val.len() < 2 {
        bail!("the validation split of {} is empty: the text is too short (each 10th ~1 KiB block goes to validation; give at least ~10 KiB of text)", source.describe());
    }
    Ok(Dataset {
        source,
        tokenizer,
        train,
        val,
    })
}
