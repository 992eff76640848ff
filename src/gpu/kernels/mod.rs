//! Launchers for the kernels in kernels/*.cu: shape checks, launch configuration and parameter
//! list, one function per kernel (or per short chain of kernels), named after the op. One module
//! per kernel family; everything is re-exported here. They run on any [`Device`](crate::gpu::Device); the launch shapes
//! are also noted at the end of each .cu file.
//!
//! Shapes follow src/ops (the CPU reference): a slice whose length does not match its shape is a
//! bug in the caller and panics with the op, the argument and both shapes.

/// Blocks of `per_block` items needed to cover `n` items.
pub(crate) fn blocks(n: usize, per_block: usize) -> u32 {
    u32::try_from(n.div_ceil(per_block)).expect("grid dimension does not fit in u32")
}

/// A dimension as the kernels' `int`.
pub(crate) fn int(op: &str, what: &str, v: usize) -> i32 {
    i32::try_from(v).unwrap_or_else(|_| panic!("{op}: {what} = {v} does not fit in a CUDA int"))
}

pub mod attention;
pub mod attention_fused;
pub mod embedding;
pub mod loss;
pub mod lstm;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod step;

pub use attention::*;
pub use attention_fused::*;
pub use embedding::*;
pub use loss::*;
pub use lstm::*;
pub use matmul::*;
pub use norm::*;
pub use optim::*;
pub use step::*;
