//! Token and position embeddings: kernels/embedding.cu.

use super::{blocks, int};
use crate::gpu::device::{Device, DeviceSlice, GpuError, KernelArgs, LaunchConfig};
use crate::ops::check_len;

/// Block of the one-thread-per-element kernels.
const ELEMENT_BLOCK: u32 = 256;
/// embedding_backward_token: four warps, one vocab row each.
const TOKEN_BLOCK: u32 = 128;

/// Panics unless `wpe` holds at least T rows of C (the CPU reference's rule).
fn check_wpe(op: &str, arg: &str, wpe: Option<DeviceSlice<f32>>, t: usize, c: usize) {
    if let Some(p) = wpe {
        assert!(
            p.len() >= t * c && (c == 0 || p.len().is_multiple_of(c)),
            "shape mismatch in {op}: {arg} expected at least [{t}, {c}] (whole rows of {c}), got {} elements",
            p.len()
        );
    }
}

/// out (B, T, C) = wte (V, C)[tokens (B, T)] (+ wpe (>= T, C)[t]). A token >= V never reads
/// out of bounds: its output row is NaN.
#[allow(clippy::too_many_arguments)]
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
    let op = "embedding_forward";
    check_len(op, "out", out.len(), &[b, t, c]);
    check_len(op, "tokens", tokens.len(), &[b, t]);
    check_len(op, "wte", wte.len(), &[v, c]);
    check_wpe(op, "wpe", wpe, t, c);
    let elements = b * t * c;
    if elements == 0 {
        return Ok(());
    }
    let config = LaunchConfig::new(blocks(elements, ELEMENT_BLOCK as usize), ELEMENT_BLOCK);
    let mut args = KernelArgs::new()
        .slice(out)
        .slice(tokens)
        .slice(wte)
        .opt_slice(wpe)
        .i32(int(op, "N = B·T", b * t))
        .i32(int(op, "T", t))
        .i32(int(op, "C", c))
        .i32(int(op, "V", v));
    // SAFETY: the parameters match `embedding_forward` in kernels/embedding.cu in order and type;
    // every slice holds the elements its shape says, tokens >= V are never used as an index, and
    // wpe has at least T rows, which is all the kernel touches.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// dwte (V, C) += Σ over positions holding each token of dout (B, T, C); dwpe (>= T, C) rows
/// 0..T += Σ_b dout. Deterministic: no float atomics, sums in a fixed order. Tokens >= V are
/// skipped.
#[allow(clippy::too_many_arguments)]
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
    let op = "embedding_backward";
    check_len(op, "dwte", dwte.len(), &[v, c]);
    check_wpe(op, "dwpe", dwpe, t, c);
    check_len(op, "dout", dout.len(), &[b, t, c]);
    check_len(op, "tokens", tokens.len(), &[b, t]);
    if b * t * c == 0 {
        return Ok(());
    }
    let (n_, c_) = (int(op, "N = B·T", b * t), int(op, "C", c));

    if v > 0 {
        let config = LaunchConfig::new(
            (blocks(v, TOKEN_BLOCK as usize / 32), blocks(c, 32)),
            TOKEN_BLOCK,
        );
        let mut args = KernelArgs::new()
            .slice(dwte)
            .slice(dout)
            .slice(tokens)
            .i32(n_)
            .i32(c_)
            .i32(int(op, "V", v));
        // SAFETY: the parameters match `embedding_backward_token` in kernels/embedding.cu in
        // order and type, and every slice holds the elements its shape says, which is all the
        // kernel touches (tokens >= V match no row).
        unsafe { dev.launch("embedding_backward_token", &config, &mut args.params())? };
    }

    if let Some(dwpe) = dwpe {
        let config = LaunchConfig::new(blocks(t * c, ELEMENT_BLOCK as usize), ELEMENT_BLOCK);
        let mut args = KernelArgs::new()
            .slice(dwpe)
            .slice(dout)
            .i32(int(op, "B", b))
            .i32(int(op, "T", t))
            .i32(c_);
        // SAFETY: the parameters match `embedding_backward_position` in kernels/embedding.cu in
        // order and type; dout holds (B, T, C) and dwpe at least T rows of C, which is all the
        // kernel touches.
        unsafe { dev.launch("embedding_backward_position", &config, &mut args.params())? };
    }
    Ok(())
}
