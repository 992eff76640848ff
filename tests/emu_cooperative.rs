//! Cooperative launches and the grid barrier (kernels/grid.cuh) on the emulated device, through
//! the kernels of tests/kernels/cooperative.cu: grid_sync orders every block's writes before every
//! block's reads, in both schedules, at ragged grid and block shapes; a persistent reduction;
//! co-residency (the driver's refusal of a grid that cannot be resident at once, with the H200
//! model and with small devices) and occupancy; graph capture; and the ways a grid barrier goes
//! wrong (a normal launch, a block that returns, mixed barriers, bad barrier words, a missing
//! grid_sync), each of which must be reported, not hang.

mod common;

use robo_poet::gpu::emu::{ResourceSource, Schedule, SANITIZER};
use robo_poet::gpu::{
    Device, DeviceExt, DeviceSlice, EmuDevice, GpuError, KernelArgs, KernelResources, LaunchConfig,
};
use std::process::Command;
use std::time::{Duration, Instant};

mod test_kernels {
    use robo_poet::gpu::emu::{EmuKernel, EmuLaunchDesc};
    include!(concat!(env!("OUT_DIR"), "/emu_test_kernels.rs"));
}

const SOURCE: &str = include_str!("kernels/cooperative.cu");
const FILE: &str = "tests/kernels/cooperative.cu";

fn device(schedule: Schedule) -> EmuDevice {
    EmuDevice::new()
        .with_kernels(test_kernels::KERNELS)
        .with_schedule(schedule)
}

/// 1-based number of the first line of `SOURCE` containing `needle` after line `after`.
fn line_of(needle: &str, after: usize) -> usize {
    SOURCE
        .lines()
        .enumerate()
        .skip(after)
        .find(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("`{needle}` not found in {FILE}"))
}

/// The line of `needle` inside kernel `kernel`.
fn line_in(kernel: &str, needle: &str) -> usize {
    line_of(needle, line_of(&format!("void {kernel}("), 0))
}

fn zeroed<T: bytemuck::Pod>(dev: &EmuDevice, n: usize) -> DeviceSlice<T> {
    let s = dev.alloc_slice(n).unwrap();
    dev.zero(s).unwrap();
    s
}

/// Launches `kernel` cooperatively with `args`.
fn cooperative(
    dev: &dyn Device,
    kernel: &str,
    config: LaunchConfig,
    mut args: KernelArgs,
) -> Result<(), GpuError> {
    // SAFETY: every call below passes the parameter list of the cooperative.cu kernel it names,
    // with buffers of the shapes documented there.
    unsafe { dev.launch_cooperative(kernel, &config, &mut args.params()) }
}

/// What coop_exchange leaves in `out`, replayed on the host.
fn exchange_reference(nblocks: usize, nthreads: usize, rounds: usize) -> Vec<i32> {
    let n = nblocks * nthreads;
    (0..n)
        .map(|g| {
            let (b, t) = (g / nthreads, g % nthreads);
            let slot = |x: usize, round: usize| (x * 7 + round + 1) as i32;
            (0..rounds)
                .map(|r| slot(((b + r + 1) % nblocks) * nthreads + t, r) + slot(n - 1 - g, r))
                .sum()
        })
        .collect()
}

/// Runs coop_exchange on `dev`; returns (out, the barrier words after the launch).
fn run_exchange(
    dev: &EmuDevice,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    rounds: i32,
) -> Result<(Vec<i32>, Vec<u32>), GpuError> {
    let config = LaunchConfig::new(grid, block);
    let n = (config.grid.volume() * config.block.volume()) as usize;
    let slots = dev.alloc_slice::<i32>(n).unwrap(); // NaN poison (-1) until written
    let out = zeroed::<i32>(dev, n);
    let barrier = zeroed::<u32>(dev, 2);
    let args = KernelArgs::new()
        .slice(slots)
        .slice(out)
        .slice(barrier)
        .i32(rounds);
    cooperative(dev, "coop_exchange", config, args)?;
    Ok((dev.download(out).unwrap(), dev.download(barrier).unwrap()))
}

