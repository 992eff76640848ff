//! Checkpoint files on disk: save and load a run's latest checkpoint, crash-safely, while other
//! processes read it.
//!
//! A run directory (e.g. `runs/attention-20261128-153000/`) holds its checkpoints in versioned
//! folders `checkpoint.000001/`, `checkpoint.000002/`, ... and a pointer file `checkpoint.latest`
//! whose one line names the current one. A checkpoint folder holds three files:
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
//! complete, consistent checkpoint, and a reader (`eval`, `generate` while the run trains) must
//! see one whole checkpoint, old or new, never a folder mid-swap. So a save never touches a
//! published folder:
//! 1. write the three files into `checkpoint.NNNNNN.tmp/` (NNNNNN one more than any version
//!    present; stale `*.tmp` folders are removed first), fsync each file, fsync the folder;
//! 2. rename it to `checkpoint.NNNNNN/`; fsync the run dir;
//! 3. replace `checkpoint.latest` by one atomic rename ([`write_atomic`]): the new checkpoint is
//!    published;
//! 4. remove every checkpoint folder but the new one and the previous one (a reader that resolved
//!    the pointer just before step 3 may still be opening it); failures here are ignored.
//!
//! A save that fails (a full disk, say) removes what it wrote before returning the error, so it
//! leaves no partial folder behind; one killed mid-way leaves a `*.tmp` or unpublished folder,
//! which no reader uses and the next save removes.
//!
//! Readers resolve `checkpoint.latest` and open the files they need at once; an open file stays
//! readable after the writer deletes its folder (POSIX), and a folder that vanished between the
//! pointer and the open (two saves overtook the reader) makes the reader resolve again.
//!
//! # Old layout
//! Runs written before the pointer existed hold one `checkpoint/` folder (and, after an
//! interrupted save, `checkpoint.old/`). Without a pointer, load uses `checkpoint/` if complete
//! (has `checkpoint.json`), else `checkpoint.old/`. The first save in the new layout publishes
//! `checkpoint.000001/` and keeps the old folder as the previous version; the next save removes it.
//!
//! Two processes saving into one run dir are kept apart by the run lock (`train::run_lock`), not here.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const META_FILE: &str = "checkpoint.json";
/// The pointer file: one line, the name of the current checkpoint folder.
pub const LATEST_FILE: &str = "checkpoint.latest";

/// Prefix of the versioned folders `checkpoint.NNNNNN`.
const VERSION_PREFIX: &str = "checkpoint.";
const TMP_SUFFIX: &str = ".tmp";
/// The old layout's folders.
const CHECKPOINT_DIR: &str = "checkpoint";
const LEGACY_TMP_DIR: &str = "checkpoint.tmp";
const OLD_DIR: &str = "checkpoint.old";
/// How often a reader resolves the pointer again when the folder it named vanished.
const RESOLVE_TRIES: usize = 20;

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
    /// Empty when loaded with [`load_model`].
    pub optimizer: Vec<Tensor>,
    /// The folder actually loaded: `<run>/checkpoint.NNNNNN` or, in the old layout,
    /// `<run>/checkpoint` or `<run>/checkpoint.old`.
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

/// Saves a checkpoint for `step` into a new `run_dir/checkpoint.NNNNNN/` (creating `run_dir` if
/// needed) and publishes it, following the protocol in the module docs.
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
    save_staged(run_dir, step, meta, model, optimizer, &mut |_| Ok(()))
}

/// [`save`] with the stage hook of [`commit`]; an error from the hook is a failed save (cleaned
/// up), which is how the tests make a save fail at each stage.
fn save_staged(
    run_dir: &Path,
    step: u64,
    meta: &Value,
    model: &[TensorRef],
    optimizer: &[TensorRef],
    stage: &mut dyn FnMut(&str) -> io::Result<()>,
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
    let version = next_version(run_dir);
    commit(run_dir, version, &files, stage).map_err(|e| {
        discard_unpublished(run_dir, version);
        anyhow!("could not save the checkpoint: {e}{}", io_hint(&e))
    })
}

/// What to do about a failed save, by cause: the disk-space hint only where the disk is the cause.
fn io_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "; the disk is full (or over quota): free some space, then resume the run"
        }
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "; check that the run directory is writable"
        }
        _ => "",
    }
}

