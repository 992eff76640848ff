//! Linear layers: kernels/matmul.cu.
//!
//! The two deterministic reductions over N (`matmul_backward_weight`, `bias_backward`) split N
//! into chunks when the output alone has too few tiles to fill the GPU, and then add the chunks'
//! partial sums in a fixed order (`matmul_split_sum`). The partials need a workspace: the
//! `*_with_workspace` launchers take it from the caller (size it with
//! [`matmul_backward_weight_workspace_len`] / [`bias_backward_workspace_len`]); the plain
//! launchers allocate it themselves when they split, which costs an allocation and a
//! synchronisation per call.

use super::{blocks, int};
use crate::gpu::device::{Device, DeviceExt, DeviceSlice, GpuError, KernelArgs, LaunchConfig};
use crate::ops::check_len;
use std::borrow::Cow;

/// The arithmetic of the GEMMs: which kernel set the launchers below (and the fused attention's,
/// kernels/attention_fused.cu) pick. Storage, the bias and every other op stay f32 whatever the
/// precision.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands and accumulation on the SIMT cores (kernels/matmul.cu): the exact default.
    #[default]
    Fp32,
    /// Tensor cores, TF32 operands (cvt.rna.tf32.f32: 10 mantissa bits, ties away from zero),
    /// f32 accumulation (kernels/matmul_tc.cu, names + `_tf32`).
    Tf32,
    /// Tensor cores, BF16 operands (7 mantissa bits, round to nearest even), f32 accumulation
    /// (kernels/matmul_tc.cu, names + `_bf16`).
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Tf32, Precision::Bf16];

    /// The kernel of this precision for the fp32 kernel `base`.
    pub fn kernel(self, base: &str) -> Cow<'_, str> {
        match self {
            Precision::Fp32 => Cow::Borrowed(base),
            Precision::Tf32 => Cow::Owned(format!("{base}_tf32")),
            Precision::Bf16 => Cow::Owned(format!("{base}_bf16")),
        }
    }

    /// Rounds an f32 operand as this precision's kernels do before they multiply it (identity
    /// for fp32): the CPU references of the tensor-core GEMMs use it.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::Fp32 => x,
            Precision::Tf32 => f32::from_bits(tf32_rna(x)),
            Precision::Bf16 => f32::from_bits(bf16_rne(x) << 16),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// cvt.rna.tf32.f32 (kernels/mma.cuh): the bits of `x` rounded to TF32, ties away from zero,
/// the low 13 bits zero; infinities stay, NaN becomes 0x7fffe000.
pub fn tf32_rna(x: f32) -> u32 {
    let u = x.to_bits();
    if u & 0x7f80_0000 == 0x7f80_0000 {
        return if u & 0x007f_ffff != 0 { 0x7fff_e000 } else { u };
    }
    u.wrapping_add(0x1000) & 0xffff_e000
}

/// BF16 round to nearest even (kernels/mma.cuh's bf16_rne): the upper 16 bits of the rounded f32.
pub fn bf16_rne(x: f32) -> u32 {
    let u = x.to_bits();
    if u & 0x7f80_0000 == 0x7f80_0000 && u & 0x007f_ffff != 0 {
        return (u >> 16) | 0x0040;
    }
    u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16
}

/// Output tile of the GEMM kernels (rows, columns) and their k step; block (16, 8).
const TILE_M: usize = 64;
const TILE_N: usize = 64;
const TILE_K: usize = 16;
/// bias_backward: columns per block; block (32, 16).
const BIAS_COLS: usize = 32;
/// Blocks a split launch aims for: about two per SM of an H100 (132 SMs).
const TARGET_BLOCKS: usize = 256;
/// Fewest rows of N per split, so a split's work outweighs writing and re-reading its partial.
const MIN_SPLIT_ROWS: usize = 128;
const MAX_SPLITS: usize = 64;

/// The 128 x 128 tiles of the fp32 single-product kernels (`_128`, block (16, 16)).
const BIG_TILE: usize = 128;