#[test]
fn emu_grid_sync_orders_every_block_in_both_schedules() {
    for schedule in [Schedule::Forward, Schedule::Reverse] {
        for (grid, block, rounds) in [
            ((3, 2, 1), (40, 1, 1), 3), // a partial last warp
            ((5, 1, 1), (4, 3, 2), 2),  // 3D blocks of 24 threads
            ((1, 1, 1), (64, 1, 1), 2), // one block: the barrier is the block's
            ((2, 2, 2), (33, 1, 1), 1),
        ] {
            let dev = device(schedule);
            let (out, words) = run_exchange(&dev, grid, block, rounds)
                .unwrap_or_else(|e| panic!("{schedule:?} {grid:?} {block:?}: {e}"));
            let nblocks = (grid.0 * grid.1 * grid.2) as usize;
            let nthreads = (block.0 * block.1 * block.2) as usize;
            let want = exchange_reference(nblocks, nthreads, rounds as usize);
            for (g, (got, want)) in out.iter().zip(&want).enumerate() {
                assert_eq!(
                    got,
                    want,
                    "{schedule:?}, grid {grid:?}, block {block:?}, {rounds} rounds: out[{g}] (block {}, thread {})",
                    g / nthreads,
                    g % nthreads
                );
            }
            assert_eq!(
                words,
                [0, 2 * rounds as u32],
                "the count back at 0, the generation advanced once per grid_sync"
            );
        }
    }
}

/// What coop_grid_sum records in `totals`, replayed on the host.
fn grid_sum_reference(input: &[i32], rounds: usize) -> Vec<i32> {
    let mut v = input.to_vec();
    (0..rounds)
        .map(|_| {
            let total: i32 = v.iter().sum();
            for x in &mut v {
                *x = (*x + total) % 1009;
            }
            total
        })
        .collect()
}

#[test]
fn emu_persistent_reduction_with_block_barriers_and_shuffles_inside_grid_barriers() {
    let n = 1000usize;
    let input: Vec<i32> = (0..n as i32).map(|i| (i * 37 + 11) % 1009).collect();
    let rounds = 4;
    let want = grid_sum_reference(&input, rounds);
    for schedule in [Schedule::Forward, Schedule::Reverse] {
        // 7 blocks of 70 threads: stride 490, three values per thread, a partial warp per block
        for (blocks, threads) in [(7u32, 70u32), (2, 256), (13, 40)] {
            let dev = device(schedule);
            let d_in = dev.upload(&input).unwrap();
            let sums = dev.alloc_slice::<i32>(blocks as usize).unwrap();
            let totals = zeroed::<i32>(&dev, rounds);
            let barrier = zeroed::<u32>(&dev, 2);
            let launch = || {
                let args = KernelArgs::new()
                    .slice(d_in)
                    .slice(sums)
                    .slice(totals)
                    .slice(barrier)
                    .i32(n as i32)
                    .i32(rounds as i32);
                cooperative(
                    &dev,
                    "coop_grid_sum",
                    LaunchConfig::new(blocks, threads),
                    args,
                )
            };
            launch().unwrap_or_else(|e| panic!("{schedule:?} {blocks}x{threads}: {e}"));
            assert_eq!(
                dev.download(totals).unwrap(),
                want,
                "{schedule:?}, {blocks} blocks of {threads}: totals per round"
            );
            // The words are left valid: a second launch reuses them without zeroing.
            launch().unwrap();
            assert_eq!(dev.download(totals).unwrap(), want);
            assert_eq!(
                dev.download(barrier).unwrap(),
                [0, 4 * rounds as u32],
                "two launches of two grid_syncs per round"
            );
        }
    }
}

#[test]
fn emu_threads_other_than_the_first_of_a_block_may_return_before_grid_sync() {
    // grid.cuh arrives for a block through its thread (0, 0, 0), after a __syncthreads that the
    // returned threads have left: the others synchronise as usual.
    let dev = device(Schedule::Forward);
    let (blocks, threads, live) = (3usize, 64usize, 20usize);
    let n = blocks * threads;
    let slots = dev.alloc_slice::<i32>(n).unwrap();
    let out = zeroed::<i32>(&dev, n);
    let barrier = zeroed::<u32>(&dev, 2);
    let args = KernelArgs::new()
        .slice(slots)
        .slice(out)
        .slice(barrier)
        .i32(live as i32);
    cooperative(
        &dev,
        "coop_early_exit",
        LaunchConfig::new(blocks as u32, threads as u32),
        args,
    )
    .unwrap();
    for (g, got) in dev.download(out).unwrap().into_iter().enumerate() {
        let (b, t) = (g / threads, g % threads);
        let want = if t < live {
            (((b + 1) % blocks) * threads + t + 1) as i32
        } else {
            0
        };
        assert_eq!(got, want, "out[{g}] (block {b}, thread {t})");
    }
}