/// Steps 1-4 of the save protocol (module docs) for folder number `version`. Errors name the
/// path involved.
///
/// `stage` is called after each file system change with a label; an error from it stops the save
/// right there, which is how the tests simulate a process killed at that instant.
fn commit(
    run_dir: &Path,
    version: u64,
    files: &[(&str, &[u8])],
    stage: &mut dyn FnMut(&str) -> io::Result<()>,
) -> io::Result<()> {
    if !run_dir.is_dir() {
        fs::create_dir_all(run_dir).map_err(|e| with_path(e, "could not create", run_dir))?;
        sync_dir(parent_dir(run_dir))?;
    }
    let name = version_name(version);
    let tmp = run_dir.join(format!("{name}{TMP_SUFFIX}"));
    let dir = run_dir.join(&name);
    // What readers use now: kept through this save (module docs, step 4).
    let previous = resolve(run_dir).ok();

    // 1. Stage the complete checkpoint beside the published ones.
    remove_stale_temps(run_dir)?;
    fs::create_dir(&tmp).map_err(|e| with_path(e, "could not create", &tmp))?;
    for (file, bytes) in files {
        write_synced(&tmp.join(file), bytes)?;
        stage(file)?;
    }
    sync_dir(&tmp)?;
    stage("1 staged")?;

    // 2. A complete folder under its final name, not yet published.
    fs::rename(&tmp, &dir).map_err(|e| with_path(e, "could not rename", &tmp))?;
    sync_dir(run_dir)?;
    stage("2 renamed")?;

    // 3. Publish: one atomic rename of the pointer.
    write_atomic(&run_dir.join(LATEST_FILE), format!("{name}\n").as_bytes())?;
    stage("3 published")?;

    // 4. The save is committed; leftovers are harmless (the next save removes them), so a failed
    // cleanup must not fail the training run.
    let keep = [Some(dir), previous];
    for old in checkpoint_folders(run_dir) {
        if !keep.iter().flatten().any(|k| *k == old) {
            let _ = fs::remove_dir_all(&old);
        }
    }
    let _ = sync_dir(run_dir);
    Ok(())
}

/// After a failed save: removes its temp folder and, unless the pointer names it, its folder.
fn discard_unpublished(run_dir: &Path, version: u64) {
    let name = version_name(version);
    let _ = fs::remove_dir_all(run_dir.join(format!("{name}{TMP_SUFFIX}")));
    if read_pointer(run_dir).ok().flatten().as_deref() != Some(name.as_str()) {
        let _ = fs::remove_dir_all(run_dir.join(&name));
    }
}

/// Loads the current checkpoint of `run_dir` (see the module docs for which folder is used) and
/// checks it: format and version, F32 tensors, and the same step in all three files. Tensors come
/// in file order, which is the order given to [`save`].
pub fn load(run_dir: &Path) -> Result<Checkpoint> {
    load_parts(run_dir, true)
}

/// As [`load`] without the optimizer state: what `eval`, `generate` and `attention-map` need. The
/// optimizer file is not opened, so a damaged or missing one does not matter.
pub fn load_model(run_dir: &Path) -> Result<Checkpoint> {
    load_parts(run_dir, false)
}

fn load_parts(run_dir: &Path, with_optimizer: bool) -> Result<Checkpoint> {
    let mut wanted = vec![META_FILE, MODEL_FILE];
    if with_optimizer {
        wanted.push(OPTIMIZER_FILE);
    }
    let (dir, mut files) = open_current(run_dir, &wanted)?;
    let meta_path = dir.join(META_FILE);
    let meta = parse_meta(&read_all(&mut files[0], &meta_path)?, &meta_path)?;
    // parse_meta checked that "step" is a u64.
    let step = meta.get("step").and_then(Value::as_u64).unwrap_or_default();
    let model_path = dir.join(MODEL_FILE);
    let model = check_tensor_file(
        &read_all(&mut files[1], &model_path)?,
        &model_path,
        step,
        &meta_path,
    )?;
    let optimizer = match files.get_mut(2) {
        Some(f) => {
            let path = dir.join(OPTIMIZER_FILE);
            check_tensor_file(&read_all(f, &path)?, &path, step, &meta_path)?
        }
        None => Vec::new(),
    };
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
    let (dir, mut files) = open_current(run_dir, &[META_FILE])?;
    let path = dir.join(META_FILE);
    let meta = parse_meta(&read_all(&mut files[0], &path)?, &path)?;
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

/// `checkpoint.000012` for version 12.
fn version_name(version: u64) -> String {
    format!("{VERSION_PREFIX}{version:06}")
}

/// The version number of a folder name `checkpoint.NNNNNN` (with `.tmp` when `tmp`).
fn version_of(name: &str, tmp: bool) -> Option<u64> {
    let rest = name.strip_prefix(VERSION_PREFIX)?;
    let digits = if tmp {
        rest.strip_suffix(TMP_SUFFIX)?
    } else {
        rest
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One more than the highest version present (published, unpublished or temp), so a new save
/// never reuses a name a reader might hold.
fn next_version(run_dir: &Path) -> u64 {
    let names = fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned());
    names
        .filter_map(|n| version_of(&n, false).or_else(|| version_of(&n, true)))
        .max()
        .unwrap_or(0)
        + 1
}

/// Every checkpoint folder of the run, versioned or old-layout, temp ones excluded.
fn checkpoint_folders(run_dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in fs::read_dir(run_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if version_of(&name, false).is_some() || name == CHECKPOINT_DIR || name == OLD_DIR {
            out.push(run_dir.join(name));
        }
    }
    out
}

fn remove_stale_temps(run_dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(run_dir)
        .map_err(|e| with_path(e, "could not list", run_dir))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if version_of(&name, true).is_some() || name == LEGACY_TMP_DIR {
            remove_dir_if_exists(&run_dir.join(name))?;
        }
    }
    Ok(())
}

/// The folder name in `checkpoint.latest`, None when there is no pointer file.
fn read_pointer(run_dir: &Path) -> Result<Option<String>> {
    let path = run_dir.join(LATEST_FILE);
    let text = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_failed(&path, e)),
    };
    let name = String::from_utf8_lossy(&text).trim().to_string();
    if version_of(&name, false).is_none() {
        bail!(
            "{} does not name a checkpoint folder (it holds {:?}): {DAMAGED}",
            path.display(),
            name.chars().take(40).collect::<String>()
        );
    }
    Ok(Some(name))
}

