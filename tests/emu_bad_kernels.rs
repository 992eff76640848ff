//! The test bench must catch broken kernels: the broken copies of the tiled matmul in
//! tests/kernels/bad_matmul.cu (a missing __syncthreads, tiles without zero padding, an
//! out-of-bounds store) and the deadlocks in tests/kernels/deadlock.cu. Each test asserts that the
//! bug IS detected, and how.
//!
//! Under a sanitizer build (ROBO_POET_EMU_SANITIZE, docs/KERNEL_BENCH.md) the bugs that the
//! sanitizer reports run in a child process (a report ends or fails the process that gets it),
//! and the test checks the child's report instead.

mod common;

use robo_poet::gpu::emu::{Schedule, SANITIZER};
use robo_poet::gpu::{Device, DeviceExt, EmuDevice, GpuError, KernelArgs, LaunchConfig};
use robo_poet::ops;
use robo_poet::rng::Rng;
use std::process::Command;
use std::time::{Duration, Instant};

mod test_kernels {
    use robo_poet::gpu::emu::{EmuKernel, EmuLaunchDesc};
    include!(concat!(env!("OUT_DIR"), "/emu_test_kernels.rs"));
}

const BAD_MATMUL: &str = include_str!("kernels/bad_matmul.cu");
const DEADLOCK: &str = include_str!("kernels/deadlock.cu");
const PROBES: &str = include_str!("kernels/probes.cu");
const RACE: &str = include_str!("kernels/bad_race.cu");
const STORE: &str = include_str!("kernels/bad_store.cu");

fn device() -> EmuDevice {
    EmuDevice::new()
        .with_kernels(test_kernels::KERNELS)
        .with_schedule(Schedule::Forward)
}

/// 1-based number of the first line of `src` containing `needle`, after line `after`.
fn line_of(src: &str, needle: &str, after: usize) -> usize {
    src.lines()
        .enumerate()
        .skip(after)
        .find(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("`{needle}` not found in the test kernel source"))
}

/// Runs the matmul variant `kernel` (parameters of kernels/matmul.cu's matmul_forward) at
/// N x IC x OC; returns the launch result, the output and the CPU reference.
fn run_matmul(
    kernel: &str,
    n: usize,
    ic: usize,
    oc: usize,
) -> (Result<(), GpuError>, Vec<f32>, Vec<f32>) {
    let dev = device();
    let mut rng = Rng::new(7);
    let mut randn = |len: usize| (0..len).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
    let (inp, weight, bias) = (randn(n * ic), randn(oc * ic), randn(oc));
    let mut want = vec![0.0; n * oc];
    ops::matmul::matmul_forward(&mut want, &inp, &weight, Some(&bias), n, ic, oc);
    let (d_inp, d_weight, d_bias) = (
        dev.upload(&inp).unwrap(),
        dev.upload(&weight).unwrap(),
        dev.upload(&bias).unwrap(),
    );
    let d_out = dev.alloc_slice::<f32>(n * oc).unwrap();
    let config = LaunchConfig::new((oc.div_ceil(32) as u32, n.div_ceil(32) as u32), (32, 8));
    let mut args = KernelArgs::new()
        .slice(d_out)
        .slice(d_inp)
        .slice(d_weight)
        .slice(d_bias)
        .i32(n as i32)
        .i32(ic as i32)
        .i32(oc as i32);
    // SAFETY: the bad matmuls share matmul_forward's parameter list; the buffers have its shapes
    // (matmul_oob_store writes past `out` on purpose: the emulator's guard band or ASan gets it).
    let result = unsafe { dev.launch(kernel, &config, &mut args.params()) };
    (result, dev.download(d_out).unwrap(), want)
}

/// Elements further from the reference than the kernel tests' tolerance (NaN included).
fn wrong_elements(got: &[f32], want: &[f32]) -> usize {
    got.iter()
        .zip(want)
        .filter(|(&g, &w)| (g - w).abs() > 1e-4 + 1e-4 * w.abs() || g.is_nan())
        .count()
}

const CHILD_ENV: &str = "ROBO_POET_EMU_CHILD";

/// True in the child process started by `run_child(name)`.
fn is_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(name)
}

