//! Checkpoint files on disk: save and load a run's latest checkpoint, crash-safely.
//!
//! A run directory (e.g. `runs/attention-20261128-153000/`) holds its latest checkpoint in
//! `checkpoint/`, three files:
//! - `model.safetensors`: model parameters, F32 little endian, in the order the caller gave them;
//! - `optimizer.safetensors`: optimizer state tensors, same format;
//! - `checkpoint.json`: the caller's JSON (config, tokenizer, step, RNG state...), pretty-printed,
//!   plus `"format": "robo-poet-checkpoint"` and `"format_version": 1`, added here.
//!
//! Both safetensors files are plain safetensors (readable by `safetensors.numpy.load_file`) and
//! carry `__metadata__` `{"format": "robo-poet", "step": "<step>"}`. Load checks that both steps
//! equal the JSON's `"step"`, so files from two different saves are never mixed silently.
//!
//! # Save protocol
//! A save interrupted at any instant (crash, `kill -9`, power loss) must leave the run with one
//! complete, consistent checkpoint, so it never writes into the live folder:
//! 1. write the three files into `checkpoint.tmp/` (a stale one is removed first), fsync each
//!    file, fsync the folder;
//! 2. if `checkpoint/` is complete (has `checkpoint.json`), remove a stale `checkpoint.old/` and
//!    rename `checkpoint/` to `checkpoint.old/`; fsync the run dir. If `checkpoint/` is absent,
//!    `checkpoint.old/` is left alone: it is then the only good copy. (An incomplete
//!    `checkpoint/`, which this protocol never produces, is removed instead of rotated.)
//! 3. rename `checkpoint.tmp/` to `checkpoint/`; fsync the run dir;
//! 4. remove `checkpoint.old/`.
//!
//! A folder is "complete" when it holds `checkpoint.json`: `checkpoint/` only ever appears by a
//! rename of a fully written and synced `checkpoint.tmp/`, so that one file stands for all three.
//! Load uses `checkpoint/` if complete, else `checkpoint.old/` (the state between steps 2 and 3),
//! and reports which one it used. `checkpoint.tmp/` is never loaded: nothing tells a finished one
//! from a half-written one, and the next save deletes it.
//!
//! Not handled: two processes saving into the same run dir at once.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const META_FILE: &str = "checkpoint.json";

const CHECKPOINT_DIR: &str = "checkpoint";
const TMP_DIR: &str = "checkpoint.tmp";
const OLD_DIR: &str = "checkpoint.old";

/// `"format"` in checkpoint.json.
const FORMAT: &str = "robo-poet-checkpoint";
const FORMAT_VERSION: u64 = 1;
/// `"format"` in the safetensors `__metadata__`.
const TENSOR_FORMAT: &str = "robo-poet";
/// What to tell the user when a checkpoint cannot be trusted.
const DAMAGED: &str = "the checkpoint is damaged; resume from another run or retrain";

/// A tensor to save, borrowed from the caller.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

/// A loaded tensor. `data.len()` is the product of `shape` (1 for the scalar shape `[]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A loaded checkpoint. Tensors come in the order they were given to [`save`] (file order).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// checkpoint.json, including the `format` and `format_version` fields.
    pub meta: Value,
    pub model: Vec<Tensor>,
    pub optimizer: Vec<Tensor>,
    /// The folder actually loaded: `<run>/checkpoint` or, after an interrupted save,
    /// `<run>/checkpoint.old`.
    pub dir: PathBuf,
}

// ------------------------------------------------------------------------------------------------
// Public API

