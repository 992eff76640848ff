//! Shared by the kernel test files: one test body run on two devices.

/// The GPU, or None when there is none, after saying so once per test binary: one short line
/// for all its skipped `gpu_` tests instead of a long one per test (the details are what
/// `robo-poet kernels` prints).
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn gpu_or_skip() -> Option<robo_poet::gpu::CudaDevice> {
    match robo_poet::gpu::CudaDevice::open() {
        Ok(dev) => Some(dev),
        Err(why) => {
            gpu_skipped(&why);
            None
        }
    }
}

/// Prints, once per process, why the `gpu_` tests of this binary are skipped.
pub fn gpu_skipped(why: &robo_poet::gpu::Unavailable) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // straight to stderr: libtest captures eprintln! of passing tests
        use std::io::Write as _;
        writeln!(
            std::io::stderr(),
            "SKIPPED the gpu_ tests of this binary: {}",
            robo_poet::backend::short_reason(why)
        )
        .ok();
    });
}

/// Each `fn emu_name / gpu_name (dev) { body }` defines two tests from one body, `dev` being the
/// device (pass `&dev` where a `&dyn Device` is wanted): `emu_name` on the emulated device
/// (`EmuDevice`), and `gpu_name` on the GPU (`CudaDevice`), which returns at once when there is
/// none (the binary says so once, [`gpu_skipped`]). `cargo test emu` and `cargo test gpu` select
/// them.
#[macro_export]
macro_rules! device_tests {
    ($( $(#[$m:meta])* fn $emu:ident / $gpu:ident ($dev:ident) $body:block )*) => { $(
        $(#[$m])*
        #[test]
        fn $emu() {
            let $dev = robo_poet::gpu::EmuDevice::new();
            $body
        }

        $(#[$m])*
        #[test]
        fn $gpu() {
            match robo_poet::gpu::CudaDevice::open() {
                Ok($dev) => $body
                Err(why) => $crate::common::gpu_skipped(&why),
            }
        }
    )* };
}

/// Runs `model`'s forward pass (no dropout) on `be` from fresh initial parameters and random
/// tokens, and checks every layer's attention probabilities: exactly zero above the diagonal
/// (causal). Returns the largest |row sum − 1| over all rows of all layers.
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn attention_row_deviation(
    be: &mut dyn robo_poet::backend::Backend,
    model: &dyn robo_poet::model::Model,
    vocab: u64,
    seed: u64,
) -> f64 {
    let mut rng = robo_poet::rng::Rng::new(seed);
    for (id, v) in robo_poet::model::init_params(model, &mut rng) {
        be.write(id, &v);
    }
    let (b, t) = model.batch_shape();
    let toks: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
    model.set_batch(be, &toks, &toks);
    model.forward(be, None);
    let mut worst = 0.0f64;
    for (l, probs) in model.attention_probs().into_iter().enumerate() {
        for (r, row) in be.read(probs).chunks_exact(t).enumerate() {
            let sum: f64 = row.iter().map(|&x| x as f64).sum();
            worst = worst.max((sum - 1.0).abs());
            assert!(
                row[r % t + 1..].iter().all(|&x| x == 0.0),
                "layer {l} row {r} attends to the future"
            );
        }
    }
    worst
}

/// Runs this test binary's other `emu_` tests again in a child process with every CUDA thread an
/// OS thread (`ROBO_POET_EMU_THREADS=os`), and asserts that all `expected` of them pass: the two
/// scheduler modes must agree. Does nothing where the mode was chosen from outside.
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn rerun_with_os_threads(what: &str, expected: usize) {
    if std::env::var_os("ROBO_POET_EMU_THREADS").is_some() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["emu_", "--skip", "emu_os_threads"])
        .env("ROBO_POET_EMU_THREADS", "os")
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.contains(&format!("test result: ok. {expected} passed")),
        "the {what} under ROBO_POET_EMU_THREADS=os:\n{report}"
    );
}

/// The emulated H200 (132 SMs), or under ThreadSanitizer (`ROBO_POET_EMU_SANITIZE=thread`, the CI's
/// TSan leg) a device of 16 SMs: TSan keeps a fiber of its own for every resident CUDA thread, and
/// a cooperative grid of 100 blocks of 128 threads exhausts its memory mappings. The kernels run
/// the same code either way, over fewer blocks of more units each.
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn emu_h200() -> robo_poet::gpu::EmuDevice {
    if std::env::var("ROBO_POET_EMU_SANITIZE").as_deref() == Ok("thread") {
        robo_poet::gpu::EmuDevice::new().with_sms(16)
    } else {
        robo_poet::gpu::EmuDevice::new()
    }
}

/// The default GPT (the `default` preset's model at the books' character vocabulary, 78).
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn default_gpt() -> robo_poet::model::ModelConfig {
    use robo_poet::model::attention::{AttentionConfig, AttentionStyle};
    use robo_poet::model::ModelConfig;
    ModelConfig::Attention(AttentionConfig {
        style: AttentionStyle::Gpt,
        vocab_size: 78,
        seq_len: 128,
        d_model: 128,
        n_layers: 4,
        n_heads: 4,
        pos_emb: true,
        dropout: 0.1,
        attention: Default::default(),
    })
}
