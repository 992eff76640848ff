//! The emulator's CUDA semantics, pinned down by the probe kernels in tests/kernels/probes.cu:
//! built-in indices, warp collectives on partial warps, shared-memory poisoning, early exit past
//! barriers, atomics, counting barriers, warp-synchronous code and the alignment of vector
//! accesses.

mod common;

use robo_poet::gpu::{Device, DeviceExt, DeviceSlice, EmuDevice, KernelArgs, LaunchConfig};

mod test_kernels {
    use robo_poet::gpu::emu::{EmuKernel, EmuLaunchDesc};
    include!(concat!(env!("OUT_DIR"), "/emu_test_kernels.rs"));
}

fn device() -> EmuDevice {
    EmuDevice::new().with_kernels(test_kernels::KERNELS)
}

/// Launches `kernel` with `args`, panicking with the device's message on failure.
fn launch(dev: &EmuDevice, kernel: &str, config: LaunchConfig, mut args: KernelArgs) {
    // SAFETY: each call below passes the parameter list of the probe kernel it names, with
    // buffers of the sizes documented in probes.cu.
    unsafe { dev.launch(kernel, &config, &mut args.params()) }.unwrap_or_else(|e| panic!("{e}"));
}

fn zeroed<T: bytemuck::Pod>(dev: &EmuDevice, n: usize) -> DeviceSlice<T> {
    let s = dev.alloc_slice(n).unwrap();
    dev.zero(s).unwrap();
    s
}

#[test]
fn emu_indices_cover_a_3d_grid_of_3d_blocks() {
    let dev = device();
    let (grid, block) = ((2u32, 3u32, 2u32), (4u32, 3u32, 2u32));
    let (nb, nt) = (12usize, 24usize);
    let out = zeroed::<i32>(&dev, nb * nt * 8);
    launch(
        &dev,
        "probe_indices",
        LaunchConfig::new(grid, block),
        KernelArgs::new().slice(out),
    );
    let v = dev.download(out).unwrap();
    for b in 0..nb {
        for t in 0..nt {
            let o = &v[(b * nt + t) * 8..][..8];
            let want = [
                (t % 4) as i32,
                ((t / 4) % 3) as i32,
                (t / 12) as i32,
                (b % 2) as i32,
                ((b / 2) % 3) as i32,
                (b / 6) as i32,
                24,
                12,
            ];
            assert_eq!(
                o, want,
                "block {b} thread {t}: (threadIdx, blockIdx, threads per block, blocks)"
            );
        }
    }
}

#[test]
fn emu_warp_collectives_follow_cuda_on_a_partial_warp() {
    let dev = device();
    let n = 48; // warp 1 has lanes 0-15 only
    let out = zeroed::<i32>(&dev, n * 8);
    launch(
        &dev,
        "probe_shuffles",
        LaunchConfig::new(1, n as u32),
        KernelArgs::new().slice(out),
    );
    let v = dev.download(out).unwrap();
    for t in 0..n {
        let (warp, lane) = (t / 32, t % 32);
        let lanes = if warp == 0 { 32 } else { 16 };
        let val = |l: usize| -> i32 {
            if l < lanes {
                ((warp * 32 + l) * 10) as i32
            } else {
                -1 // a lane that does not exist: undefined on the GPU, poison here
            }
        };
        let o = &v[t * 8..][..8];
        let what = format!("thread {t}");
        assert_eq!(o[0], val(3), "{what}: __shfl_sync(src 3)");
        assert_eq!(
            o[1],
            if lane >= 2 { val(lane - 2) } else { val(lane) },
            "{what}: __shfl_up_sync(2)"
        );
        assert_eq!(
            o[2],
            if lane + 5 < 32 {
                val(lane + 5)
            } else {
                val(lane)
            },
            "{what}: __shfl_down_sync(5)"
        );
        assert_eq!(o[3], val(lane ^ 1), "{what}: __shfl_xor_sync(1, width 8)");
        assert_eq!(
            o[4],
            val((lane & !15) + 2),
            "{what}: __shfl_sync(src 2, width 16)"
        );
        let ballot = (0..lanes)
            .filter(|l| (warp * 32 + l) % 3 == 0)
            .fold(0u32, |m, l| m | 1 << l);
        assert_eq!(o[5] as u32, ballot, "{what}: __ballot_sync");
        assert_eq!(o[6], (warp == 1) as i32, "{what}: __any_sync(t == 40)");
        assert_eq!(o[7], (warp == 0) as i32, "{what}: __all_sync(t < 47)");
    }
}