/// Replaces `path` with `bytes` so that a reader (or a crash) sees the old or the new content,
/// never a mix: temp file beside it, write, fsync, rename over `path`, fsync the parent folder.
/// Errors name the file involved.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    let parent = parent_dir(path);
    // Hidden and pid-tagged, so it is not mistaken for a real file and two processes don't collide.
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = parent.join(tmp_name);

    let written = write_synced(&tmp, bytes).and_then(|()| {
        fs::rename(&tmp, path).map_err(|e| with_path(e, "could not rename a temp file to", path))
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(parent)
}

/// Saves a checkpoint for `step` into `run_dir/checkpoint/` (creating `run_dir` if needed),
/// following the crash-safe protocol in the module docs.
///
/// `meta` must be a JSON object; its `"step"`, if present, must equal `step` (it is added if
/// absent). `format`/`format_version` are set here, so a loaded `meta` can be saved back as is.
/// Every tensor is validated (data length = product of shape, unique names) before the disk is
/// touched, so a bad call leaves the run dir as it was.
pub fn save(
    run_dir: &Path,
    step: u64,
    meta: &Value,
    model: &[TensorRef],
    optimizer: &[TensorRef],
) -> Result<()> {
    let mut meta = meta.clone();
    let Some(fields) = meta.as_object_mut() else {
        let kind = match meta {
            Value::Array(_) => "an array",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            _ => "null",
        };
        bail!("cannot save a checkpoint: its metadata must be a JSON object, not {kind}; this is a bug in the caller");
    };
    if let Some(v) = fields.get("step") {
        if v.as_u64() != Some(step) {
            bail!("cannot save the checkpoint for step {step}: its metadata says \"step\": {v}; this is a bug in the caller");
        }
    }
    fields.insert("step".into(), step.into());
    fields.insert("format".into(), FORMAT.into());
    fields.insert("format_version".into(), FORMAT_VERSION.into());

    let tensor_meta = BTreeMap::from([
        ("format".to_string(), TENSOR_FORMAT.to_string()),
        ("step".to_string(), step.to_string()),
    ]);
    let model_bytes = encode_safetensors(model, &tensor_meta)
        .map_err(|e| anyhow!("cannot save {MODEL_FILE}: {e}"))?;
    let optimizer_bytes = encode_safetensors(optimizer, &tensor_meta)
        .map_err(|e| anyhow!("cannot save {OPTIMIZER_FILE}: {e}"))?;
    let mut json = serde_json::to_vec_pretty(&meta)
        .map_err(|e| anyhow!("cannot save {META_FILE}: {e}; this is a bug in the caller"))?;
    json.push(b'\n');

    let files: [(&str, &[u8]); 3] = [
        (MODEL_FILE, &model_bytes),
        (OPTIMIZER_FILE, &optimizer_bytes),
        (META_FILE, &json),
    ];
    commit(run_dir, &files, &mut |_| Ok(())).map_err(|e| {
        anyhow!("could not save the checkpoint: {e}; check free disk space and permissions")
    })
}

/// Steps 1-4 of the save protocol (module docs). Errors name the path involved.
///
/// `stage` is called after each file system change with a label; an error from it stops the save
/// right there, which is how the tests simulate a process killed at that instant.
fn commit(
    run_dir: &Path,
    files: &[(&str, &[u8])],
    stage: &mut dyn FnMut(&str) -> io::Result<()>,
) -> io::Result<()> {
    if !run_dir.is_dir() {
        fs::create_dir_all(run_dir).map_err(|e| with_path(e, "could not create", run_dir))?;
        sync_dir(parent_dir(run_dir))?;
    }
    let tmp = run_dir.join(TMP_DIR);
    let current = run_dir.join(CHECKPOINT_DIR);
    let old = run_dir.join(OLD_DIR);

    // 1. Stage the complete checkpoint beside the live one.
    remove_dir_if_exists(&tmp)?;
    fs::create_dir(&tmp).map_err(|e| with_path(e, "could not create", &tmp))?;
    for (name, bytes) in files {
        write_synced(&tmp.join(name), bytes)?;
        stage(name)?;
    }
    sync_dir(&tmp)?;
    stage("1")?;

    // 2. Keep the live checkpoint as .old until the new one is in place.
    if is_complete(&current) {
        remove_dir_if_exists(&old)?;
        stage("2 removed stale .old")?;
        fs::rename(&current, &old).map_err(|e| with_path(e, "could not rename", &current))?;
        // Barrier: the rename below must not reach the disk before this one.
        sync_dir(run_dir)?;
    } else {
        // Not a good copy (see module docs); .old, if any, is the one to keep.
        remove_dir_if_exists(&current)?;
    }
    stage("2")?;

    // 3. Commit.
    fs::rename(&tmp, &current).map_err(|e| with_path(e, "could not rename", &tmp))?;
    sync_dir(run_dir)?;
    stage("3")?;

    // 4. The save is committed; a leftover .old is harmless (the next save removes it), so a
    // failed cleanup must not fail the training run.
    if fs::remove_dir_all(&old).is_ok() {
        let _ = sync_dir(run_dir);
    }
    Ok(())
}

/// Loads the checkpoint of `run_dir` (see the module docs for which folder is used) and checks
/// it: format and version, F32 tensors, and the same step in all three files. Tensors come in file
/// order, which is the order given to [`save`].
pub fn load(run_dir: &Path) -> Result<Checkpoint> {
    let (meta, dir) = load_meta(run_dir)?;
    let meta_path = dir.join(META_FILE);
    // load_meta checked that "step" is a u64.
    let step = meta.get("step").and_then(Value::as_u64).unwrap_or_default();
    let model = load_tensor_file(&dir.join(MODEL_FILE), step, &meta_path)?;
    let optimizer = load_tensor_file(&dir.join(OPTIMIZER_FILE), step, &meta_path)?;
    Ok(Checkpoint {
        meta,
        model,
        optimizer,
        dir,
    })
}

/// Reads and checks only checkpoint.json (cheap: no tensors), and returns it with the checkpoint
/// folder it came from.
pub fn load_meta(run_dir: &Path) -> Result<(Value, PathBuf)> {
    let dir = resolve(run_dir)?;
    let path = dir.join(META_FILE);
    let bytes = fs::read(&path).map_err(|e| read_failed(&path, e))?;
    let meta: Value = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow!(
            "{} is not valid JSON (line {}, column {}: {}); {DAMAGED}",
            path.display(),
            e.line(),
            e.column(),
            json_error_kind(&e)
        )
    })?;
    check_meta(&meta, &path)?;
    Ok((meta, dir))
}

