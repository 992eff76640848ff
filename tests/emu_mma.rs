//! The tensor-core wrappers of kernels/mma.cuh, register by register: each lane's fragments of
//! mma.m16n8k8.tf32 and mma.m16n8k16.bf16 against layout tables written from the PTX ISA text
//! (the probes of kernels/matmul_tc.cu take and return raw per-lane registers, so the test, not
//! the kernel, decides which element each register holds); the TF32 and BF16 roundings against
//! hand-worked bit patterns; and, on the emulator only, the misuses the hardware does not allow
//! (tests/kernels/mma_misuse.cu) and when a cp.async lands.

#[macro_use]
mod common;

use robo_poet::gpu::emu::SANITIZER;
use robo_poet::gpu::kernels::{bf16_rne, tf32_rna, Precision};
use robo_poet::gpu::{Device, DeviceExt, EmuDevice, KernelArgs, LaunchConfig, Schedule};
use robo_poet::rng::Rng;

mod test_kernels {
    use robo_poet::gpu::emu::{EmuKernel, EmuLaunchDesc};
    include!(concat!(env!("OUT_DIR"), "/emu_test_kernels.rs"));
}

// ---- the layout tables, from the PTX ISA (9.7.14.5.7 "Matrix Fragments for mma.m16n8k8", the
// .tf32 tables, and 9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with floating point type", the
// .bf16 tables). In every table groupID = %laneid >> 2 and threadID_in_group = %laneid % 4; each
// function returns (row, col) of element i of the lane's fragment: A is M x K, B is K x N (its
// row is k), C and D are M x N.

/// m16n8k8 .tf32 A (16 x 8), a0..a3: "row = groupID for a0 and a2, groupID + 8 for a1 and a3;
/// col = threadID_in_group for a0 and a1, threadID_in_group + 4 for a2 and a3".
fn tf32_a(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    let row = if i == 0 || i == 2 { g } else { g + 8 };
    let col = if i < 2 { t } else { t + 4 };
    (row, col)
}

/// m16n8k8 .tf32 B (8 x 8), b0, b1: "row = threadID_in_group for b0, threadID_in_group + 4 for
/// b1; col = groupID".
fn tf32_b(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (if i == 0 { t } else { t + 4 }, g)
}

/// m16n8k16 .bf16 A (16 x 16), a0..a7: "row = groupID for ai where 0 <= i < 2 || 4 <= i < 6,
/// groupID + 8 otherwise; col = (threadID_in_group * 2) + (i & 0x1) for ai where i < 4, and
/// (threadID_in_group * 2) + (i & 0x1) + 8 for ai where i >= 4".
fn bf16_a(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    let row = if i < 2 || (4..6).contains(&i) {
        g
    } else {
        g + 8
    };
    let col = t * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
    (row, col)
}

/// m16n8k16 .bf16 B (16 x 8), b0..b3: "row = (threadID_in_group * 2) + (i & 0x1) for bi where
/// i < 2, and (threadID_in_group * 2) + (i & 0x1) + 8 for bi where i >= 2; col = groupID".
fn bf16_b(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (t * 2 + (i & 1) + if i >= 2 { 8 } else { 0 }, g)
}

/// C and D (16 x 8, .f32, both shapes), c0..c3: "row = groupID for c0 and c1, groupID + 8 for c2
/// and c3; col = (threadID_in_group * 2) + (i & 0x1)".
fn f32_c(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (if i < 2 { g } else { g + 8 }, t * 2 + (i & 1))
}