#[test]
fn emu_shared_memory_is_poisoned_afresh_for_every_block() {
    let dev = device();
    let out = zeroed::<u32>(&dev, 3 * 2 * 64);
    let config = LaunchConfig::new(3, 64).with_shared_bytes(256);
    launch(
        &dev,
        "probe_shared_poison",
        config,
        KernelArgs::new().slice(out),
    );
    let v = dev.download(out).unwrap();
    for b in 0..3 {
        for (kind, arr) in ["static", "dynamic"].iter().enumerate() {
            for i in 0..64 {
                let got = v[(b * 2 + kind) * 64 + i];
                let want = if i < 32 {
                    (b as f32 + 1.0).to_bits()
                } else {
                    u32::MAX
                };
                assert_eq!(got, want, "block {b}, {arr} shared[{i}]: written entries hold the value, unwritten ones NaN");
            }
        }
    }
}

#[test]
fn emu_exited_threads_leave_the_barrier() {
    let dev = device();
    for (threads, live) in [(64u32, 20i32), (100, 1), (256, 255)] {
        let out = zeroed::<i32>(&dev, threads as usize);
        launch(
            &dev,
            "probe_early_exit",
            LaunchConfig::new(1, threads),
            KernelArgs::new().slice(out).i32(live),
        );
        let v = dev.download(out).unwrap();
        for t in 0..threads as i32 {
            let want = if t < live { (t + 1) % live * 2 + 1 } else { 0 };
            assert_eq!(
                v[t as usize], want,
                "{threads} threads, {live} live: out[{t}]"
            );
        }
    }
}

#[test]
fn emu_atomics_reduce_over_the_grid() {
    let dev = device();
    let (iout, uout) = (zeroed::<i32>(&dev, 4), zeroed::<u32>(&dev, 4));
    let (fout, ull) = (zeroed::<f32>(&dev, 1), zeroed::<u64>(&dev, 1));
    let args = KernelArgs::new()
        .slice(iout)
        .slice(uout)
        .slice(fout)
        .slice(ull);
    launch(&dev, "probe_atomics", LaunchConfig::new(3, 64), args);
    let n = 192;
    assert_eq!(
        dev.download(iout).unwrap(),
        [n, n - 1, -(n - 1), -2 * n],
        "add, max, min, sub"
    );
    assert_eq!(
        dev.download(uout).unwrap(),
        [
            n as u32 % 10,
            u32::MAX,
            (0..n as u32).sum(),
            (n as u32 - 1) * 3
        ],
        "inc, or, add, CAS loop"
    );
    assert_eq!(dev.download(fout).unwrap(), [n as f32 * 0.5], "float add");
    assert_eq!(
        dev.download(ull).unwrap(),
        [n as u64 * (1 << 33)],
        "u64 add"
    );
}

#[test]
fn emu_counting_barriers() {
    let dev = device();
    let out = zeroed::<i32>(&dev, 3);
    launch(
        &dev,
        "probe_sync_count",
        LaunchConfig::new(1, 100),
        KernelArgs::new().slice(out),
    );
    assert_eq!(
        dev.download(out).unwrap(),
        [34, 1, 1],
        "__syncthreads_count / _and / _or"
    );
}

#[test]
fn emu_warp_synchronous_code_with_syncwarp() {
    // The legacy form without __syncwarp is in tests/emu_bad_kernels.rs.
    let dev = device();
    let input: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let d_in = dev.upload(&input).unwrap();
    let out = zeroed::<f32>(&dev, 1);
    launch(
        &dev,
        "probe_warp_sum_syncwarp",
        LaunchConfig::new(1, 64),
        KernelArgs::new().slice(out).slice(d_in),
    );
    assert_eq!(dev.download(out).unwrap(), [input.iter().sum::<f32>()]);
}

/// The OS-thread scheduler (`ROBO_POET_EMU_THREADS=os`; always off x86-64) must keep the
/// semantics the fibers have: this file's tests again, in a child process in that mode, under
/// every sanitizer too. (Skipped where the mode is already chosen.)
#[test]
fn emu_os_threads_give_the_same_semantics() {
    common::rerun_with_os_threads("semantics tests", 9);
}