/// Whether `run_dir` has a checkpoint that [`load`] would try (it may still be damaged).
pub fn has_checkpoint(run_dir: &Path) -> bool {
    resolve(run_dir).is_ok()
}

/// Encodes F32 tensors as a safetensors file, in the given order, with `metadata` as
/// `__metadata__` (omitted when empty). Errors if a tensor's data length is not the product of its
/// shape, or a name repeats or is `__metadata__`. The output is deterministic.
pub fn encode_safetensors(
    tensors: &[TensorRef],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    }
    let mut seen = HashSet::new();
    let mut offset = 0usize;
    for t in tensors {
        if t.name == "__metadata__" {
            bail!("a tensor cannot be named \"__metadata__\" (reserved by safetensors); rename it");
        }
        if !seen.insert(t.name) {
            bail!(
                "two tensors are named {:?}; tensor names must be unique",
                t.name
            );
        }
        let expected = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if expected != Some(t.data.len()) {
            bail!(
                "tensor {:?} has shape {:?} ({} values) but {} values of data; this is a bug in the caller",
                t.name,
                t.shape,
                expected.map_or("too many".to_string(), |n| n.to_string()),
                t.data.len()
            );
        }
        let end = offset
            .checked_add(std::mem::size_of_val(t.data))
            .ok_or_else(|| anyhow!("the tensors are too large to fit in one file"))?;
        header.insert(
            t.name.to_string(),
            serde_json::json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header)?;
    // The spec allows trailing spaces; padding to 8 bytes keeps the data aligned for mmap readers.
    header.resize(header.len().next_multiple_of(8), b' ');

    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for t in tensors {
        if cfg!(target_endian = "little") {
            out.extend_from_slice(bytemuck::cast_slice(t.data));
        } else {
            t.data
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
    }
    Ok(out)
}

/// Decodes a safetensors file of F32 tensors, returning them in file order (by data offset) with
/// the `__metadata__` map. `what` names the file in errors. Never panics, whatever the bytes.
pub fn decode_safetensors(
    bytes: &[u8],
    what: &Path,
) -> Result<(Vec<Tensor>, BTreeMap<String, String>)> {
    let damaged = |detail: String| {
        anyhow!(
            "{} is truncated or corrupt ({detail}): {DAMAGED}",
            what.display()
        )
    };
    // Checked here, not left to the safetensors crate, for messages that give the numbers.
    let Some(len_bytes) = bytes.first_chunk::<8>() else {
        return Err(damaged(format!(
            "{} bytes, shorter than the 8-byte header length",
            bytes.len()
        )));
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    let room = bytes.len() as u64 - 8;
    if header_len > room {
        return Err(damaged(format!(
            "header claims {header_len} bytes, only {room} follow"
        )));
    }
    let (n, parsed) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| damaged(describe_safetensors_error(e)))?;
    let data = &bytes[8 + n..];

    let mut infos: Vec<_> = parsed.tensors().into_iter().collect();
    infos.sort_by_key(|(_, info)| info.data_offsets);
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, info) in infos {
        if info.dtype != safetensors::Dtype::F32 {
            bail!(
                "{}: tensor {name:?} is {:?}, but robo-poet checkpoints hold F32 only; it was not written by robo-poet, {DAMAGED}",
                what.display(),
                info.dtype
            );
        }
        let (start, end) = info.data_offsets;
        // read_metadata validated the offsets; `get` keeps this panic-free regardless.
        let raw = data
            .get(start..end)
            .ok_or_else(|| damaged(format!("tensor {name:?} lies outside the file")))?;
        tensors.push(Tensor {
            name,
            shape: info.shape.clone(),
            data: f32s_from_le_bytes(raw),
        });
    }
    let metadata = parsed.metadata().clone().unwrap_or_default();
    Ok((tensors, metadata.into_iter().collect()))
}

// ------------------------------------------------------------------------------------------------
// Loading helpers

/// The folder to load: `checkpoint/` if complete, else `checkpoint.old/`.
fn resolve(run_dir: &Path) -> Result<PathBuf> {
    for sub in [CHECKPOINT_DIR, OLD_DIR] {
        let dir = run_dir.join(sub);
        if is_complete(&dir) {
            return Ok(dir);
        }
    }
    let run = run_dir.display();
    if !run_dir.is_dir() {
        bail!("{run} does not exist; check the path, or train a model first with `robo-poet train --out {run}`");
    }
    let expected = run_dir.join(CHECKPOINT_DIR).join(META_FILE);
    bail!(
        "{run} has no checkpoint (expected {}); train a model first with `robo-poet train --out {run}`",
        expected.display()
    )
}

fn is_complete(dir: &Path) -> bool {
    dir.join(META_FILE).is_file()
}

