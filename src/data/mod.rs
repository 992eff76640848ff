//! The corpus and what is made of it before training: loading, cleaning, splitting, tokenizing.
//!
//! - [`corpus`]: finds the corpus (`--data DIR`, else `$ROBO_POET_DATA`, then `data/`), reads each
//!   book once (the cleaned file if present, else the raw Gutenberg file run through
//!   [`corpus::clean_gutenberg`]), and loads `--text` files with the same cleaning.
//! - [`download`]: fetches the raw books from Project Gutenberg (or a mirror) into `data/`.
//! - [`split`]: the train/validation split.
//! - [`tokenizer`]: the char and word tokenizers.
//!
//! # Train/validation split
//!
//! Each document is cut into blocks of about [`split::BLOCK_BYTES`] (1 KiB): a block ends at the
//! first `\n` at or after `BLOCK_BYTES` bytes from its start, so blocks never split a line, a
//! word or a char; when there is no `\n` within `4 * BLOCK_BYTES` bytes, the block is cut at the
//! first char boundary at or after `BLOCK_BYTES`. Blocks are numbered from 0 in each document, and
//! every [`split::VAL_EVERY`]-th block (numbers 9, 19, 29, ...) goes to validation, the rest to
//! training, so about 10% of every book is validation and validation text is spread over the whole
//! book (a tail split would validate on the end of Hamlet only). The training blocks of a
//! document are concatenated in order, and so are its validation blocks. No randomness is used.
//!
//! # Tokenizers
//!
//! - **char**: the vocabulary is every distinct Unicode scalar value of the whole corpus (train and
//!   validation, so every corpus char is encodable), sorted by code point; id = position. There is
//!   no unknown token: a prompt with a char outside the vocabulary is an error naming the char.
//! - **word**: the text is lower-cased and split into tokens that are maximal runs of word chars
//!   (Unicode alphanumerics and `_`, as Python's `\w`) or single other non-whitespace chars
//!   (punctuation), i.e. the regex `\w+|[^\w\s]` on the lower-cased text, so `Alice’s` is
//!   `alice ’ s` and `_very_` (the books' italics) is one token. With min_count 2 this gives 2728
//!   tokens on the corpus (2690 if `_` were punctuation); the PyTorch reference reported 2726
//!   with its own cleaning and split.
//!   Tokens are counted on the TRAINING text only; tokens seen fewer than `min_count` times are
//!   mapped to `<unk>` (id 0); the others follow sorted by descending count, ties by string.
//!   Decoding joins tokens with single spaces, except: no space before closing punctuation
//!   (`. , ; : ! ? ) ] } ’ ” ' » … %`), none after opening punctuation (`( [ { “ ‘ «`), none on
//!   either side of hyphens and dashes (`- – —`), and none between an apostrophe and a
//!   contraction suffix (`s t d m ll re ve`), so `alice ’ s` decodes to `alice’s`. Case, line
//!   breaks and original spacing are lost: decoding does not reproduce the source exactly.

pub mod corpus;
pub mod download;
pub mod split;
pub mod tokenizer;

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;

    /// The corpus committed with the project (data/ at the crate root).
    pub const CORPUS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data");

    /// The committed corpus folder; its absence is a broken checkout, not a reason to skip.
    pub fn corpus() -> PathBuf {
        let dir = PathBuf::from(CORPUS_DIR);
        assert!(
            super::corpus::holds_books(&dir),
            "the corpus committed in {CORPUS_DIR} is missing; restore it with `git checkout -- data`"
        );
        dir
    }

    /// The raw Gutenberg downloads, which are not committed: the development machines' mirror
    /// (`../shared/corpus`), or None after printing a visible skip line.
    pub fn raw_mirror(test: &str) -> Option<PathBuf> {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus"));
        let books = super::corpus::BOOKS;
        if books.iter().all(|b| dir.join(b.raw_file).is_file()) {
            Some(dir)
        } else {
            eprintln!(
                "SKIPPED {test}: the raw Gutenberg files are not at {} (they are not committed)",
                dir.display()
            );
            None
        }
    }
}
