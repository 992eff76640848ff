//! Optimizer and gradient norm: kernels/optim.cu.

use crate::gpu::device::{Device, DeviceSlice, GpuError};
use crate::ops::adamw::AdamWConfig;

/// Length of the f64 partial-sum workspace [`sum_squares`] needs.
pub const SUM_SQUARES_PARTIALS: usize = 256;

#[allow(unused_variables, clippy::too_many_arguments)]
/// One AdamW step of one tensor, as `ops::adamw::adamw_update` (bias corrections computed on
/// the host in f64 as there).
pub fn adamw_update(
    dev: &dyn Device,
    param: DeviceSlice<f32>,
    grad: DeviceSlice<f32>,
    m: DeviceSlice<f32>,
    v: DeviceSlice<f32>,
    cfg: &AdamWConfig,
    lr: f32,
    step: u64,
    grad_scale: f32,
    decay: bool,
) -> Result<(), GpuError> {
    unimplemented!("adamw_update: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// out (1) = Σ x² in f64, deterministic: fixed per-block partial sums into `partials`
/// ([`SUM_SQUARES_PARTIALS`]), then one block sums them in a fixed order. No float atomics.
pub fn sum_squares(
    dev: &dyn Device,
    out: DeviceSlice<f64>,
    partials: DeviceSlice<f64>,
    x: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    unimplemented!("sum_squares: kernel not written yet")
}