/// Whether an fp32 single-product GEMM with an (m, nc) output runs on 128 x 128 tiles: when it
/// still has TARGET_BLOCKS of them (two waves of blocks over an H100/H200), so the bigger tile's
/// halved shared-memory traffic per output does not cost occupancy. The result is the same bits
/// either way (each output is one k-ordered chain).
pub fn gemm_uses_big_tiles(p: Precision, m: usize, nc: usize) -> bool {
    p == Precision::Fp32 && m.div_ceil(BIG_TILE) * nc.div_ceil(BIG_TILE) >= TARGET_BLOCKS
}

/// Which tiles a single-product GEMM runs on: the launchers' choice, or (fp32 only, for
/// comparisons) one forced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmTiles {
    /// [`gemm_uses_big_tiles`] decides.
    Auto,
    /// 64 x 64 (every precision's kernels).
    Small,
    /// 128 x 128 (the fp32 `_128` kernels).
    Big,
}

/// The kernel and launch shape of single-product GEMM `op` at an (m, nc) output.
fn single_gemm(
    p: Precision,
    tiles: GemmTiles,
    op: &str,
    m: usize,
    nc: usize,
) -> (Cow<'_, str>, LaunchConfig) {
    let big = match tiles {
        GemmTiles::Auto => gemm_uses_big_tiles(p, m, nc),
        GemmTiles::Small => false,
        GemmTiles::Big => {
            assert_eq!(p, Precision::Fp32, "{op}: 128 x 128 tiles are fp32 only");
            true
        }
    };
    if big {
        let config = LaunchConfig::new((blocks(nc, BIG_TILE), blocks(m, BIG_TILE), 1), (16, 16));
        (Cow::Owned(format!("{op}_128")), config)
    } else {
        (p.kernel(op), gemm_config(m, nc, 1))
    }
}

fn gemm_config(m: usize, nc: usize, splits: usize) -> LaunchConfig {
    LaunchConfig::new(
        (blocks(nc, TILE_N), blocks(m, TILE_M), splits as u32),
        (16, 8),
    )
}

/// Splits of `n` rows wanted when the output has `out_blocks` blocks.
fn splits_for(n: usize, out_blocks: usize) -> usize {
    TARGET_BLOCKS
        .div_ceil(out_blocks.max(1))
        .min(n / MIN_SPLIT_ROWS)
        .clamp(1, MAX_SPLITS)
}

/// Rows per split (a multiple of `align`) and the number of non-empty splits, for `n` > 0 rows
/// and `splits` >= 1 requested.
fn split_rows(n: usize, splits: usize, align: usize) -> (usize, usize) {
    let chunk = n.div_ceil(splits).next_multiple_of(align);
    (chunk, n.div_ceil(chunk))
}

/// Runs `f` with a fresh workspace of `len` floats (None if `len` is 0), then frees it after
/// waiting for the launches that use it.
fn with_workspace(
    dev: &dyn Device,
    len: usize,
    f: impl FnOnce(Option<DeviceSlice<f32>>) -> Result<(), GpuError>,
) -> Result<(), GpuError> {
    if len == 0 {
        return f(None);
    }
    let ws = dev.alloc_slice::<f32>(len)?;
    let ran = f(Some(ws));
    // the kernels may still be queued: the memory must outlive them
    let synced = dev.synchronize();
    let freed = dev.free_slice(ws);
    ran.and(synced).and(freed)
}

#[track_caller]
fn check_workspace(op: &str, ws: Option<DeviceSlice<f32>>, splits: usize, shape: &[usize]) {
    let per_split: usize = shape.iter().product();
    let want = splits * per_split;
    let got = ws.map_or(0, |w| w.len());
    if got < want {
        panic!(
            "shape mismatch in {op}: workspace expected at least {splits} splits of {shape:?} \
             ({want} elements), got {got} elements"
        );
    }
}

/// out (N, OC) = inp (N, IC) · weight (OC, IC)ᵀ + bias (OC). kernels/matmul.cu.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward(
    dev: &dyn Device,
    p: Precision,
    out: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    bias: Option<DeviceSlice<f32>>,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    matmul_forward_on_tiles(dev, p, GemmTiles::Auto, out, inp, weight, bias, n, ic, oc)
}

