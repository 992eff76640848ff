//! Causal scaled-dot-product attention: kernels/softmax.cu, kernels/check.cu.

use super::{blocks, int};
use crate::gpu::device::{Device, DeviceExt, DeviceSlice, GpuError, KernelArgs, LaunchConfig};
use crate::ops::attention::AttnShape;
use crate::ops::check_len;
use crate::philox::DropoutKey;

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

#[allow(unused_variables, clippy::too_many_arguments)]
/// scores (B, NH, T, T) = q · kᵀ / sqrt(HS) per head, written for j <= i only (entries above
/// the diagonal are left as they are: the causal softmax overwrites them). q, k (B, T, C).
/// kernels/attention.cu.
pub fn attention_scores_forward(
    dev: &dyn Device,
    scores: DeviceSlice<f32>,
    q: DeviceSlice<f32>,
    k: DeviceSlice<f32>,
    s: AttnShape,
) -> Result<(), GpuError> {
    unimplemented!("attention_scores_forward: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// The fused causal mask + softmax + dropout of one pass per row: probs (R, T, T) = causal
/// softmax of scores (R, T, T) (probs may be the same buffer as scores: in place); with
/// `dropout`, also weights (R, T, T) = probs ⊙ mask (Philox, element index = (r·T + i)·T + j,
/// kept entries scaled by 1/(1 − p), zero above the diagonal). `weights` is required when
/// `dropout` is Some with p > 0 and ignored otherwise. kernels/attention.cu.
pub fn causal_softmax_dropout_forward(
    dev: &dyn Device,
    probs: DeviceSlice<f32>,
    weights: Option<DeviceSlice<f32>>,
    scores: DeviceSlice<f32>,
    r: usize,
    t: usize,
    dropout: Option<DropoutKey>,
) -> Result<(), GpuError> {
    unimplemented!("causal_softmax_dropout_forward: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// weights (R, T, T) = probs ⊙ mask, the same mask as `causal_softmax_dropout_forward`
/// (regenerated for the backward pass; zero above the diagonal). kernels/attention.cu.
pub fn attention_dropout_weights(
    dev: &dyn Device,
    weights: DeviceSlice<f32>,
    probs: DeviceSlice<f32>,
    r: usize,
    t: usize,
    dropout: DropoutKey,
) -> Result<(), GpuError> {
    unimplemented!("attention_dropout_weights: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// out (B, T, C) = weights (B, NH, T, T) · v (B, T, C) per head (weights zero above the
/// diagonal). kernels/attention.cu.
pub fn attention_values_forward(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    weights: DeviceSlice<f32>,
    v: DeviceSlice<f32>,
    s: AttnShape,
) -> Result<(), GpuError> {
    unimplemented!("attention_values_forward: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// dv (B, T, C) += weightsᵀ · dout per head; dweights (B, NH, T, T) = dout · vᵀ per head for
/// j <= i and 0 above the diagonal (overwritten, not accumulated). dweights must not alias
/// weights. kernels/attention.cu.
pub fn attention_values_backward(
    dev: &dyn Device,
    dv: DeviceSlice<f32>,
    dweights: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    weights: DeviceSlice<f32>,
    v: DeviceSlice<f32>,
    s: AttnShape,
) -> Result<(), GpuError> {
    unimplemented!("attention_values_backward: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// Backward of `causal_softmax_dropout_forward`, one pass per row: dP = dweights ⊙ mask (or
/// dweights without dropout), dscores (R, T, T) = P ⊙ (dP − Σ_j P·dP) (overwritten; zero above
/// the diagonal). dscores may be the same buffer as dweights (in place). kernels/attention.cu.
pub fn causal_softmax_dropout_backward(
    dev: &dyn Device,
    dscores: DeviceSlice<f32>,
    dweights: DeviceSlice<f32>,
    probs: DeviceSlice<f32>,
    r: usize,
    t: usize,
    dropout: Option<DropoutKey>,
) -> Result<(), GpuError> {
    unimplemented!("causal_softmax_dropout_backward: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// dq += dscores · k / sqrt(HS); dk += dscoresᵀ · q / sqrt(HS), per head; dscores (B, NH, T, T)
/// is zero above the diagonal. kernels/attention.cu.
pub fn attention_scores_backward(
    dev: &dyn Device,
    dq: DeviceSlice<f32>,
    dk: DeviceSlice<f32>,
    dscores: DeviceSlice<f32>,
    q: DeviceSlice<f32>,
    k: DeviceSlice<f32>,
    s: AttnShape,
) -> Result<(), GpuError> {
    unimplemented!("attention_scores_backward: kernel not written yet")
}