#[test]
fn emu_dynamic_shared_memory_above_48_kib_needs_the_opt_in_and_stops_at_227_kib() {
    // As the driver (compute capability 9.0): a block gets 48 KiB of shared memory, static and
    // dynamic together, unless the kernel's MAX_DYNAMIC_SHARED_SIZE_BYTES attribute is raised;
    // the attribute stops at the opt-in maximum of 227 KiB, static memory included.
    let dev = device();
    let out = zeroed::<u32>(&dev, 2 * 64);
    let kernel = "probe_shared_poison"; // 256 B of static shared memory
    let try_launch = |bytes: u32| {
        let mut args = KernelArgs::new().slice(out);
        // SAFETY: probe_shared_poison(unsigned* out) with out holding (1, 2, 64).
        unsafe {
            dev.launch(
                kernel,
                &LaunchConfig::new(1, 64).with_shared_bytes(bytes),
                &mut args.params(),
            )
        }
    };
    assert!(
        try_launch(48 * 1024 - 256).is_ok(),
        "within 48 KiB with the static 256 B"
    );
    let e = try_launch(48 * 1024).unwrap_err().to_string();
    assert!(
        e.contains("48 KiB") || e.contains("49152"),
        "static + dynamic over 48 KiB: {e}"
    );
    let e = try_launch(64 * 1024).unwrap_err().to_string();
    assert!(e.contains("cuFuncSetAttribute"), "{e}");
    dev.set_max_dynamic_shared(kernel, 64 * 1024).unwrap();
    try_launch(64 * 1024).unwrap();
    assert!(
        try_launch(64 * 1024 + 4).is_err(),
        "above the raised attribute"
    );
    let e = dev
        .set_max_dynamic_shared(kernel, 227 * 1024 + 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("opt-in maximum"), "{e}");
    assert_eq!(dev.max_shared_optin(), 227 * 1024);
    dev.set_max_dynamic_shared(kernel, 227 * 1024).unwrap();
    try_launch(227 * 1024 - 256).unwrap();
    let e = try_launch(227 * 1024).unwrap_err().to_string();
    assert!(
        e.contains("opt in to"),
        "static + dynamic over 227 KiB: {e}"
    );
    assert!(dev.set_max_dynamic_shared("no_such_kernel", 1024).is_err());
}

#[test]
fn emu_vector_accesses_need_aligned_addresses() {
    // the hardware's ld/st .v4 and .v2 fault on an address that is not a multiple of the vector's
    // size ("misaligned address"); a CPU load would go through, so the emulator must refuse it
    let dev = device();
    let input: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let d_in = dev.upload(&input).unwrap();
    let run = |offset: i32, soff: i32, offset2: i32| {
        let out = zeroed::<f32>(&dev, 6);
        let mut args = KernelArgs::new()
            .slice(out)
            .slice(d_in)
            .i32(offset)
            .i32(soff)
            .i32(offset2);
        // SAFETY: probe_vector_access(float* out (6), const float* in (16), int, int, int); the
        // offsets keep every access inside in and the shared array.
        unsafe {
            dev.launch(
                "probe_vector_access",
                &LaunchConfig::new(1, 1),
                &mut args.params(),
            )
        }
        .map(|()| dev.download(out).unwrap())
        .map_err(|e| e.to_string())
    };
    // aligned: the values arrive
    assert_eq!(run(0, 0, 0).unwrap(), [0.0, 1.0, 2.0, 3.0, 0.0, 1.0]);
    assert_eq!(run(8, 4, 6).unwrap(), [8.0, 9.0, 10.0, 11.0, 6.0, 7.0]);
    // misaligned: a global float4 load 4 bytes past a boundary, a shared float4 store 8 bytes
    // past one, a global float2 load 4 bytes past one
    for (offset, soff, offset2, bytes) in [(1, 0, 0, 16), (4, 2, 0, 16), (0, 0, 3, 8)] {
        let e = run(offset, soff, offset2).unwrap_err();
        assert!(
            e.contains("misaligned address")
                && e.contains(&format!("a {bytes}-byte vector access"))
                && e.contains("probes.cu"),
            "offsets ({offset}, {soff}, {offset2}): {e}"
        );
    }
}
