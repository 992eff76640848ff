//! Fused causal attention (flash-style): kernels/attention_fused.cu. No T×T tensor: the forward
//! saves out and the row logsumexp, the backward recomputes the probabilities (three launches).
//! Every tile lives in dynamic shared memory; above 48 KiB the launchers raise the kernel's limit
//! with `Device::set_max_dynamic_shared` (227 KiB at most on compute capability 9.0). At
//! [`Precision::Tf32`] / [`Precision::Bf16`] the kernels of that suffix run q·kᵀ, p·v and the
//! backward's five products on the tensor cores (`fa_mma`); softmax, dropout and the row
//! statistics stay f32.

use super::{blocks, int, DeviceDropout, Precision};
use crate::gpu::device::{
    Device, DeviceExt, DeviceSlice, GpuError, KernelArgs, LaunchConfig, DEFAULT_SHARED_BYTES,
};
use crate::ops::attention::AttnShape;
use crate::ops::check_len;
use crate::philox::DropoutKey;

/// Query / key rows per tile and threads per block (FA_TILE, FA_THREADS in the .cu file).
const TILE: usize = 32;
const THREADS: u32 = 128;

/// Dynamic shared memory of each kernel at head size `hs` and precision `p`, in bytes (the
/// tensor-core forward keeps each row's rescaling factor in shared memory, the tensor-core dq
/// kernel the pair's scores).
pub fn fused_forward_shared_bytes(hs: usize, p: Precision) -> usize {
    let tc = if p == Precision::Fp32 { 0 } else { TILE };
    4 * (4 * TILE * (hs + 1) + TILE * (TILE + 1) + tc)
}
pub fn fused_backward_dkdv_shared_bytes(hs: usize) -> usize {
    4 * (6 * TILE * (hs + 1) + 2 * TILE * (TILE + 1) + 2 * TILE)
}
pub fn fused_backward_dq_shared_bytes(hs: usize, p: Precision) -> usize {
    let tc = if p == Precision::Fp32 {
        0
    } else {
        TILE * (TILE + 1)
    };
    4 * (5 * TILE * (hs + 1) + TILE * (TILE + 1) + 2 * TILE + tc)
}

/// The largest head size the fused kernels take within `optin` bytes of shared memory per block
/// (the dk/dv kernel needs the most, at every precision).
pub fn fused_max_head_size(optin: usize) -> usize {
    (1..=4096)
        .take_while(|&hs| fused_backward_dkdv_shared_bytes(hs) <= optin)
        .last()
        .unwrap_or(0)
}

fn check(op: &str, s: AttnShape, qkv: &[(&str, usize)], rows: &[(&str, usize)]) -> bool {
    for &(arg, len) in qkv {
        check_len(op, arg, len, &[s.b, s.t, s.c()]);
    }
    for &(arg, len) in rows {
        check_len(op, arg, len, &[s.b, s.nh, s.t]);
    }
    int(op, "B·T·C", s.b * s.t * s.c());
    int(op, "B·NH·T", s.b * s.nh * s.t);
    s.b * s.nh * s.t == 0 || s.hs == 0
}

/// A launch of one fused kernel with `bytes` of dynamic shared memory, raising its limit first
/// when that is above 48 KiB.
fn launch(
    dev: &dyn Device,
    kernel: &str,
    s: AttnShape,
    bytes: usize,
    args: &mut KernelArgs,
) -> Result<(), GpuError> {
    let bytes = u32::try_from(bytes).expect("shared bytes fit u32");
    if bytes > DEFAULT_SHARED_BYTES {
        if bytes > dev.max_shared_optin() {
            return Err(GpuError::InvalidLaunch {
                kernel: kernel.to_string(),
                config: LaunchConfig::new(1, THREADS).with_shared_bytes(bytes),
                reason: format!(
                    "head size {} needs {bytes} bytes of shared memory per block, more than the device's {} (the fused kernels take head sizes up to {}; use --attention materialized or more --heads)",
                    s.hs,
                    dev.max_shared_optin(),
                    fused_max_head_size(dev.max_shared_optin() as usize)
                ),
            });
        }
        dev.set_max_dynamic_shared(kernel, bytes)?;
    }
    let config = LaunchConfig::new(
        (
            blocks(s.t, TILE),
            u32::try_from(s.b * s.nh).expect("B·NH fits u32"),
        ),
        THREADS,
    )
    .with_shared_bytes(bytes);
    // SAFETY: each caller builds `args` to match `kernel`'s parameter list in
    // kernels/attention_fused.cu, with slices holding the shapes it checked.
    unsafe { dev.launch(kernel, &config, &mut args.params()) }
}