/// [`matmul_forward`] on the given tiles (the benches compare the two fp32 shapes).
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_on_tiles(
    dev: &dyn Device,
    p: Precision,
    tiles: GemmTiles,
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
    let (kernel, config) = single_gemm(p, tiles, op, n, oc);
    let mut args = KernelArgs::new()
        .slice(out)
        .slice(inp)
        .slice(weight)
        .opt_slice(bias)
        .i32(int(op, "N", n))
        .i32(int(op, "IC", ic))
        .i32(int(op, "OC", oc));
    // SAFETY: the parameters match `matmul_forward` (and its _tf32, _bf16, _128 twins) in
    // kernels/matmul.cu in order and type, and every slice holds the elements its shape says,
    // which is all the kernel touches.
    unsafe { dev.launch(&kernel, &config, &mut args.params()) }
}

/// Launches a GEMM kernel of matmul.cu whose parameters are (out, a, weight, N, IC, OC) and
/// whose output has `out_cols` columns (OC or IC), after the shape checks its caller made.
#[allow(clippy::too_many_arguments)]
fn launch_gemm(
    dev: &dyn Device,
    p: Precision,
    op: &str,
    out: DeviceSlice<f32>,
    a: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    n: usize,
    ic: usize,
    oc: usize,
    out_cols: usize,
) -> Result<(), GpuError> {
    if n == 0 || out_cols == 0 {
        return Ok(());
    }
    let (kernel, config) = single_gemm(p, GemmTiles::Auto, op, n, out_cols);
    let mut args = KernelArgs::new()
        .slice(out)
        .slice(a)
        .slice(weight)
        .i32(int(op, "N", n))
        .i32(int(op, "IC", ic))
        .i32(int(op, "OC", oc));
    // SAFETY: the parameters match kernel `op` (and its _tf32, _bf16, _128 twins) in
    // kernels/matmul.cu in order and type, and the caller checked that every slice holds the
    // elements its shape says, which is all the kernel touches.
    unsafe { dev.launch(&kernel, &config, &mut args.params()) }
}

/// out (N, OC) += inp (N, IC) · weight (OC, IC)ᵀ (no bias). kernels/matmul.cu.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_accumulate(
    dev: &dyn Device,
    p: Precision,
    out: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    let op = "matmul_forward_accumulate";
    check_len(op, "out", out.len(), &[n, oc]);
    check_len(op, "inp", inp.len(), &[n, ic]);
    check_len(op, "weight", weight.len(), &[oc, ic]);
    launch_gemm(dev, p, op, out, inp, weight, n, ic, oc, oc)
}

/// dinp (N, IC) += dout (N, OC) · weight (OC, IC). kernels/matmul.cu.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_input(
    dev: &dyn Device,
    p: Precision,
    dinp: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    let op = "matmul_backward_input";
    check_len(op, "dinp", dinp.len(), &[n, ic]);
    check_len(op, "dout", dout.len(), &[n, oc]);
    check_len(op, "weight", weight.len(), &[oc, ic]);
    launch_gemm(dev, p, op, dinp, dout, weight, n, ic, oc, ic)
}

/// The number of splits of N [`matmul_backward_weight`] uses at this shape (1: no workspace).
pub fn matmul_backward_weight_splits(n: usize, ic: usize, oc: usize) -> usize {
    splits_for(n, oc.div_ceil(TILE_M) * ic.div_ceil(TILE_N))
}

/// Workspace floats [`matmul_backward_weight_with_workspace`] needs for `splits` (0 when the
/// product runs unsplit).
pub fn matmul_backward_weight_workspace_len(
    n: usize,
    ic: usize,
    oc: usize,
    splits: usize,
) -> usize {
    if n == 0 || splits <= 1 {
        return 0;
    }
    let (_, splits) = split_rows(n, splits, TILE_K);
    if splits <= 1 {
        0
    } else {
        splits * oc * ic
    }
}