// ----------------------------------------------------------------------------------------------
// co-residency and occupancy

/// Resources every occupancy number below is computed by hand from.
const PLAIN: KernelResources = KernelResources {
    registers: 32,
    static_shared_bytes: 0,
};

#[test]
fn emu_cooperative_grid_above_the_h200_limit_is_refused() {
    // 256 threads of 32 registers: 8 blocks per SM (2048 threads), × 132 SMs = 1056 blocks.
    let dev = device(Schedule::Forward).with_kernel_resources("coop_exchange", PLAIN);
    assert_eq!(dev.sm_count(), 132);
    assert_eq!(
        dev.max_active_blocks_per_sm("coop_exchange", 256, 0)
            .unwrap(),
        8
    );
    for grid in [(1057, 1, 1), (33, 32, 2)] {
        let err = run_exchange(&dev, grid, (256, 1, 1), 1).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, GpuError::InvalidLaunch { .. }), "{msg}");
        for want in [
            "coop_exchange",
            "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE",
            "at most 1056 blocks",
            "8 per SM, limited by threads and registers × 132 SMs",
        ] {
            assert!(
                msg.contains(want),
                "grid {grid:?}: `{want}` missing from: {msg}"
            );
        }
    }
    // The same without a declaration: the test kernels have no ptxas report, so the device
    // assumes 32 registers per thread.
    let dev = device(Schedule::Forward);
    let (r, source) = dev.kernel_resources("coop_exchange").unwrap();
    assert_eq!((r, source), (PLAIN, ResourceSource::Assumed));
    let msg = run_exchange(&dev, (1057, 1, 1), (256, 1, 1), 1)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("at most 1056 blocks") && msg.contains("assumed"),
        "{msg}"
    );
    assert_eq!(dev.counts().launches, 0, "a refused launch is not counted");
}

#[test]
fn emu_cooperative_grid_above_a_small_devices_limit_is_refused() {
    // 255 registers, 128 threads: 2 blocks per SM (registers), 2 SMs: 4 blocks run, 5 do not.
    let many_registers = KernelResources {
        registers: 255,
        static_shared_bytes: 0,
    };
    let dev = device(Schedule::Forward)
        .with_sms(2)
        .with_kernel_resources("coop_exchange", many_registers);
    assert_eq!(
        dev.max_active_blocks_per_sm("coop_exchange", 128, 0)
            .unwrap(),
        2
    );
    let (out, _) = run_exchange(&dev, (4, 1, 1), (128, 1, 1), 2).unwrap();
    assert_eq!(out, exchange_reference(4, 128, 2));
    let msg = run_exchange(&dev, (5, 1, 1), (128, 1, 1), 2)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("at most 4 blocks") && msg.contains("2 per SM, limited by registers × 2 SMs"),
        "{msg}"
    );

    // Shared memory: 100 KiB of dynamic shared memory (with the opt-in) per block, 2 per SM.
    let dev = device(Schedule::Forward)
        .with_sms(1)
        .with_kernel_resources("coop_exchange", PLAIN);
    let dynamic = 100 * 1024;
    dev.set_max_dynamic_shared("coop_exchange", dynamic)
        .unwrap();
    assert_eq!(
        dev.max_active_blocks_per_sm("coop_exchange", 64, dynamic)
            .unwrap(),
        2
    );
    let try_grid = |blocks: u32| {
        let n = blocks as usize * 64;
        let (slots, out) = (dev.alloc_slice::<i32>(n).unwrap(), zeroed::<i32>(&dev, n));
        let barrier = zeroed::<u32>(&dev, 2);
        let args = KernelArgs::new()
            .slice(slots)
            .slice(out)
            .slice(barrier)
            .i32(1);
        let config = LaunchConfig::new(blocks, 64).with_shared_bytes(dynamic);
        cooperative(&dev, "coop_exchange", config, args).map(|()| dev.download(out).unwrap())
    };
    assert_eq!(try_grid(2).unwrap(), exchange_reference(2, 64, 1));
    let msg = try_grid(3).unwrap_err().to_string();
    assert!(
        msg.contains("at most 2 blocks") && msg.contains("limited by shared memory"),
        "{msg}"
    );
}

