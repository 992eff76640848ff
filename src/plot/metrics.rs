//! Reading a run's metrics.jsonl into the series `robo-poet plot` draws.
//!
//! Each line is a JSON object with a `step`; the series are `train_loss`, `val_loss`,
//! `grad_norm` and, per layer, the entries of `layer_grad_norms` (free-form layer names; a layer
//! may be missing from some lines). A resumed run can log a step twice: the later line wins, per
//! series. A line that is not a JSON object with a whole-number `step` (a line cut short by a
//! crash, say) is skipped with a warning that names its line number; a file with no usable line
//! at all is an error.

use crate::train::run_files::METRICS_FILE;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A series of (step, value), sorted by step, one value per step.
pub type Series = Vec<(u64, f64)>;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunMetrics {
    /// The run's name (its directory's name).
    pub name: String,
    pub train_loss: Series,
    pub val_loss: Series,
    /// The global gradient norm (before clipping).
    pub grad_norm: Series,
    /// The run's wall time at each evaluation (the `elapsed_s` of the `val_loss` lines).
    pub val_elapsed_s: Series,
    /// Training tokens per second of each log interval.
    pub tokens_per_s: Series,
    /// Per-layer gradient norms, layers in natural order (blocks.2 before blocks.10).
    pub layer_grad_norms: Vec<(String, Series)>,
    /// Warnings about skipped lines, each naming the file and line number.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Reads `<run>/metrics.jsonl`; errors say what is wrong and what to do.
pub fn read_run(dir: &Path) -> Result<RunMetrics> {
    if !dir.exists() {
        bail!(
            "run directory {} does not exist; pass a folder made by `robo-poet train` (runs/<name>)",
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!(
            "{} is not a folder; pass a run directory made by `robo-poet train` (runs/<name>), not a file in it",
            dir.display()
        );
    }
    let path = dir.join(METRICS_FILE);
    if !path.exists() {
        bail!(
            "{} has no {METRICS_FILE}: it is not a robo-poet run directory, or its training has not logged a step yet",
            dir.display()
        );
    }
    // Bytes, not a String: one line of garbage (a crash mid-write, a disk error) costs that line,
    // not the whole file.
    let bytes =
        std::fs::read(&path).with_context(|| format!("could not read {}", path.display()))?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    parse_bytes(&bytes, &name, &path.display().to_string())
}

/// Parses the text of a metrics.jsonl (`file` names it in messages).
pub fn parse(text: &str, name: &str, file: &str) -> Result<RunMetrics> {
    parse_bytes(text.as_bytes(), name, file)
}

/// Parses the bytes of a metrics.jsonl; a line that is not UTF-8 is skipped with a warning.
pub fn parse_bytes(bytes: &[u8], name: &str, file: &str) -> Result<RunMetrics> {
    let mut train = BTreeMap::new();
    let mut val = BTreeMap::new();
    let mut grad = BTreeMap::new();
    let mut val_elapsed = BTreeMap::new();
    let mut speed = BTreeMap::new();
    let mut layers: Vec<(String, BTreeMap<u64, f64>)> = vec![];
    let mut warnings = vec![];
    let mut used = 0usize;
    let mut nonblank = 0usize;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(raw) else {
            nonblank += 1;
            warnings.push(format!("{file} line {}: not UTF-8 text; skipped", i + 1));
            continue;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        nonblank += 1;
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                warnings.push(format!(
                    "{file} line {}: not valid JSON ({e}); skipped",
                    i + 1
                ));
                continue;
            }
        };
        let Some(step) = v.get("step").and_then(|s| s.as_u64()) else {
            warnings.push(format!(
                "{file} line {}: not a JSON object with a whole-number \"step\"; skipped",
                i + 1
            ));
            continue;
        };
        used += 1;
        // Non-finite values are logged as null by serde_json; they are simply absent here.
        let num = |key: &str| {
            v.get(key)
                .and_then(|x| x.as_f64())
                .filter(|x| x.is_finite())
        };
        if let Some(x) = num("train_loss") {
            train.insert(step, x);
        }
        if let Some(x) = num("val_loss") {
            val.insert(step, x);
            match num("elapsed_s") {
                Some(t) => val_elapsed.insert(step, t),
                None => val_elapsed.remove(&step),
            };
        }
        if let Some(x) = num("tokens_per_s") {
            speed.insert(step, x);
        }
        if let Some(x) = num("grad_norm") {
            grad.insert(step, x);
        }
        if let Some(obj) = v.get("layer_grad_norms").and_then(|x| x.as_object()) {
            for (layer, x) in obj {
                let Some(x) = x.as_f64().filter(|x| x.is_finite()) else {
                    continue;
                };
                match layers.iter_mut().find(|(n, _)| n == layer) {
                    Some((_, s)) => {
                        s.insert(step, x);
                    }
                    None => layers.push((layer.clone(), BTreeMap::from([(step, x)]))),
                }
            }
        }
    }
    if nonblank == 0 {
        bail!("{file} is empty: the run has not logged a step yet; plot it after its first step");
    }
    if used == 0 {
        bail!(
            "{file} has no usable line ({} skipped; the first: {}); is it a robo-poet metrics.jsonl?",
            warnings.len(),
            warnings.first().map(String::as_str).unwrap_or("")
        );
    }
    layers.sort_by_key(|l| natural_key(&l.0));
    let flat = |m: BTreeMap<u64, f64>| m.into_iter().collect::<Series>();
    Ok(RunMetrics {
        name: name.to_string(),
        train_loss: flat(train),
        val_loss: flat(val),
        grad_norm: flat(grad),
        val_elapsed_s: flat(val_elapsed),
        tokens_per_s: flat(speed),
        layer_grad_norms: layers.into_iter().map(|(n, s)| (n, flat(s))).collect(),
        warnings,
    })
}