/// dweight (OC, IC) += dout (N, OC)ᵀ · inp (N, IC); deterministic (no float atomics).
/// kernels/matmul.cu. Allocates a workspace when it splits N (see the module doc).
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_weight(
    dev: &dyn Device,
    p: Precision,
    dweight: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    // shapes first, so a bad call panics before the workspace is allocated
    let op = "matmul_backward_weight";
    check_len(op, "dweight", dweight.len(), &[oc, ic]);
    check_len(op, "dout", dout.len(), &[n, oc]);
    check_len(op, "inp", inp.len(), &[n, ic]);
    let splits = matmul_backward_weight_splits(n, ic, oc);
    let len = matmul_backward_weight_workspace_len(n, ic, oc, splits);
    with_workspace(dev, len, |ws| {
        matmul_backward_weight_with_workspace(dev, p, dweight, dout, inp, ws, splits, n, ic, oc)
    })
}

/// [`matmul_backward_weight`] with N cut into `splits` chunks of whole k steps (fewer if N is
/// short), each chunk's product written to `workspace` (at least
/// [`matmul_backward_weight_workspace_len`] floats; None when that is 0) and the partials then
/// added to dweight in chunk order. The result depends on `splits` but not on the run.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_weight_with_workspace(
    dev: &dyn Device,
    p: Precision,
    dweight: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    workspace: Option<DeviceSlice<f32>>,
    splits: usize,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    let op = "matmul_backward_weight";
    check_len(op, "dweight", dweight.len(), &[oc, ic]);
    check_len(op, "dout", dout.len(), &[n, oc]);
    check_len(op, "inp", inp.len(), &[n, ic]);
    assert!(splits >= 1, "{op}: splits must be at least 1, got {splits}");
    if n == 0 || oc == 0 || ic == 0 {
        return Ok(());
    }
    let (chunk, splits) = split_rows(n, splits, TILE_K);
    let target = if splits == 1 {
        dweight
    } else {
        check_workspace(op, workspace, splits, &[oc, ic]);
        workspace.expect("checked above")
    };
    let config = gemm_config(oc, ic, splits);
    let mut args = KernelArgs::new()
        .slice(target)
        .slice(dout)
        .slice(inp)
        .i32(int(op, "N", n))
        .i32(int(op, "IC", ic))
        .i32(int(op, "OC", oc))
        .i32(int(op, "k_chunk", chunk))
        .i32(i32::from(splits == 1));
    // SAFETY: the parameters match `matmul_backward_weight` in kernels/matmul.cu in order and
    // type; dout and inp hold their shapes, and the target holds `splits` (OC, IC) matrices.
    unsafe { dev.launch(&p.kernel(op), &config, &mut args.params())? };
    if splits > 1 {
        split_sum(dev, dweight, target, splits)?;
    }
    Ok(())
}

