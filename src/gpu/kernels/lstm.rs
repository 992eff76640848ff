//! The LSTM: its pointwise cell (one timestep per launch) and the persistent kernels that run a
//! whole layer's recurrence in one cooperative launch, kernels/lstm.cu. (Its gate GEMMs are
//! kernels/matmul.cu.)

use super::{blocks, int};
use crate::gpu::device::{
    Device, DeviceSlice, GpuError, KernelArgs, LaunchConfig, DEFAULT_SHARED_BYTES,
};
use crate::ops::check_len;

/// Threads per block of both cell kernels: one thread per (n, j).
const THREADS: usize = 256;

/// Panics unless `len` is that of a (B, H) view with rows `stride` elements apart.
#[track_caller]
fn check_strided(op: &str, arg: &str, len: usize, b: usize, hid: usize, stride: usize) {
    let want = if b == 0 { 0 } else { (b - 1) * stride + hid };
    if stride < hid || len != want {
        panic!(
            "shape mismatch in {op}: {arg} expected shape [{b}, {hid}] with row stride {stride} \
             ({want} elements, stride >= {hid}), got {len} elements"
        );
    }
}

/// One timestep of the cell, as `ops::lstm::lstm_cell_forward`: gates (B, 4H) pre-activations
/// in, activations out (in place); c_prev (B, H) (None = zeros); writes c (B, H) and h (B, H).
#[allow(clippy::too_many_arguments)]
pub fn lstm_cell_forward(
    dev: &dyn Device,
    gates: DeviceSlice<f32>,
    c_prev: Option<DeviceSlice<f32>>,
    c: DeviceSlice<f32>,
    h: DeviceSlice<f32>,
    b: usize,
    hid: usize,
) -> Result<(), GpuError> {
    let op = "lstm_cell_forward";
    check_len(op, "gates", gates.len(), &[b, 4 * hid]);
    check_len(op, "c", c.len(), &[b, hid]);
    check_len(op, "h", h.len(), &[b, hid]);
    if let Some(cp) = c_prev {
        check_len(op, "c_prev", cp.len(), &[b, hid]);
    }
    if b == 0 || hid == 0 {
        return Ok(());
    }
    int(op, "B·4H", b * 4 * hid);
    let config = LaunchConfig::new(blocks(b * hid, THREADS), THREADS as u32);
    let mut args = KernelArgs::new()
        .slice(gates)
        .opt_slice(c_prev)
        .slice(c)
        .slice(h)
        .i32(int(op, "B", b))
        .i32(int(op, "H", hid));
    // SAFETY: the parameters match `lstm_cell_forward` in kernels/lstm.cu in order and type, and
    // every slice holds the elements its shape says, which is all the kernel touches.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// Backward of one timestep, as `ops::lstm::lstm_cell_backward`, with the cell-state gradient
/// passed through strided views so the layer needs no extra buffer:
/// d_c = dc_in + dh·o·(1 − tanh²c); writes dgates (B, 4H) (overwrite) and dc_out = d_c · f.
/// `dc_in` / `dc_out` are (B, H) with rows `dc_stride` elements apart (slices of length
/// (B − 1)·dc_stride + H); `dc_in` None means zero, `dc_out` None means not needed. `dc_in` may
/// alias columns 0..H of `dgates` (dc_stride = 4H): each (n, j) is read before it is written, by
/// the same thread. c_prev None means zeros.
///
/// `dc_out` must not overlap `dgates` (it is written after it); it may be `dc_in` itself when
/// `dc_in` does not alias `dgates` (an in-place update, as the CPU reference's `dc`).
#[allow(clippy::too_many_arguments)]
pub fn lstm_cell_backward(
    dev: &dyn Device,
    dgates: DeviceSlice<f32>,
    dc_out: Option<DeviceSlice<f32>>,
    dc_in: Option<DeviceSlice<f32>>,
    dc_stride: usize,
    dh: DeviceSlice<f32>,
    gates: DeviceSlice<f32>,
    c: DeviceSlice<f32>,
    c_prev: Option<DeviceSlice<f32>>,
    b: usize,
    hid: usize,
) -> Result<(), GpuError> {
    let op = "lstm_cell_backward";
    check_len(op, "dgates", dgates.len(), &[b, 4 * hid]);
    if let Some(d) = dc_out {
        check_strided(op, "dc_out", d.len(), b, hid, dc_stride);
    }
    if let Some(d) = dc_in {
        check_strided(op, "dc_in", d.len(), b, hid, dc_stride);
    }
    check_len(op, "dh", dh.len(), &[b, hid]);
    check_len(op, "gates", gates.len(), &[b, 4 * hid]);
    check_len(op, "c", c.len(), &[b, hid]);
    if let Some(cp) = c_prev {
        check_len(op, "c_prev", cp.len(), &[b, hid]);
    }
    if b == 0 || hid == 0 {
        return Ok(());
    }
    int(op, "B·4H", b * 4 * hid);
    int(op, "B·dc_stride", b * dc_stride);
    let config = LaunchConfig::new(blocks(b * hid, THREADS), THREADS as u32);
    let mut args = KernelArgs::new()
        .slice(dgates)
        .opt_slice(dc_out)
        .opt_slice(dc_in)
        .i32(int(op, "dc_stride", dc_stride))
        .slice(dh)
        .slice(gates)
        .slice(c)
        .opt_slice(c_prev)
        .i32(int(op, "B", b))
        .i32(int(op, "H", hid));
    // SAFETY: the parameters match `lstm_cell_backward` in kernels/lstm.cu in order and type;
    // every slice holds the elements its (strided) shape says, which is all the kernel touches.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// Threads per block of the persistent kernels (`LSTM_PT_THREADS` in kernels/lstm.cu).
pub const PERSISTENT_THREADS: u32 = 128;

/// How the persistent kernels split a layer of `hid` units over the grid: each of `blocks` blocks
/// owns `units` consecutive hidden units (the last one maybe fewer) with all four of their gates,
/// and keeps their W_hh rows (forward) or columns (backward) in `forward_shared` /
/// `backward_shared` bytes of dynamic shared memory for the whole sequence; the backward pass cuts
/// each of its B·U recurrent dot products (length 4H) into `parts` so that the block's threads are
/// busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistentPlan {
    pub batch: usize,
    pub hidden: usize,
    pub units: usize,
    pub blocks: usize,
    pub parts: usize,
    pub forward_shared: u32,
    pub backward_shared: u32,
}

impl PersistentPlan {
    /// The split for a device of `sms` SMs and `optin` bytes of shared memory per block at most,
    /// or why it cannot run: as many blocks as there are SMs (one per unit when `hid` is
    /// smaller), so W_hh spreads over the whole chip. The co-residency of the grid is checked
    /// apart ([`lstm_persistent_plan`]), against the device's occupancy.
    pub fn new(b: usize, hid: usize, sms: usize, optin: usize) -> Result<Self, String> {
        if b == 0 || hid == 0 {
            return Err("an empty batch or layer".to_string());
        }
        let target = sms.clamp(1, hid);
        let units = hid.div_ceil(target);
        let blocks = hid.div_ceil(units);
        // rows padded to an odd stride (kernels/lstm.cu): conflict-free shared-memory reads
        let forward = 4 * units * (hid | 1) * 4;
        let parts = (PERSISTENT_THREADS as usize / (b * units)).clamp(1, 8);
        let partials = if parts > 1 { b * units * parts } else { 0 };
        let backward = (units * (4 * hid + 1) + b * units + partials) * 4;
        if forward.max(backward) > optin {
            return Err(format!(
                "W_hh of {hid} units needs {} KiB of shared memory per block over {blocks} blocks, \
                 more than the device's {} KiB",
                forward.max(backward).div_ceil(1024),
                optin / 1024
            ));
        }
        if i32::try_from(b * 4 * hid).is_err() {
            return Err(format!(
                "B·4H = {} does not fit the kernels' indices",
                b * 4 * hid
            ));
        }
        Ok(PersistentPlan {
            batch: b,
            hidden: hid,
            units,
            blocks,
            parts,
            forward_shared: forward as u32,
            backward_shared: backward as u32,
        })
    }
}

/// The persistent split of a (B, H) layer on `dev`, its kernels' shared-memory limits raised as
/// needed, or the one-line reason it cannot run there (the caller falls back to the per-timestep
/// kernels): the slices must fit the opt-in shared memory and the grid must be co-resident
/// (occupancy × SMs ≥ blocks), as `cuLaunchCooperativeKernel` requires.
pub fn lstm_persistent_plan(
    dev: &dyn Device,
    b: usize,
    hid: usize,
) -> Result<PersistentPlan, String> {
    let sms = dev.sm_count() as usize;
    let plan = PersistentPlan::new(b, hid, sms, dev.max_shared_optin() as usize)?;
    for (kernel, bytes) in [
        ("lstm_persistent_forward", plan.forward_shared),
        ("lstm_persistent_backward", plan.backward_shared),
    ] {
        if bytes > DEFAULT_SHARED_BYTES {
            dev.set_max_dynamic_shared(kernel, bytes)
                .map_err(|e| format!("{kernel}: {e}"))?;
        }
        let per_sm = dev
            .max_active_blocks_per_sm(kernel, PERSISTENT_THREADS, bytes)
            .map_err(|e| format!("{kernel}: {e}"))? as usize;
        if per_sm * sms < plan.blocks {
            return Err(format!(
                "{kernel} needs {} co-resident blocks of {PERSISTENT_THREADS} threads and {} KiB \
                 of shared memory; the device holds {per_sm} per SM × {sms} SMs",
                plan.blocks,
                bytes.div_ceil(1024)
            ));
        }
    }
    Ok(plan)
}

#[track_caller]
fn check_persistent(
    op: &str,
    plan: &PersistentPlan,
    t: usize,
    b: usize,
    hid: usize,
    barrier: usize,
) {
    assert!(
        plan.batch == b && plan.hidden == hid,
        "{op}: a plan for (B {}, H {}) used at (B {b}, H {hid})",
        plan.batch,
        plan.hidden
    );
    check_len(op, "barrier", barrier, &[2]);
    int(op, "T·B·4H", t * b * 4 * hid);
}

/// The forward recurrence of a layer in one cooperative launch, as the time loop of
/// `ops::lstm::lstm_forward`: gates (T, B, 4H) hold x·W_ihᵀ + b of every step on entry and the
/// activations on exit; writes c and h (T, B, H). `barrier`: the 2 words of kernels/grid.cuh
/// (the count 0).
#[allow(clippy::too_many_arguments)]
pub fn lstm_persistent_forward(
    dev: &dyn Device,
    plan: &PersistentPlan,
    gates: DeviceSlice<f32>,
    c: DeviceSlice<f32>,
    h: DeviceSlice<f32>,
    w_hh: DeviceSlice<f32>,
    barrier: DeviceSlice<u32>,
    t: usize,
    b: usize,
    hid: usize,
) -> Result<(), GpuError> {
    let op = "lstm_persistent_forward";
    check_len(op, "gates", gates.len(), &[t, b, 4 * hid]);
    check_len(op, "c", c.len(), &[t, b, hid]);
    check_len(op, "h", h.len(), &[t, b, hid]);
    check_len(op, "w_hh", w_hh.len(), &[4 * hid, hid]);
    if t == 0 {
        return Ok(());
    }
    check_persistent(op, plan, t, b, hid, barrier.len());
    let config = LaunchConfig::new(plan.blocks as u32, PERSISTENT_THREADS)
        .with_shared_bytes(plan.forward_shared);
    let mut args = KernelArgs::new()
        .slice(gates)
        .slice(c)
        .slice(h)
        .slice(w_hh)
        .slice(barrier)
        .i32(int(op, "T", t))
        .i32(int(op, "B", b))
        .i32(int(op, "H", hid))
        .i32(int(op, "U", plan.units));
    // SAFETY: the parameters match `lstm_persistent_forward` in kernels/lstm.cu in order and
    // type; every slice holds the elements its shape says, which is all the kernel touches; the
    // grid was checked co-resident by `lstm_persistent_plan`.
    unsafe { dev.launch_cooperative(op, &config, &mut args.params()) }
}

/// Backpropagation through time of a layer in one cooperative launch, as the time loop of
/// `ops::lstm::lstm_backward`: dh (T, B, H) holds the gradient from above on entry and the total
/// on exit; writes dgates (T, B, 4H) of every step (the weight, bias and input gradients are
/// GEMMs over them after the launch).
#[allow(clippy::too_many_arguments)]
pub fn lstm_persistent_backward(
    dev: &dyn Device,
    plan: &PersistentPlan,
    dgates: DeviceSlice<f32>,
    dh: DeviceSlice<f32>,
    gates: DeviceSlice<f32>,
    c: DeviceSlice<f32>,
    w_hh: DeviceSlice<f32>,
    barrier: DeviceSlice<u32>,
    t: usize,
    b: usize,
    hid: usize,
) -> Result<(), GpuError> {
    let op = "lstm_persistent_backward";
    check_len(op, "dgates", dgates.len(), &[t, b, 4 * hid]);
    check_len(op, "dh", dh.len(), &[t, b, hid]);
    check_len(op, "gates", gates.len(), &[t, b, 4 * hid]);
    check_len(op, "c", c.len(), &[t, b, hid]);
    check_len(op, "w_hh", w_hh.len(), &[4 * hid, hid]);
    if t == 0 {
        return Ok(());
    }
    check_persistent(op, plan, t, b, hid, barrier.len());
    let config = LaunchConfig::new(plan.blocks as u32, PERSISTENT_THREADS)
        .with_shared_bytes(plan.backward_shared);
    let mut args = KernelArgs::new()
        .slice(dgates)
        .slice(dh)
        .slice(gates)
        .slice(c)
        .slice(w_hh)
        .slice(barrier)
        .i32(int(op, "T", t))
        .i32(int(op, "B", b))
        .i32(int(op, "H", hid))
        .i32(int(op, "U", plan.units))
        .i32(int(op, "P", plan.parts));
    // SAFETY: as lstm_persistent_forward, with `lstm_persistent_backward`'s parameters.
    unsafe { dev.launch_cooperative(op, &config, &mut args.params()) }
}