#[test]
fn layout_tables_match_the_isa_figures_at_sample_lanes() {
    // Read off the PTX ISA's figures (72: A .tf32, 74: B .tf32, 79: A .bf16, 81: B .bf16, 75/83:
    // C/D), lane by lane: T0, T5 and T31.
    assert_eq!(
        (0..4).map(|i| tf32_a(0, i)).collect::<Vec<_>>(),
        [(0, 0), (8, 0), (0, 4), (8, 4)]
    );
    assert_eq!(
        (0..4).map(|i| tf32_a(5, i)).collect::<Vec<_>>(),
        [(1, 1), (9, 1), (1, 5), (9, 5)]
    );
    assert_eq!(
        (0..4).map(|i| tf32_a(31, i)).collect::<Vec<_>>(),
        [(7, 3), (15, 3), (7, 7), (15, 7)]
    );
    assert_eq!(
        (0..2).map(|i| tf32_b(5, i)).collect::<Vec<_>>(),
        [(1, 1), (5, 1)]
    );
    assert_eq!(
        (0..2).map(|i| tf32_b(31, i)).collect::<Vec<_>>(),
        [(3, 7), (7, 7)]
    );
    assert_eq!(
        (0..8).map(|i| bf16_a(5, i)).collect::<Vec<_>>(),
        [
            (1, 2),
            (1, 3),
            (9, 2),
            (9, 3),
            (1, 10),
            (1, 11),
            (9, 10),
            (9, 11)
        ]
    );
    assert_eq!(
        (0..8).map(|i| bf16_a(31, i)).collect::<Vec<_>>(),
        [
            (7, 6),
            (7, 7),
            (15, 6),
            (15, 7),
            (7, 14),
            (7, 15),
            (15, 14),
            (15, 15)
        ]
    );
    assert_eq!(
        (0..4).map(|i| bf16_b(5, i)).collect::<Vec<_>>(),
        [(2, 1), (3, 1), (10, 1), (11, 1)]
    );
    assert_eq!(
        (0..4).map(|i| f32_c(5, i)).collect::<Vec<_>>(),
        [(1, 2), (1, 3), (9, 2), (9, 3)]
    );
    // every table covers its matrix exactly once
    let covers = |f: fn(usize, usize) -> (usize, usize), regs: usize, rows: usize, cols: usize| {
        let mut seen = vec![0u32; rows * cols];
        for lane in 0..32 {
            for i in 0..regs {
                let (r, c) = f(lane, i);
                seen[r * cols + c] += 1;
            }
        }
        seen.iter().all(|&n| n == 1)
    };
    assert!(covers(tf32_a, 4, 16, 8));
    assert!(covers(tf32_b, 2, 8, 8));
    assert!(covers(bf16_a, 8, 16, 16));
    assert!(covers(bf16_b, 4, 16, 8));
    assert!(covers(f32_c, 4, 16, 8));
}

/// Small integers times a power of two: exact in BF16 (and TF32), and every product and sum of
/// the 16 x 8 tile exact in f32, so D must equal A·B + C exactly.
fn exact_matrix(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|_| (rng.below(15) as f32 - 7.0) * 0.25)
        .collect()
}

/// Runs probe `kernel` with A (16 x k), B (k x 8), C (16 x 8) placed in the lanes' registers by
/// the tables, and returns D read back through the C/D table.
#[allow(clippy::too_many_arguments)]
fn run_probe(
    dev: &dyn Device,
    kernel: &str,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &[f32],
    a_of: fn(usize, usize) -> (usize, usize),
    b_of: fn(usize, usize) -> (usize, usize),
) -> Vec<f32> {
    let (na, nb) = (k / 2, k / 4); // elements per lane: A 16·k/32, B 8·k/32
    let mut a_raw = vec![0.0f32; 32 * na];
    let mut b_raw = vec![0.0f32; 32 * nb];
    let mut c_raw = vec![0.0f32; 32 * 4];
    for lane in 0..32 {
        for i in 0..na {
            let (r, col) = a_of(lane, i);
            a_raw[lane * na + i] = a[r * k + col];
        }
        for i in 0..nb {
            let (r, col) = b_of(lane, i);
            b_raw[lane * nb + i] = b[r * 8 + col];
        }
        for i in 0..4 {
            let (r, col) = f32_c(lane, i);
            c_raw[lane * 4 + i] = c[r * 8 + col];
        }
    }
    let (da, db, dc) = (
        dev.upload(&a_raw).unwrap(),
        dev.upload(&b_raw).unwrap(),
        dev.upload(&c_raw).unwrap(),
    );
    let dd = dev.alloc_slice::<f32>(32 * 4).unwrap();
    let mut args = KernelArgs::new().slice(dd).slice(da).slice(db).slice(dc);
    // SAFETY: the probes of kernels/matmul_tc.cu take (d_raw (32, 4), a_raw (32, k/2), b_raw
    // (32, k/4), c_raw (32, 4)), all uploaded or allocated above at those sizes; one warp.
    unsafe { dev.launch(kernel, &LaunchConfig::new(1, 32), &mut args.params()) }
        .unwrap_or_else(|e| panic!("{kernel}: {e}"));
    let d_raw = dev.download(dd).unwrap();
    let mut d = vec![f32::NAN; 16 * 8];
    for lane in 0..32 {
        for i in 0..4 {
            let (r, col) = f32_c(lane, i);
            d[r * 8 + col] = d_raw[lane * 4 + i];
        }
    }
    d
}