/// Sort key that compares runs of digits as numbers: "blocks.2" < "blocks.10".
fn natural_key(s: &str) -> Vec<(u8, u64, String)> {
    let mut key = vec![];
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        let mut part = String::new();
        let digit = c.is_ascii_digit();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_digit() != digit {
                break;
            }
            part.push(c);
            chars.next();
        }
        if digit {
            key.push((0, part.parse().unwrap_or(u64::MAX), part));
        } else {
            key.push((1, 0, part));
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_read_sorted_and_the_later_duplicate_wins() {
        let text = r#"{"step":1,"train_loss":4.5,"grad_norm":2.0,"lr":0.001}
{"step":2,"train_loss":4.0,"grad_norm":1.5}
{"step":2,"val_loss":4.2,"val_tokens":100}
{"step":3,"train_loss":3.9,"grad_norm":null}
{"step":2,"train_loss":3.95,"grad_norm":1.25}
"#;
        let m = parse(text, "r", "f").unwrap();
        assert_eq!(m.train_loss, vec![(1, 4.5), (2, 3.95), (3, 3.9)]);
        assert_eq!(m.val_loss, vec![(2, 4.2)]);
        assert_eq!(m.grad_norm, vec![(1, 2.0), (2, 1.25)]);
        assert!(m.val_elapsed_s.is_empty() && m.tokens_per_s.is_empty());
        let m = parse(
            r#"{"step":4,"train_loss":2.0,"tokens_per_s":1500.5,"elapsed_s":3.0}
{"step":4,"val_loss":2.1,"val_tokens":9,"elapsed_s":3.5}
"#,
            "r",
            "f",
        )
        .unwrap();
        assert_eq!(m.val_elapsed_s, vec![(4, 3.5)], "the val line's time");
        assert_eq!(m.tokens_per_s, vec![(4, 1500.5)]);
        assert!(m.layer_grad_norms.is_empty());
        assert!(m.warnings.is_empty());
    }

    #[test]
    fn layer_norms_are_in_natural_order_and_tolerate_missing_layers() {
        let text = r#"{"step":10,"grad_norm":1.0,"layer_grad_norms":{"embed":0.4,"blocks.0":0.9,"head":0.5}}
{"step":20,"grad_norm":1.1,"layer_grad_norms":{"embed":0.3,"head":0.6,"blocks.10":2.0}}
{"step":10,"layer_grad_norms":{"embed":0.45}}
"#;
        let m = parse(text, "r", "f").unwrap();
        let names: Vec<&str> = m.layer_grad_norms.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["blocks.0", "blocks.10", "embed", "head"]);
        let get = |n: &str| &m.layer_grad_norms.iter().find(|(k, _)| k == n).unwrap().1;
        assert_eq!(get("embed"), &vec![(10, 0.45), (20, 0.3)]);
        assert_eq!(get("blocks.0"), &vec![(10, 0.9)]);
        assert_eq!(get("blocks.10"), &vec![(20, 2.0)]);
        assert_eq!(get("head"), &vec![(10, 0.5), (20, 0.6)]);
    }

    #[test]
    fn malformed_lines_are_skipped_with_their_line_number() {
        let text = "{\"step\":1,\"train_loss\":2.0}\n{\"step\":2,\"train_lo\n\n[1,2]\n";
        let m = parse(text, "r", "m.jsonl").unwrap();
        assert_eq!(m.train_loss, vec![(1, 2.0)]);
        assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
        assert!(m.warnings[0].contains("m.jsonl line 2"), "{:?}", m.warnings);
        assert!(m.warnings[1].contains("m.jsonl line 4"), "{:?}", m.warnings);
    }

    #[test]
    fn a_line_of_non_utf8_bytes_is_skipped_not_the_file() {
        let bytes = b"{\"step\":1,\"train_loss\":2.0}\n\xff\xfe{\"step\":2}\r\n{\"step\":3,\"train_loss\":1.5}\r\n";
        let m = parse_bytes(bytes, "r", "m.jsonl").unwrap();
        assert_eq!(m.train_loss, vec![(1, 2.0), (3, 1.5)]);
        assert_eq!(m.warnings, ["m.jsonl line 2: not UTF-8 text; skipped"]);
        let e = parse_bytes(b"\xff\n", "r", "m.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no usable line") && e.contains("not UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn empty_and_unusable_files_are_errors() {
        let e = parse("\n  \n", "r", "m.jsonl").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = parse("garbage\n", "r", "m.jsonl").unwrap_err().to_string();
        assert!(e.contains("no usable line") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn missing_directories_and_files_are_explained() {
        let d = tempfile::tempdir().unwrap();
        let e = read_run(&d.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = read_run(d.path()).unwrap_err().to_string();
        assert!(e.contains("has no metrics.jsonl"), "{e}");
    }
}
