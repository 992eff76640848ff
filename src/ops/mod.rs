//! The CPU reference: every operation of both models, forward and backward, as plain functions
//! over f32 slices with explicit shapes. This is the oracle the CUDA kernels are tested against
//! and the training path on machines without a GPU.
//!
//! Conventions (llm.c's names): B batch, T time, C channels, NH heads, HS head size (C / NH),
//! V vocabulary, H LSTM hidden size, N rows (B*T). Tensors are row-major. Every backward
//! ACCUMULATES (`+=`) into its gradient outputs, so a tensor used twice gets both contributions;
//! the training loop zeroes gradients before each backward pass.
//!
//! Each function checks that every slice has exactly the length its shape implies and panics
//! with the op's name, the argument, the expected shape and the actual length otherwise (a shape
//! mismatch is a bug in the caller, never user input).

pub mod adamw;
pub mod attention;
pub mod attention_fused;
pub mod costs;
pub mod embedding;
pub mod gemm;
pub mod loss;
pub mod lstm;
pub mod matmul;
pub mod norm;
pub mod recurrence;
#[cfg(test)]
pub(crate) mod testutil;

use crate::tensor::Shape;

/// Target id meaning "no target here": contributes neither loss nor gradient.
pub const IGNORE: u32 = u32::MAX;

/// Panics unless `len` equals the product of `shape`.
#[track_caller]
pub fn check_len(op: &str, arg: &str, len: usize, shape: &[usize]) {
    let want: usize = shape.iter().product();
    if len != want {
        panic!(
            "shape mismatch in {op}: {arg} expected shape {} ({want} elements), got {len} elements",
            Shape(shape)
        );
    }
}

/// tanh through one exp: 1 − 2 / (e^{2u} + 1). Saturates cleanly (e^{2u} = inf gives 1, 0 gives
/// −1) and is 3-4x faster than libm's tanhf, which dominated GELU's and the LSTM cell's cost. Absolute error ~1e-7.
#[inline]
pub fn tanh_fast(u: f32) -> f32 {
    1.0 - 2.0 / ((2.0 * u).exp() + 1.0)
}

/// Rows per rayon task for row-parallel loops: enough work per task to amortise scheduling.
pub(crate) fn rows_per_task(rows: usize, row_cost: usize) -> usize {
    let min_work = 16 * 1024;
    (min_work / row_cost.max(1)).clamp(1, rows.max(1))
}