/// out (count) += Σ_s partials (splits, count), in split order.
fn split_sum(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    partials: DeviceSlice<f32>,
    splits: usize,
) -> Result<(), GpuError> {
    let op = "matmul_split_sum";
    let count = out.len();
    assert!(partials.len() >= splits * count, "{op}: partials too short");
    let config = LaunchConfig::new(blocks(count, 256), 256);
    let mut args = KernelArgs::new()
        .slice(out)
        .slice(partials)
        .i32(int(op, "splits", splits))
        .i32(int(op, "count", count));
    // SAFETY: the parameters match `matmul_split_sum` in kernels/matmul.cu in order and type;
    // out holds count floats and partials splits·count.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// The number of splits of N [`bias_backward`] uses at this shape (1: no workspace).
pub fn bias_backward_splits(n: usize, oc: usize) -> usize {
    splits_for(n, oc.div_ceil(BIAS_COLS))
}

/// Workspace floats [`bias_backward_with_workspace`] needs for `splits` (0 when unsplit).
pub fn bias_backward_workspace_len(n: usize, oc: usize, splits: usize) -> usize {
    if n == 0 || splits <= 1 {
        return 0;
    }
    let (_, splits) = split_rows(n, splits, 1);
    if splits <= 1 {
        0
    } else {
        splits * oc
    }
}

/// dbias (OC) += Σ_n dout (N, OC), in a fixed order (deterministic). kernels/matmul.cu.
/// Allocates a workspace when it splits N (see the module doc).
pub fn bias_backward(
    dev: &dyn Device,
    dbias: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    n: usize,
    oc: usize,
) -> Result<(), GpuError> {
    // shapes first, so a bad call panics before the workspace is allocated
    check_len("bias_backward", "dbias", dbias.len(), &[oc]);
    check_len("bias_backward", "dout", dout.len(), &[n, oc]);
    let splits = bias_backward_splits(n, oc);
    let len = bias_backward_workspace_len(n, oc, splits);
    with_workspace(dev, len, |ws| {
        bias_backward_with_workspace(dev, dbias, dout, ws, splits, n, oc)
    })
}

/// [`bias_backward`] with N cut into `splits` chunks, each chunk's column sums written to
/// `workspace` (at least [`bias_backward_workspace_len`] floats; None when that is 0) and then
/// added to dbias in chunk order.
pub fn bias_backward_with_workspace(
    dev: &dyn Device,
    dbias: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    workspace: Option<DeviceSlice<f32>>,
    splits: usize,
    n: usize,
    oc: usize,
) -> Result<(), GpuError> {
    let op = "bias_backward";
    check_len(op, "dbias", dbias.len(), &[oc]);
    check_len(op, "dout", dout.len(), &[n, oc]);
    assert!(splits >= 1, "{op}: splits must be at least 1, got {splits}");
    if n == 0 || oc == 0 {
        return Ok(());
    }
    let (chunk, splits) = split_rows(n, splits, 1);
    let target = if splits == 1 {
        dbias
    } else {
        check_workspace(op, workspace, splits, &[oc]);
        workspace.expect("checked above")
    };
    let config = LaunchConfig::new((blocks(oc, BIAS_COLS), splits as u32), (32, 16));
    let mut args = KernelArgs::new()
        .slice(target)
        .slice(dout)
        .i32(int(op, "N", n))
        .i32(int(op, "OC", oc))
        .i32(int(op, "row_chunk", chunk))
        .i32(i32::from(splits == 1));
    // SAFETY: the parameters match `bias_backward` in kernels/matmul.cu in order and type; dout
    // holds (N, OC) and the target `splits` rows of OC.
    unsafe { dev.launch(op, &config, &mut args.params())? };
    if splits > 1 {
        split_sum(dev, dbias, target, splits)?;
    }
    Ok(())
}

/// The three projections of one input (q, k, v: separate weights) in one launch: out_j (N, OC) =
/// inp (N, IC) · w_j (OC, IC)ᵀ + b_j (OC) for j = 0, 1, 2. kernels/matmul.cu.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_qkv(
    dev: &dyn Device,
    p: Precision,
    out: [DeviceSlice<f32>; 3],
    inp: DeviceSlice<f32>,
    weight: [DeviceSlice<f32>; 3],
    bias: [Option<DeviceSlice<f32>>; 3],
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    let op = "matmul_forward_qkv";
    check_len(op, "inp", inp.len(), &[n, ic]);
    for j in 0..3 {
        check_len(op, "out", out[j].len(), &[n, oc]);
        check_len(op, "weight", weight[j].len(), &[oc, ic]);
        if let Some(b) = bias[j] {
            check_len(op, "bias", b.len(), &[oc]);
        }
    }
    if n == 0 || oc == 0 {
        return Ok(());
    }
    let config = gemm_config(n, oc, 3);
    let mut args = KernelArgs::new()
        .slice(out[0])
        .slice(out[1])
        .slice(out[2])
        .slice(inp)
        .slice(weight[0])
        .slice(weight[1])
        .slice(weight[2])
        .opt_slice(bias[0])
        .opt_slice(bias[1])
        .opt_slice(bias[2])
        .i32(int(op, "N", n))
        .i32(int(op, "IC", ic))
        .i32(int(op, "OC", oc));
    // SAFETY: the parameters match `matmul_forward_qkv` in kernels/matmul.cu in order and type,
    // and every slice holds the elements its shape says, which is all the kernel touches.
    unsafe { dev.launch(&p.kernel(op), &config, &mut args.params()) }
}