fn check_meta(meta: &Value, path: &Path) -> Result<()> {
    let file = path.display();
    let foreign = "point at a run directory written by `robo-poet train`";
    if !meta.is_object() {
        bail!("{file} is not a robo-poet checkpoint (not a JSON object); {foreign}");
    }
    match meta.get("format") {
        Some(Value::String(f)) if f == FORMAT => {}
        other => bail!(
            "{file} is not a robo-poet checkpoint (\"format\" is {}, expected \"{FORMAT}\"); {foreign}",
            show(other)
        ),
    }
    match meta.get("format_version").and_then(Value::as_u64) {
        Some(FORMAT_VERSION) => {}
        Some(v) => bail!(
            "{file} has format_version {v}, but this robo-poet reads version {FORMAT_VERSION}; load it with the robo-poet version that wrote it, or retrain"
        ),
        None => bail!(
            "{file} has no valid format_version (found {}); {DAMAGED}",
            show(meta.get("format_version"))
        ),
    }
    if meta.get("step").and_then(Value::as_u64).is_none() {
        bail!(
            "{file} has no valid \"step\" (found {}); {DAMAGED}",
            show(meta.get("step"))
        );
    }
    Ok(())
}

/// Reads one safetensors file of the checkpoint and checks that it belongs to `step`.
fn load_tensor_file(path: &Path, step: u64, meta_path: &Path) -> Result<Vec<Tensor>> {
    let bytes = fs::read(path).map_err(|e| read_failed(path, e))?;
    let (tensors, metadata) = decode_safetensors(&bytes, path)?;
    let file = path.display();
    if metadata.get("format").map(String::as_str) != Some(TENSOR_FORMAT) {
        bail!(
            "{file} was not written by robo-poet (its __metadata__ has format {:?}, expected {TENSOR_FORMAT:?}); {DAMAGED}",
            metadata.get("format")
        );
    }
    let file_step = metadata.get("step").and_then(|s| s.parse::<u64>().ok());
    if file_step != Some(step) {
        let found = file_step.map_or("no valid step".to_string(), |s| format!("step {s}"));
        bail!(
            "{file} is from {found} but {} says step {step}: the checkpoint mixes two saves; resume from another run or retrain",
            meta_path.display()
        );
    }
    Ok(tensors)
}

fn describe_safetensors_error(e: safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooLarge => "header larger than the 100 MB safetensors allows".into(),
        E::InvalidHeader => "header is not UTF-8".into(),
        E::InvalidHeaderStart | E::InvalidHeaderDeserialization => {
            "header is not valid safetensors JSON".into()
        }
        E::InvalidOffset(name) => format!("tensor {name:?} has data offsets out of sequence"),
        E::TensorInvalidInfo => "a tensor's byte size does not match its shape".into(),
        E::ValidationOverflow => "a tensor's shape is impossibly large".into(),
        E::MetadataIncompleteBuffer => "data length does not match the header".into(),
        other => format!("{other:?}"),
    }
}

fn f32s_from_le_bytes(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "it ends early",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected value",
        serde_json::error::Category::Io => "read error",
    }
}

fn show(v: Option<&Value>) -> String {
    v.map_or("missing".to_string(), Value::to_string)
}

// ------------------------------------------------------------------------------------------------
// File system helpers

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let write = || -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(|e| with_path(e, "could not write", path))
}

/// Makes renames and creations inside `dir` durable. Directories cannot be opened for syncing on
/// Windows, where this is a no-op.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| with_path(e, "could not sync folder", dir))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

fn remove_dir_if_exists(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(with_path(e, "could not remove stale folder", dir))
        }
        _ => Ok(()),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn with_path(e: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{action} {}: {e}", path.display()))
}