#[test]
fn emu_static_shared_memory_without_a_report_is_measured_and_enforced() {
    // coop_static_shared keeps 16 KiB of static shared memory per block: with the 1 KiB the
    // driver reserves, 13 blocks fit on an SM (228 KiB / 17 KiB). Without a ptxas report the
    // device knows it only once the kernel has run: the first grid of 14 is admitted (as if
    // there were none), runs, and then fails as the GPU would have refused it; from then on the
    // measured size counts.
    let dev = device(Schedule::Forward).with_sms(1);
    assert_eq!(
        dev.max_active_blocks_per_sm("coop_static_shared", 32, 0)
            .unwrap(),
        32,
        "before any launch: no static shared memory known, the 32-block limit"
    );
    let launch = |blocks: u32| {
        let out = zeroed::<i32>(&dev, blocks as usize * 32 + 1);
        let barrier = zeroed::<u32>(&dev, 2);
        let args = KernelArgs::new().slice(out).slice(barrier);
        cooperative(
            &dev,
            "coop_static_shared",
            LaunchConfig::new(blocks, 32),
            args,
        )
        .map(|()| dev.download(out).unwrap())
    };
    let msg = launch(14).unwrap_err().to_string();
    for want in [
        "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE",
        "at most 13 blocks",
        "16384 B of static shared memory",
        "only known once it had run",
    ] {
        assert!(msg.contains(want), "`{want}` missing from: {msg}");
    }
    assert_eq!(
        dev.max_active_blocks_per_sm("coop_static_shared", 32, 0)
            .unwrap(),
        13
    );
    let msg = launch(14).unwrap_err().to_string();
    assert!(
        msg.contains("at most 13 blocks") && !msg.contains("only known once"),
        "refused before it runs now: {msg}"
    );
    let out = launch(13).unwrap();
    assert!(
        out.iter().all(|&x| x == 13),
        "every thread saw all 13 blocks: {out:?}"
    );
}

#[test]
fn emu_occupancy_matches_hand_computed_values() {
    let dev = device(Schedule::Forward);
    let with = |registers: u32, static_shared_bytes: u32| {
        device(Schedule::Forward).with_kernel_resources(
            "coop_exchange",
            KernelResources {
                registers,
                static_shared_bytes,
            },
        )
    };
    // (registers, static shared, threads, dynamic shared, blocks per SM, why)
    let cases = [
        (32, 0, 256, 0, 8, "2048 threads per SM"),
        (32, 0, 96, 0, 21, "64 warp slots / 3 warps"),
        (32, 0, 32, 0, 32, "32 resident blocks"),
        (
            16,
            0,
            64,
            0,
            32,
            "32 resident blocks (2048 threads would allow exactly 32)",
        ),
        (
            64,
            0,
            256,
            0,
            4,
            "2048 registers per warp: 8 warps per sub-partition",
        ),
        (33, 0, 128, 0, 12, "33 registers allocate as 40"),
        (
            255,
            0,
            128,
            0,
            2,
            "8192 registers per warp: 2 warps per sub-partition",
        ),
        (
            72,
            0,
            1024,
            0,
            0,
            "73,728 registers for the block: over 65,536",
        ),
        (32, 0, 64, 10_000, 20, "11,024 B rounded to 11,136 B"),
        (32, 8192, 128, 8192, 13, "static + dynamic + 1 KiB = 17 KiB"),
        (32, 0, 128, 48 * 1024, 4, "48 KiB + 1 KiB"),
        (32, 0, 1025, 0, 0, "more than 1024 threads"),
    ];
    for (registers, static_shared, threads, dynamic, want, why) in cases {
        let got = with(registers, static_shared)
            .max_active_blocks_per_sm("coop_exchange", threads, dynamic)
            .unwrap();
        assert_eq!(
            got, want,
            "{registers} registers, {static_shared} B static, {threads} threads, {dynamic} B dynamic: {why}"
        );
    }
    // Dynamic shared memory above 48 KiB needs the kernel's attribute, as on the GPU.
    let opt = with(32, 0);
    assert_eq!(
        opt.max_active_blocks_per_sm("coop_exchange", 128, 113 * 1024)
            .unwrap(),
        0,
        "113 KiB without the opt-in"
    );
    opt.set_max_dynamic_shared("coop_exchange", 227 * 1024)
        .unwrap();
    for (dynamic, want) in [(113 * 1024, 2), (227 * 1024, 1), (48 * 1024, 4)] {
        assert_eq!(
            opt.max_active_blocks_per_sm("coop_exchange", 128, dynamic)
                .unwrap(),
            want,
            "{dynamic} B with the opt-in to 227 KiB"
        );
    }
    assert!(matches!(
        dev.max_active_blocks_per_sm("no_such_kernel", 32, 0),
        Err(GpuError::UnknownKernel { .. })
    ));
}

