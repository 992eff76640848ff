//! Layernorm, GELU, residual add and gradient accumulation: kernels/norm.cu.

use super::{blocks, int};
use crate::gpu::device::{Device, DeviceSlice, GpuError, KernelArgs, LaunchConfig};
use crate::ops::check_len;

/// Block of the warp-per-row kernels: four rows per block.
const ROWS_BLOCK: u32 = 128;
/// Rows per block of the warp-per-row kernels.
const ROWS_PER_BLOCK: usize = ROWS_BLOCK as usize / 32;
/// Block of the elementwise kernels.
const ELEMENTWISE_BLOCK: u32 = 256;

/// out (N, C) = layernorm(inp) · weight + bias; mean (N) and rstd (N) saved (as
/// `ops::norm::layernorm_forward`).
#[allow(clippy::too_many_arguments)]
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
    let op = "layernorm_forward";
    check_len(op, "out", out.len(), &[n, c]);
    check_len(op, "mean", mean.len(), &[n]);
    check_len(op, "rstd", rstd.len(), &[n]);
    check_len(op, "inp", inp.len(), &[n, c]);
    check_len(op, "weight", weight.len(), &[c]);
    check_len(op, "bias", bias.len(), &[c]);
    if n == 0 {
        return Ok(());
    }
    let config = LaunchConfig::new(blocks(n, ROWS_PER_BLOCK), ROWS_BLOCK);
    let mut args = KernelArgs::new()
        .slice(out)
        .slice(mean)
        .slice(rstd)
        .slice(inp)
        .slice(weight)
        .slice(bias)
        .i32(int(op, "N", n))
        .i32(int(op, "C", c));
    // SAFETY: the parameters match `layernorm_forward` in kernels/norm.cu in order and type, and
    // every slice holds the elements its shape says, which is all the kernel touches.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// layernorm_backward's block (LN_BWD_THREADS in kernels/norm.cu): 8 rows per input-gradient
/// block, 8 row lanes per parameter block.
const LN_BWD_THREADS: u32 = 256;
const LN_BWD_ROWS: usize = LN_BWD_THREADS as usize / 32;
/// Fewest rows per split of the parameter sums, and the most splits.
const LN_MIN_SPLIT_ROWS: usize = 64;
const LN_MAX_SPLITS: usize = 64;

/// The row splits [`layernorm_backward`] uses for the weight and bias sums at this shape: enough
/// blocks of parameter sums to fill the GPU (about 256), at least 64 rows each.
pub fn layernorm_backward_splits(n: usize, c: usize) -> usize {
    256usize
        .div_ceil(c.div_ceil(32).max(1))
        .min(n / LN_MIN_SPLIT_ROWS)
        .clamp(1, LN_MAX_SPLITS)
}

/// Workspace of [`layernorm_backward`] with `splits` splits: (f64 partials, u32 counters); none
/// for one split.
pub fn layernorm_backward_workspace(c: usize, splits: usize) -> (usize, usize) {
    if splits <= 1 {
        (0, 0)
    } else {
        (splits * 2 * c, c.div_ceil(32))
    }
}