fn read_failed(path: &Path, e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::NotFound {
        anyhow!("{} is missing: {DAMAGED}", path.display())
    } else {
        anyhow!("could not read {}: {e}; check permissions", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Owned tensors for tests, borrowed as `TensorRef`s.
    struct Owned(Vec<(String, Vec<usize>, Vec<f32>)>);

    impl Owned {
        fn refs(&self) -> Vec<TensorRef<'_>> {
            self.0
                .iter()
                .map(|(name, shape, data)| TensorRef { name, shape, data })
                .collect()
        }
    }

    /// Deterministic values that include the awkward bit patterns (NaN payloads, -0, infinities,
    /// subnormals), so "same bits back" means something.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let special = [
            f32::from_bits(0x7fc0_1234),
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(1),
            f32::MAX,
        ];
        (0..n as u32)
            .map(|i| match i as usize {
                k if k < special.len() && seed == 0 => special[k],
                _ => (i.wrapping_mul(2_654_435_761) ^ seed) as f32 * 1e-9 - 1.5,
            })
            .collect()
    }

    /// Names deliberately not in sorted order, to check that file order is the caller's order.
    fn model_tensors(seed: u32) -> Owned {
        Owned(vec![
            ("wte".into(), vec![7, 4], values(28, seed)),
            (
                "blocks.0.attn.w".into(),
                vec![3, 37, 5],
                values(3 * 37 * 5, seed + 1),
            ),
            ("scale".into(), vec![], values(1, seed + 2)),
            ("empty".into(), vec![2, 0], vec![]),
        ])
    }

    fn optimizer_tensors(seed: u32) -> Owned {
        Owned(vec![
            ("wte.m".into(), vec![7, 4], values(28, seed + 10)),
            ("wte.v".into(), vec![7, 4], values(28, seed + 11)),
        ])
    }

    fn save_step(run: &Path, step: u64) {
        let meta = json!({ "step": step, "config": { "model": "attention", "d": 64 }, "rng": [1u64, u64::MAX] });
        save(
            run,
            step,
            &meta,
            &model_tensors(0).refs(),
            &optimizer_tensors(0).refs(),
        )
        .unwrap_or_else(|e| panic!("save of step {step} into {} failed: {e}", run.display()));
    }

    fn assert_same(got: &[Tensor], want: &Owned, what: &str) {
        let names: Vec<_> = got.iter().map(|t| t.name.as_str()).collect();
        let want_names: Vec<_> = want.0.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, want_names, "{what}: tensor names/order");
        for (g, (name, shape, data)) in got.iter().zip(&want.0) {
            assert_eq!(&g.shape, shape, "{what}: shape of {name}");
            let g_bits: Vec<u32> = g.data.iter().map(|v| v.to_bits()).collect();
            let w_bits: Vec<u32> = data.iter().map(|v| v.to_bits()).collect();
            assert_eq!(g_bits, w_bits, "{what}: bits of {name}");
        }
    }

    fn err_of<T>(r: Result<T>, what: &str) -> String {
        match r {
            Ok(_) => panic!("{what}: expected an error, got Ok"),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(!msg.contains('\n'), "{what}: error is not one line: {msg}");
                msg
            }
        }
    }

    fn assert_contains(msg: &str, parts: &[&str], what: &str) {
        for p in parts {
            assert!(msg.contains(p), "{what}: error {msg:?} lacks {p:?}");
        }
    }

    fn step_of(meta: &Value) -> u64 {
        meta["step"].as_u64().expect("step")
    }

    fn leftovers(run: &Path) -> Vec<&'static str> {
        [TMP_DIR, OLD_DIR]
            .into_iter()
            .filter(|d| run.join(d).exists())
            .collect()
    }

    #[test]
    fn round_trip_keeps_names_order_shapes_and_bits() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("runs/attention-1");
        save_step(&run, 1200);
        let ck = load(&run).unwrap();
        assert_eq!(ck.dir, run.join(CHECKPOINT_DIR));
        assert_same(&ck.model, &model_tensors(0), "model");
        assert_same(&ck.optimizer, &optimizer_tensors(0), "optimizer");
        assert_eq!(ck.meta["format"], FORMAT);
        assert_eq!(ck.meta["format_version"], FORMAT_VERSION);
        assert_eq!(ck.meta["step"], 1200);
        assert_eq!(ck.meta["config"]["model"], "attention");
        assert_eq!(
            ck.meta["rng"][1],
            u64::MAX,
            "u64 RNG state must survive exactly"
        );
        assert!(leftovers(&run).is_empty(), "left {:?}", leftovers(&run));
        let text = fs::read_to_string(ck.dir.join(META_FILE)).unwrap();
        assert!(
            text.contains("\n  \"format\""),
            "not pretty-printed: {text}"
        );

        // A loaded meta can be saved back as is (it already has format fields and the step).
        let meta = ck.meta.clone();
        save(&run, 1200, &meta, &model_tensors(0).refs(), &[]).unwrap();
        let again = load(&run).unwrap();
        assert_eq!(again.meta, ck.meta);
        assert!(again.optimizer.is_empty());
        assert_eq!(
            load_meta(&run).unwrap(),
            (ck.meta, run.join(CHECKPOINT_DIR))
        );
    }

    #[test]
    fn encoding_follows_the_safetensors_layout() {
        let t = model_tensors(0);
        let meta = BTreeMap::from([
            ("format".into(), "robo-poet".into()),
            ("step".into(), "7".into()),
        ]);
        let bytes = encode_safetensors(&t.refs(), &meta).unwrap();
        assert_eq!(
            bytes,
            encode_safetensors(&t.refs(), &meta).unwrap(),
            "not deterministic"
        );

        // By hand: u64 LE header length N, N bytes of JSON, then the data.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0, "header length {n} not 8-aligned");
        assert_eq!(bytes[8], b'{');
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert_eq!(
            header["__metadata__"],
            json!({ "format": "robo-poet", "step": "7" })
        );
        let data = &bytes[8 + n..];
        let mut offset = 0;
        for (name, shape, values) in &t.0 {
            let info = &header[name.as_str()];
            assert_eq!(info["dtype"], "F32", "{name}");
            assert_eq!(info["shape"], json!(shape), "{name}");
            let end = offset + 4 * values.len();
            assert_eq!(info["data_offsets"], json!([offset, end]), "{name}");
            let le: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(&data[offset..end], &le[..], "{name}");
            offset = end;
        }
        assert_eq!(data.len(), offset, "trailing bytes after the last tensor");

        // And the reference reader accepts it.
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let scalar = st.tensor("scale").unwrap();
        assert_eq!(scalar.shape(), &[] as &[usize]);
        assert_eq!(scalar.data(), &t.0[2].2[0].to_le_bytes());
    }

    #[test]
    fn save_rejects_bad_input_without_touching_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let data = [1.0f32; 5];
        let good = TensorRef {
            name: "a",
            shape: &[5],
            data: &data,
        };
        let meta = json!({ "step": 3 });
        let cases: Vec<(Vec<TensorRef>, Value, &[&str])> = vec![
            (
                vec![TensorRef {
                    name: "w",
                    shape: &[2, 3],
                    data: &data,
                }],
                meta.clone(),
                &["model.safetensors", "\"w\"", "[2, 3]", "5 values"],
            ),
            (
                vec![TensorRef {
                    name: "w",
                    shape: &[usize::MAX, 3],
                    data: &data,
                }],
                meta.clone(),
                &["\"w\"", "too many"],
            ),
            (vec![good, good], meta.clone(), &["\"a\"", "unique"]),
            (
                vec![TensorRef {
                    name: "__metadata__",
                    ..good
                }],
                meta.clone(),
                &["__metadata__"],
            ),
            (vec![good], json!({ "step": 4 }), &["step 3", "\"step\": 4"]),
            (vec![good], json!([1, 2]), &["JSON object, not an array"]),
        ];
        for (i, (model, meta, parts)) in cases.into_iter().enumerate() {
            let msg = err_of(save(&run, 3, &meta, &model, &[]), &format!("case {i}"));
            assert_contains(&msg, parts, &format!("case {i}"));
        }
        assert!(!run.exists(), "a rejected save created {}", run.display());
    }

    /// Writes `bytes` as the model file of a good checkpoint and returns load's error.
    fn load_with_model_bytes(bytes: &[u8], what: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        save_step(dir.path(), 5);
        fs::write(dir.path().join(CHECKPOINT_DIR).join(MODEL_FILE), bytes).unwrap();
        err_of(load(dir.path()), what)
    }

    #[test]
    fn damaged_model_file_is_an_error_naming_it() {
        let good = encode_safetensors(
            &model_tensors(0).refs(),
            &BTreeMap::from([
                ("format".into(), "robo-poet".into()),
                ("step".into(), "5".into()),
            ]),
        )
        .unwrap();
        let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let mut cases: Vec<(String, Vec<u8>)> = [
            0,
            3,
            8,
            9,
            n / 2,
            8 + n - 1,
            8 + n,
            8 + n + 3,
            good.len() - 1,
        ]
        .into_iter()
        .map(|cut| {
            (
                format!("cut at {cut} of {}", good.len()),
                good[..cut].to_vec(),
            )
        })
        .collect();
        cases.push(("trailing byte".into(), [&good[..], &[0]].concat()));
        cases.push((
            "garbage".into(),
            b"not a tensor file, just some words here".to_vec(),
        ));
        for claim in [u64::MAX, 1 << 40, 200_000_000, good.len() as u64 - 7] {
            let mut b = good.clone();
            b[..8].copy_from_slice(&claim.to_le_bytes());
            cases.push((format!("header length {claim}"), b));
        }
        let header = br#"{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
        let beyond = [&(header.len() as u64).to_le_bytes()[..], header, &[0; 16]].concat();
        cases.push(("offsets beyond the file".into(), beyond));
        for (what, bytes) in cases {
            let msg = load_with_model_bytes(&bytes, &what);
            assert_contains(
                &msg,
                &[
                    "checkpoint/model.safetensors",
                    "truncated or corrupt",
                    "retrain",
                ],
                &what,
            );
        }

        let header = br#"{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
        let f16 = [&(header.len() as u64).to_le_bytes()[..], header, &[0; 4]].concat();
        let msg = load_with_model_bytes(&f16, "F16 tensor");
        assert_contains(
            &msg,
            &["model.safetensors", "\"h\"", "F16", "F32"],
            "F16 tensor",
        );

        let missing = encode_safetensors(&model_tensors(0).refs(), &BTreeMap::new()).unwrap();
        let msg = load_with_model_bytes(&missing, "no __metadata__");
        assert_contains(
            &msg,
            &["model.safetensors", "not written by robo-poet"],
            "no __metadata__",
        );
    }

    #[test]
    fn decode_never_panics_on_mutated_bytes() {
        let t = Owned(vec![
            ("a".into(), vec![2], vec![1.0, 2.0]),
            ("b".into(), vec![], vec![3.0]),
        ]);
        let good =
            encode_safetensors(&t.refs(), &BTreeMap::from([("k".into(), "v".into())])).unwrap();
        let what = Path::new("x.safetensors");
        for i in 0..good.len() {
            for flip in [0x01u8, 0x10, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] ^= flip;
                // Ok or Err are both fine; a panic fails the test.
                if let Ok((tensors, _)) = decode_safetensors(&b, what) {
                    for t in tensors {
                        let n: usize = t.shape.iter().product();
                        assert_eq!(n, t.data.len(), "byte {i} ^ {flip:#x}: inconsistent tensor");
                    }
                }
            }
        }
    }

    #[test]
    fn damaged_or_foreign_json_is_an_error_naming_it() {
        let cases: [(&str, &[u8], &[&str]); 6] = [
            (
                "cut",
                b"{\n  \"step\": 5,\n  \"con",
                &["checkpoint.json is not valid JSON (line 3, column", DAMAGED],
            ),
            (
                "garbage",
                b"\x00\x01binary",
                &["checkpoint.json is not valid JSON (line 1, column"],
            ),
            (
                "version",
                br#"{"format":"robo-poet-checkpoint","format_version":2,"step":5}"#,
                &["checkpoint.json has format_version 2", "reads version 1"],
            ),
            (
                "format",
                br#"{"format":"other","format_version":1,"step":5}"#,
                &["checkpoint.json is not a robo-poet checkpoint", "\"other\""],
            ),
            (
                "no format",
                br#"{"step":5}"#,
                &["checkpoint.json is not a robo-poet checkpoint", "missing"],
            ),
            (
                "step",
                br#"{"format":"robo-poet-checkpoint","format_version":1,"step":-1}"#,
                &["checkpoint.json has no valid \"step\"", "-1"],
            ),
        ];
        for (what, bytes, parts) in cases {
            let dir = tempfile::tempdir().unwrap();
            save_step(dir.path(), 5);
            fs::write(dir.path().join(CHECKPOINT_DIR).join(META_FILE), bytes).unwrap();
            assert_contains(&err_of(load(dir.path()), what), parts, what);
            assert_contains(&err_of(load_meta(dir.path()), what), parts, what);
        }
    }

    #[test]
    fn files_from_different_steps_are_a_mixed_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        save_step(&a, 5);
        save_step(&b, 6);
        for file in [MODEL_FILE, OPTIMIZER_FILE] {
            save_step(&a, 5);
            fs::copy(
                b.join(CHECKPOINT_DIR).join(file),
                a.join(CHECKPOINT_DIR).join(file),
            )
            .unwrap();
            let msg = err_of(load(&a), file);
            assert_contains(
                &msg,
                &[
                    file,
                    "step 6",
                    "checkpoint.json says step 5",
                    "mixes two saves",
                ],
                file,
            );
        }
        save_step(&a, 5);
        fs::remove_file(a.join(CHECKPOINT_DIR).join(OPTIMIZER_FILE)).unwrap();
        assert_contains(
            &err_of(load(&a), "missing"),
            &["optimizer.safetensors is missing"],
            "missing",
        );
    }

    /// Builds `run` from checkpoints saved elsewhere: `dirs` maps a folder name in `run` to the
    /// step whose complete checkpoint it should hold.
    fn build_state(root: &Path, run: &Path, dirs: &[(&str, u64)]) {
        fs::create_dir_all(run).unwrap();
        for (i, (name, step)) in dirs.iter().enumerate() {
            let src = root.join(format!("src{i}"));
            save_step(&src, *step);
            fs::rename(src.join(CHECKPOINT_DIR), run.join(name)).unwrap();
        }
    }

    fn check_then_resave(run: &Path, want_step: u64, want_dir: &str, what: &str) {
        assert!(has_checkpoint(run), "{what}");
        let ck = load(run).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(step_of(&ck.meta), want_step, "{what}");
        assert_eq!(ck.dir, run.join(want_dir), "{what}");
        assert_same(&ck.model, &model_tensors(0), what);
        assert_eq!(load_meta(run).unwrap().1, run.join(want_dir), "{what}");

        save_step(run, 100);
        let ck = load(run).unwrap();
        assert_eq!(
            (step_of(&ck.meta), ck.dir.clone()),
            (100, run.join(CHECKPOINT_DIR)),
            "{what}"
        );
        assert!(
            leftovers(run).is_empty(),
            "{what}: left {:?}",
            leftovers(run)
        );
    }

    #[test]
    fn interrupted_save_leaves_a_loadable_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let run = |name: &str| root.path().join(name);

        // Killed during step 1: half-written tmp beside the good checkpoint.
        build_state(root.path(), &run("during-1"), &[(CHECKPOINT_DIR, 1)]);
        let tmp = run("during-1").join(TMP_DIR);
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join(MODEL_FILE), b"\x40\0\0\0\0\0\0\0{\"a\":").unwrap();
        check_then_resave(&run("during-1"), 1, CHECKPOINT_DIR, "half-written tmp");

        // Killed between steps 2 and 3: only .old (and a complete tmp) left.
        build_state(root.path(), &run("after-2"), &[(OLD_DIR, 1), (TMP_DIR, 2)]);
        check_then_resave(&run("after-2"), 1, OLD_DIR, "only .old and tmp");
        build_state(root.path(), &run("only-old"), &[(OLD_DIR, 1)]);
        check_then_resave(&run("only-old"), 1, OLD_DIR, "only .old");

        // Killed between steps 3 and 4: new checkpoint plus the previous one as .old.
        build_state(
            root.path(),
            &run("after-3"),
            &[(CHECKPOINT_DIR, 2), (OLD_DIR, 1)],
        );
        check_then_resave(&run("after-3"), 2, CHECKPOINT_DIR, "checkpoint and .old");

        // Not produced by the protocol, but must not cost the good .old: an incomplete checkpoint/.
        build_state(root.path(), &run("bad-current"), &[(OLD_DIR, 1)]);
        fs::create_dir(run("bad-current").join(CHECKPOINT_DIR)).unwrap();
        check_then_resave(
            &run("bad-current"),
            1,
            OLD_DIR,
            "incomplete checkpoint/ and .old",
        );
    }

    /// Runs the real save protocol, stopping it after each file system change in turn, from
    /// several starting states; the run must always load as the state before or after the save.
    #[test]
    fn save_killed_at_any_stage_leaves_the_old_or_new_checkpoint() {
        let stages = [
            MODEL_FILE,
            OPTIMIZER_FILE,
            META_FILE,
            "1",
            "2 removed stale .old",
            "2",
            "3",
        ];
        let starts: [&[(&str, u64)]; 4] = [
            &[],
            &[(CHECKPOINT_DIR, 1)],
            &[(CHECKPOINT_DIR, 2), (OLD_DIR, 1)],
            &[(OLD_DIR, 1)],
        ];
        let (model, optimizer) = (model_tensors(3), optimizer_tensors(3));
        let meta = json!({ "step": 50 });
        let encoded = |t: &Owned| {
            let m = BTreeMap::from([
                ("format".into(), "robo-poet".into()),
                ("step".into(), "50".into()),
            ]);
            encode_safetensors(&t.refs(), &m).unwrap()
        };
        let mut json = serde_json::to_vec_pretty(&meta).unwrap();
        json.splice(
            1..1,
            br#""format":"robo-poet-checkpoint","format_version":1,"#
                .iter()
                .copied(),
        );
        let (m, o) = (encoded(&model), encoded(&optimizer));
        let files: [(&str, &[u8]); 3] =
            [(MODEL_FILE, &m), (OPTIMIZER_FILE, &o), (META_FILE, &json)];

        let root = tempfile::tempdir().unwrap();
        for (s, start) in starts.iter().enumerate() {
            for kill_at in stages {
                let what = format!("start {start:?}, killed after {kill_at:?}");
                let run = root.path().join(format!("run-{s}-{kill_at}"));
                build_state(root.path(), &run, start);
                let before = load_meta(&run).ok().map(|(meta, _)| step_of(&meta));

                let mut reached = false;
                let result = commit(&run, &files, &mut |label| {
                    reached |= label == kill_at;
                    if label == kill_at {
                        Err(io::Error::other("killed"))
                    } else {
                        Ok(())
                    }
                });
                assert_eq!(result.is_err(), reached, "{what}");
                // "2 removed stale .old" only happens when there is a checkpoint/ to rotate.
                if !reached {
                    continue;
                }
                let after = load(&run).ok().map(|ck| step_of(&ck.meta));
                let want = if kill_at == "3" { Some(50) } else { before };
                assert_eq!(after, want, "{what}");
                if let Some(50) = after {
                    assert_same(&load(&run).unwrap().model, &model, &what);
                }
                check_then_resave_any(&run, &what);
            }
        }
    }

    fn check_then_resave_any(run: &Path, what: &str) {
        save_step(run, 100);
        let ck = load(run).unwrap();
        assert_eq!(step_of(&ck.meta), 100, "{what}");
        assert!(
            leftovers(run).is_empty(),
            "{what}: left {:?}",
            leftovers(run)
        );
    }

    #[test]
    fn empty_or_missing_run_dir_has_no_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path();
        assert!(!has_checkpoint(empty));
        let msg = err_of(load_meta(empty), "empty");
        assert_contains(
            &msg,
            &[
                "has no checkpoint (expected",
                "checkpoint/checkpoint.json",
                "robo-poet train --out",
            ],
            "empty",
        );
        assert_contains(
            &err_of(load(empty), "empty"),
            &["has no checkpoint"],
            "empty",
        );

        let missing = empty.join("nope");
        assert!(!has_checkpoint(&missing));
        let msg = err_of(load_meta(&missing), "missing");
        assert_contains(
            &msg,
            &["nope does not exist", "robo-poet train --out"],
            "missing",
        );
        assert!(!missing.exists(), "loading created the run dir");
    }

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["metrics.json"]);

        let err = write_atomic(&dir.path().join("no/such/dir/f.json"), b"x").unwrap_err();
        assert!(err.to_string().contains("no/such/dir/.f.json.tmp"), "{err}");
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
