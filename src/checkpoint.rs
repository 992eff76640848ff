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
//! Two processes saving into one run dir are kept apart by the run lock (`cli::run_lock`), not here.

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

    /// The folder the pointer (or the old layout) names now.
    fn current(run: &Path) -> PathBuf {
        resolve(run).unwrap_or_else(|e| panic!("{}: {e}", run.display()))
    }

    /// The run dir's entries, sorted.
    fn entries(run: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Entries that are neither the pointer nor one of the `kept` folders.
    fn leftovers(run: &Path, kept: &[&str]) -> Vec<String> {
        entries(run)
            .into_iter()
            .filter(|n| n != LATEST_FILE && !kept.contains(&n.as_str()))
            .collect()
    }

    /// Writes a complete checkpoint of `step` straight into `run/sub`, as the old layout's saves
    /// left it (or, with a versioned name, as an unpublished folder).
    fn write_folder(run: &Path, sub: &str, step: u64) {
        let m = BTreeMap::from([
            ("format".into(), "robo-poet".into()),
            ("step".into(), step.to_string()),
        ]);
        let dir = run.join(sub);
        fs::create_dir_all(&dir).unwrap();
        let meta = json!({"format": FORMAT, "format_version": 1, "step": step});
        fs::write(dir.join(META_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
        for (file, t) in [
            (MODEL_FILE, model_tensors(0)),
            (OPTIMIZER_FILE, optimizer_tensors(0)),
        ] {
            fs::write(dir.join(file), encode_safetensors(&t.refs(), &m).unwrap()).unwrap();
        }
    }

    fn load_with_model_bytes(bytes: &[u8], what: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        save_step(dir.path(), 5);
        fs::write(current(dir.path()).join(MODEL_FILE), bytes).unwrap();
        err_of(load(dir.path()), what)
    }

    #[test]
    fn round_trip_keeps_names_order_shapes_and_bits() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("runs/attention-1");
        save_step(&run, 1200);
        let ck = load(&run).unwrap();
        assert_eq!(ck.dir, run.join("checkpoint.000001"));
        assert_eq!(
            fs::read_to_string(run.join(LATEST_FILE)).unwrap(),
            "checkpoint.000001\n"
        );
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
        assert!(
            leftovers(&run, &["checkpoint.000001"]).is_empty(),
            "{:?}",
            entries(&run)
        );
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
            (ck.meta, run.join("checkpoint.000002"))
        );
        // The previous version stays for readers that resolved it just before; older ones go.
        assert_eq!(
            leftovers(&run, &["checkpoint.000001", "checkpoint.000002"]),
            Vec::<String>::new()
        );
        save_step(&run, 1300);
        assert_eq!(
            entries(&run),
            ["checkpoint.000002", "checkpoint.000003", LATEST_FILE]
        );
    }

    #[test]
    fn readers_of_the_model_never_open_the_optimizer_file() {
        let dir = tempfile::tempdir().unwrap();
        save_step(dir.path(), 7);
        fs::write(current(dir.path()).join(OPTIMIZER_FILE), b"garbage").unwrap();
        let ck = load_model(dir.path()).unwrap();
        assert_same(&ck.model, &model_tensors(0), "model only");
        assert!(ck.optimizer.is_empty());
        assert_contains(
            &err_of(load(dir.path()), "with optimizer"),
            &["optimizer.safetensors", "truncated or corrupt"],
            "with optimizer",
        );
        fs::remove_file(current(dir.path()).join(OPTIMIZER_FILE)).unwrap();
        load_model(dir.path()).unwrap();
    }

    /// Runs of the old layout (one `checkpoint/`, `checkpoint.old/` after an interrupted save)
    /// still load, and the next saves move them to the versioned layout.
    #[test]
    fn old_layout_runs_load_and_migrate() {
        let root = tempfile::tempdir().unwrap();
        let states: [(&str, &[(&str, u64)], u64, &str); 5] = [
            ("plain", &[(CHECKPOINT_DIR, 1)], 1, CHECKPOINT_DIR),
            (
                "after-3",
                &[(CHECKPOINT_DIR, 2), (OLD_DIR, 1)],
                2,
                CHECKPOINT_DIR,
            ),
            ("after-2", &[(OLD_DIR, 1), (LEGACY_TMP_DIR, 2)], 1, OLD_DIR),
            ("only-old", &[(OLD_DIR, 1)], 1, OLD_DIR),
            ("half-tmp", &[(CHECKPOINT_DIR, 1)], 1, CHECKPOINT_DIR),
        ];
        for (what, folders, want_step, want_dir) in states {
            let run = root.path().join(what);
            for (sub, step) in folders {
                write_folder(&run, sub, *step);
            }
            if what == "half-tmp" {
                let tmp = run.join(LEGACY_TMP_DIR);
                fs::create_dir(&tmp).unwrap();
                fs::write(tmp.join(MODEL_FILE), b"\x40\0\0\0\0\0\0\0{\"a\":").unwrap();
            }
            let ck = load(&run).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                (step_of(&ck.meta), ck.dir.clone()),
                (want_step, run.join(want_dir)),
                "{what}"
            );
            assert_same(&ck.model, &model_tensors(0), what);

            save_step(&run, 100);
            let ck = load(&run).unwrap();
            assert_eq!(step_of(&ck.meta), 100, "{what}");
            assert_eq!(
                leftovers(&run, &["checkpoint.000001", want_dir]),
                Vec::<String>::new(),
                "{what}: the folder readers used is kept, the rest goes"
            );
            save_step(&run, 101);
            assert_eq!(
                entries(&run),
                ["checkpoint.000001", "checkpoint.000002", LATEST_FILE],
                "{what}"
            );
        }
        // Not produced by any save, but must not cost the good .old: an incomplete checkpoint/.
        let run = root.path().join("bad-current");
        write_folder(&run, OLD_DIR, 1);
        fs::create_dir(run.join(CHECKPOINT_DIR)).unwrap();
        assert_eq!(current(&run), run.join(OLD_DIR));
    }

    const STAGES: [&str; 6] = [
        MODEL_FILE,
        OPTIMIZER_FILE,
        META_FILE,
        "1 staged",
        "2 renamed",
        "3 published",
    ];

    /// Starting states: nothing; one or two saves; the old layout, plain or after a crash.
    fn starting_state(root: &Path, run: &Path, s: usize) {
        match s {
            0 => {}
            1 => save_step(run, 1),
            2 => {
                save_step(run, 1);
                save_step(run, 2);
            }
            3 => write_folder(run, CHECKPOINT_DIR, 1),
            4 => write_folder(run, OLD_DIR, 1),
            // An unpublished complete folder beside a published one (killed after step 2).
            _ => {
                save_step(run, 1);
                write_folder(run, "checkpoint.000002", 9);
            }
        }
        let _ = root;
    }

    fn encoded_files() -> (Owned, Vec<u8>, Vec<u8>, Vec<u8>) {
        let (model, optimizer) = (model_tensors(3), optimizer_tensors(3));
        let m = BTreeMap::from([
            ("format".into(), "robo-poet".into()),
            ("step".into(), "50".into()),
        ]);
        let json =
            serde_json::to_vec_pretty(&json!({"format": FORMAT, "format_version": 1, "step": 50}))
                .unwrap();
        let (mb, ob) = (
            encode_safetensors(&model.refs(), &m).unwrap(),
            encode_safetensors(&optimizer.refs(), &m).unwrap(),
        );
        (model, mb, ob, json)
    }

    /// Runs the real save protocol, stopping it after each file system change in turn as a kill
    /// would (nothing cleaned up), from several starting states: the run must always load as the
    /// state before or after the save, and the next save must clear what the kill left.
    #[test]
    fn save_killed_at_any_stage_leaves_the_old_or_new_checkpoint() {
        let (model, m, o, json) = encoded_files();
        let files: [(&str, &[u8]); 3] =
            [(MODEL_FILE, &m), (OPTIMIZER_FILE, &o), (META_FILE, &json)];
        let root = tempfile::tempdir().unwrap();
        for s in 0..6 {
            for kill_at in STAGES {
                let what = format!("start {s}, killed after {kill_at:?}");
                let run = root.path().join(format!("run-{s}-{kill_at}"));
                fs::create_dir_all(&run).unwrap();
                starting_state(root.path(), &run, s);
                let before = load(&run).ok().map(|ck| step_of(&ck.meta));
                let result = commit(&run, next_version(&run), &files, &mut |label| {
                    if label == kill_at {
                        Err(io::Error::other("killed"))
                    } else {
                        Ok(())
                    }
                });
                assert!(result.is_err(), "{what}");
                let after = load(&run).ok().map(|ck| step_of(&ck.meta));
                let want = if kill_at == "3 published" {
                    Some(50)
                } else {
                    before
                };
                assert_eq!(after, want, "{what}");
                if after == Some(50) {
                    assert_same(&load(&run).unwrap().model, &model, &what);
                }
                save_step(&run, 100);
                let ck = load(&run).unwrap();
                assert_eq!(step_of(&ck.meta), 100, "{what}");
                let now = ck.dir.file_name().unwrap().to_string_lossy().into_owned();
                let left = leftovers(&run, &[&now]);
                assert!(
                    left.len() <= 1 && left.iter().all(|n| !n.ends_with(".tmp")),
                    "{what}: {left:?}"
                );
            }
        }
    }

    /// A save that fails (not killed) removes what it wrote: no temp or unpublished folder stays,
    /// and the run loads as before.
    #[test]
    fn a_failed_save_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        for s in [0, 1, 3] {
            for fail_at in &STAGES[..5] {
                let what = format!("start {s}, failed after {fail_at:?}");
                let run = root.path().join(format!("run-{s}-{fail_at}"));
                fs::create_dir_all(&run).unwrap();
                starting_state(root.path(), &run, s);
                let (before, entries_before) =
                    (load(&run).ok().map(|ck| step_of(&ck.meta)), entries(&run));
                let r = save_staged(
                    &run,
                    50,
                    &json!({}),
                    &model_tensors(3).refs(),
                    &optimizer_tensors(3).refs(),
                    &mut |label| {
                        if label == *fail_at {
                            Err(io::Error::other("simulated failure"))
                        } else {
                            Ok(())
                        }
                    },
                );
                let msg = err_of(r, &what);
                assert_contains(
                    &msg,
                    &["could not save the checkpoint", "simulated failure"],
                    &what,
                );
                assert!(!msg.contains("disk"), "{what}: {msg}");
                assert_eq!(entries(&run), entries_before, "{what}");
                assert_eq!(
                    load(&run).ok().map(|ck| step_of(&ck.meta)),
                    before,
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn save_errors_blame_the_disk_only_when_it_is_the_disk() {
        for kind in [io::ErrorKind::StorageFull, io::ErrorKind::QuotaExceeded] {
            assert!(
                io_hint(&io::Error::from(kind)).contains("disk is full"),
                "{kind:?}"
            );
        }
        for kind in [
            io::ErrorKind::IsADirectory,
            io::ErrorKind::Other,
            io::ErrorKind::NotFound,
        ] {
            assert_eq!(io_hint(&io::Error::from(kind)), "", "{kind:?}");
        }
        // A real failure that is not the disk: the pointer's name is taken by a folder.
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(LATEST_FILE)).unwrap();
        let msg = err_of(
            save(dir.path(), 1, &json!({}), &model_tensors(0).refs(), &[]),
            "pointer is a folder",
        );
        assert_contains(
            &msg,
            &["could not rename", LATEST_FILE],
            "pointer is a folder",
        );
        assert!(!msg.contains("disk"), "{msg}");
        assert_eq!(
            entries(dir.path()),
            [LATEST_FILE],
            "a failed save left files"
        );
    }

    /// A writer saving as fast as it can while readers load: every read sees one whole
    /// checkpoint (the bug: "optimizer.safetensors is missing" mid-swap, 5 times in 200).
    #[test]
    fn readers_always_see_a_whole_checkpoint_while_a_writer_saves() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().to_path_buf();
        save_step(&run, 0);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (run, stop) = (run.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut step = 1;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    save_step(&run, step);
                    step += 1;
                }
                step
            })
        };
        let t0 = std::time::Instant::now();
        let (mut reads, mut last) = (0, 0);
        while t0.elapsed() < std::time::Duration::from_millis(1500) {
            let ck = if reads % 2 == 0 {
                load(&run)
            } else {
                load_model(&run)
            };
            let ck = ck.unwrap_or_else(|e| panic!("read {reads}: {e}"));
            let step = step_of(&ck.meta);
            assert!(step >= last, "read {reads}: step {step} after {last}");
            assert_same(&ck.model, &model_tensors(0), "concurrent read");
            last = step;
            reads += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let saves = writer.join().unwrap();
        assert!(reads > 20 && saves > 20, "{reads} reads, {saves} saves");
    }

    #[test]
    fn empty_missing_or_foreign_run_dirs_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(!has_checkpoint(&empty));
        let msg = err_of(load_meta(&empty), "empty");
        assert_contains(
            &msg,
            &[
                "has no checkpoint (expected checkpoint.latest or",
                "checkpoint/checkpoint.json",
                "robo-poet train --out",
            ],
            "empty",
        );
        assert_contains(
            &err_of(load(&empty), "empty"),
            &["has no checkpoint"],
            "empty",
        );

        let missing = dir.path().join("nope");
        assert!(!has_checkpoint(&missing));
        let msg = err_of(load_meta(&missing), "missing");
        assert_contains(
            &msg,
            &["nope does not exist", "robo-poet train --out"],
            "missing",
        );
        assert!(!missing.exists(), "loading created the run dir");

        // Not empty: `train --out` there would be refused, so a new folder is suggested.
        let other = dir.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("notes.txt"), "x").unwrap();
        let msg = err_of(load_meta(&other), "not empty");
        assert_contains(&msg, &["has no checkpoint", "--out NEW_DIR"], "not empty");
        assert!(
            !msg.contains(&format!("--out {}", other.display())),
            "{msg}"
        );
        fs::create_dir(other.join(CHECKPOINT_DIR)).unwrap();
        let msg = err_of(load_meta(&other), "no json");
        assert_contains(
            &msg,
            &["checkpoint has no checkpoint.json", DAMAGED],
            "no json",
        );

        let file = dir.path().join("model.safetensors");
        fs::write(&file, "x").unwrap();
        let msg = err_of(load_meta(&file), "a file");
        assert_contains(&msg, &["is a file, not a run directory"], "a file");

        let pointer = dir.path().join("pointer");
        save_step(&pointer, 3);
        fs::write(pointer.join(LATEST_FILE), "../../etc\n").unwrap();
        assert_contains(
            &err_of(load(&pointer), "bad pointer"),
            &["does not name a checkpoint folder"],
            "bad pointer",
        );
        fs::write(pointer.join(LATEST_FILE), "checkpoint.000009\n").unwrap();
        assert_contains(
            &err_of(load(&pointer), "dangling"),
            &["names checkpoint.000009", "missing"],
            "dangling",
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
                    "checkpoint.000001/model.safetensors",
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
            fs::write(current(dir.path()).join(META_FILE), bytes).unwrap();
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
            fs::copy(current(&b).join(file), current(&a).join(file)).unwrap();
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
        fs::remove_file(current(&a).join(OPTIMIZER_FILE)).unwrap();
        assert_contains(
            &err_of(load(&a), "missing"),
            &["optimizer.safetensors is missing"],
            "missing",
        );
    }
}
