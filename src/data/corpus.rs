//! Finding, reading and cleaning the corpus: the two Gutenberg books, or any `--text` files.
//!
//! Each book is stored twice in a corpus folder (raw Gutenberg download and cleaned copy). They
//! are the same book, so [`load_books`] reads each book exactly once, preferring the cleaned file.

use anyhow::{anyhow, bail, Result};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Environment variable naming a corpus folder (searched after `--data`, before `data/`).
pub const DATA_ENV: &str = "ROBO_POET_DATA";

/// One cleaned text of the corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// File name the text came from (e.g. `alice_wonderland.txt`).
    pub name: String,
    /// Cleaned text: LF line endings, no Gutenberg boilerplate, ends with one `\n`.
    pub text: String,
}

/// The documents a run trains on, and where they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corpus {
    /// Documents in a fixed order (the books in [`BOOKS`] order, or `--text` files as given).
    pub documents: Vec<Document>,
    /// Human description of the source: the folder, or the list of files.
    pub source: String,
}

/// A Project Gutenberg book of the corpus and its two file names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Book {
    /// Title, for messages.
    pub title: &'static str,
    /// Project Gutenberg eBook number.
    pub gutenberg_id: u32,
    /// File name of the download as obtained (header, sentinels, maybe license).
    pub raw_file: &'static str,
    /// File name of the cleaned text (what [`clean_gutenberg`] makes of the raw file).
    pub clean_file: &'static str,
}

/// The two books of the corpus.
pub const BOOKS: [Book; 2] = [
    Book {
        title: "Alice's Adventures in Wonderland",
        gutenberg_id: 11,
        raw_file: "alice_raw.txt",
        clean_file: "alice_wonderland.txt",
    },
    Book {
        title: "Hamlet",
        gutenberg_id: 1524,
        raw_file: "hamlet_raw.txt",
        clean_file: "hamlet_shakespeare.txt",
    },
];

/// Which Gutenberg sentinel a line is, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sentinel {
    Start,
    End,
}

/// Recognises `*** START OF THE PROJECT GUTENBERG ...` / `*** END OF THIS PROJECT GUTENBERG ...`
/// (any case, any number of leading asterisks, optional spaces).
fn sentinel(line: &str) -> Option<Sentinel> {
    let line = line.trim_start();
    if !line.starts_with("***") {
        return None;
    }
    let rest = line.trim_start_matches('*').trim_start().to_uppercase();
    for (word, kind) in [("START OF", Sentinel::Start), ("END OF", Sentinel::End)] {
        for which in ["THE", "THIS"] {
            if rest.starts_with(&format!("{word} {which} PROJECT GUTENBERG")) {
                return Some(kind);
            }
        }
    }
    None
}

/// Whether `text` has a Gutenberg START sentinel line and an END sentinel line.
pub(crate) fn has_gutenberg_sentinels(text: &str) -> (bool, bool) {
    let mut found = (false, false);
    for line in text.lines() {
        match sentinel(line) {
            Some(Sentinel::Start) => found.0 = true,
            Some(Sentinel::End) => found.1 = true,
            None => {}
        }
    }
    found
}

/// Strips Gutenberg boilerplate: BOM off, CRLF/CR to LF, keep what lies between the `*** START OF`
/// and `*** END OF` lines (each optional), trim, end with one `\n` (empty input gives "").
pub fn clean_gutenberg(raw: &str) -> String {
    let text = raw.strip_prefix('\u{feff}').unwrap_or(raw);
    let text = text.replace("\r\n", "\n").replace('\r', "\n");

    let mut body_start = 0;
    let mut body_end = text.len();
    let mut offset = 0;
    let mut seen_start = false;
    for line in text.split_inclusive('\n') {
        match sentinel(line) {
            // Only the first START counts; the first END (after it, if any) closes the body.
            Some(Sentinel::Start) if !seen_start => {
                seen_start = true;
                body_start = offset + line.len();
            }
            Some(Sentinel::End) => {
                body_end = offset;
                break;
            }
            _ => {}
        }
        offset += line.len();
    }

    let body = text[body_start..body_end].trim();
    if body.is_empty() {
        return String::new();
    }
    let mut out = String::with_capacity(body.len() + 1);
    out.push_str(body);
    out.push('\n');
    out
}

/// Reads a whole file as UTF-8; errors name the file (missing, a directory, empty, bad UTF-8).
pub fn read_utf8_text(path: &Path) -> Result<String> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!("file not found: {shown}"),
        Err(e) => bail!("cannot read {shown}: {e}"),
    };
    if meta.is_dir() {
        bail!("{shown} is a directory, not a text file");
    }
    let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read {shown}: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{shown} is not valid UTF-8 (first bad byte at offset {}); save it as UTF-8 text",
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.trim().is_empty() {
        bail!("{shown} is empty");
    }
    Ok(text)
}