fn dropout_args(args: KernelArgs, d: Option<DeviceDropout>) -> KernelArgs {
    let d = d.filter(|d| d.key.p > 0.0);
    let key = d.map(|d| d.key).unwrap_or(DropoutKey {
        p: 0.0,
        seed: 0,
        step: 0,
        tensor: 0,
    });
    args.u64(key.seed)
        .opt_slice(d.map(|d| {
            assert_eq!(
                d.step.len(),
                1,
                "dropout: the step is one u64 in device memory"
            );
            d.step
        }))
        .u32(key.tensor)
        .f32(key.p)
        .f32(key.scale())
}

/// out (B, T, C) and lse (B, NH, T) of causal attention with dropout after the softmax, one launch
/// (`ops::attention_fused::fused_attention_forward`); its products at precision `p`.
#[allow(clippy::too_many_arguments)]
pub fn attention_fused_forward(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    lse: DeviceSlice<f32>,
    q: DeviceSlice<f32>,
    k: DeviceSlice<f32>,
    v: DeviceSlice<f32>,
    s: AttnShape,
    dropout: Option<DeviceDropout>,
    p: Precision,
) -> Result<(), GpuError> {
    let op = "attention_fused_forward";
    if check(
        op,
        s,
        &[
            ("out", out.len()),
            ("q", q.len()),
            ("k", k.len()),
            ("v", v.len()),
        ],
        &[("lse", lse.len())],
    ) {
        return Ok(());
    }
    let args = KernelArgs::new()
        .slice(out)
        .slice(lse)
        .slice(q)
        .slice(k)
        .slice(v)
        .i32(int(op, "NH", s.nh))
        .i32(int(op, "T", s.t))
        .i32(int(op, "HS", s.hs))
        .f32(s.scale());
    let mut args = dropout_args(args, dropout);
    launch(
        dev,
        &p.kernel(op),
        s,
        fused_forward_shared_bytes(s.hs, p),
        &mut args,
    )
}

/// dq, dk, dv (B, T, C) += the gradients of [`attention_fused_forward`] from dout, its `out` and
/// `lse`, in three launches: D = rowsum(dout ⊙ out) into `delta` (B, NH, T), dk and dv over key
/// tiles, dq over query tiles (the last two with their products at precision `p`).
#[allow(clippy::too_many_arguments)]
pub fn attention_fused_backward(
    dev: &dyn Device,
    dq: DeviceSlice<f32>,
    dk: DeviceSlice<f32>,
    dv: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    q: DeviceSlice<f32>,
    k: DeviceSlice<f32>,
    v: DeviceSlice<f32>,
    out: DeviceSlice<f32>,
    lse: DeviceSlice<f32>,
    delta: DeviceSlice<f32>,
    s: AttnShape,
    dropout: Option<DeviceDropout>,
    p: Precision,
) -> Result<(), GpuError> {
    let op = "attention_fused_backward";
    if check(
        op,
        s,
        &[
            ("dq", dq.len()),
            ("dk", dk.len()),
            ("dv", dv.len()),
            ("dout", dout.len()),
            ("q", q.len()),
            ("k", k.len()),
            ("v", v.len()),
            ("out", out.len()),
        ],
        &[("lse", lse.len()), ("delta", delta.len())],
    ) {
        return Ok(());
    }
    let (nh, t, hs) = (int(op, "NH", s.nh), int(op, "T", s.t), int(op, "HS", s.hs));
    let rows = s.b * s.nh * s.t;
    let config = LaunchConfig::new(blocks(rows, 4), 128);
    let mut args = KernelArgs::new()
        .slice(delta)
        .slice(dout)
        .slice(out)
        .i32(nh)
        .i32(t)
        .i32(hs)
        .i32(int(op, "R", rows));
    // SAFETY: the parameters match `attention_fused_backward_prep` in order and type; delta holds
    // B·NH·T rows and dout, out (B, T, C), checked above.
    unsafe { dev.launch("attention_fused_backward_prep", &config, &mut args.params())? };
    let args = KernelArgs::new()
        .slice(dk)
        .slice(dv)
        .slice(q)
        .slice(k)
        .slice(v)
        .slice(dout)
        .slice(lse)
        .slice(delta)
        .i32(nh)
        .i32(t)
        .i32(hs)
        .f32(s.scale());
    let mut args = dropout_args(args, dropout);
    launch(
        dev,
        &p.kernel("attention_fused_backward_dkdv"),
        s,
        fused_backward_dkdv_shared_bytes(s.hs),
        &mut args,
    )?;
    let args = KernelArgs::new()
        .slice(dq)
        .slice(q)
        .slice(k)
        .slice(v)
        .slice(dout)
        .slice(lse)
        .slice(delta)
        .i32(nh)
        .i32(t)
        .i32(hs)
        .f32(s.scale());
    let mut args = dropout_args(args, dropout);
    launch(
        dev,
        &p.kernel("attention_fused_backward_dq"),
        s,
        fused_backward_dq_shared_bytes(s.hs, p),
        &mut args,
    )
}

