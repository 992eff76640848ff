//! Tests of the checkpoint files: format, damage, the save protocol killed or failing at each
//! stage, the old layout, and readers racing a writer.

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
    // (name, folders written as (name, step), the step and folder load must pick)
    type State<'a> = (&'a str, &'a [(&'a str, u64)], u64, &'a str);
    let states: [State; 5] = [
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
    let files: [(&str, &[u8]); 3] = [(MODEL_FILE, &m), (OPTIMIZER_FILE, &o), (META_FILE, &json)];
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
    eprintln!("{reads} whole reads during {saves} saves");
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
    let good = encode_safetensors(&t.refs(), &BTreeMap::from([("k".into(), "v".into())])).unwrap();
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