#[test]
fn emu_project_kernels_take_registers_from_the_ptxas_report() {
    let dev = EmuDevice::new();
    let usage = robo_poet::gpu::nvrtc::kernel_usage();
    let (r, source) = dev.kernel_resources("matmul_forward").unwrap();
    if !robo_poet::gpu::nvrtc::COMPILED {
        assert_eq!(source, ResourceSource::Assumed);
        return;
    }
    let k = &usage
        .iter()
        .find(|(_, k)| k.name == "matmul_forward")
        .expect("matmul_forward in the report")
        .1;
    assert_eq!(source, ResourceSource::Ptxas);
    assert_eq!(
        (r.registers, r.static_shared_bytes as u64),
        (k.registers, k.shared_bytes)
    );
    let want =
        robo_poet::gpu::occupancy::occupancy(&robo_poet::gpu::occupancy::SM_90, r, 256, 0, None);
    assert_eq!(
        dev.max_active_blocks_per_sm("matmul_forward", 256, 0)
            .unwrap(),
        want.blocks
    );
}

// ----------------------------------------------------------------------------------------------
// graph capture

#[test]
fn emu_cooperative_launch_replays_from_a_graph() {
    let dev = device(Schedule::Forward);
    let (blocks, threads, rounds) = (3u32, 40u32, 2);
    let n = (blocks * threads) as usize;
    let slots = dev.alloc_slice::<i32>(n).unwrap();
    let out = zeroed::<i32>(&dev, n);
    let barrier = zeroed::<u32>(&dev, 2);
    let args = || {
        KernelArgs::new()
            .slice(slots)
            .slice(out)
            .slice(barrier)
            .i32(rounds)
    };
    let before = dev.counts();
    dev.begin_capture().unwrap();
    dev.memset_d8(out.ptr(), 0, out.bytes()).unwrap();
    cooperative(
        &dev,
        "coop_exchange",
        LaunchConfig::new(blocks, threads),
        args(),
    )
    .unwrap();
    // refused at capture, as at an eager launch
    let msg = cooperative(&dev, "coop_exchange", LaunchConfig::new(1057, 256), args())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE"),
        "{msg}"
    );
    let graph = dev.end_capture().unwrap();
    assert_eq!(
        dev.download(barrier).unwrap(),
        [0, 0],
        "nothing ran during capture"
    );
    let want = exchange_reference(blocks as usize, threads as usize, rounds as usize);
    for replay in 1..=2u32 {
        dev.launch_graph(graph).unwrap();
        assert_eq!(dev.download(out).unwrap(), want, "replay {replay}");
        assert_eq!(
            dev.download(barrier).unwrap(),
            [0, replay * 2 * rounds as u32],
            "replay {replay}: the graph's launch ran cooperatively, through every grid_sync"
        );
    }
    let d = dev.counts() - before;
    assert_eq!(
        (d.launches, d.captured_launches, d.graph_launches),
        (0, 1, 2)
    );
}

#[test]
fn emu_cooperative_launches_are_counted_as_launches() {
    let dev = device(Schedule::Forward);
    let before = dev.counts();
    run_exchange(&dev, (2, 1, 1), (32, 1, 1), 1).unwrap();
    assert_eq!((dev.counts() - before).launches, 1);
}

// ----------------------------------------------------------------------------------------------
// broken grid barriers: each is reported, none hangs