/// Runs the test `name` of this binary alone in a child process; returns its output.
fn run_child(name: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

#[test]
fn emu_tsan_runs_with_the_rust_suppressions() {
    // Without them ThreadSanitizer reports the Rust test harness itself and the run fails.
    if SANITIZER == Some("thread") {
        let opts = std::env::var("TSAN_OPTIONS").unwrap_or_default();
        assert!(
            opts.contains("kernels/emu/tsan.supp"),
            "run the TSan suite as TSAN_OPTIONS=\"suppressions=$PWD/kernels/emu/tsan.supp\" \
             ROBO_POET_EMU_SANITIZE=thread cargo test emu (docs/KERNEL_BENCH.md); TSAN_OPTIONS is {opts:?}"
        );
    }
}

#[test]
fn emu_bad_reference_copy_passes() {
    // The switches' all-safe setting is the real kernel: the failures below come from the bugs.
    let (result, got, want) = run_matmul("matmul_reference_copy", 70, 45, 33);
    result.unwrap();
    assert_eq!(wrong_elements(&got, &want), 0);
}

// ----------------------------------------------------------------------------------------------
// missing __syncthreads

fn missing_sync(kernel: &str, n: usize, ic: usize, oc: usize) {
    let (result, got, want) = run_matmul(kernel, n, ic, oc);
    result.unwrap();
    let wrong = wrong_elements(&got, &want);
    assert!(
        wrong > 0,
        "{kernel} at {n}x{ic}x{oc} matched the reference: the missing __syncthreads went unnoticed"
    );
}

#[test]
fn emu_bad_missing_sync_after_load_gives_wrong_results() {
    // Thread 0 runs its whole first phase before thread 1 loads anything: it multiplies tiles
    // that are still NaN poison.
    if SANITIZER == Some("thread") {
        return check_race_report("emu_child_missing_sync_after_load");
    }
    missing_sync("matmul_no_sync_after_load", 70, 45, 33);
}

#[test]
fn emu_bad_missing_sync_after_compute_gives_wrong_results() {
    // Thread 0 loads the next tiles over ones that threads 1.. have not used yet: needs at
    // least two k-steps (IC > 32).
    if SANITIZER == Some("thread") {
        return check_race_report("emu_child_missing_sync_after_compute");
    }
    missing_sync("matmul_no_sync_after_compute", 64, 96, 64);
}

#[test]
fn emu_child_missing_sync_after_load() {
    if is_child("emu_child_missing_sync_after_load") {
        let _ = run_matmul("matmul_no_sync_after_load", 70, 45, 33);
    }
}

#[test]
fn emu_child_missing_sync_after_compute() {
    if is_child("emu_child_missing_sync_after_compute") {
        let _ = run_matmul("matmul_no_sync_after_compute", 64, 96, 64);
    }
}

/// ThreadSanitizer must name the racing lines of the tiled matmul.
fn check_race_report(child: &str) {
    let load = line_of(BAD_MATMUL, "inp_tile[r][tx] = (i < N", 0);
    let compute = line_of(BAD_MATMUL, "acc[r] += inp_tile", 0);
    check_race_report_at(
        child,
        "tests/kernels/bad_matmul.cu",
        &[load, load + 1, compute - 1, compute],
    );
}

/// Runs `child` and asserts that ThreadSanitizer reported a race at one of `file`:`lines`.
fn check_race_report_at(child: &str, file: &str, lines: &[usize]) {
    let report = run_child(child);
    assert!(
        report.contains("WARNING: ThreadSanitizer: data race"),
        "{child}: no race reported:\n{report}"
    );
    let named = lines
        .iter()
        .any(|l| report.contains(&format!("{file}:{l}")));
    assert!(
        named,
        "{child}: the race report names none of {file}:{lines:?}:\n{report}"
    );
}

// ----------------------------------------------------------------------------------------------
// warp-synchronous code without __syncwarp (tests/kernels/probes.cu)

fn warp_sum_without_syncwarp() -> (f32, f32) {
    let dev = device();
    let input: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let d_in = dev.upload(&input).unwrap();
    let out = dev.alloc_slice::<f32>(1).unwrap();
    let mut args = KernelArgs::new().slice(out).slice(d_in);
    // SAFETY: probe_warp_sum_no_syncwarp takes (float* out (1), const float* in (64)).
    unsafe {
        dev.launch(
            "probe_warp_sum_no_syncwarp",
            &LaunchConfig::new(1, 64),
            &mut args.params(),
        )
    }
    .unwrap();
    (dev.download(out).unwrap()[0], input.iter().sum())
}

#[test]
fn emu_bad_warp_code_without_syncwarp_gives_wrong_results() {
    // Legacy lockstep code: lane 0 finishes every step before lane 16 starts its first.
    if SANITIZER == Some("thread") {
        let line = line_of(PROBES, "BUG on Volta", 0);
        return check_race_report_at("emu_child_no_syncwarp", "tests/kernels/probes.cu", &[line]);
    }
    let (got, want) = warp_sum_without_syncwarp();
    assert_ne!(
        got, want,
        "warp-synchronous code without __syncwarp went unnoticed"
    );
}

#[test]
fn emu_child_no_syncwarp() {
    if is_child("emu_child_no_syncwarp") {
        warp_sum_without_syncwarp();
    }
}

// ----------------------------------------------------------------------------------------------
// a race between blocks (tests/kernels/bad_race.cu)

fn cross_block_race() {
    let dev = device();
    let out = dev.alloc_slice::<f32>(4).unwrap();
    // SAFETY: cross_block_race takes float* out (gridDim.x · blockDim.x).
    unsafe {
        dev.launch(
            "cross_block_race",
            &LaunchConfig::new(2, 2),
            &mut KernelArgs::new().slice(out).params(),
        )
    }
    .unwrap();
}

#[test]
fn emu_bad_cross_block_race_is_reported_under_tsan() {
    // Blocks run one after another, so only ThreadSanitizer can see this race; without it the
    // test only checks that the kernel runs.
    if SANITIZER == Some("thread") {
        let line = line_of(RACE, "out[(blockIdx.x", 0);
        return check_race_report_at(
            "emu_child_cross_block_race",
            "tests/kernels/bad_race.cu",
            &[line],
        );
    }
    cross_block_race();
}

#[test]
fn emu_child_cross_block_race() {
    if is_child("emu_child_cross_block_race") {
        cross_block_race();
    }
}

// ----------------------------------------------------------------------------------------------
// tiles without zero padding

#[test]
fn emu_bad_unpadded_tiles_read_nan_poison() {
    // IC = 20: the one k-step's tiles are loaded in columns 0..20 only; the rest is the NaN that
    // every block's shared memory starts with, and every output picks it up.
    let (result, got, want) = run_matmul("matmul_unpadded_tiles", 70, 20, 33);
    result.unwrap();
    let nan = got.iter().filter(|x| x.is_nan()).count();
    assert_eq!(
        nan,
        got.len(),
        "matmul_unpadded_tiles: every output should read NaN poison"
    );
    assert_eq!(wrong_elements(&got, &want), got.len());
}

#[test]
fn emu_bad_unpadded_tiles_reuse_stale_tiles() {
    // IC = 45: the second k-step's ragged columns keep the first k-step's values (as on a GPU).
    let (result, got, want) = run_matmul("matmul_unpadded_tiles", 70, 45, 33);
    result.unwrap();
    assert!(
        wrong_elements(&got, &want) > 0,
        "matmul_unpadded_tiles at 70x45x33 matched the reference"
    );
}

// ----------------------------------------------------------------------------------------------
// out-of-bounds store

#[test]
fn emu_bad_oob_store_is_reported() {
    // N = 70 is not a multiple of the 32-row tile: the last row of blocks stores rows 70..95.
    if SANITIZER == Some("address") {
        let report = run_child("emu_child_oob_store");
        assert!(
            report.contains("AddressSanitizer: heap-buffer-overflow"),
            "no ASan report:\n{report}"
        );
        let store = line_of(BAD_MATMUL, "out[(size_t)i * OC + o] = acc[r] + b", 0);
        assert!(
            report.contains(&format!("tests/kernels/bad_matmul.cu:{store}")),
            "the ASan report does not name the store at bad_matmul.cu:{store}:\n{report}"
        );
        // rows 64.. of out are the third row of blocks; thread (0, 0, 0) stores row 72 first
        let cuda = "the error above happened in kernel matmul_oob_store, block (0, 2, 0), thread (0, 0, 0)";
        assert!(
            report.contains(cuda),
            "the ASan report lacks the CUDA coordinates:\n{report}"
        );
        return;
    }
    let (result, _, _) = run_matmul("matmul_oob_store", 70, 45, 33);
    let err = result.expect_err("an out-of-bounds store went unnoticed");
    let msg = err.to_string();
    assert!(matches!(err, GpuError::KernelFailed { .. }), "{msg}");
    assert!(
        msg.contains("matmul_oob_store") && msg.contains("grid (2, 3, 1), block (32, 8, 1)"),
        "{msg}"
    );
    assert!(msg.contains("past the end of the allocation"), "{msg}");
}

#[test]
fn emu_child_oob_store() {
    if is_child("emu_child_oob_store") {
        let _ = run_matmul("matmul_oob_store", 70, 45, 33);
    }
}

fn store_before_start() -> Result<(), GpuError> {
    let dev = device();
    let out = dev.alloc_slice::<f32>(32).unwrap();
    let mut args = KernelArgs::new().slice(out);
    // SAFETY: store_before_start takes float* out (blockDim.x) and writes out[-1] on purpose.
    unsafe {
        dev.launch(
            "store_before_start",
            &LaunchConfig::new(1, 32),
            &mut args.params(),
        )
    }
}

#[test]
fn emu_bad_store_before_start_is_reported() {
    if SANITIZER == Some("address") {
        let report = run_child("emu_child_store_before_start");
        let line = line_of(STORE, "out[i] = 1.0f;", 0);
        assert!(
            report.contains("AddressSanitizer: heap-buffer-overflow"),
            "no ASan report:\n{report}"
        );
        assert!(
            report.contains(&format!("tests/kernels/bad_store.cu:{line}")),
            "{report}"
        );
        return;
    }
    let msg = store_before_start()
        .expect_err("a store before the buffer went unnoticed")
        .to_string();
    assert!(
        msg.contains("store_before_start") && msg.contains("block (32, 1, 1)"),
        "{msg}"
    );
    assert!(
        msg.contains("wrote before the start of the allocation") && msg.contains("bytes -4..=-1"),
        "{msg}"
    );
}

#[test]
fn emu_child_store_before_start() {
    if is_child("emu_child_store_before_start") {
        let _ = store_before_start();
    }
}

// ----------------------------------------------------------------------------------------------
// deadlocks

/// Launches a deadlock.cu kernel on one block of 64 threads; returns the error message.
fn deadlock(kernel: &str) -> String {
    let dev = device();
    let out = dev.alloc_slice::<f32>(64).unwrap();
    let start = Instant::now();
    // SAFETY: the deadlock kernels take one float* of blockDim.x elements.
    let result = unsafe {
        dev.launch(
            kernel,
            &LaunchConfig::new(1, 64),
            &mut KernelArgs::new().slice(out).params(),
        )
    };
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "{kernel}: took {elapsed:?} to report"
    );
    let err = result.expect_err("a kernel that cannot finish on a GPU returned success");
    assert!(matches!(err, GpuError::KernelFailed { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(kernel) && msg.contains("grid (1, 1, 1), block (64, 1, 1)"),
        "{msg}"
    );
    msg
}

#[test]
fn emu_bad_divergent_syncthreads_reports_deadlock() {
    let msg = deadlock("divergent_syncthreads");
    let start = line_of(DEADLOCK, "void divergent_syncthreads", 0);
    let a = line_of(DEADLOCK, "__syncthreads();", start);
    let b = line_of(DEADLOCK, "__syncthreads();", a);
    assert!(msg.contains("deadlock"), "{msg}");
    assert!(
        msg.contains(&format!(
            "__syncthreads() at tests/kernels/deadlock.cu:{a}: threads 0-15, 32-47"
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "__syncthreads() at tests/kernels/deadlock.cu:{b}: threads 16-31, 48-63"
        )),
        "{msg}"
    );
    assert!(msg.contains("divergent __syncthreads"), "{msg}");
}

#[test]
fn emu_bad_barrier_vs_shuffle_reports_deadlock() {
    let msg = deadlock("barrier_vs_shuffle");
    let start = line_of(DEADLOCK, "void barrier_vs_shuffle", 0);
    let bar = line_of(DEADLOCK, "__syncthreads();", start);
    let shfl = line_of(DEADLOCK, "__shfl_xor_sync", start);
    assert!(msg.contains("deadlock"), "{msg}");
    assert!(
        msg.contains(&format!(
            "__syncthreads() at tests/kernels/deadlock.cu:{bar}: threads 0-15, 32-47"
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("__shfl_xor_sync(mask 0xffffffff) at tests/kernels/deadlock.cu:{shfl}: threads 16-31, 48-63")),
        "{msg}"
    );
}

#[test]
fn emu_bad_shuffle_mask_without_caller_is_reported() {
    let msg = deadlock("shuffle_mask_without_caller");
    let line = line_of(DEADLOCK, "__shfl_down_sync(0xfffffffeu", 0);
    assert!(
        msg.contains(&format!(
            "__shfl_down_sync(mask 0xfffffffe) at tests/kernels/deadlock.cu:{line}"
        )),
        "{msg}"
    );
    assert!(
        msg.contains("called by lane 0, which is not in the mask"),
        "{msg}"
    );
}

fn count_without_atomic() -> i32 {
    let dev = device();
    let count = dev.alloc_slice::<i32>(1).unwrap();
    dev.zero(count).unwrap();
    // SAFETY: count_without_atomic takes int* count (1).
    unsafe {
        dev.launch(
            "count_without_atomic",
            &LaunchConfig::new(2, 64),
            &mut KernelArgs::new().slice(count).params(),
        )
    }
    .unwrap();
    dev.download(count).unwrap()[0]
}

#[test]
fn emu_bad_missing_atomic_is_reported_under_tsan() {
    // A thread runs until it blocks, so no other thread gets between its read and its write: the
    // count is right and only ThreadSanitizer can see the race.
    if SANITIZER == Some("thread") {
        let line = line_of(RACE, "*count += 1;", 0);
        return check_race_report_at(
            "emu_child_missing_atomic",
            "tests/kernels/bad_race.cu",
            &[line],
        );
    }
    assert_eq!(
        count_without_atomic(),
        128,
        "the one-thread-at-a-time schedule hides this race"
    );
}

#[test]
fn emu_child_missing_atomic() {
    if is_child("emu_child_missing_atomic") {
        count_without_atomic();
    }
}

// ----------------------------------------------------------------------------------------------
// a missing barrier that only one schedule exposes (tests/kernels/bad_race.cu)

fn neighbour_read(schedule: Schedule) -> Vec<f32> {
    let dev = device().with_schedule(schedule);
    let out = dev.alloc_slice::<f32>(64).unwrap();
    // SAFETY: neighbour_read_without_barrier takes float* out (blockDim.x).
    unsafe {
        dev.launch(
            "neighbour_read_without_barrier",
            &LaunchConfig::new(1, 64),
            &mut KernelArgs::new().slice(out).params(),
        )
    }
    .unwrap();
    dev.download(out).unwrap()
}

#[test]
fn emu_bad_neighbour_read_is_caught_by_the_reverse_schedule() {
    if SANITIZER == Some("thread") {
        let line = line_of(RACE, "out[t] = t > 0 ? s[t - 1]", 0);
        return check_race_report_at(
            "emu_child_neighbour_read",
            "tests/kernels/bad_race.cu",
            &[line],
        );
    }
    let want: Vec<f32> = (0..64).map(|t| t.max(1) as f32 - 1.0).collect();
    // In thread order every neighbour has written first: the bug hides ...
    assert_eq!(neighbour_read(Schedule::Forward), want, "forward schedule");
    // ... and in reverse order no neighbour has: every read but thread 0's is NaN poison.
    let got = neighbour_read(Schedule::Reverse);
    assert!(
        got[1..].iter().all(|x| x.is_nan()),
        "reverse schedule missed the bug: {got:?}"
    );
}

#[test]
fn emu_child_neighbour_read() {
    if is_child("emu_child_neighbour_read") {
        neighbour_read(Schedule::Forward);
    }
}

/// The OS-thread scheduler (`ROBO_POET_EMU_THREADS=os`; always off x86-64) must catch the same
/// bugs with the same reports as the fibers: this file's tests again, in a child process in that
/// mode, under every sanitizer too (ThreadSanitizer must see the races in both modes). (Skipped
/// where the mode is already chosen.)
#[test]
fn emu_os_threads_catch_the_same_bugs() {
    common::rerun_with_os_threads("bad-kernel tests", 23);
}
