//! `--precision` through the binary (issue 15): refused where there are no tensor cores to run
//! it, saved in the checkpoint and kept by `--resume`, shown by train and profile-step; a tiny
//! bf16 run on the emulated CUDA backend (`--device emu`) trains end to end.
#![cfg(unix)] // kill(2) in the shared helpers

mod cli_support;
use cli_support::*;

/// TINY's model on the emulated CUDA backend.
fn tiny_emu() -> Vec<&'static str> {
    TINY.iter()
        .map(|&a| if a == "cpu" { "emu" } else { a })
        .collect()
}

#[test]
fn precision_needs_a_gpu_backend() {
    let (d, f) = workdir();
    let fs = f.to_str().unwrap();
    for p in ["tf32", "bf16"] {
        let o = run(
            &args(
                &["train", "--text", fs, "--steps", "1", "--precision", p],
                TINY,
            ),
            d.path(),
        );
        fails_with(
            &o,
            &format!("--precision {p} runs the matrix products on a GPU's tensor cores"),
        );
        fails_with(&o, "--precision fp32");
    }
    // fp32 is the CPU's own arithmetic: accepted
    ok(&run(
        &args(
            &[
                "train",
                "--text",
                fs,
                "--steps",
                "1",
                "--precision",
                "fp32",
                "--out",
                "runs/f",
            ],
            TINY,
        ),
        d.path(),
    ));
    fails_with(
        &run(&["train", "--text", fs, "--precision", "fp16"], d.path()),
        "fp16",
    );
    fails_with(
        &run(
            &[
                "check",
                "--text",
                fs,
                "--device",
                "cpu",
                "--precision",
                "bf16",
                "--steps",
                "1",
            ],
            d.path(),
        ),
        "--precision bf16 applies to the GPU run",
    );
}

#[test]
fn precision_is_saved_and_kept_on_resume() {
    let (d, f) = workdir();
    let p = d.path();
    let fs = f.to_str().unwrap();
    let out = ok(&run(
        &args(
            &[
                "train",
                "--text",
                fs,
                "--steps",
                "2",
                "--precision",
                "bf16",
                "--out",
                "runs/b",
            ],
            &tiny_emu(),
        ),
        p,
    ));
    assert!(
        out.contains("matmul: bf16 tensor cores for the linear layers"),
        "{out}"
    );
    let meta = || -> serde_json::Value {
        let path = checkpoint_dir(&p.join("runs/b")).join("checkpoint.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    assert_eq!(meta()["train"]["precision"], "bf16");
    // the flag itself is refused on resume (it would not apply), the saved one is kept
    fails_with(
        &run(
            &[
                "train",
                "--resume",
                "runs/b",
                "--steps",
                "3",
                "--precision",
                "fp32",
                "--device",
                "emu",
            ],
            p,
        ),
        "--precision cannot be given with --resume",
    );
    let out = ok(&run(
        &[
            "train",
            "--resume",
            "runs/b",
            "--steps",
            "3",
            "--device",
            "emu",
            "--no-progress",
        ],
        p,
    ));
    assert!(out.contains("matmul: bf16 tensor cores"), "{out}");
    assert_eq!(meta()["train"]["precision"], "bf16");
    assert_eq!(checkpoint_step(&p.join("runs/b")), 3);
    // and resuming it on the CPU says why that cannot keep the precision
    fails_with(
        &run(
            &[
                "train", "--resume", "runs/b", "--steps", "4", "--device", "cpu",
            ],
            p,
        ),
        "--precision bf16 runs the matrix products on a GPU's tensor cores",
    );
    // a checkpoint from before the option reads as fp32
    let mut m = meta();
    m["train"].as_object_mut().unwrap().remove("precision");
    std::fs::write(
        checkpoint_dir(&p.join("runs/b")).join("checkpoint.json"),
        m.to_string(),
    )
    .unwrap();
    ok(&run(
        &["eval", "--checkpoint", "runs/b", "--device", "cpu"],
        p,
    ));
}

#[test]
fn profile_step_names_the_precision() {
    let o = ok(&robo(&[
        "profile-step",
        "--device",
        "emu",
        "--warmup",
        "0",
        "--d-model",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
        "--seq-len",
        "8",
        "--batch",
        "2",
        "--precision",
        "tf32",
    ]));
    assert!(o.contains("tf32 linear layers"), "{o}");
}
