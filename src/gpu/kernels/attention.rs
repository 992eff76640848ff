//! Causal scaled-dot-product attention: kernels/attention.cu (products, fused softmax + dropout),
//! kernels/softmax.cu (plain causal softmax), kernels/check.cu (row-sum check).

use super::{blocks, int};
use crate::gpu::device::{Device, DeviceExt, DeviceSlice, GpuError, KernelArgs, LaunchConfig};
use crate::ops::attention::AttnShape;
use crate::ops::check_len;
use crate::philox::DropoutKey;

/// probs (R, T, T) = causal softmax of scores (R, T, T), row by row. kernels/softmax.cu.
pub fn causal_softmax_forward(
    dev: &dyn Device,
    probs: DeviceSlice<f32>,
    scores: DeviceSlice<f32>,
    r: usize,
    t: usize,
) -> Result<(), GpuError> {
    let op = "causal_softmax_forward";
    check_len(op, "probs", probs.len(), &[r, t, t]);
    check_len(op, "scores", scores.len(), &[r, t, t]);
    if r * t == 0 {
        return Ok(());
    }
    const WARPS_PER_BLOCK: usize = 4;
    let config = LaunchConfig::new(
        blocks(r * t, WARPS_PER_BLOCK),
        (32 * WARPS_PER_BLOCK) as u32,
    );
    int(op, "R·T", r * t); // the kernel's row index
    let mut args = KernelArgs::new()
        .slice(probs)
        .slice(scores)
        .i32(int(op, "R", r))
        .i32(int(op, "T", t));
    // SAFETY: as in matmul_forward, for kernels/softmax.cu.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// Row-sum check of probs (R, T, T): writes into `result` (2) the largest |Σ_j p − 1| over all
/// rows as f32 bits, then the number of rows whose deviation exceeds `tol` or is NaN; read them
/// with [`read_row_sum_check`]. kernels/check.cu.
pub fn attention_row_sum_check(
    dev: &dyn Device,
    result: DeviceSlice<u32>,
    probs: DeviceSlice<f32>,
    r: usize,
    t: usize,
    tol: f32,
) -> Result<(), GpuError> {
    let op = "attention_row_sum_check";
    check_len(op, "result", result.len(), &[2]);
    check_len(op, "probs", probs.len(), &[r, t, t]);
    dev.zero(result)?;
    if r * t == 0 {
        return Ok(());
    }
    const WARPS_PER_BLOCK: usize = 4;
    let config = LaunchConfig::new(
        blocks(r * t, WARPS_PER_BLOCK),
        (32 * WARPS_PER_BLOCK) as u32,
    );
    int(op, "R·T", r * t); // the kernel's row index
    let mut args = KernelArgs::new()
        .slice(result.slice(0..1))
        .slice(result.slice(1..2))
        .slice(probs)
        .i32(int(op, "R", r))
        .i32(int(op, "T", t))
        .f32(tol);
    // SAFETY: as in matmul_forward, for kernels/check.cu.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// (largest row-sum deviation, rows over tolerance) from [`attention_row_sum_check`]'s result.
pub fn read_row_sum_check(
    dev: &dyn Device,
    result: DeviceSlice<u32>,
) -> Result<(f32, u32), GpuError> {
    let v = dev.download(result)?;
    Ok((f32::from_bits(v[0]), v[1]))
}

/// Block of the tiled product kernels: (32, 8), each thread four rows of a 32×32 output tile.
const TILE: usize = 32;
const TILE_BLOCK: (u32, u32) = (32, 8);
/// Rows (warps) per block of the one-warp-per-row kernels.
const WARPS_PER_BLOCK: usize = 4;

/// Checks q/k/v-like (B, T, C) and scores-like (B, NH, T, T) arguments; true when there is no
/// work (HS = 0 still has work: zero dweights, NaN scores as on the CPU).
fn check_attn(op: &str, s: AttnShape, btc: &[(&str, usize)], tt: &[(&str, usize)]) -> bool {
    for &(arg, len) in btc {
        check_len(op, arg, len, &[s.b, s.t, s.c()]);
    }
    for &(arg, len) in tt {
        check_len(op, arg, len, &[s.b, s.nh, s.t, s.t]);
    }
    int(op, "B·T·C", s.b * s.t * s.c());
    int(op, "T·T", s.t * s.t);
    s.b * s.nh * s.t == 0
}

/// Panics when two device slices share memory the op needs apart.
fn assert_disjoint<T>(op: &str, a: (&str, DeviceSlice<T>), b: (&str, DeviceSlice<T>)) {
    let (a0, a1) = (a.1.ptr(), a.1.ptr() + a.1.bytes() as u64);
    let (b0, b1) = (b.1.ptr(), b.1.ptr() + b.1.bytes() as u64);
    assert!(
        a1 <= b0 || b1 <= a0 || a.1.is_empty() || b.1.is_empty(),
        "{op}: {} and {} must not overlap",
        a.0,
        b.0
    );
}

/// Dropout as the kernels take it: the key's seed, tensor and p as arguments, and the step from
/// device memory (`step`: one u64, e.g. the `step` field of the backend's
/// [`StepScalars`](super::StepScalars)), so that a step captured into a CUDA graph draws the
/// masks of the step it replays, not of the step it was captured at. `key.step` is not read.
#[derive(Clone, Copy, Debug)]
pub struct DeviceDropout {
    pub key: DropoutKey,
    pub step: DeviceSlice<u64>,
}

impl DeviceDropout {
    /// `key` with its step in a new device allocation of one u64 (for tests and one-off
    /// launches; the caller frees `step` when done).
    pub fn on_device(dev: &dyn crate::gpu::Device, key: DropoutKey) -> Result<Self, GpuError> {
        use crate::gpu::DeviceExt;
        Ok(DeviceDropout {
            key,
            step: dev.upload(&[key.step])?,
        })
    }
}

/// The dropout parameters as the kernels take them: seed, step pointer, tensor, p, and the kept
/// scale computed here by `DropoutKey::scale` so the device multiplies by the very same f32.
fn dropout_args(args: KernelArgs, d: Option<DeviceDropout>) -> KernelArgs {
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

/// Grid of the one-warp-per-row kernels over R·T rows.
fn row_config(op: &str, r: usize, t: usize) -> LaunchConfig {
    int(op, "R·T", r * t); // the kernel's row index
    int(op, "R·T·T", r * t * t); // the kernels' in-row entry offsets stay below this
    LaunchConfig::new(
        blocks(r * t, WARPS_PER_BLOCK),
        (32 * WARPS_PER_BLOCK) as u32,
    )
}

/// scores (B, NH, T, T) = q · kᵀ / sqrt(HS) per head, written for j <= i only (entries above
/// the diagonal are left as they are: the causal softmax overwrites them). q, k (B, T, C).
/// kernels/attention.cu.
pub fn attention_scores_forward(
    dev: &dyn Device,
    scores: DeviceSlice<f32>,
    q: DeviceSlice<f32>,
    k: DeviceSlice<f32>,
    s: AttnShape,
) -> Result<(), GpuError> {
    let op = "attention_scores_forward";
    if check_attn(
        op,
        s,
        &[("q", q.len()), ("k", k.len())],
        &[("scores", scores.len())],
    ) {
        return Ok(());
    }
    let nt = s.t.div_ceil(TILE);
    let config = LaunchConfig::new(
        (blocks(nt * (nt + 1) / 2, 1), 1, blocks(s.b * s.nh, 1)),
        TILE_BLOCK,
    );
    let mut args = KernelArgs::new()
        .slice(scores)
        .slice(q)
        .slice(k)
        .i32(int(op, "NH", s.nh))
        .i32(int(op, "T", s.t))
        .i32(int(op, "HS", s.hs))
        .f32(s.scale());
    // SAFETY: the parameters match `attention_scores_forward` in kernels/attention.cu in order
    // and type, and every slice holds the elements its shape says, which is all the kernel touches.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// The fused causal mask + softmax + dropout of one pass per row: probs (R, T, T) = causal
/// softmax of scores (R, T, T) (probs may be the same buffer as scores: in place); with
/// `dropout`, also weights (R, T, T) = probs ⊙ mask (Philox, element index = (r·T + i)·T + j,
/// kept entries scaled by 1/(1 − p), zero above the diagonal). `weights` is required when
/// `dropout` is Some with p > 0 and ignored otherwise. kernels/attention.cu.
pub fn causal_softmax_dropout_forward(
    dev: &dyn Device,
    probs: DeviceSlice<f32>,
    weights: Option<DeviceSlice<f32>>,
    scores: DeviceSlice<f32>,
    r: usize,
    t: usize,
    dropout: Option<DeviceDropout>,
) -> Result<(), GpuError> {
    let op = "causal_softmax_dropout_forward";
    check_len(op, "probs", probs.len(), &[r, t, t]);
    check_len(op, "scores", scores.len(), &[r, t, t]);
    let dropout = dropout.filter(|d| d.key.p > 0.0);
    let weights = match dropout {
        Some(_) => {
            let w = weights.unwrap_or_else(|| {
                panic!("{op}: dropout with p > 0 needs a weights buffer, got None")
            });
            check_len(op, "weights", w.len(), &[r, t, t]);
            assert_disjoint(op, ("weights", w), ("probs", probs));
            assert_disjoint(op, ("weights", w), ("scores", scores));
            Some(w)
        }
        None => None,
    };
    if r * t == 0 {
        return Ok(());
    }
    let config = row_config(op, r, t);
    let args = KernelArgs::new()
        .slice(probs)
        .opt_slice(weights)
        .slice(scores)
        .i32(int(op, "R", r))
        .i32(int(op, "T", t));
    let mut args = dropout_args(args, dropout);
    // SAFETY: as in attention_scores_forward, for `causal_softmax_dropout_forward`; a null
    // weights pointer means no dropout to the kernel.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// weights (R, T, T) = probs ⊙ mask, the same mask as `causal_softmax_dropout_forward`
/// (regenerated for the backward pass; zero above the diagonal). kernels/attention.cu.
pub fn attention_dropout_weights(
    dev: &dyn Device,
    weights: DeviceSlice<f32>,
    probs: DeviceSlice<f32>,
    r: usize,
    t: usize,
    dropout: DeviceDropout,
) -> Result<(), GpuError> {
    let op = "attention_dropout_weights";
    check_len(op, "weights", weights.len(), &[r, t, t]);
    check_len(op, "probs", probs.len(), &[r, t, t]);
    if r * t == 0 {
        return Ok(());
    }
    const THREADS: usize = 256;
    let config = LaunchConfig::new(blocks((r * t * t).div_ceil(4), THREADS), THREADS as u32);
    let args = KernelArgs::new()
        .slice(weights)
        .slice(probs)
        .i32(int(op, "R", r))
        .i32(int(op, "T", t));
    let mut args = dropout_args(args, Some(dropout));
    // SAFETY: as in attention_scores_forward, for `attention_dropout_weights` (one element per
    // thread and group, read before written, so weights == probs would also be safe).
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// out (B, T, C) = weights (B, NH, T, T) · v (B, T, C) per head (weights zero above the
/// diagonal). kernels/attention.cu.
pub fn attention_values_forward(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    weights: DeviceSlice<f32>,
    v: DeviceSlice<f32>,
    s: AttnShape,
) -> Result<(), GpuError> {
    let op = "attention_values_forward";
    if check_attn(
        op,
        s,
        &[("out", out.len()), ("v", v.len())],
        &[("weights", weights.len())],
    ) || s.hs == 0
    {
        return Ok(());
    }
    let mut args = KernelArgs::new()
        .slice(out)
        .slice(weights)
        .slice(v)
        .i32(int(op, "NH", s.nh))
        .i32(int(op, "T", s.t))
        .i32(int(op, "HS", s.hs));
    // SAFETY: as in attention_scores_forward, for `attention_values_forward`.
    unsafe { dev.launch(op, &rows_config(s), &mut args.params()) }
}

/// Grid of the products whose output is (B, T, C): (HS tiles, T tiles, heads).
fn rows_config(s: AttnShape) -> LaunchConfig {
    LaunchConfig::new(
        (blocks(s.hs, TILE), blocks(s.t, TILE), blocks(s.b * s.nh, 1)),
        TILE_BLOCK,
    )
}

/// dv (B, T, C) += weightsᵀ · dout per head; dweights (B, NH, T, T) = dout · vᵀ per head for
/// j <= i and 0 above the diagonal (overwritten, not accumulated). dweights may be the very
/// buffer of weights (the backward pass with dropout keeps both in one scratch): dv is computed
/// by an earlier launch on the same stream, and the dweights kernel does not read weights; a
/// partial overlap is refused. kernels/attention.cu.
pub fn attention_values_backward(
    dev: &dyn Device,
    dv: DeviceSlice<f32>,
    dweights: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    weights: DeviceSlice<f32>,
    v: DeviceSlice<f32>,
    s: AttnShape,
) -> Result<(), GpuError> {
    let op = "attention_values_backward";
    if check_attn(
        op,
        s,
        &[("dv", dv.len()), ("dout", dout.len()), ("v", v.len())],
        &[("dweights", dweights.len()), ("weights", weights.len())],
    ) {
        return Ok(());
    }
    if dweights != weights {
        assert_disjoint(op, ("dweights", dweights), ("weights", weights));
    }
    let (nh, t, hs) = (int(op, "NH", s.nh), int(op, "T", s.t), int(op, "HS", s.hs));
    // dv first: it reads weights, which the dweights kernel may overwrite.
    let mut args = KernelArgs::new()
        .slice(dv)
        .slice(weights)
        .slice(dout)
        .i32(nh)
        .i32(t)
        .i32(hs);
    if s.hs > 0 {
        // SAFETY: as in attention_scores_forward, for `attention_values_backward_dv`.
        unsafe {
            dev.launch(
                "attention_values_backward_dv",
                &rows_config(s),
                &mut args.params(),
            )?
        };
    }
    let nt = blocks(s.t, TILE);
    let config = LaunchConfig::new((nt, nt, blocks(s.b * s.nh, 1)), TILE_BLOCK);
    let mut args = KernelArgs::new()
        .slice(dweights)
        .slice(dout)
        .slice(v)
        .i32(nh)
        .i32(t)
        .i32(hs);
    // SAFETY: as in attention_scores_forward, for `attention_values_backward_dweights`.
    unsafe {
        dev.launch(
            "attention_values_backward_dweights",
            &config,
            &mut args.params(),
        )
    }
}

/// Backward of `causal_softmax_dropout_forward`, one pass per row: dP = dweights ⊙ mask (or
/// dweights without dropout), dscores (R, T, T) = P ⊙ (dP − Σ_j P·dP) (overwritten; zero above
/// the diagonal). dscores may be the same buffer as dweights (in place). kernels/attention.cu.
pub fn causal_softmax_dropout_backward(
    dev: &dyn Device,
    dscores: DeviceSlice<f32>,
    dweights: DeviceSlice<f32>,
    probs: DeviceSlice<f32>,
    r: usize,
    t: usize,
    dropout: Option<DeviceDropout>,
) -> Result<(), GpuError> {
    let op = "causal_softmax_dropout_backward";
    check_len(op, "dscores", dscores.len(), &[r, t, t]);
    check_len(op, "dweights", dweights.len(), &[r, t, t]);
    check_len(op, "probs", probs.len(), &[r, t, t]);
    assert_disjoint(op, ("dscores", dscores), ("probs", probs));
    if r * t == 0 {
        return Ok(());
    }
    let dropout = dropout.filter(|d| d.key.p > 0.0);
    let config = row_config(op, r, t);
    let args = KernelArgs::new()
        .slice(dscores)
        .slice(dweights)
        .slice(probs)
        .i32(int(op, "R", r))
        .i32(int(op, "T", t))
        .i32(dropout.is_some() as i32);
    let mut args = dropout_args(args, dropout);
    // SAFETY: as in attention_scores_forward, for `causal_softmax_dropout_backward`.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// dq += dscores · k / sqrt(HS); dk += dscoresᵀ · q / sqrt(HS), per head; dscores (B, NH, T, T)
/// is zero above the diagonal. kernels/attention.cu.
pub fn attention_scores_backward(
    dev: &dyn Device,
    dq: DeviceSlice<f32>,
    dk: DeviceSlice<f32>,
    dscores: DeviceSlice<f32>,
    q: DeviceSlice<f32>,
    k: DeviceSlice<f32>,
    s: AttnShape,
) -> Result<(), GpuError> {
    let op = "attention_scores_backward";
    if check_attn(
        op,
        s,
        &[
            ("dq", dq.len()),
            ("dk", dk.len()),
            ("q", q.len()),
            ("k", k.len()),
        ],
        &[("dscores", dscores.len())],
    ) || s.hs == 0
    {
        return Ok(());
    }
    let (nh, t, hs) = (int(op, "NH", s.nh), int(op, "T", s.t), int(op, "HS", s.hs));
    let config = rows_config(s);
    for (kernel, out, x) in [
        ("attention_scores_backward_dq", dq, k),
        ("attention_scores_backward_dk", dk, q),
    ] {
        let mut args = KernelArgs::new()
            .slice(out)
            .slice(dscores)
            .slice(x)
            .i32(nh)
            .i32(t)
            .i32(hs)
            .f32(s.scale());
        // SAFETY: as in attention_scores_forward, for `attention_scores_backward_dq` / `_dk`.
        unsafe { dev.launch(kernel, &config, &mut args.params())? };
    }
    Ok(())
}