/// dinp (N, C) (+ dresidual), dweight (C), dbias (C) += the gradients of `layernorm_forward`, in
/// one launch: the weight and bias column sums split over rows into `splits` chunks (from
/// [`layernorm_backward_splits`] or fewer) whose f64 partials (`workspace`, sized by
/// [`layernorm_backward_workspace`], counters zero) are added in split order. Deterministic.
#[allow(clippy::too_many_arguments)]
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
    dresidual: Option<DeviceSlice<f32>>,
    workspace: Option<(DeviceSlice<f64>, DeviceSlice<u32>)>,
    splits: usize,
    n: usize,
    c: usize,
) -> Result<(), GpuError> {
    let op = "layernorm_backward";
    check_len(op, "dinp", dinp.len(), &[n, c]);
    check_len(op, "dweight", dweight.len(), &[c]);
    check_len(op, "dbias", dbias.len(), &[c]);
    check_len(op, "dout", dout.len(), &[n, c]);
    check_len(op, "inp", inp.len(), &[n, c]);
    check_len(op, "weight", weight.len(), &[c]);
    check_len(op, "mean", mean.len(), &[n]);
    check_len(op, "rstd", rstd.len(), &[n]);
    if let Some(r) = dresidual {
        check_len(op, "dresidual", r.len(), &[n, c]);
    }
    assert!(splits >= 1, "{op}: splits must be at least 1");
    if n == 0 || c == 0 {
        return Ok(());
    }
    let row_chunk = n.div_ceil(splits);
    let splits = n.div_ceil(row_chunk);
    let (want_p, want_c) = layernorm_backward_workspace(c, splits);
    let (p, k) = match (splits > 1, workspace) {
        (false, _) => (0, 0),
        (true, Some((p, k))) => {
            assert!(
                p.len() >= want_p && k.len() >= want_c,
                "shape mismatch in {op}: workspace expected at least {want_p} f64 and {want_c} counters, got {} and {}",
                p.len(),
                k.len()
            );
            (p.ptr(), k.ptr())
        }
        (true, None) => panic!("{op}: {splits} splits need a workspace"),
    };
    let grid = blocks(n, LN_BWD_ROWS) as usize + c.div_ceil(32) * splits;
    let config = LaunchConfig::new(
        u32::try_from(grid).expect("layernorm_backward grid fits u32"),
        LN_BWD_THREADS,
    );
    let mut args = KernelArgs::new()
        .slice(dinp)
        .slice(dweight)
        .slice(dbias)
        .ptr(p)
        .ptr(k)
        .slice(dout)
        .slice(inp)
        .slice(weight)
        .slice(mean)
        .slice(rstd)
        .opt_slice(dresidual)
        .i32(int(op, "N", n))
        .i32(int(op, "C", c))
        .i32(int(op, "row_chunk", row_chunk))
        .i32(int(op, "splits", splits));
    // SAFETY: the parameters match `layernorm_backward` in kernels/norm.cu in order and type;
    // every slice holds the elements its shape says and the workspace was checked above.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// res = a + b, then out (N, C) = layernorm(res) · weight + bias with mean and rstd, one launch.
#[allow(clippy::too_many_arguments)]
pub fn add_layernorm_forward(
    dev: &dyn Device,
    res: DeviceSlice<f32>,
    out: DeviceSlice<f32>,
    mean: DeviceSlice<f32>,
    rstd: DeviceSlice<f32>,
    a: DeviceSlice<f32>,
    b: DeviceSlice<f32>,
    weight: DeviceSlice<f32>,
    bias: DeviceSlice<f32>,
    n: usize,
    c: usize,
) -> Result<(), GpuError> {
    let op = "add_layernorm_forward";
    for (what, s) in [("res", res), ("out", out), ("a", a), ("b", b)] {
        check_len(op, what, s.len(), &[n, c]);
    }
    check_len(op, "mean", mean.len(), &[n]);
    check_len(op, "rstd", rstd.len(), &[n]);
    check_len(op, "weight", weight.len(), &[c]);
    check_len(op, "bias", bias.len(), &[c]);
    if n == 0 {
        return Ok(());
    }
    let config = LaunchConfig::new(blocks(n, ROWS_PER_BLOCK), ROWS_BLOCK);
    let mut args = KernelArgs::new()
        .slice(res)
        .slice(out)
        .slice(mean)
        .slice(rstd)
        .slice(a)
        .slice(b)
        .slice(weight)
        .slice(bias)
        .i32(int(op, "N", n))
        .i32(int(op, "C", c));
    // SAFETY: the parameters match `add_layernorm_forward` in kernels/norm.cu in order and type.
    unsafe { dev.launch(op, &config, &mut args.params()) }
}

/// Launches one of the elementwise kernels of kernels/norm.cu: pointer parameters `slices` in
/// order, then the length as an `int`, one thread per element.
fn elementwise(
    dev: &dyn Device,
    kernel: &str,
    slices: &[DeviceSlice<f32>],
    n: usize,
) -> Result<(), GpuError> {
    if n == 0 {
        return Ok(());
    }
    let config = LaunchConfig::new(blocks(n, ELEMENTWISE_BLOCK as usize), ELEMENTWISE_BLOCK);
    let mut args = slices
        .iter()
        .fold(KernelArgs::new(), |a, &s| a.slice(s))
        .i32(int(kernel, "n", n));
    // SAFETY: every elementwise kernel in kernels/norm.cu takes `slices.len()` float pointers and
    // then `int n`, and touches elements 0..n of each; the callers check that each slice holds n.
    unsafe { dev.launch(kernel, &config, &mut args.params()) }
}

/// out = gelu(inp) (tanh approximation, as `ops::norm::gelu`), elementwise.
pub fn gelu_forward(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    let op = "gelu_forward";
    check_len(op, "out", out.len(), &[inp.len()]);
    elementwise(dev, op, &[out, inp], inp.len())
}

/// dinp += gelu\'(inp) · dout, elementwise.
pub fn gelu_backward(
    dev: &dyn Device,
    dinp: DeviceSlice<f32>,
    inp: DeviceSlice<f32>,
    dout: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    let op = "gelu_backward";
    check_len(op, "dinp", dinp.len(), &[inp.len()]);
    check_len(op, "dout", dout.len(), &[inp.len()]);
    elementwise(dev, op, &[dinp, inp, dout], inp.len())
}

/// out = a + b, elementwise (residual).
pub fn add(
    dev: &dyn Device,
    out: DeviceSlice<f32>,
    a: DeviceSlice<f32>,
    b: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    let op = "add_forward";
    check_len(op, "a", a.len(), &[out.len()]);
    check_len(op, "b", b.len(), &[out.len()]);
    elementwise(dev, op, &[out, a, b], out.len())
}

/// dst += src, elementwise.
pub fn accumulate(
    dev: &dyn Device,
    dst: DeviceSlice<f32>,
    src: DeviceSlice<f32>,
) -> Result<(), GpuError> {
    let op = "accumulate";
    check_len(op, "src", src.len(), &[dst.len()]);
    elementwise(dev, op, &[dst, src], dst.len())
}
