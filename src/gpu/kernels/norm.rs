//! Layernorm, GELU, residual add and gradient accumulation: kernels/norm.cu.

use crate::gpu::device::{Device, DeviceSlice, GpuError};

#[allow(unused_variables, clippy::too_many_arguments)]
/// out (N, C) = layernorm(inp) · weight + bias; mean (N) and rstd (N) saved (as
/// `ops::norm::layernorm_forward`).
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
    unimplemented!("layernorm_forward: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// dinp (N, C), dweight (C), dbias (C) += the gradients of `layernorm_forward`; the column
/// sums over N run in a fixed order (deterministic).
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
    unimplemented!("layernorm_backward: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// out = gelu(inp) (tanh approximation, as `ops::norm::gelu`), elementwise.
pub fn gelu_forward(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    unimplemented!("gelu_forward: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// dinp += gelu\'(inp) · dout, elementwise.
pub fn gelu_backward(
    dev: &dyn Device,
    dinp: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    unimplemented!("gelu_backward: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// out = a + b, elementwise (residual).
pub fn add(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    a: DeviceSlice<f32>,
    b: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    unimplemented!("add: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// dst += src, elementwise.
pub fn accumulate(
    dev: &dyn Device,
    dst: DeviceSlice<f32>,
    src: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    unimplemented!("accumulate: kernel not written yet")
}