/// The folder to load: the one `checkpoint.latest` names, else (old layout) `checkpoint/` if
/// complete, else `checkpoint.old/`. Errors say what the path is instead and what to do.
fn resolve(run_dir: &Path) -> Result<PathBuf> {
    let run = run_dir.display();
    if run_dir.is_file() {
        bail!("{run} is a file, not a run directory; pass the folder `robo-poet train` wrote (runs/<name>)");
    }
    if !run_dir.is_dir() {
        bail!("{run} does not exist; check the path, or train a model first with `robo-poet train --out {run}`");
    }
    let mut pointer = read_pointer(run_dir)?;
    let mut tries = 0;
    while let Some(name) = pointer {
        let dir = run_dir.join(&name);
        if is_complete(&dir) {
            return Ok(dir);
        }
        // Two saves may have overtaken us between reading the pointer and looking at the folder
        // (it is removed once it is neither the current nor the previous checkpoint).
        let now = read_pointer(run_dir)?;
        tries += 1;
        if now.as_deref() == Some(name.as_str()) || tries >= RESOLVE_TRIES {
            bail!(
                "{} names {name}, but {} is missing or has no {META_FILE}: {DAMAGED}",
                run_dir.join(LATEST_FILE).display(),
                dir.display()
            );
        }
        pointer = now;
    }
    for sub in [CHECKPOINT_DIR, OLD_DIR] {
        let dir = run_dir.join(sub);
        if is_complete(&dir) {
            return Ok(dir);
        }
    }
    let legacy = run_dir.join(CHECKPOINT_DIR);
    if legacy.is_dir() {
        bail!("{} has no {META_FILE}: {DAMAGED}", legacy.display());
    }
    let empty = fs::read_dir(run_dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if empty {
        bail!(
            "{run} has no checkpoint (expected {LATEST_FILE} or {}); train a model first with `robo-poet train --out {run}`",
            Path::new(CHECKPOINT_DIR).join(META_FILE).display()
        );
    }
    bail!(
        "{run} has no checkpoint (no {LATEST_FILE}, no {}): it is not a run directory of `robo-poet train`, or its first checkpoint was never written; train into a new folder with `robo-poet train --out NEW_DIR`",
        Path::new(CHECKPOINT_DIR).join(META_FILE).display()
    )
}

fn is_complete(dir: &Path) -> bool {
    dir.join(META_FILE).is_file()
}

/// Resolves the current checkpoint folder and opens `names` in it, all at once: once open, a
/// file stays readable even if a later save removes its folder. A folder that vanished between
/// resolving and opening was superseded, so the pointer is resolved again.
fn open_current(run_dir: &Path, names: &[&str]) -> Result<(PathBuf, Vec<File>)> {
    let mut tries = 0;
    loop {
        let dir = resolve(run_dir)?;
        let mut files = Vec::with_capacity(names.len());
        let mut failed = None;
        for name in names {
            let path = dir.join(name);
            match File::open(&path) {
                Ok(f) => files.push(f),
                Err(e) => {
                    failed = Some((path, e));
                    break;
                }
            }
        }
        let Some((path, e)) = failed else {
            return Ok((dir, files));
        };
        tries += 1;
        let superseded =
            e.kind() == io::ErrorKind::NotFound && resolve(run_dir).is_ok_and(|now| now != dir);
        if !superseded || tries >= RESOLVE_TRIES {
            return Err(read_failed(&path, e));
        }
    }
}

fn read_all(f: &mut File, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = vec![];
    f.read_to_end(&mut bytes)
        .map_err(|e| read_failed(path, e))?;
    Ok(bytes)
}

/// Parses checkpoint.json's bytes and checks its format fields.
fn parse_meta(bytes: &[u8], path: &Path) -> Result<Value> {
    let meta: Value = serde_json::from_slice(bytes).map_err(|e| {
        anyhow!(
            "{} is not valid JSON (line {}, column {}: {}); {DAMAGED}",
            path.display(),
            e.line(),
            e.column(),
            json_error_kind(&e)
        )
    })?;
    check_meta(&meta, path)?;
    Ok(meta)
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

/// Checks one safetensors file of the checkpoint (its bytes) and that it belongs to `step`.
fn check_tensor_file(
    bytes: &[u8],
    path: &Path,
    step: u64,
    meta_path: &Path,
) -> Result<Vec<Tensor>> {
    let (tensors, metadata) = decode_safetensors(bytes, path)?;
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
mod tests;