fn product(a: &[f32], b: &[f32], c: &[f32], k: usize) -> Vec<f32> {
    (0..16 * 8)
        .map(|e| {
            let (r, n) = (e / 8, e % 8);
            let s: f64 = (0..k)
                .map(|j| a[r * k + j] as f64 * b[j * 8 + n] as f64)
                .sum();
            (s + c[e] as f64) as f32
        })
        .collect()
}

fn check_layouts(
    dev: &dyn Device,
    kernel: &str,
    k: usize,
    a_of: fn(usize, usize) -> (usize, usize),
    b_of: fn(usize, usize) -> (usize, usize),
) {
    let mut rng = Rng::new(7);
    for trial in 0..3 {
        let (a, b, c) = (
            exact_matrix(&mut rng, 16, k),
            exact_matrix(&mut rng, k, 8),
            exact_matrix(&mut rng, 16, 8),
        );
        let got = run_probe(dev, kernel, k, &a, &b, &c, a_of, b_of);
        assert_eq!(
            got,
            product(&a, &b, &c, k),
            "{kernel} trial {trial}: D != A·B + C"
        );
    }
    // One-hot probes: a single A element at (r, c) with B = the k index + 1 in every column
    // lands in row r of D as c + 1, so a register the hardware reads from elsewhere shows.
    for r in 0..16 {
        for col in 0..k {
            let mut a = vec![0.0f32; 16 * k];
            a[r * k + col] = 1.0;
            let b: Vec<f32> = (0..k * 8).map(|e| (e / 8 + 1) as f32).collect();
            let got = run_probe(dev, kernel, k, &a, &b, &[0.0; 128], a_of, b_of);
            for (e, &g) in got.iter().enumerate() {
                let want = if e / 8 == r { (col + 1) as f32 } else { 0.0 };
                assert_eq!(
                    g,
                    want,
                    "{kernel}: A element ({r}, {col}) seen at D ({}, {})",
                    e / 8,
                    e % 8
                );
            }
        }
    }
}

device_tests! {
    fn emu_mma_tf32_fragments_follow_the_isa_tables / gpu_mma_tf32_fragments_follow_the_isa_tables (dev) {
        check_layouts(&dev, "mma_probe_tf32", 8, tf32_a, tf32_b);
    }
    fn emu_mma_bf16_fragments_follow_the_isa_tables / gpu_mma_bf16_fragments_follow_the_isa_tables (dev) {
        check_layouts(&dev, "mma_probe_bf16", 16, bf16_a, bf16_b);
    }
}

// ---- operand rounding

/// (input bits, TF32 bits by cvt.rna, BF16 bits by round to nearest even), worked by hand.
const ROUNDINGS: [(u32, u32, u32); 10] = [
    (0x3f80_0000, 0x3f80_0000, 0x3f80), // 1.0: exact in both
    // 1 + 2^-11: exactly half a TF32 ulp: ties away from zero rounds up; below half a BF16 ulp
    (0x3f80_1000, 0x3f80_2000, 0x3f80),
    (0xbf80_1000, 0xbf80_2000, 0xbf80), // the same, negative: away from zero is down
    (0x3f80_0fff, 0x3f80_0000, 0x3f80), // just below half a TF32 ulp
    // 1 + 2^-8: exactly half a BF16 ulp, mantissa even: stays (ties to even)
    (0x3f80_8000, 0x3f80_8000, 0x3f80),
    (0x3f81_8000, 0x3f81_8000, 0x3f82), // 1 + 3·2^-8: half an ulp, mantissa odd: up to even
    (0x3f80_8001, 0x3f80_8000, 0x3f81), // just above half a BF16 ulp
    (0x7f7f_ffff, 0x7f80_0000, 0x7f80), // the largest f32 rounds to infinity in both
    (0x7f80_0000, 0x7f80_0000, 0x7f80), // infinity stays
    (0x0000_1000, 0x0000_2000, 0x0000), // a subnormal: half a TF32 ulp of 2^-149·2^13, up
];