/// The folders to look for the corpus in: only `--data DIR` when given, else
/// `$ROBO_POET_DATA` (if set) then `data`.
pub fn corpus_search_path(data_flag: Option<&Path>) -> Vec<PathBuf> {
    search_path_from(data_flag, std::env::var_os(DATA_ENV).map(PathBuf::from))
}

fn search_path_from(data_flag: Option<&Path>, env_dir: Option<PathBuf>) -> Vec<PathBuf> {
    // An explicit --data must not silently fall back elsewhere: a typo should fail loudly.
    if let Some(dir) = data_flag {
        return vec![dir.to_path_buf()];
    }
    let mut dirs = Vec::new();
    if let Some(dir) = env_dir.filter(|d| !d.as_os_str().is_empty()) {
        dirs.push(dir);
    }
    dirs.push(PathBuf::from("data"));
    dirs
}

/// Whether `dir` holds, for every book, its cleaned file or its raw file.
pub(crate) fn holds_books(dir: &Path) -> bool {
    BOOKS
        .iter()
        .all(|b| dir.join(b.clean_file).is_file() || dir.join(b.raw_file).is_file())
}

/// The first folder of the search path that holds both books (cleaned or raw file of each).
pub fn find_corpus_dir(data_flag: Option<&Path>) -> Option<PathBuf> {
    corpus_search_path(data_flag)
        .into_iter()
        .find(|d| holds_books(d))
}

