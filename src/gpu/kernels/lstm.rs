//! The LSTM's pointwise cell: kernels/lstm.cu. (Its gate GEMMs are kernels/matmul.cu.)

use crate::gpu::device::{Device, DeviceSlice, GpuError};

#[allow(unused_variables, clippy::too_many_arguments)]
/// One timestep of the cell, as `ops::lstm::lstm_cell_forward`: gates (B, 4H) pre-activations
/// in, activations out (in place); c_prev (B, H) (None = zeros); writes c (B, H) and h (B, H).
pub fn lstm_cell_forward(
    dev: &dyn Device,
    gates: DeviceSlice<f32>,
    c_prev: Option<DeviceSlice<f32>>,
    c: DeviceSlice<f32>,
    h: DeviceSlice<f32>,
    b: usize,
    hid: usize,
) -> Result<(), GpuError> {
    unimplemented!("lstm_cell_forward: kernel not written yet")
}

#[allow(unused_variables, clippy::too_many_arguments)]
/// Backward of one timestep, as `ops::lstm::lstm_cell_backward`, with the cell-state gradient
/// passed through strided views so the layer needs no extra buffer:
/// d_c = dc_in + dh·o·(1 − tanh²c); writes dgates (B, 4H) (overwrite) and dc_out = d_c · f.
/// `dc_in` / `dc_out` are (B, H) with rows `dc_stride` elements apart (slices of length
/// (B − 1)·dc_stride + H); `dc_in` None means zero, `dc_out` None means not needed. `dc_in` may
/// alias columns 0..H of `dgates` (dc_stride = 4H): each (n, j) is read before it is written, by
/// the same thread. c_prev None means zeros.
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
    unimplemented!("lstm_cell_backward: kernel not written yet")
}
