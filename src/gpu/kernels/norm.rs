//! Layernorm, GELU, residual add and gradient accumulation: kernels/norm.cu.

use super::{blocks, int};
use crate::gpu::device::{Device, DeviceSlice, GpuError, KernelArgs, LaunchConfig};
use crate::ops::check_len;

/// Block of the warp-per-row kernels: four rows per block.
const ROWS_BLOCK: u32 = 128;
/// Rows per block of the warp-per-row kernels.
const ROWS_PER_BLOCK: usize = ROWS_BLOCK as usize / 32;
/// Block of the elementwise kernels.
const ELEMENTWISE_BLOCK: u32 = 256;
/// layernorm_backward_params: columns per block (x) and row lanes (y); LN_PARAMS_ROW_LANES in
/// kernels/norm.cu.
const LN_PARAMS_BLOCK: (u32, u32) = (32, 32);

/// out (N, C) = layernorm(inp) · weight + bias; mean (N) and rstd (N) saved (as
/// `ops::norm::layernorm_forward`).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    mean: DeviceSlice<f32>,
    rstd: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    bias: DeviceSlice<f32>,
    n: usize,
    c: usize,
) -> Result<(), GpuError> {
    let op = "layernorm_forward";
    check_len(op, "out", out.len(), &[n, c]);
    check_len(op, "mean", mean.len(), &[n]);
    check_len(op, "rstd", rstd.len(), &[n]);
    check_len(op, "inp", inp.len(), &[n, c]);
    check_len(op, "weight", weight.len(), &[c]);
    check_len(op, "bias", bias.len(), &[c]);
    if n == 0 {
        return Ok(());
    }
    let config = LaunchConfig::new(blocks(n, ROWS_PER_BLOCK), ROWS_BLOCK);
    let mut args = KernelArgs::new()
        .slice(out)
        .slice(mean)
        .slice(rstd)
        .slice(inp)
        .slice(weight)
        .slice(bias)
        .i32(int(op, "N", n))
        .i32(int(op, "C", c));
    // SAFETY: the parameters match `layernorm_forward` in kernels/norm.cu in order and type, and
    // every slice holds the elements its shape says, which is all the kernel touches.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// dinp (N, C), dweight (C), dbias (C) += the gradients of `layernorm_forward`; the column
/// sums over N run in a fixed order (deterministic).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dev: &dyn Device,
    dinp: DeviceSlice<f32>,
    dweight: DeviceSlice<f32>,
    dbias: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    mean: DeviceSlice<f32>,
    rstd: DeviceSlice<f32>,
    n: usize,
    c: usize,
) -> Result<(), GpuError> {
    let op = "layernorm_backward";
    check_len(op, "dinp", dinp.len(), &[n, c]);
    check_len(op, "dweight", dweight.len(), &[c]);
    check_len(op, "dbias", dbias.len(), &[c]);
    check_len(op, "dout", dout.len(), &[n, c]);
    check_len(op, "inp", inp.len(), &[n, c]);
    check_len(op, "weight", weight.len(), &[c]);
    check_len(op, "mean", mean.len(), &[n]);
    check_len(op, "rstd", rstd.len(), &[n]);
    if n == 0 || c == 0 {
        return Ok(());
    }
    let (n_, c_) = (int(op, "N", n), int(op, "C", c));

    let config = LaunchConfig::new(blocks(n, ROWS_PER_BLOCK), ROWS_BLOCK);
    let mut args = KernelArgs::new()
        .slice(dinp)
        .slice(dout)
        .slice(inp)
        .slice(weight)
        .slice(mean)
        .slice(rstd)
        .i32(n_)
        .i32(c_);
    // SAFETY: the parameters match `layernorm_backward_input` in kernels/norm.cu in order and
    // type, and every slice holds the elements its shape says, which is all the kernel touches.
    unsafe { dev.launch("layernorm_backward_input", &config, &mut args.params())? };

    let config = LaunchConfig::new(blocks(c, LN_PARAMS_BLOCK.0 as usize), LN_PARAMS_BLOCK);
    let mut args = KernelArgs::new()
        .slice(dweight)
        .slice(dbias)
        .slice(dout)
        .slice(inp)
        .slice(mean)
        .slice(rstd)
        .i32(n_)
        .i32(c_);
    // SAFETY: the parameters match `layernorm_backward_params` in kernels/norm.cu in order and
    // type, and every slice holds the elements its shape says, which is all the kernel touches.
    unsafe { dev.launch("layernorm_backward_params", &config, &mut args.params()) }
}

/// Launches one of the elementwise kernels of kernels/norm.cu: pointer parameters `slices` in
/// order, then the length as an `int`, one thread per element.
fn elementwise(
    dev: &dyn Device,
    kernel: &str,
    slices: &[DeviceSlice<f32>],
    n: usize,
) -> Result<(), GpuError> {
    if n == 0 {
        return Ok(());
    }
    let config = LaunchConfig::new(blocks(n, ELEMENTWISE_BLOCK as usize), ELEMENTWISE_BLOCK);
    let mut args = slices
        .iter()
        .fold(KernelArgs::new(), |a, &s| a.slice(s))
        .i32(int(kernel, "n", n));
    // SAFETY: every elementwise kernel in kernels/norm.cu takes `slices.len()` float pointers and
    // then `int n`, and touches elements 0..n of each; the callers check that each slice holds n.
    unsafe { dev.launch(kernel, &config, &mut args.params()) }
}

/// out = gelu(inp) (tanh approximation, as `ops::norm::gelu`), elementwise.
pub fn gelu_forward(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    let op = "gelu_forward";
    check_len(op, "out", out.len(), &[inp.len()]);
    elementwise(dev, op, &[out, inp], inp.len())
}

/// dinp += gelu\'(inp) · dout, elementwise.
pub fn gelu_backward(
    dev: &dyn Device,
    dinp: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    let op = "gelu_backward";
    check_len(op, "dinp", dinp.len(), &[inp.len()]);
    check_len(op, "dout", dout.len(), &[inp.len()]);
    elementwise(dev, op, &[dinp, inp, dout], inp.len())
}

/// out = a + b, elementwise (residual).
pub fn add(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    a: DeviceSlice<f32>,
    b: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    let op = "add_forward";
    check_len(op, "a", a.len(), &[out.len()]);
    check_len(op, "b", b.len(), &[out.len()]);
    elementwise(dev, op, &[out, a, b], out.len())
}

/// dst += src, elementwise.
pub fn accumulate(
    dev: &dyn Device,
    dst: DeviceSlice<f32>,
    src: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    let op = "accumulate";
    check_len(op, "src", src.len(), &[dst.len()]);
    elementwise(dev, op, &[dst, src], dst.len())
}