/// Reads `path` and cleans it; errors if nothing is left after cleaning.
fn load_document(path: &Path) -> Result<Document> {
    let text = clean_gutenberg(&read_utf8_text(path)?);
    if text.is_empty() {
        bail!(
            "{} has no text left after removing the Project Gutenberg header and footer",
            path.display()
        );
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(Document { name, text })
}

/// Loads each book once from `dir`: the cleaned file if present, else the raw file cleaned.
pub fn load_books(dir: &Path) -> Result<Corpus> {
    let mut documents = Vec::with_capacity(BOOKS.len());
    for book in &BOOKS {
        let clean = dir.join(book.clean_file);
        let raw = dir.join(book.raw_file);
        // Never both: they are the same book, and using both would leak validation text.
        let path = if clean.is_file() {
            clean
        } else if raw.is_file() {
            raw
        } else {
            bail!(
                "{} has neither {} nor {} ({}); run scripts/fetch_corpus.sh or point --data at a copy",
                dir.display(),
                book.clean_file,
                book.raw_file,
                book.title
            );
        };
        documents.push(load_document(&path)?);
    }
    Ok(Corpus {
        documents,
        source: dir.display().to_string(),
    })
}

/// Loads `--text` files in the order given, each cleaned like a Gutenberg download.
pub fn load_text_files(paths: &[PathBuf]) -> Result<Corpus> {
    if paths.is_empty() {
        bail!("no text files given");
    }
    let documents = paths
        .iter()
        .map(|p| load_document(p))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    Ok(Corpus {
        documents,
        source: names.join(", "),
    })
}

/// The message shown when no folder of the search path holds the corpus: where we looked,
/// which files are needed, and how to get them.
pub fn missing_corpus_message(searched: &[PathBuf]) -> String {
    let mut msg =
        String::from("could not find the training corpus (Alice in Wonderland + Hamlet).\n");
    msg.push_str("Searched:\n");
    if searched.is_empty() {
        msg.push_str("  (no folders)\n");
    }
    for dir in searched {
        let state = if dir.is_file() {
            "a file, not a folder: pass the folder that holds the books".to_string()
        } else if dir.is_dir() {
            let missing: Vec<String> = BOOKS
                .iter()
                .filter(|b| !dir.join(b.clean_file).is_file() && !dir.join(b.raw_file).is_file())
                .map(|b| format!("{} ({} or {})", b.title, b.clean_file, b.raw_file))
                .collect();
            format!("folder exists but lacks {}", missing.join(" and "))
        } else {
            "no such folder".to_string()
        };
        msg.push_str(&format!("  {} ({state})\n", dir.display()));
    }
    msg.push_str(
        "A corpus folder needs, for each book, the cleaned file OR the raw Gutenberg file:\n",
    );
    for book in &BOOKS {
        msg.push_str(&format!(
            "  {} or {}  ({}, Project Gutenberg #{})\n",
            book.clean_file, book.raw_file, book.title, book.gutenberg_id
        ));
    }
    msg.push_str("To get it, do one of:\n");
    msg.push_str("  - run `robo-poet train` on a machine with network access: it downloads the books into data/\n");
    msg.push_str("  - run `scripts/fetch_corpus.sh` (or `scripts/fetch_corpus.sh data --from MIRROR_DIR` to copy a mirror)\n");
    msg.push_str(&format!(
        "  - pass `--data DIR` or set {DATA_ENV}=DIR to a folder holding a copy of the files"
    ));
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::data::test_support::{corpus, raw_mirror};

    #[test]
    fn clean_strips_sentinels_bom_and_crlf() {
        let raw = "\u{feff}Header line\r\nLicense\r\n*** START OF THE PROJECT GUTENBERG EBOOK 99 ***\r\n\r\n  Body one\r\nBody two\rthree\r\n\r\n*** END OF THE PROJECT GUTENBERG EBOOK 99 ***\r\nfooter\r\n";
        assert_eq!(clean_gutenberg(raw), "Body one\nBody two\nthree\n");
    }

    #[test]
    fn clean_accepts_old_this_sentinels_any_case() {
        let raw = "x\n***START OF THIS PROJECT GUTENBERG EBOOK ALICE***\nbody\n*** end of this project gutenberg ebook alice ***\ny\n";
        assert_eq!(clean_gutenberg(raw), "body\n");
    }

    #[test]
    fn clean_without_markers_only_normalises() {
        assert_eq!(
            clean_gutenberg("\n\n  hello\r\nworld  \n\n"),
            "hello\nworld\n"
        );
        assert_eq!(clean_gutenberg("one line"), "one line\n");
        assert_eq!(clean_gutenberg(" \r\n\t"), "");
        // A line merely mentioning the phrase is not a sentinel.
        let t = "START OF THE PROJECT GUTENBERG talk\nbody\n";
        assert_eq!(clean_gutenberg(t), t);
    }

    #[test]
    fn clean_with_only_one_marker() {
        assert_eq!(
            clean_gutenberg("junk\n*** START OF THE PROJECT GUTENBERG EBOOK 1 ***\nbody\n"),
            "body\n"
        );
        assert_eq!(
            clean_gutenberg("body\n*** END OF THE PROJECT GUTENBERG EBOOK 1 ***\nlicense\n"),
            "body\n"
        );
    }

    #[test]
    fn cleaning_raw_books_reproduces_cleaned_files_exactly() {
        let Some(dir) = raw_mirror("cleaning_raw_books_reproduces_cleaned_files_exactly") else {
            return;
        };
        for book in &BOOKS {
            let raw = read_utf8_text(&dir.join(book.raw_file)).unwrap();
            let clean = read_utf8_text(&corpus().join(book.clean_file)).unwrap();
            let got = clean_gutenberg(&raw);
            assert!(
                got == clean,
                "clean_gutenberg({}) differs from {}: {} vs {} bytes",
                book.raw_file,
                book.clean_file,
                got.len(),
                clean.len()
            );
        }
    }

    #[test]
    fn the_committed_books_are_clean_and_survive_a_gutenberg_wrapping() {
        // What data/SOURCES.md promises: UTF-8, LF only, no BOM, trimmed, one final newline. So
        // cleaning leaves them as they are, and cleaning them wrapped as a raw download would be
        // (BOM, CRLF, header and footer around the sentinels) gives them back exactly.
        for book in &BOOKS {
            let path = corpus().join(book.clean_file);
            let text = read_utf8_text(&path).unwrap();
            assert!(
                !text.contains('\r') && !text.starts_with('\u{feff}'),
                "{}",
                path.display()
            );
            assert_eq!(
                clean_gutenberg(&text),
                text,
                "{} is not clean",
                path.display()
            );
            let raw = format!(
                "\u{feff}The Project Gutenberg eBook of {}\n\n*** START OF THE PROJECT GUTENBERG EBOOK {} ***\n\n{}\n*** END OF THE PROJECT GUTENBERG EBOOK {} ***\nlicense\n",
                book.title, book.gutenberg_id, text, book.gutenberg_id
            )
            .replace('\n', "\r\n");
            assert!(clean_gutenberg(&raw) == text, "{} wrapped", book.clean_file);
        }
    }

    #[test]
    fn read_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope.txt");
        let e = read_utf8_text(&missing).unwrap_err().to_string();
        assert!(e.contains("not found") && e.contains("nope.txt"), "{e}");

        let e = read_utf8_text(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");

        let empty = tmp.path().join("empty.txt");
        std::fs::write(&empty, " \n\n").unwrap();
        let e = read_utf8_text(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.txt is empty"), "{e}");

        let bad = tmp.path().join("latin1.txt");
        std::fs::write(&bad, b"caf\xe9 au lait").unwrap();
        let e = read_utf8_text(&bad).unwrap_err().to_string();
        assert!(e.contains("latin1.txt") && e.contains("offset 3"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn text_files_are_cleaned_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a.txt");
        let b = tmp.path().join("b.txt");
        std::fs::write(&a, "Hello\r\nthere\r\n").unwrap();
        std::fs::write(&b, "*** START OF THE PROJECT GUTENBERG EBOOK 5 ***\nbook\n").unwrap();
        let c = load_text_files(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(c.documents[0].text, "Hello\nthere\n");
        assert_eq!(c.documents[0].name, "a.txt");
        assert_eq!(c.documents[1].text, "book\n");
        assert!(c.source.contains("a.txt") && c.source.contains("b.txt"));

        std::fs::write(&b, "*** START OF THE PROJECT GUTENBERG EBOOK 5 ***\n \n").unwrap();
        let e = load_text_files(&[a, b]).unwrap_err().to_string();
        assert!(e.contains("b.txt has no text left"), "{e}");
        assert!(load_text_files(&[]).is_err());
    }

    #[test]
    fn search_path_order() {
        let flag = Path::new("/my/typo");
        let env = Some(PathBuf::from("/env/dir"));
        assert_eq!(
            search_path_from(Some(flag), env.clone()),
            vec![flag.to_path_buf()]
        );
        assert_eq!(
            search_path_from(None, env),
            vec![PathBuf::from("/env/dir"), PathBuf::from("data")]
        );
        assert_eq!(search_path_from(None, None), vec![PathBuf::from("data")]);
        assert_eq!(
            search_path_from(None, Some(PathBuf::new())),
            vec![PathBuf::from("data")]
        );
    }

    #[test]
    fn load_books_prefers_clean_and_reads_each_book_once() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert!(find_corpus_dir(Some(d)).is_none());
        std::fs::write(d.join("alice_wonderland.txt"), "clean alice\n").unwrap();
        std::fs::write(
            d.join("alice_raw.txt"),
            "*** START OF THE PROJECT GUTENBERG EBOOK 11 ***\nraw alice\n",
        )
        .unwrap();
        assert!(find_corpus_dir(Some(d)).is_none(), "hamlet is missing");
        let e = load_books(d).unwrap_err().to_string();
        assert!(
            e.contains("hamlet_shakespeare.txt") && e.contains("hamlet_raw.txt"),
            "{e}"
        );

        std::fs::write(
            d.join("hamlet_raw.txt"),
            "header\r\n*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\r\nraw hamlet\r\n*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\r\n",
        )
        .unwrap();
        assert_eq!(find_corpus_dir(Some(d)), Some(d.to_path_buf()));
        let c = load_books(d).unwrap();
        let names: Vec<&str> = c.documents.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["alice_wonderland.txt", "hamlet_raw.txt"]);
        assert_eq!(c.documents[0].text, "clean alice\n");
        assert_eq!(c.documents[1].text, "raw hamlet\n");
    }

    #[test]
    fn load_real_books() {
        let dir = corpus();
        let c = load_books(&dir).unwrap();
        assert_eq!(c.documents.len(), 2);
        assert_eq!(c.documents[0].name, "alice_wonderland.txt");
        assert_eq!(c.documents[1].name, "hamlet_shakespeare.txt");
        assert_eq!(c.documents[0].text.len(), 151_095);
        assert_eq!(c.documents[1].text.len(), 180_471);
    }

    #[test]
    fn missing_message_says_which_book_is_missing_and_what_a_path_is() {
        let tmp = tempfile::tempdir().unwrap();
        let only_alice = tmp.path().join("alice-only");
        std::fs::create_dir(&only_alice).unwrap();
        std::fs::write(only_alice.join("alice_raw.txt"), "x").unwrap();
        let file = tmp.path().join("book.txt");
        std::fs::write(&file, "x").unwrap();
        let m = missing_corpus_message(&[only_alice, file, tmp.path().join("nope")]);
        assert!(
            m.contains(
                "folder exists but lacks Hamlet (hamlet_shakespeare.txt or hamlet_raw.txt))"
            ),
            "{m}"
        );
        assert!(!m.contains("lacks Alice"), "{m}");
        assert!(m.contains("book.txt (a file, not a folder"), "{m}");
        assert!(m.contains("nope (no such folder)"), "{m}");
    }

    #[test]
    fn missing_message_says_what_to_do() {
        let m = missing_corpus_message(&[PathBuf::from("/env/x"), PathBuf::from("data")]);
        for needle in [
            "/env/x",
            "data",
            "alice_wonderland.txt or alice_raw.txt",
            "hamlet_shakespeare.txt or hamlet_raw.txt",
            "robo-poet train",
            "scripts/fetch_corpus.sh",
            "--data DIR",
            DATA_ENV,
        ] {
            assert!(m.contains(needle), "missing {needle:?} in:\n{m}");
        }
    }
}
