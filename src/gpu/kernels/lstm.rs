//! The LSTM's pointwise cell: kernels/lstm.cu. (Its gate GEMMs are kernels/matmul.cu.)

use super::{blocks, int};
use crate::gpu::device::{Device, DeviceSlice, GpuError, KernelArgs, LaunchConfig};
use crate::ops::check_len;

/// Threads per block of both cell kernels: one thread per (n, j).
const THREADS: usize = 256;

/// Panics unless `len` is that of a (B, H) view with rows `stride` elements apart.
#[track_caller]
fn check_strided(op: &str, arg: &str, len: usize, b: usize, hid: usize, stride: usize) {
    let want = if b == 0 { 0 } else { (b - 1) * stride + hid };
    if stride < hid || len != want {
        panic!(
            "shape mismatch in {op}: {arg} expected shape [{b}, {hid}] with row stride {stride} \
             ({want} elements, stride >= {hid}), got {len} elements"
        );
    }
}

/// One timestep of the cell, as `ops::lstm::lstm_cell_forward`: gates (B, 4H) pre-activations
/// in, activations out (in place); c_prev (B, H) (None = zeros); writes c (B, H) and h (B, H).
#[allow(clippy::too_many_arguments)]
pub fn lstm_cell_forward(
    dev: &dyn Device,
    gates: DeviceSlice<f32>,
    c_prev: Option<DeviceSlice<f32>>,
    c: DeviceSlice<f32>,
    h: DeviceSlice<f32>,
    b: usize,
    hid: usize,
) -> Result<(), GpuError> {
    let op = "lstm_cell_forward";
    check_len(op, "gates", gates.len(), &[b, 4 * hid]);
    check_len(op, "c", c.len(), &[b, hid]);
    check_len(op, "h", h.len(), &[b, hid]);
    if let Some(cp) = c_prev {
        check_len(op, "c_prev", cp.len(), &[b, hid]);
    }
    if b == 0 || hid == 0 {
        return Ok(());
    }
    int(op, "B·4H", b * 4 * hid);
    let config = LaunchConfig::new(blocks(b * hid, THREADS), THREADS as u32);
    let mut args = KernelArgs::new()
        .slice(gates)
        .opt_slice(c_prev)
        .slice(c)
        .slice(h)
        .i32(int(op, "B", b))
        .i32(int(op, "H", hid));
    // SAFETY: the parameters match `lstm_cell_forward` in kernels/lstm.cu in order and type, and
    // every slice holds the elements its shape says, which is all the kernel touches.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// Backward of one timestep, as `ops::lstm::lstm_cell_backward`, with the cell-state gradient
/// passed through strided views so the layer needs no extra buffer:
/// d_c = dc_in + dh·o·(1 − tanh²c); writes dgates (B, 4H) (overwrite) and dc_out = d_c · f.
/// `dc_in` / `dc_out` are (B, H) with rows `dc_stride` elements apart (slices of length
/// (B − 1)·dc_stride + H); `dc_in` None means zero, `dc_out` None means not needed. `dc_in` may
/// alias columns 0..H of `dgates` (dc_stride = 4H): each (n, j) is read before it is written, by
/// the same thread. c_prev None means zeros.
///
/// `dc_out` must not overlap `dgates` (it is written after it); it may be `dc_in` itself when
/// `dc_in` does not alias `dgates` (an in-place update, as the CPU reference's `dc`).
#[allow(clippy::too_many_arguments)]
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
    let op = "lstm_cell_backward";
    check_len(op, "dgates", dgates.len(), &[b, 4 * hid]);
    if let Some(d) = dc_out {
        check_strided(op, "dc_out", d.len(), b, hid, dc_stride);
    }
    if let Some(d) = dc_in {
        check_strided(op, "dc_in", d.len(), b, hid, dc_stride);
    }
    check_len(op, "dh", dh.len(), &[b, hid]);
    check_len(op, "gates", gates.len(), &[b, 4 * hid]);
    check_len(op, "c", c.len(), &[b, hid]);
    if let Some(cp) = c_prev {
        check_len(op, "c_prev", cp.len(), &[b, hid]);
    }
    if b == 0 || hid == 0 {
        return Ok(());
    }
    int(op, "B·4H", b * 4 * hid);
    int(op, "B·dc_stride", b * dc_stride);
    let config = LaunchConfig::new(blocks(b * hid, THREADS), THREADS as u32);
    let mut args = KernelArgs::new()
        .slice(dgates)
        .opt_slice(dc_out)
        .opt_slice(dc_in)
        .i32(int(op, "dc_stride", dc_stride))
        .slice(dh)
        .slice(gates)
        .slice(c)
        .opt_slice(c_prev)
        .i32(int(op, "B", b))
        .i32(int(op, "H", hid));
    // SAFETY: the parameters match `lstm_cell_backward` in kernels/lstm.cu in order and type;
    // every slice holds the elements its (strided) shape says, which is all the kernel touches.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}