/// The fused path's row check into `result` (2): |Σ_j exp(s_ij − lse_i) − 1| recomputed for every
/// row from q, k and lse (q and k rounded as the forward at precision `p` rounded them): the
/// largest as f32 bits, and the rows over `tol` (NaN counts). Read it with
/// [`super::read_row_sum_check`].
#[allow(clippy::too_many_arguments)]
pub fn attention_lse_check(
    dev: &dyn Device,
    result: DeviceSlice<u32>,
    q: DeviceSlice<f32>,
    k: DeviceSlice<f32>,
    lse: DeviceSlice<f32>,
    s: AttnShape,
    tol: f32,
    p: Precision,
) -> Result<(), GpuError> {
    let op = "attention_lse_check";
    check_len(op, "result", result.len(), &[2]);
    dev.zero(result)?;
    if check(
        op,
        s,
        &[("q", q.len()), ("k", k.len())],
        &[("lse", lse.len())],
    ) {
        return Ok(());
    }
    let rows = s.b * s.nh * s.t;
    let config = LaunchConfig::new(blocks(rows, 4), 128);
    let mut args = KernelArgs::new()
        .slice(result)
        .slice(q)
        .slice(k)
        .slice(lse)
        .i32(int(op, "NH", s.nh))
        .i32(int(op, "T", s.t))
        .i32(int(op, "HS", s.hs))
        .f32(s.scale())
        .i32(int(op, "R", rows))
        .f32(tol)
        .i32(match p {
            Precision::Fp32 => 0, // FA_FP32, FA_TF32, FA_BF16 in the .cu file
            Precision::Tf32 => 1,
            Precision::Bf16 => 2,
        });
    // SAFETY: the parameters match `attention_lse_check` in kernels/attention_fused.cu.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_per_kernel_and_the_largest_head_size() {
        assert_eq!(
            fused_forward_shared_bytes(64, Precision::Fp32),
            4 * (4 * 32 * 65 + 32 * 33)
        );
        // the seed's single head of 256 needs the opt-in, and fits it
        assert!(fused_backward_dkdv_shared_bytes(256) > 48 * 1024);
        assert!(fused_backward_dkdv_shared_bytes(256) <= 227 * 1024);
        let max = fused_max_head_size(227 * 1024);
        assert!(max >= 256 && fused_backward_dkdv_shared_bytes(max + 1) > 227 * 1024);
        for p in Precision::ALL {
            assert!(fused_forward_shared_bytes(max, p) <= 227 * 1024);
            assert!(fused_backward_dq_shared_bytes(max, p) <= 227 * 1024);
        }
    }
}