/// pre (N, OC) = inp (N, IC) · weight (OC, IC)ᵀ + bias (OC) and out = gelu(pre), one launch.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_gelu(
    dev: &dyn Device,
    p: Precision,
    pre: DeviceSlice<f32>,
    out: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    bias: Option<DeviceSlice<f32>>,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    let op = "matmul_forward_gelu";
    check_len(op, "pre", pre.len(), &[n, oc]);
    check_len(op, "out", out.len(), &[n, oc]);
    check_len(op, "inp", inp.len(), &[n, ic]);
    check_len(op, "weight", weight.len(), &[oc, ic]);
    if let Some(b) = bias {
        check_len(op, "bias", b.len(), &[oc]);
    }
    if n == 0 || oc == 0 {
        return Ok(());
    }
    let config = gemm_config(n, oc, 1);
    let mut args = KernelArgs::new()
        .slice(pre)
        .slice(out)
        .slice(inp)
        .slice(weight)
        .opt_slice(bias)
        .i32(int(op, "N", n))
        .i32(int(op, "IC", ic))
        .i32(int(op, "OC", oc));
    // SAFETY: the parameters match `matmul_forward_gelu` in kernels/matmul.cu in order and type.
    unsafe { dev.launch(&p.kernel(op), &config, &mut args.params()) }
}

/// dinp (N, IC) += Σ_j dout_j (N, OC) · w_j (OC, IC), j = 0, 1, 2, one launch.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_input_qkv(
    dev: &dyn Device,
    p: Precision,
    dinp: DeviceSlice<f32>,
    dout: [DeviceSlice<f32>; 3],
    weight: [DeviceSlice<f32>; 3],
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    let op = "matmul_backward_input_qkv";
    check_len(op, "dinp", dinp.len(), &[n, ic]);
    for j in 0..3 {
        check_len(op, "dout", dout[j].len(), &[n, oc]);
        check_len(op, "weight", weight[j].len(), &[oc, ic]);
    }
    if n == 0 || ic == 0 {
        return Ok(());
    }
    let config = gemm_config(n, ic, 1);
    let mut args = KernelArgs::new()
        .slice(dinp)
        .slice(dout[0])
        .slice(dout[1])
        .slice(dout[2])
        .slice(weight[0])
        .slice(weight[1])
        .slice(weight[2])
        .i32(int(op, "N", n))
        .i32(int(op, "IC", ic))
        .i32(int(op, "OC", oc));
    // SAFETY: the parameters match `matmul_backward_input_qkv` in kernels/matmul.cu.
    unsafe { dev.launch(&p.kernel(op), &config, &mut args.params()) }
}

/// dpre (N, IC) += gelu'(pre) ⊙ (dout (N, OC) · weight (OC, IC)), one launch.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_input_gelu(
    dev: &dyn Device,
    p: Precision,
    dpre: DeviceSlice<f32>,
    pre: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    let op = "matmul_backward_input_gelu";
    check_len(op, "dpre", dpre.len(), &[n, ic]);
    check_len(op, "pre", pre.len(), &[n, ic]);
    check_len(op, "dout", dout.len(), &[n, oc]);
    check_len(op, "weight", weight.len(), &[oc, ic]);
    if n == 0 || ic == 0 {
        return Ok(());
    }
    let config = gemm_config(n, ic, 1);
    let mut args = KernelArgs::new()
        .slice(dpre)
        .slice(pre)
        .slice(dout)
        .slice(weight)
        .i32(int(op, "N", n))
        .i32(int(op, "IC", ic))
        .i32(int(op, "OC", oc));
    // SAFETY: the parameters match `matmul_backward_input_gelu` in kernels/matmul.cu.
    unsafe { dev.launch(&p.kernel(op), &config, &mut args.params()) }
}

/// The splits of N [`linear_backward_params`] uses for `count` layers at this shape.
pub fn linear_backward_params_splits(n: usize, ic: usize, oc: usize, count: usize) -> usize {
    let (_, splits) = split_rows(
        n.max(1),
        splits_for(n, count * oc.div_ceil(TILE_M) * ic.div_ceil(TILE_N)),
        TILE_K,
    );
    splits
}

/// Workspace of [`linear_backward_params`]: (partial floats, counters) for `count` layers.
pub fn linear_backward_params_workspace(
    n: usize,
    ic: usize,
    oc: usize,
    count: usize,
    splits: usize,
) -> (usize, usize) {
    if n == 0 || splits <= 1 {
        return (0, 0);
    }
    (
        count * splits * (oc * ic + oc),
        count * oc.div_ceil(TILE_M) * ic.div_ceil(TILE_N),
    )
}