/// Runs `kernel(out, barrier, extra)` cooperatively on `blocks` blocks of 64 threads; returns
/// the error message, after checking it names the kernel and the launch shape and came quickly.
fn must_fail(schedule: Schedule, kernel: &str, blocks: u32, extra: Option<i32>) -> String {
    let dev = device(schedule);
    let out = zeroed::<i32>(&dev, blocks as usize * 64);
    let barrier = zeroed::<u32>(&dev, 2);
    let mut args = KernelArgs::new().slice(out).slice(barrier);
    if let Some(x) = extra {
        args = args.i32(x);
    }
    let start = Instant::now();
    let err = cooperative(&dev, kernel, LaunchConfig::new(blocks, 64), args)
        .expect_err("a grid barrier that cannot complete on a GPU returned success");
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "{kernel}: took {elapsed:?} to report"
    );
    assert!(matches!(err, GpuError::KernelFailed { .. }), "{err}");
    let msg = err.to_string();
    let shape = format!("grid ({blocks}, 1, 1), block (64, 1, 1)");
    assert!(msg.contains(kernel) && msg.contains(&shape), "{msg}");
    msg
}

#[test]
fn emu_bad_grid_sync_in_a_normal_launch_fails_naming_the_kernel() {
    let dev = device(Schedule::Forward);
    let n = 2 * 32;
    let (slots, out) = (dev.alloc_slice::<i32>(n).unwrap(), zeroed::<i32>(&dev, n));
    let barrier = zeroed::<u32>(&dev, 2);
    let mut args = KernelArgs::new()
        .slice(slots)
        .slice(out)
        .slice(barrier)
        .i32(1);
    // SAFETY: coop_exchange's parameter list, buffers of (gridDim · blockDim).
    let err = unsafe {
        dev.launch(
            "coop_exchange",
            &LaunchConfig::new(2, 32),
            &mut args.params(),
        )
    }
    .expect_err("grid_sync in a normal launch went unnoticed");
    let msg = err.to_string();
    assert!(matches!(err, GpuError::KernelFailed { .. }), "{msg}");
    let line = line_in("coop_exchange", "grid_sync(barrier);");
    for want in [
        "kernel coop_exchange launched with grid (2, 1, 1), block (32, 1, 1)".to_string(),
        format!("grid_sync() at {FILE}:{line} in a launch that is not cooperative"),
        "launch_cooperative".to_string(),
    ] {
        assert!(msg.contains(&want), "`{want}` missing from: {msg}");
    }
}

#[test]
fn emu_bad_block_that_returns_before_grid_sync_is_a_deadlock() {
    let line = line_in("block_returns_before_grid_sync", "grid_sync(barrier);");
    for schedule in [Schedule::Forward, Schedule::Reverse] {
        let msg = must_fail(schedule, "block_returns_before_grid_sync", 4, Some(1));
        for want in [
            "deadlock in the grid of a cooperative launch (4 blocks resident): no thread can proceed; 192 of 256 threads are waiting".to_string(),
            format!("grid_sync() at {FILE}:{line}: blocks 0, 2-3 (every live thread)"),
            "block 1 has exited: a block that returns never arrives".to_string(),
        ] {
            assert!(msg.contains(&want), "{schedule:?}: `{want}` missing from: {msg}");
        }
    }
}

#[test]
fn emu_bad_first_thread_that_returns_before_grid_sync_is_a_deadlock() {
    let line = line_in(
        "first_thread_returns_before_grid_sync",
        "grid_sync(barrier);",
    );
    let msg = must_fail(
        Schedule::Forward,
        "first_thread_returns_before_grid_sync",
        3,
        Some(2),
    );
    for want in [
        "191 of 192 threads are waiting".to_string(),
        format!("grid_sync() at {FILE}:{line}: blocks 0-2 (every live thread)"),
        "block 2 (2, 0, 0): its thread (0, 0, 0) has exited".to_string(),
    ] {
        assert!(msg.contains(&want), "`{want}` missing from: {msg}");
    }
}

#[test]
fn emu_bad_grid_sync_against_syncthreads_is_a_deadlock() {
    let sync = line_in("grid_sync_vs_syncthreads", "__syncthreads();");
    let grid = line_in("grid_sync_vs_syncthreads", "grid_sync(barrier);");
    let msg = must_fail(Schedule::Forward, "grid_sync_vs_syncthreads", 3, None);
    for want in [
        format!("__syncthreads() at {FILE}:{sync}: block 0: threads 32-63"),
        format!(
            "grid_sync() at {FILE}:{grid}: blocks 1-2 (every live thread); block 0: threads 0-31"
        ),
        "block 0: some threads wait in grid_sync, others at a block barrier".to_string(),
    ] {
        assert!(msg.contains(&want), "`{want}` missing from: {msg}");
    }
}

