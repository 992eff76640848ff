//! Launchers for the kernels in kernels/*.cu: shape checks, launch configuration and parameter
//! list, one function per kernel, named after it. They run on any [`Device`]; the launch shapes
//! are also noted at the end of each .cu file.
//!
//! Shapes follow src/ops (the CPU reference): a slice whose length does not match its shape is a
//! bug in the caller and panics with the op, the argument and both shapes.

use super::device::{Device, DeviceExt, DeviceSlice, GpuError, KernelArgs, LaunchConfig};
use crate::ops::check_len;

/// Blocks of `per_block` items needed to cover `n` items.
fn blocks(n: usize, per_block: usize) -> u32 {
    u32::try_from(n.div_ceil(per_block)).expect("grid dimension does not fit in u32")
}

/// A dimension as the kernels' `int`.
fn int(op: &str, what: &str, v: usize) -> i32 {
    i32::try_from(v).unwrap_or_else(|_| panic!("{op}: {what} = {v} does not fit in a CUDA int"))
}

/// out (N, OC) = inp (N, IC) · weight (OC, IC)ᵀ + bias (OC). kernels/matmul.cu.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    bias: Option<DeviceSlice<f32>>,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    let op = "matmul_forward";
    check_len(op, "out", out.len(), &[n, oc]);
    check_len(op, "inp", inp.len(), &[n, ic]);
    check_len(op, "weight", weight.len(), &[oc, ic]);
    if let Some(b) = bias {
        check_len(op, "bias", b.len(), &[oc]);
    }
    if n == 0 || oc == 0 {
        return Ok(());
    }
    const TILE: usize = 32;
    let config = LaunchConfig::new((blocks(oc, TILE), blocks(n, TILE)), (32, 8));
    let mut args = KernelArgs::new()
        .slice(out)
        .slice(inp)
        .slice(weight)
        .opt_slice(bias)
        .i32(int(op, "N", n))
        .i32(int(op, "IC", ic))
        .i32(int(op, "OC", oc));
    // SAFETY: the parameters match `matmul_forward` in kernels/matmul.cu in order and type, and
    // every slice holds the elements its shape says, which is all the kernel touches.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// probs (R, T, T) = causal softmax of scores (R, T, T), row by row. kernels/softmax.cu.
pub fn causal_softmax_forward(
    dev: &dyn Device,
    probs: DeviceSlice<f32>,
    scores: DeviceSlice<f32>,
    r: usize,
    t: usize,
) -> Result<(), GpuError> {
    let op = "causal_softmax_forward";
    check_len(op, "probs", probs.len(), &[r, t, t]);
    check_len(op, "scores", scores.len(), &[r, t, t]);
    if r * t == 0 {
        return Ok(());
    }
    const WARPS_PER_BLOCK: usize = 4;
    let config = LaunchConfig::new(
        blocks(r * t, WARPS_PER_BLOCK),
        (32 * WARPS_PER_BLOCK) as u32,
    );
    int(op, "R·T", r * t); // the kernel's row index
    let mut args = KernelArgs::new()
        .slice(probs)
        .slice(scores)
        .i32(int(op, "R", r))
        .i32(int(op, "T", t));
    // SAFETY: as in matmul_forward, for kernels/softmax.cu.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// Row-sum check of probs (R, T, T): writes into `result` (2) the largest |Σ_j p − 1| over all
/// rows as f32 bits, then the number of rows whose deviation exceeds `tol` or is NaN; read them
/// with [`read_row_sum_check`]. kernels/check.cu.
pub fn attention_row_sum_check(
    dev: &dyn Device,
    result: DeviceSlice<u32>,
    probs: DeviceSlice<f32>,
    r: usize,
    t: usize,
    tol: f32,
) -> Result<(), GpuError> {
    let op = "attention_row_sum_check";
    check_len(op, "result", result.len(), &[2]);
    check_len(op, "probs", probs.len(), &[r, t, t]);
    dev.zero(result)?;
    if r * t == 0 {
        return Ok(());
    }
    const WARPS_PER_BLOCK: usize = 4;
    let config = LaunchConfig::new(
        blocks(r * t, WARPS_PER_BLOCK),
        (32 * WARPS_PER_BLOCK) as u32,
    );
    int(op, "R·T", r * t); // the kernel's row index
    let mut args = KernelArgs::new()
        .slice(result.slice(0..1))
        .slice(result.slice(1..2))
        .slice(probs)
        .i32(int(op, "R", r))
        .i32(int(op, "T", t))
        .f32(tol);
    // SAFETY: as in matmul_forward, for kernels/check.cu.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// (largest row-sum deviation, rows over tolerance) from [`attention_row_sum_check`]'s result.
pub fn read_row_sum_check(
    dev: &dyn Device,
    result: DeviceSlice<u32>,
) -> Result<(f32, u32), GpuError> {
    let v = dev.download(result)?;
    Ok((f32::from_bits(v[0]), v[1]))
}
