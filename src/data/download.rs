//! Downloading the two books from Project Gutenberg (or a mirror of its URL layout).
//!
//! All books are fetched and checked in memory first, then each is written atomically (temp file,
//! fsync, rename), so a failed download never leaves a partial or unchecked file behind.

use super::corpus::{clean_gutenberg, has_gutenberg_sentinels, Book, BOOKS, DATA_ENV};
use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable overriding the Gutenberg base URL (for mirrors and tests).
pub const GUTENBERG_URL_ENV: &str = "ROBO_POET_GUTENBERG_URL";
/// Project Gutenberg itself.
pub const DEFAULT_GUTENBERG_URL: &str = "https://www.gutenberg.org";

/// A downloaded book must keep at least this much text once its boilerplate is stripped.
const MIN_BOOK_BYTES: usize = 10 * 1024;
/// Refuse bodies larger than this (a book is ~200 KB; anything huge is not what we asked for).
const MAX_BOOK_BYTES: u64 = 32 * 1024 * 1024;

/// The base URL to download from: `$ROBO_POET_GUTENBERG_URL` if set, else Project Gutenberg,
/// without a trailing `/`.
pub fn gutenberg_base_url() -> String {
    let from_env = std::env::var(GUTENBERG_URL_ENV).ok();
    normalize_base_url(from_env.as_deref())
}

fn normalize_base_url(from_env: Option<&str>) -> String {
    let url = from_env
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .unwrap_or(DEFAULT_GUTENBERG_URL);
    url.trim_end_matches('/').to_string()
}

/// The plain-text URL of a book: `{base}/cache/epub/{id}/pg{id}.txt`.
fn book_url(base_url: &str, book: &Book) -> String {
    let id = book.gutenberg_id;
    format!(
        "{}/cache/epub/{id}/pg{id}.txt",
        base_url.trim_end_matches('/')
    )
}

/// What to tell a user whose machine cannot reach the server.
fn offline_hint() -> String {
    format!(
        "this machine may be offline; use a local copy instead: pass --data DIR, set {DATA_ENV}=DIR, \
         copy the corpus files into data/, or run scripts/fetch_corpus.sh --from MIRROR_DIR"
    )
}

/// One line describing a transport error (kind, message, cause), without the URL.
fn transport_detail(t: &ureq::Transport) -> String {
    let mut detail = t.kind().to_string();
    if let Some(m) = t.message() {
        detail.push_str(&format!(": {m}"));
    }
    if let Some(source) = std::error::Error::source(t) {
        detail.push_str(&format!(": {source}"));
    }
    detail.replace(['\n', '\r'], " ")
}

/// Fetches one URL into memory, with a byte progress bar.
fn fetch(agent: &ureq::Agent, url: &str, label: &str, show_progress: bool) -> Result<Vec<u8>> {
    let response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            bail!(
                "download failed: {url} answered HTTP {code} {}",
                r.status_text()
            )
        }
        Err(ureq::Error::Transport(t)) => {
            bail!(
                "could not reach {url} ({}); {}",
                transport_detail(&t),
                offline_hint()
            )
        }
    };
    let length = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    let bar = if show_progress {
        let bar = length.map_or_else(ProgressBar::no_length, ProgressBar::new);
        let template = "{msg:>24} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut body = Vec::with_capacity(length.unwrap_or(0).min(MAX_BOOK_BYTES) as usize);
    let mut reader = bar.wrap_read(response.into_reader().take(MAX_BOOK_BYTES + 1));
    let read = reader.read_to_end(&mut body);
    bar.finish_and_clear();
    if let Err(e) = read {
        bail!(
            "download of {url} was interrupted ({e}); {}",
            offline_hint()
        );
    }
    if body.len() as u64 > MAX_BOOK_BYTES {
        bail!("download failed: {url} sent more than {MAX_BOOK_BYTES} bytes; that is not a book");
    }
    Ok(body)
}