/// The weight and bias gradients of `count` = dweight.len() (1, or 3 for q, k, v sharing `inp`)
/// linear layers in one launch: dweight_j (OC, IC) += dout_j (N, OC)ᵀ · inp (N, IC), dbias_j (OC)
/// += Σ_n dout_j; split over N into `splits` chunks (from [`linear_backward_params_splits`] or
/// fewer), whose partials (`partials`, `counters` from [`linear_backward_params_workspace`];
/// the counters zero) the last block of each tile adds in split order. Deterministic.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_params(
    dev: &dyn Device,
    p: Precision,
    dweight: &[DeviceSlice<f32>],
    dbias: &[Option<DeviceSlice<f32>>],
    dout: &[DeviceSlice<f32>],
    inp: DeviceSlice<f32>,
    partials: Option<DeviceSlice<f32>>,
    counters: Option<DeviceSlice<u32>>,
    splits: usize,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    let op = "linear_backward_params";
    let count = dweight.len();
    assert!(
        (count == 1 || count == 3) && dbias.len() == count && dout.len() == count,
        "{op}: 1 or 3 layers, with as many dbias and dout, got {count}, {}, {}",
        dbias.len(),
        dout.len()
    );
    check_len(op, "inp", inp.len(), &[n, ic]);
    for j in 0..count {
        check_len(op, "dweight", dweight[j].len(), &[oc, ic]);
        check_len(op, "dout", dout[j].len(), &[n, oc]);
        if let Some(b) = dbias[j] {
            check_len(op, "dbias", b.len(), &[oc]);
        }
    }
    assert!(splits >= 1, "{op}: splits must be at least 1");
    if n == 0 || oc == 0 || ic == 0 {
        return Ok(());
    }
    let (chunk, splits) = split_rows(n, splits, TILE_K);
    let (want_p, want_c) = linear_backward_params_workspace(n, ic, oc, count, splits);
    let (partials_ptr, counters_ptr) = if splits > 1 {
        let p = partials.unwrap_or_else(|| panic!("{op}: {splits} splits need a workspace"));
        let c = counters.unwrap_or_else(|| panic!("{op}: {splits} splits need counters"));
        assert!(
            p.len() >= want_p && c.len() >= want_c,
            "shape mismatch in {op}: workspace expected at least {want_p} floats and {want_c} counters, got {} and {}",
            p.len(),
            c.len()
        );
        (p.ptr(), c.ptr())
    } else {
        (0, 0)
    };
    let pick = |j: usize| j.min(count - 1);
    let config = gemm_config(oc, ic, count * splits);
    let mut args = KernelArgs::new();
    for j in 0..3 {
        args = args.slice(dweight[pick(j)]);
    }
    for j in 0..3 {
        args = args.opt_slice(dbias[pick(j)]);
    }
    for j in 0..3 {
        args = args.slice(dout[pick(j)]);
    }
    let mut args = args
        .slice(inp)
        .ptr(partials_ptr)
        .ptr(counters_ptr)
        .i32(int(op, "N", n))
        .i32(int(op, "IC", ic))
        .i32(int(op, "OC", oc))
        .i32(int(op, "k_chunk", chunk))
        .i32(int(op, "splits", splits));
    // SAFETY: the parameters match `linear_backward_params` in kernels/matmul.cu in order and
    // type; blockIdx.z < count · splits only selects the first `count` layers, whose slices hold
    // their shapes; the workspace was checked above.
    unsafe { dev.launch(&p.kernel(op), &config, &mut args.params()) }
}

/// The split count of a split-K product with an (M, NC) output over K: enough blocks for
/// `min_blocks` (the GPU's SM count), each split at least 32 deep.
pub fn splitk_splits(m: usize, nc: usize, k: usize, min_blocks: usize) -> usize {
    let tiles = m.div_ceil(TILE_M) * nc.div_ceil(TILE_N);
    min_blocks
        .div_ceil(tiles.max(1))
        .min(k / 32)
        .clamp(1, MAX_SPLITS)
}

