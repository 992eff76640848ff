//! Token and position embeddings: kernels/embedding.cu.

use crate::gpu::device::{Device, DeviceSlice, GpuError};

#[allow(unused_variables, clippy::too_many_arguments)]
/// out (B, T, C) = wte (V, C)[tokens (B, T)] (+ wpe (>= T, C)[t]). A token >= V never reads
/// out of bounds: its output row is NaN.
pub fn embedding_forward(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    tokens: DeviceSlice<u32>,
    wte: DeviceSlice<f32>,
    wpe: Option<DeviceSlice<f32>>,
    b: usize,
    t: usize,
    c: usize,
    v: usize,
) -> Result<(), GpuError> {
    unimplemented!("embedding_forward: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// dwte (V, C) += Σ over positions holding each token of dout (B, T, C); dwpe (>= T, C) rows
/// 0..T += Σ_b dout. Deterministic: no float atomics, sums in a fixed order. Tokens >= V are
/// skipped.
pub fn embedding_backward(
    dev: &dyn Device,
    dwte: DeviceSlice<f32>,
    dwpe: Option<DeviceSlice<f32>>,
    dout: DeviceSlice<f32>,
    tokens: DeviceSlice<u32>,
    b: usize,
    t: usize,
    c: usize,
    v: usize,
) -> Result<(), GpuError> {
    unimplemented!("embedding_backward: kernel not written yet")
}
