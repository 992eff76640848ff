//! Fused softmax + cross-entropy: kernels/loss.cu.

use super::{blocks, int};
use crate::gpu::device::{Device, DeviceSlice, GpuError, KernelArgs, LaunchConfig};
use crate::ops::check_len;

/// One warp per row, four rows per block.
const ROWS_BLOCK: u32 = 128;
const ROWS_PER_BLOCK: usize = ROWS_BLOCK as usize / 32;

/// losses (N) = −log softmax(logits (N, V))[target] per row; rows whose target is
/// `ops::loss::IGNORE` get 0 (as `ops::loss::cross_entropy_forward`). A target >= V (other than
/// IGNORE) gives NaN, where the CPU reference panics.
pub fn cross_entropy_forward(
    dev: &dyn Device,
    losses: DeviceSlice<f32>,
    logits: DeviceSlice<f32>,
    targets: DeviceSlice<u32>,
    n: usize,
    v: usize,
) -> Result<(), GpuError> {
    let op = "cross_entropy_forward";
    check_len(op, "losses", losses.len(), &[n]);
    check_len(op, "logits", logits.len(), &[n, v]);
    check_len(op, "targets", targets.len(), &[n]);
    if n == 0 {
        return Ok(());
    }
    let config = LaunchConfig::new(blocks(n, ROWS_PER_BLOCK), ROWS_BLOCK);
    let mut args = KernelArgs::new()
        .slice(losses)
        .slice(logits)
        .slice(targets)
        .i32(int(op, "N", n))
        .i32(int(op, "V", v));
    // SAFETY: the parameters match `cross_entropy_forward` in kernels/loss.cu in order and type,
    // and every slice holds the elements its shape says, which is all the kernel touches (targets
    // >= V are never used as an index).
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// dlogits (N, V) += scale · (softmax(logits) − onehot(target)); IGNORE rows untouched. A
/// target >= V (other than IGNORE) makes its row NaN, where the CPU reference panics.
pub fn cross_entropy_backward(
    dev: &dyn Device,
    dlogits: DeviceSlice<f32>,
    logits: DeviceSlice<f32>,
    targets: DeviceSlice<u32>,
    scale: f32,
    n: usize,
    v: usize,
) -> Result<(), GpuError> {
    let op = "cross_entropy_backward";
    check_len(op, "dlogits", dlogits.len(), &[n, v]);
    check_len(op, "logits", logits.len(), &[n, v]);
    check_len(op, "targets", targets.len(), &[n]);
    if n == 0 || v == 0 {
        return Ok(());
    }
    let config = LaunchConfig::new(blocks(n, ROWS_PER_BLOCK), ROWS_BLOCK);
    let mut args = KernelArgs::new()
        .slice(dlogits)
        .slice(logits)
        .slice(targets)
        .f32(scale)
        .i32(int(op, "N", n))
        .i32(int(op, "V", v));
    // SAFETY: the parameters match `cross_entropy_backward` in kernels/loss.cu in order and type,
    // and every slice holds the elements its shape says, which is all the kernel touches.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// losses (N) as [`cross_entropy_forward`] and dlogits (N, V) OVERWRITTEN with loss_scale ·
/// (softmax − onehot) (zero rows for IGNORE targets), one launch; `step` is the device's
/// [`StepScalars`](crate::gpu::kernels::StepScalars), whose `loss_scale` is read there.
pub fn cross_entropy_forward_backward(
    dev: &dyn Device,
    losses: DeviceSlice<f32>,
    dlogits: DeviceSlice<f32>,
    logits: DeviceSlice<f32>,
    targets: DeviceSlice<u32>,
    step: DeviceSlice<u8>,
    n: usize,
    v: usize,
) -> Result<(), GpuError> {
    let op = "cross_entropy_forward_backward";
    check_len(op, "losses", losses.len(), &[n]);
    check_len(op, "dlogits", dlogits.len(), &[n, v]);
    check_len(op, "logits", logits.len(), &[n, v]);
    check_len(op, "targets", targets.len(), &[n]);
    check_len(op, "step", step.len(), &[super::STEP_SCALARS_BYTES]);
    if n == 0 {
        return Ok(());
    }
    let config = LaunchConfig::new(blocks(n, ROWS_PER_BLOCK), ROWS_BLOCK);
    let mut args = KernelArgs::new()
        .slice(losses)
        .slice(dlogits)
        .slice(logits)
        .slice(targets)
        .slice(step)
        .i32(int(op, "N", n))
        .i32(int(op, "V", v));
    // SAFETY: the parameters match `cross_entropy_forward_backward` in kernels/loss.cu in order
    // and type; every slice holds its shape and `step` one StepScalars.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}
