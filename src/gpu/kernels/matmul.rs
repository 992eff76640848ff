//! Linear layers: kernels/matmul.cu.

use super::{blocks, int};
use crate::gpu::device::{Device, DeviceSlice, GpuError, KernelArgs, LaunchConfig};
use crate::ops::check_len;

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

#[allow(unused_variables, clippy::too_many_arguments)]
/// out (N, OC) += inp (N, IC) · weight (OC, IC)ᵀ (no bias). kernels/matmul.cu.
pub fn matmul_forward_accumulate(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    unimplemented!("matmul_forward_accumulate: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// dinp (N, IC) += dout (N, OC) · weight (OC, IC). kernels/matmul.cu.
pub fn matmul_backward_input(
    dev: &dyn Device,
    dinp: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    unimplemented!("matmul_backward_input: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// dweight (OC, IC) += dout (N, OC)ᵀ · inp (N, IC); deterministic (no float atomics).
/// kernels/matmul.cu.
pub fn matmul_backward_weight(
    dev: &dyn Device,
    dweight: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    unimplemented!("matmul_backward_weight: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// dbias (OC) += Σ_n dout (N, OC), in a fixed order (deterministic). kernels/matmul.cu.
pub fn bias_backward(
    dev: &dyn Device,
    dbias: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    n: usize,
    oc: usize,
) -> Result<(), GpuError> {
    unimplemented!("bias_backward: kernel not written yet")
}