#[test]
fn emu_bad_grid_sync_with_different_barrier_words_is_reported() {
    let dev = device(Schedule::Forward);
    let words = zeroed::<u32>(&dev, 4);
    let err = cooperative(
        &dev,
        "grid_sync_with_different_words",
        LaunchConfig::new(2, 32),
        KernelArgs::new().slice(words),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, GpuError::KernelFailed { .. }), "{msg}");
    assert!(
        msg.contains("block (1, 0, 0), thread (0, 0, 0)")
            && msg.contains("every thread of the grid must pass the same words"),
        "{msg}"
    );
}

#[test]
fn emu_bad_barrier_words_that_were_not_zeroed_are_reported() {
    // Fresh device memory is NaN poison (0xFF bytes): a count of 4294967295 would make the
    // GPU's barrier release early or never.
    let dev = device(Schedule::Forward);
    let n = 2 * 32;
    let (slots, out) = (dev.alloc_slice::<i32>(n).unwrap(), zeroed::<i32>(&dev, n));
    let barrier = dev.alloc_slice::<u32>(2).unwrap();
    let args = KernelArgs::new()
        .slice(slots)
        .slice(out)
        .slice(barrier)
        .i32(1);
    let msg = cooperative(&dev, "coop_exchange", LaunchConfig::new(2, 32), args)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("the barrier's count word (barrier[0]")
            && msg.contains("is 4294967295, not 0"),
        "{msg}"
    );
}

// ----------------------------------------------------------------------------------------------
// a missing grid_sync: wrong results in either schedule, a race under ThreadSanitizer

fn exchange_without_grid_sync(schedule: Schedule) -> Vec<i32> {
    let dev = device(schedule);
    let (blocks, threads) = (4usize, 32usize);
    let slots = dev.alloc_slice::<i32>(blocks * threads).unwrap(); // -1 until written
    let out = zeroed::<i32>(&dev, blocks * threads);
    cooperative(
        &dev,
        "exchange_without_grid_sync",
        LaunchConfig::new(blocks as u32, threads as u32),
        KernelArgs::new().slice(slots).slice(out),
    )
    .unwrap();
    dev.download(out).unwrap()
}

const CHILD_ENV: &str = "ROBO_POET_EMU_CHILD";

#[test]
fn emu_bad_missing_grid_sync_is_caught_by_both_schedules_and_tsan() {
    if SANITIZER == Some("thread") {
        // Every CUDA thread of a cooperative grid is a TSan thread of its own: the read of the
        // next block's slot races with that block's write, and nothing orders them.
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "emu_child_missing_grid_sync",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "emu_child_missing_grid_sync")
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        let write = line_in("exchange_without_grid_sync", "slots[g] = g + 1;");
        assert!(
            report.contains("WARNING: ThreadSanitizer: data race"),
            "no race reported:\n{report}"
        );
        assert!(
            report.contains(&format!("{FILE}:{write}"))
                && report.contains(&format!("{FILE}:{}", write + 1)),
            "the race report does not name the write ({write}) and the read ({}):\n{report}",
            write + 1
        );
        return;
    }
    let want: Vec<i32> = (0..128)
        .map(|g: i32| (g / 32 + 1) % 4 * 32 + g % 32 + 1)
        .collect();
    // Block order: blocks 0-2 read the next block's slots before it has run (poison, -1) ...
    let got = exchange_without_grid_sync(Schedule::Forward);
    assert!(got[..96].iter().all(|&x| x == -1), "forward: {got:?}");
    assert_eq!(got[96..], want[96..], "forward: block 3 reads block 0");
    // ... reverse order: block 3 reads block 0's before it has run.
    let got = exchange_without_grid_sync(Schedule::Reverse);
    assert_eq!(got[..96], want[..96], "reverse");
    assert!(got[96..].iter().all(|&x| x == -1), "reverse: {got:?}");
}

#[test]
fn emu_child_missing_grid_sync() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("emu_child_missing_grid_sync") {
        exchange_without_grid_sync(Schedule::Forward);
    }
}

/// The OS-thread scheduler (`ROBO_POET_EMU_THREADS=os`): this file's tests again, in a child
/// process with every CUDA thread of the grid an OS thread. (Skipped where the mode is already
/// chosen.)
#[test]
fn emu_os_threads_run_cooperative_launches_the_same() {
    common::rerun_with_os_threads("cooperative tests", 18);
}
