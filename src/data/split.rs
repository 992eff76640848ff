//! Train/validation split in interleaved ~1 KiB blocks (rules in the `data` module doc).

use super::corpus::Corpus;

/// Block size in bytes: a block ends at the first `\n` at or after this many bytes.
pub const BLOCK_BYTES: usize = 1024;
/// Every `VAL_EVERY`-th block of a document (numbers 9, 19, ...) goes to validation.
pub const VAL_EVERY: usize = 10;

/// Training and validation text, one string per document (same order as the corpus).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Training blocks of each document, concatenated in order.
    pub train: Vec<String>,
    /// Validation blocks of each document, concatenated in order (may be empty).
    pub val: Vec<String>,
}

/// Cuts `text` into blocks: each ends at the first `\n` at or after `block_bytes` bytes from its
/// start, or at the next char boundary at `block_bytes` when no `\n` comes within `4 * block_bytes`.
pub fn blocks(text: &str, block_bytes: usize) -> Vec<&str> {
    let block_bytes = block_bytes.max(1);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(text.len() / block_bytes + 1);
    let mut start = 0;
    while start < text.len() {
        let min_end = start + block_bytes;
        if min_end >= text.len() {
            out.push(&text[start..]);
            break;
        }
        let window_end = (start + 4 * block_bytes).min(text.len());
        // '\n' never occurs inside a multi-byte UTF-8 sequence, so a byte search is safe.
        let end = match bytes[min_end..window_end].iter().position(|&b| b == b'\n') {
            Some(i) => min_end + i + 1,
            None => {
                let mut cut = min_end;
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                cut
            }
        };
        out.push(&text[start..end]);
        start = end;
    }
    out
}

/// Splits one text into (train, val): block `i` goes to validation when
/// `i % val_every == val_every - 1`; `val_every == 0` puts everything in train.
pub fn split_text(text: &str, block_bytes: usize, val_every: usize) -> (String, String) {
    let mut train = String::with_capacity(text.len());
    let mut val = String::with_capacity(text.len() / val_every.max(1) + block_bytes);
    for (i, block) in blocks(text, block_bytes).into_iter().enumerate() {
        if val_every > 0 && i % val_every == val_every - 1 {
            val.push_str(block);
        } else {
            train.push_str(block);
        }
    }
    (train, val)
}

/// Splits every document of the corpus; `train[i]` and `val[i]` belong to document `i`.
pub fn split_corpus(corpus: &Corpus, block_bytes: usize, val_every: usize) -> Split {
    let (train, val) = corpus
        .documents
        .iter()
        .map(|d| split_text(&d.text, block_bytes, val_every))
        .unzip();
    Split { train, val }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corpus::{load_books, Document};
    use crate::data::test_support::corpus;

    /// A synthetic text with lines of varying length, some non-ASCII.
    fn sample_text(lines: usize) -> String {
        (0..lines)
            .map(|i| format!("line {i} {} ünïcødé — end\n", "word ".repeat(i % 17)))
            .collect()
    }

    #[test]
    fn blocks_concatenate_to_the_text_and_end_at_newlines() {
        let text = sample_text(2000);
        let bs = blocks(&text, BLOCK_BYTES);
        assert_eq!(bs.concat(), text);
        for (i, b) in bs.iter().enumerate() {
            let last = i + 1 == bs.len();
            assert!(b.ends_with('\n'), "block {i} does not end at a newline");
            if !last {
                assert!(b.len() > BLOCK_BYTES, "block {i} has {} bytes", b.len());
                // The newline ending it is the first one at or after BLOCK_BYTES.
                let tail = &b.as_bytes()[BLOCK_BYTES..b.len() - 1];
                assert!(!tail.contains(&b'\n'), "block {i}");
            }
        }
    }

    #[test]
    fn split_interleaves_about_ten_percent_into_val() {
        let text = sample_text(5000);
        let (train, val) = split_text(&text, BLOCK_BYTES, VAL_EVERY);
        assert_eq!(train.len() + val.len(), text.len());
        let frac = val.len() as f64 / text.len() as f64;
        assert!((0.08..0.12).contains(&frac), "val fraction {frac}");

        // Re-interleaving the blocks in order reproduces the text exactly.
        let bs = blocks(&text, BLOCK_BYTES);
        let (mut t, mut v) = (String::new(), String::new());
        for (i, b) in bs.iter().enumerate() {
            if i % VAL_EVERY == VAL_EVERY - 1 {
                v.push_str(b);
            } else {
                t.push_str(b);
            }
        }
        assert_eq!((t, v), (train, val));
    }

    #[test]
    fn long_lines_are_cut_at_char_boundaries() {
        // No newline at all, multi-byte chars straddling the cut points.
        let text = "é".repeat(5000);
        let bs = blocks(&text, 1023);
        assert_eq!(bs.concat(), text);
        assert!(bs.iter().all(|b| b.len() <= 1024));
        // A newline past 4 * block_bytes does not extend the block.
        let text = format!("{}\n{}", "a".repeat(5000), "b".repeat(10));
        let bs = blocks(&text, 1000);
        assert_eq!(bs[0].len(), 1000);
        assert_eq!(bs.concat(), text);
    }

    #[test]
    fn short_text_goes_to_train_only() {
        let (train, val) = split_text("just a short text\n", BLOCK_BYTES, VAL_EVERY);
        assert_eq!(train, "just a short text\n");
        assert_eq!(val, "");
        assert_eq!(
            split_text("", BLOCK_BYTES, VAL_EVERY),
            (String::new(), String::new())
        );
        let (train, val) = split_text(&sample_text(500), BLOCK_BYTES, 0);
        assert_eq!((train.len(), val.len()), (sample_text(500).len(), 0));
    }

    #[test]
    fn split_keeps_one_entry_per_document() {
        let corpus = Corpus {
            documents: vec![
                Document {
                    name: "long".into(),
                    text: sample_text(3000),
                },
                Document {
                    name: "short".into(),
                    text: "tiny\n".into(),
                },
            ],
            source: "test".into(),
        };
        let s = split_corpus(&corpus, BLOCK_BYTES, VAL_EVERY);
        assert_eq!((s.train.len(), s.val.len()), (2, 2));
        assert!(!s.val[0].is_empty());
        assert_eq!((s.train[1].as_str(), s.val[1].as_str()), ("tiny\n", ""));
    }

    #[test]
    fn both_books_contribute_to_val() {
        let dir = corpus();
        let corpus = load_books(&dir).unwrap();
        let s = split_corpus(&corpus, BLOCK_BYTES, VAL_EVERY);
        for (i, doc) in corpus.documents.iter().enumerate() {
            let frac = s.val[i].len() as f64 / doc.text.len() as f64;
            assert!(
                (0.08..0.12).contains(&frac),
                "{}: val fraction {frac}",
                doc.name
            );
            assert_eq!(s.train[i].len() + s.val[i].len(), doc.text.len());
        }
    }
}