#[test]
fn host_roundings_match_the_hand_worked_bits() {
    for (x, t, b) in ROUNDINGS {
        let f = f32::from_bits(x);
        assert_eq!(tf32_rna(f), t, "tf32_rna({x:#010x})");
        assert_eq!(bf16_rne(f), b, "bf16_rne({x:#010x})");
        assert_eq!(Precision::Tf32.round(f).to_bits(), t);
        assert_eq!(Precision::Bf16.round(f).to_bits(), b << 16);
    }
    assert!(Precision::Tf32.round(f32::NAN).is_nan() && Precision::Bf16.round(f32::NAN).is_nan());
}

device_tests! {
    fn emu_kernel_roundings_match_the_host_ones / gpu_kernel_roundings_match_the_host_ones (dev) {
        let mut inputs: Vec<f32> = ROUNDINGS.iter().map(|r| f32::from_bits(r.0)).collect();
        let mut rng = Rng::new(3);
        inputs.extend((0..1000).map(|_| (rng.normal() * 10f64.powi(rng.below(20) as i32 - 10)) as f32));
        let n = inputs.len();
        let d_in = dev.upload(&inputs).unwrap();
        let (d_t, d_b) = (dev.alloc_slice::<f32>(n).unwrap(), dev.alloc_slice::<f32>(n).unwrap());
        let mut args = KernelArgs::new().slice(d_t).slice(d_b).slice(d_in).i32(n as i32);
        // SAFETY: precision_round_probe(float* out_tf32, float* out_bf16, const float* in, int n),
        // three buffers of n floats.
        unsafe { dev.launch("precision_round_probe", &LaunchConfig::new((n as u32).div_ceil(128), 128), &mut args.params()) }.unwrap();
        let (t, b) = (dev.download(d_t).unwrap(), dev.download(d_b).unwrap());
        for i in 0..n {
            assert_eq!(t[i].to_bits(), tf32_rna(inputs[i]), "tf32 of {:#010x}", inputs[i].to_bits());
            assert_eq!(b[i].to_bits(), bf16_rne(inputs[i]) << 16, "bf16 of {:#010x}", inputs[i].to_bits());
        }
    }
}

// ---- misuse: refused by the emulator as by the hardware (emulator only)

fn misuse_device(schedule: Schedule) -> EmuDevice {
    EmuDevice::new()
        .with_kernels(test_kernels::KERNELS)
        .with_schedule(schedule)
}

