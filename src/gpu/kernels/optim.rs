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

/// Floats per chunk of the multi-tensor step kernels: 64 KiB of gradient per block.
pub const STEP_CHUNK: usize = 16384;
/// Threads per block of the multi-tensor kernels.
const MULTI_BLOCK: u32 = 256;

/// The chunk table of the multi-tensor step kernels (kernels/optim.cu), on the device: chunk c
/// covers `len[c]` floats at `offset[c]` of every parameter-shaped region, of tensor
/// `tensor[c]`, with weight decay when `decay[c]` is 1.
#[derive(Clone, Copy, Debug)]
pub struct ChunkTable {
    pub offset: DeviceSlice<u64>,
    pub len: DeviceSlice<u32>,
    pub tensor: DeviceSlice<u32>,
    pub decay: DeviceSlice<u32>,
    pub chunks: usize,
    pub tensors: usize,
}

/// The host side of a chunk table: tensors given as (offset, len, decay) in region order, cut
/// into chunks of at most [`STEP_CHUNK`] floats that never straddle two tensors.
pub fn chunk_table(tensors: &[(usize, usize, bool)]) -> (Vec<u64>, Vec<u32>, Vec<u32>, Vec<u32>) {
    let (mut off, mut len, mut ten, mut dec) = (vec![], vec![], vec![], vec![]);
    for (t, &(o, n, decay)) in tensors.iter().enumerate() {
        let mut s = 0;
        while s < n {
            let l = STEP_CHUNK.min(n - s);
            off.push((o + s) as u64);
            len.push(l as u32);
            ten.push(t as u32);
            dec.push(decay as u32);
            s += l;
        }
    }
    (off, len, ten, dec)
}

/// Closes a training step on the device: the gradient norm over every parameter (chunk partial
/// sums, then per-tensor and global sums in a fixed order; two launches), the loss sum, the
/// clip factor and AdamW's bias corrections into `state`, and the step's record into
/// `ring[step % ring.len()]`. `partials` holds one f64 per chunk, `tensor_sq` one per tensor.
#[allow(clippy::too_many_arguments)]
pub fn step_finalize(
    dev: &dyn Device,
    state: DeviceSlice<u8>,
    ring: DeviceSlice<u8>,
    tensor_sq: DeviceSlice<f64>,
    partials: DeviceSlice<f64>,
    grads: DeviceSlice<f32>,
    table: &ChunkTable,
    losses: DeviceSlice<f32>,
    targets: DeviceSlice<u32>,
    step: DeviceSlice<u8>,
    clip: f32,
    cfg: &AdamWConfig,
) -> Result<(), GpuError> {
    let op = "step_finalize";
    check_len(
        op,
        "state",
        state.len(),
        &[std::mem::size_of::<super::StepState>()],
    );
    let rec = std::mem::size_of::<super::StepRecord>();
    assert!(
        !ring.is_empty() && ring.len().is_multiple_of(rec),
        "{op}: the ring holds whole records"
    );
    check_len(op, "tensor_sq", tensor_sq.len(), &[table.tensors]);
    check_len(op, "partials", partials.len(), &[table.chunks]);
    check_len(op, "targets", targets.len(), &[losses.len()]);
    check_len(op, "step", step.len(), &[super::STEP_SCALARS_BYTES]);
    let chunks = int(op, "chunks", table.chunks);
    if table.chunks > 0 {
        let config = LaunchConfig::new(table.chunks as u32, SUM_SQUARES_BLOCK);
        let mut args = KernelArgs::new()
            .slice(partials)
            .slice(grads)
            .slice(table.offset)
            .slice(table.len)
            .i32(chunks);
        // SAFETY: the parameters match `grad_norm_partials` in kernels/optim.cu in order and
        // type; the chunk table addresses `grads` within its length (built by the caller from
        // the same layout) and partials holds one f64 per chunk.
        unsafe { dev.launch("grad_norm_partials", &config, &mut args.params())? };
    }
    let config = LaunchConfig::new(1, SUM_SQUARES_BLOCK);
    let mut args = KernelArgs::new()
        .slice(state)
        .slice(ring)
        .slice(tensor_sq)
        .slice(partials)
        .slice(table.tensor)
        .i32(chunks)
        .i32(int(op, "tensors", table.tensors))
        .slice(losses)
        .slice(targets)
        .i32(int(op, "N", losses.len()))
        .slice(step)
        .f32(clip)
        .f32(cfg.beta1)
        .f32(cfg.beta2)
        .i32(int(op, "ring_len", ring.len() / rec));
    // SAFETY: the parameters match `step_finalize` in kernels/optim.cu in order and type; every
    // slice holds what its comment there says (checked above).
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// AdamW over every parameter in one launch (the chunk table's), reading the clip factor, the
/// bias corrections and whether to update from `state` (written by [`step_finalize`]) and the
/// learning rate from `step`.
#[allow(clippy::too_many_arguments)]
pub fn adamw_multi(
    dev: &dyn Device,
    params: DeviceSlice<f32>,
    grads: DeviceSlice<f32>,
    m: DeviceSlice<f32>,
    v: DeviceSlice<f32>,
    table: &ChunkTable,
    state: DeviceSlice<u8>,
    step: DeviceSlice<u8>,
    cfg: &AdamWConfig,
) -> Result<(), GpuError> {
    let op = "adamw_multi";
    let n = params.len();
    check_len(op, "grads", grads.len(), &[n]);
    check_len(op, "m", m.len(), &[n]);
    check_len(op, "v", v.len(), &[n]);
    check_len(
        op,
        "state",
        state.len(),
        &[std::mem::size_of::<super::StepState>()],
    );
    check_len(op, "step", step.len(), &[super::STEP_SCALARS_BYTES]);
    if table.chunks == 0 {
        return Ok(());
    }
    let config = LaunchConfig::new(table.chunks as u32, MULTI_BLOCK);
    let mut args = KernelArgs::new()
        .slice(params)
        .slice(grads)
        .slice(m)
        .slice(v)
        .slice(table.offset)
        .slice(table.len)
        .slice(table.decay)
        .i32(int(op, "chunks", table.chunks))
        .slice(state)
        .slice(step)
        .f32(cfg.beta1)
        .f32(cfg.beta2)
        .f32(cfg.eps)
        .f32(cfg.weight_decay);
    // SAFETY: the parameters match `adamw_multi` in kernels/optim.cu in order and type; the
    // chunk table addresses the four regions within `n` floats (the caller built it from them).
    unsafe { dev.launch(op, &config, &mut args.params()) }
}
