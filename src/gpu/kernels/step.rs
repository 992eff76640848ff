//! What a training step changes on the device from one step to the next: kernels/step.cuh's
//! structs, mirrored here (`#[repr(C)]`, the same field order and sizes; the tests below check the
//! sizes against the C layout). The host writes [`StepScalars`] before each step; the kernels
//! read it from memory, so a step captured into a CUDA graph replays correctly for every step.

use bytemuck::{Pod, Zeroable};

/// StepScalars in kernels/step.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct StepScalars {
    /// 1-based optimizer step: the dropout key, AdamW's bias correction, the record's ring slot.
    pub step: u64,
    pub lr: f32,
    /// 1 / scored targets: the mean loss's gradient scale.
    pub loss_scale: f32,
}

/// StepState in kernels/step.cuh: what step_finalize decided for adamw_multi.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct StepState {
    pub clip_factor: f32,
    pub bc1: f32,
    pub bc2: f32,
    pub update: u32,
    /// Sticky: a step had a non-finite loss or gradient norm; AdamW has not run since.
    pub halted: u32,
    pub pad: u32,
}

/// StepRecord in kernels/step.cuh: one finished step, as the host reads it back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct StepRecord {
    pub step: u64,
    pub loss_sum: f64,
    pub scored: u64,
    pub grad_sq: f64,
    pub updated: u32,
    pub halted: u32,
}

/// Bytes of a [`StepScalars`] on the device.
pub const STEP_SCALARS_BYTES: usize = std::mem::size_of::<StepScalars>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structs_have_the_c_layout_of_step_cuh() {
        // unsigned long long, float, float / 6 x 32-bit / u64, f64, u64, f64, u32, u32
        assert_eq!(std::mem::size_of::<StepScalars>(), 16);
        assert_eq!(std::mem::size_of::<StepState>(), 24);
        assert_eq!(std::mem::size_of::<StepRecord>(), 40);
        assert_eq!(std::mem::align_of::<StepRecord>(), 8);
    }
}