/// Workspace of a split-K product: (partial floats, counters).
pub fn splitk_workspace(m: usize, nc: usize, splits: usize) -> (usize, usize) {
    if splits <= 1 {
        (0, 0)
    } else {
        (splits * m * nc, m.div_ceil(TILE_M) * nc.div_ceil(TILE_N))
    }
}

/// A split-K product kernel of matmul.cu: `kernel`'s output (m, nc) over k, `splits` splits (or
/// fewer, to whole k steps), with `partials`/`counters` (zero) from [`splitk_workspace`].
#[allow(clippy::too_many_arguments)]
fn launch_splitk(
    dev: &dyn Device,
    p: Precision,
    kernel: &str,
    out: DeviceSlice<f32>,
    a: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    partials: Option<DeviceSlice<f32>>,
    counters: Option<DeviceSlice<u32>>,
    splits: usize,
    (n, ic, oc): (usize, usize, usize),
    (m, nc, k): (usize, usize, usize),
) -> Result<(), GpuError> {
    if m == 0 || nc == 0 {
        return Ok(());
    }
    let (chunk, splits) = split_rows(k.max(1), splits.max(1), TILE_K);
    let (want_p, want_c) = splitk_workspace(m, nc, splits);
    let (partials_ptr, counters_ptr) = if splits > 1 {
        let p = partials.unwrap_or_else(|| panic!("{kernel}: {splits} splits need a workspace"));
        let c = counters.unwrap_or_else(|| panic!("{kernel}: {splits} splits need counters"));
        assert!(
            p.len() >= want_p && c.len() >= want_c,
            "shape mismatch in {kernel}: workspace expected at least {want_p} floats and {want_c} counters, got {} and {}",
            p.len(),
            c.len()
        );
        (p.ptr(), c.ptr())
    } else {
        (0, 0)
    };
    let config = gemm_config(m, nc, splits);
    let mut args = KernelArgs::new()
        .slice(out)
        .slice(a)
        .slice(weight)
        .ptr(partials_ptr)
        .ptr(counters_ptr)
        .i32(int(kernel, "N", n))
        .i32(int(kernel, "IC", ic))
        .i32(int(kernel, "OC", oc))
        .i32(int(kernel, "k_chunk", chunk))
        .i32(int(kernel, "splits", splits));
    // SAFETY: the parameters match `kernel` (a split-K wrapper of kernels/matmul.cu) in order and
    // type; the caller checked the slices' shapes and the workspace was checked above.
    unsafe { dev.launch(&p.kernel(kernel), &config, &mut args.params()) }
}

/// out (N, OC) += inp (N, IC) · weight (OC, IC)ᵀ with K = IC split `splits` ways (one launch).
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_accumulate_splitk(
    dev: &dyn Device,
    p: Precision,
    out: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    partials: Option<DeviceSlice<f32>>,
    counters: Option<DeviceSlice<u32>>,
    splits: usize,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    let op = "matmul_forward_accumulate_splitk";
    check_len(op, "out", out.len(), &[n, oc]);
    check_len(op, "inp", inp.len(), &[n, ic]);
    check_len(op, "weight", weight.len(), &[oc, ic]);
    launch_splitk(
        dev,
        p,
        op,
        out,
        inp,
        weight,
        partials,
        counters,
        splits,
        (n, ic, oc),
        (n, oc, ic),
    )
}

/// dinp (N, IC) += dout (N, OC) · weight (OC, IC) with K = OC split `splits` ways (one launch).
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_input_splitk(
    dev: &dyn Device,
    p: Precision,
    dinp: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    partials: Option<DeviceSlice<f32>>,
    counters: Option<DeviceSlice<u32>>,
    splits: usize,
    n: usize,
    ic: usize,
    oc: usize,
) -> Result<(), GpuError> {
    let op = "matmul_backward_input_splitk";
    check_len(op, "dinp", dinp.len(), &[n, ic]);
    check_len(op, "dout", dout.len(), &[n, oc]);
    check_len(op, "weight", weight.len(), &[oc, ic]);
    launch_splitk(
        dev,
        p,
        op,
        dinp,
        dout,
        weight,
        partials,
        counters,
        splits,
        (n, ic, oc),
        (n, ic, oc),
    )
}
