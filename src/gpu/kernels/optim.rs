//! Optimizer and gradient norm: kernels/optim.cu.

use super::{blocks, int};
use crate::gpu::device::{Device, DeviceSlice, GpuError, KernelArgs, LaunchConfig};
use crate::ops::adamw::AdamWConfig;
use crate::ops::check_len;

/// Length of the f64 partial-sum workspace [`sum_squares`] needs.
pub const SUM_SQUARES_PARTIALS: usize = 256;

/// Threads per block of both sum_squares kernels (SUM_SQUARES_BLOCK in kernels/optim.cu).
const SUM_SQUARES_BLOCK: u32 = 256;
/// adamw_update: one thread per element.
const ADAMW_BLOCK: u32 = 256;

// sum_squares_final reads one partial per thread.
const _: () = assert!(SUM_SQUARES_PARTIALS <= SUM_SQUARES_BLOCK as usize);

/// One AdamW step of one tensor, as `ops::adamw::adamw_update` (bias corrections computed on
/// the host in f64 as there).
#[allow(clippy::too_many_arguments)]
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
    let op = "adamw_update";
    let n = param.len();
    check_len(op, "grad", grad.len(), &[n]);
    check_len(op, "m", m.len(), &[n]);
    check_len(op, "v", v.len(), &[n]);
    assert!(step >= 1, "{op}: step counts from 1");
    // exactly the reference's host arithmetic: f64 powers, rounded to f32
    let bc1 = 1.0 - (cfg.beta1 as f64).powi(step as i32);
    let bc2 = 1.0 - (cfg.beta2 as f64).powi(step as i32);
    let (bc1, bc2) = (bc1 as f32, bc2 as f32);
    let wd = if decay { cfg.weight_decay } else { 0.0 };
    if n == 0 {
        return Ok(());
    }
    let config = LaunchConfig::new(blocks(n, ADAMW_BLOCK as usize), ADAMW_BLOCK);
    let mut args = KernelArgs::new()
        .slice(param)
        .slice(grad)
        .slice(m)
        .slice(v)
        .i32(int(op, "n", n))
        .f32(lr)
        .f32(cfg.beta1)
        .f32(cfg.beta2)
        .f32(cfg.eps)
        .f32(wd)
        .f32(bc1)
        .f32(bc2)
        .f32(grad_scale);
    // SAFETY: the parameters match `adamw_update` in kernels/optim.cu in order and type, and the
    // four slices hold n elements each, which is all the kernel touches.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// out (1) = Σ x² in f64, deterministic: fixed per-block partial sums into `partials`
/// ([`SUM_SQUARES_PARTIALS`]), then one block sums them in a fixed order. No float atomics.
pub fn sum_squares(
    dev: &dyn Device,
    out: DeviceSlice<f64>,
    partials: DeviceSlice<f64>,
    x: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    let op = "sum_squares";
    check_len(op, "out", out.len(), &[1]);
    check_len(op, "partials", partials.len(), &[SUM_SQUARES_PARTIALS]);
    let n = int(op, "x length", x.len());
    // One block per 256 elements up to SUM_SQUARES_PARTIALS blocks, then the blocks stride. At
    // least one block, so that an empty x still writes out[0] = 0.
    let count = blocks(x.len(), SUM_SQUARES_BLOCK as usize).clamp(1, SUM_SQUARES_PARTIALS as u32);

    let config = LaunchConfig::new(count, SUM_SQUARES_BLOCK);
    let mut args = KernelArgs::new().slice(partials).slice(x).i32(n);
    // SAFETY: the parameters match `sum_squares_partial` in kernels/optim.cu in order and type;
    // x holds n elements and partials SUM_SQUARES_PARTIALS >= grid, which is all it touches.
    unsafe { dev.launch("sum_squares_partial", &config, &mut args.params())? };

    let config = LaunchConfig::new(1, SUM_SQUARES_BLOCK);
    let mut args =
        KernelArgs::new()
            .slice(out)
            .slice(partials)
            .i32(int(op, "count", count as usize));
    // SAFETY: the parameters match `sum_squares_final` in kernels/optim.cu in order and type; it
    // reads partials[0..count] (count <= SUM_SQUARES_PARTIALS) and writes out[0].
    unsafe { dev.launch("sum_squares_final", &config, &mut args.params()) }
}