/// Checks a downloaded body is a Gutenberg book: UTF-8, both sentinels, enough text between them.
fn verify_book(url: &str, body: Vec<u8>) -> Result<String> {
    let text = String::from_utf8(body).map_err(|e| {
        anyhow!(
            "download failed: {url} is not UTF-8 text (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    let (start, end) = has_gutenberg_sentinels(&text);
    if !start || !end {
        let missing = match (start, end) {
            (false, false) => "`*** START OF` and `*** END OF` lines",
            (false, true) => "`*** START OF` line",
            _ => "`*** END OF` line",
        };
        bail!("download failed: {url} is not a Project Gutenberg text (no {missing})");
    }
    let kept = clean_gutenberg(&text).len();
    if kept < MIN_BOOK_BYTES {
        bail!(
            "download failed: {url} has only {kept} bytes of text between its Gutenberg markers \
             (a whole book has at least {MIN_BOOK_BYTES})"
        );
    }
    Ok(text)
}

/// A temp file that is deleted unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Writes `text` to `path` atomically: temp file beside it, fsync, rename.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp_path = dir.join(format!(".{name}.download-{}", std::process::id()));
    let mut tmp = TempFile(Some(tmp_path.clone()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp_path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp_path, path)
    };
    write().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    tmp.0 = None;
    Ok(())
}

/// Downloads both books from `base_url` into `dest` (created if needed) under their raw file
/// names, after checking each is a whole Gutenberg text; returns the files written.
pub fn download_books(dest: &Path, base_url: &str, show_progress: bool) -> Result<Vec<PathBuf>> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(60))
        .build();
    let mut texts = Vec::with_capacity(BOOKS.len());
    for book in &BOOKS {
        let url = book_url(base_url, book);
        let body = fetch(&agent, &url, book.raw_file, show_progress)?;
        texts.push(verify_book(&url, body)?);
    }
    std::fs::create_dir_all(dest)
        .map_err(|e| anyhow!("cannot create the corpus folder {}: {e}", dest.display()))?;
    let mut written = Vec::with_capacity(BOOKS.len());
    for (book, text) in BOOKS.iter().zip(&texts) {
        let path = dest.join(book.raw_file);
        write_atomically(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corpus::load_books;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::thread::JoinHandle;
    use std::time::Instant;

    /// A loopback HTTP/1.1 server answering at most `max_requests` GETs (200 with the mapped
    /// body, else 404), then exiting; it also gives up after 20 s without a request.
    fn serve(files: HashMap<String, Vec<u8>>, max_requests: usize) -> (String, JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let handle = std::thread::spawn(move || {
            let mut served = 0;
            let deadline = Instant::now() + Duration::from_secs(20);
            while served < max_requests && Instant::now() < deadline {
                let mut stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                stream.set_nonblocking(false).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut header = String::new();
                while reader.read_line(&mut header).unwrap() > 2 {
                    header.clear();
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = match files.get(path) {
                    Some(b) => ("200 OK", b.clone()),
                    None => ("404 Not Found", b"not here".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(&body).unwrap();
                served += 1;
            }
            served
        });
        (base, handle)
    }

    /// A synthetic Gutenberg file (> 10 KB between sentinels, CRLF like a real download).
    fn fake_book(title: &str) -> Vec<u8> {
        let body: String = (0..400)
            .map(|i| format!("{title} line {i}: some words of the book.\r\n"))
            .collect();
        format!(
            "The Project Gutenberg eBook of {title}\r\n\r\n*** START OF THE PROJECT GUTENBERG EBOOK {title} ***\r\n{body}*** END OF THE PROJECT GUTENBERG EBOOK {title} ***\r\nlicense\r\n"
        )
        .into_bytes()
    }

    fn book_files() -> HashMap<String, Vec<u8>> {
        BOOKS
            .iter()
            .map(|b| {
                let id = b.gutenberg_id;
                (format!("/cache/epub/{id}/pg{id}.txt"), fake_book(b.title))
            })
            .collect()
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    #[test]
    fn base_url_default_and_override() {
        assert_eq!(normalize_base_url(None), DEFAULT_GUTENBERG_URL);
        assert_eq!(normalize_base_url(Some("  ")), DEFAULT_GUTENBERG_URL);
        assert_eq!(
            normalize_base_url(Some("http://mirror/x//")),
            "http://mirror/x"
        );
        let book = &BOOKS[1];
        assert_eq!(
            book_url("https://www.gutenberg.org/", book),
            "https://www.gutenberg.org/cache/epub/1524/pg1524.txt"
        );
    }

    #[test]
    fn downloads_land_and_load() {
        let (base, server) = serve(book_files(), 2);
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("data");
        let written = download_books(&dest, &format!("{base}/"), false).unwrap();
        assert_eq!(server.join().unwrap(), 2);
        let names: Vec<PathBuf> = BOOKS.iter().map(|b| dest.join(b.raw_file)).collect();
        assert_eq!(written, names);
        let mut entries = dir_entries(&dest);
        entries.sort();
        assert_eq!(
            entries,
            ["alice_raw.txt", "hamlet_raw.txt"],
            "no temp files left"
        );
        // Saved as obtained; cleaned on load.
        assert_eq!(std::fs::read(&names[0]).unwrap(), fake_book(BOOKS[0].title));
        let corpus = load_books(&dest).unwrap();
        assert!(corpus.documents[1].text.starts_with("Hamlet line 0: "));
        assert!(corpus.documents[1]
            .text
            .ends_with("line 399: some words of the book.\n"));
    }

    #[test]
    fn http_404_names_status_and_url() {
        let (base, server) = serve(HashMap::new(), 1);
        let tmp = tempfile::tempdir().unwrap();
        let e = download_books(tmp.path(), &base, false)
            .unwrap_err()
            .to_string();
        assert_eq!(server.join().unwrap(), 1);
        assert!(
            e.contains("404") && e.contains("/cache/epub/11/pg11.txt"),
            "{e}"
        );
        assert!(dir_entries(tmp.path()).is_empty());
    }

    #[test]
    fn text_without_markers_is_rejected_and_nothing_is_left() {
        let mut files = book_files();
        let plain = "just some text\n".repeat(2000).into_bytes();
        files.insert("/cache/epub/1524/pg1524.txt".into(), plain);
        let (base, server) = serve(files, 2);
        let tmp = tempfile::tempdir().unwrap();
        let e = download_books(tmp.path(), &base, false)
            .unwrap_err()
            .to_string();
        assert_eq!(server.join().unwrap(), 2);
        assert!(
            e.contains("pg1524.txt") && e.contains("not a Project Gutenberg text"),
            "{e}"
        );
        assert!(
            dir_entries(tmp.path()).is_empty(),
            "{:?}",
            dir_entries(tmp.path())
        );
    }

    #[test]
    fn short_or_non_utf8_bodies_are_rejected() {
        let mut files = book_files();
        files.insert(
            "/cache/epub/11/pg11.txt".into(),
            b"*** START OF THE PROJECT GUTENBERG EBOOK 11 ***\nshort\n*** END OF THE PROJECT GUTENBERG EBOOK 11 ***\n".to_vec(),
        );
        let (base, server) = serve(files.clone(), 1);
        let tmp = tempfile::tempdir().unwrap();
        let e = download_books(tmp.path(), &base, false)
            .unwrap_err()
            .to_string();
        server.join().unwrap();
        assert!(e.contains("only 6 bytes"), "{e}");

        files.insert("/cache/epub/11/pg11.txt".into(), b"ok \xff\xfe".to_vec());
        let (base, server) = serve(files, 1);
        let e = download_books(tmp.path(), &base, false)
            .unwrap_err()
            .to_string();
        server.join().unwrap();
        assert!(e.contains("not UTF-8") && e.contains("offset 3"), "{e}");
        assert!(dir_entries(tmp.path()).is_empty());
    }

    #[test]
    fn connection_refused_says_offline_and_how_to_use_a_copy() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let tmp = tempfile::tempdir().unwrap();
        let e = download_books(&tmp.path().join("data"), &base, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("could not reach") && e.contains(&base), "{e}");
        assert!(
            e.contains("offline") && e.contains("--data") && e.contains(DATA_ENV),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(
            !tmp.path().join("data").exists(),
            "nothing created on failure"
        );
    }
}