/// Launches test kernel `kernel` and returns the launch's error message.
fn misuse(
    kernel: &str,
    config: LaunchConfig,
    args: impl FnOnce(&EmuDevice) -> KernelArgs,
) -> String {
    let dev = misuse_device(Schedule::Forward);
    let mut a = args(&dev);
    // SAFETY: each caller passes the parameter list of the tests/kernels/mma_misuse.cu kernel it
    // names, with a d buffer of blockDim.x · 4 floats (or the buffers that kernel documents).
    match unsafe { dev.launch(kernel, &config, &mut a.params()) } {
        Ok(()) => panic!("{kernel}: the launch succeeded; the emulator should have refused it"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn emu_mma_needs_every_lane_of_the_warp() {
    let msg = misuse("mma_with_exited_lane", LaunchConfig::new(1, 32), |d| {
        KernelArgs::new()
            .slice(d.alloc_slice::<f32>(128).unwrap())
            .i32(31)
    });
    assert!(
        msg.contains("0x80000000") && msg.contains("needs all 32 lanes"),
        "{msg}"
    );
    let msg = misuse("mma_in_partial_warp", LaunchConfig::new(1, 48), |d| {
        KernelArgs::new().slice(d.alloc_slice::<f32>(48 * 4).unwrap())
    });
    assert!(
        msg.contains("0xffff0000") && msg.contains("needs all 32 lanes"),
        "{msg}"
    );
}

#[test]
fn emu_mma_refuses_divergent_calls() {
    let msg = misuse("mma_divergent", LaunchConfig::new(1, 32), |d| {
        KernelArgs::new().slice(d.alloc_slice::<f32>(128).unwrap())
    });
    assert!(
        msg.contains("divergent warp collective") && msg.contains("mma.sync.aligned.m16n8k8"),
        "{msg}"
    );
}

#[test]
fn emu_mma_refuses_tf32_operands_that_were_not_converted() {
    let msg = misuse("mma_unconverted_operand", LaunchConfig::new(1, 32), |d| {
        KernelArgs::new()
            .slice(d.alloc_slice::<f32>(128).unwrap())
            .f32(1.1)
    });
    assert!(
        msg.contains("not a TF32 value") && msg.contains("cvt.rna.tf32.f32"),
        "{msg}"
    );
    // the same bits after the conversion are accepted: exercised by every TF32 test above
    assert_ne!(1.1f32.to_bits() & 0x1fff, 0);
}

#[test]
fn emu_cp_async_refuses_a_misaligned_16_byte_copy() {
    let msg = misuse("cp_async_misaligned", LaunchConfig::new(1, 1), |d| {
        KernelArgs::new()
            .slice(d.alloc_slice::<f32>(4).unwrap())
            .slice(d.upload(&[1.0f32; 8]).unwrap())
    });
    assert!(
        msg.contains("cp.async") && msg.contains("not aligned to the copy's 16 bytes"),
        "{msg}"
    );
}

fn run_cp_probe(schedule: Schedule, kernel: &str, n: usize, per: usize, input: &[f32]) -> Vec<f32> {
    let dev = misuse_device(schedule);
    let out = dev.alloc_slice::<f32>(n * per).unwrap();
    let mut args = KernelArgs::new()
        .slice(out)
        .slice(dev.upload(input).unwrap());
    // SAFETY: cp_async_read_before_wait / cp_async_groups take (out (n, per), in) with `in`
    // holding what the kernel reads (n resp. 3n floats); one block of n <= 256 threads.
    unsafe { dev.launch(kernel, &LaunchConfig::new(1, n as u32), &mut args.params()) }
        .unwrap_or_else(|e| panic!("{kernel}: {e}"));
    dev.download(out).unwrap()
}

#[test]
fn emu_cp_async_lands_at_the_wait_or_at_once_by_schedule() {
    let n = 96;
    let input: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
    // Under ThreadSanitizer the read-before-wait probe is what it is meant to be, a data race
    // between the copy landing and the neighbour's read, and TSan reports it (which fails the
    // binary): only the race-free groups probe runs there.
    if SANITIZER == Some("thread") {
        eprintln!("emu_cp_async_lands_at_the_wait_or_at_once_by_schedule: the read-before-wait probe is not run under TSan");
    } else {
        check_read_before_wait(n, &input);
    }
    check_groups(n);
}

fn check_read_before_wait(n: usize, input: &[f32]) {
    // Forward schedule: a copy lands at the wait that covers it, so reading a slot whose owner
    // has not reached its wait sees the shared memory's NaN poison (the bug is caught); after the
    // wait and a barrier, the value.
    let fwd = run_cp_probe(Schedule::Forward, "cp_async_read_before_wait", n, 2, input);
    // Reverse schedule: a copy lands when issued (the earliest the hardware may complete it).
    let rev = run_cp_probe(Schedule::Reverse, "cp_async_read_before_wait", n, 2, input);
    for t in 0..n {
        let want = input[(t + 1) % n];
        // (the last thread reads thread 0's slot, whose wait already ran: it may see the value)
        if t + 1 < n {
            assert!(
                fwd[t * 2].is_nan(),
                "thread {t} read {} before its wait under the forward schedule",
                fwd[t * 2]
            );
        }
        assert_eq!(fwd[t * 2 + 1], want);
        assert_eq!(rev[t * 2], want);
        assert_eq!(rev[t * 2 + 1], want);
    }
}

/// wait_group N leaves exactly the newest N groups in flight; src-size 0 fills zeros.
fn check_groups(n: usize) {
    let input: Vec<f32> = (0..3 * n).map(|i| i as f32 + 1.0).collect();
    for schedule in [Schedule::Forward, Schedule::Reverse] {
        let got = run_cp_probe(schedule, "cp_async_groups", n, 3, &input);
        for t in 0..n {
            let u = (t + 1) % n;
            assert_eq!(
                got[t * 3..t * 3 + 3],
                [input[u], 0.0, input[2 * n + u]],
                "{schedule:?} thread {t}"
            );
        }
    }
}
