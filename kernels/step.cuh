// What changes from one training step to the next, as the device reads it: from memory, never as
// kernel arguments, so that a step captured into a CUDA graph once replays correctly for every
// later step (a graph copies kernel arguments at capture). The host writes StepScalars with one
// async copy before each step; step_finalize (kernels/optim.cu) writes StepState for AdamW and
// one StepRecord per step into a ring the host reads when it logs. Mirrored by #[repr(C)]
// structs in src/backend/cuda/step.rs: change both together.

#ifndef ROBO_POET_STEP_CUH
#define ROBO_POET_STEP_CUH

struct StepScalars {
    unsigned long long step;  // 1-based optimizer step: dropout key, bias correction, ring slot
    float lr;                 // learning rate of this step
    float loss_scale;         // 1 / (scored targets of the batch): the mean loss's gradient scale
};

struct StepState {
    float clip_factor;    // multiplies every gradient (global-norm clipping)
    float bc1;            // 1 - beta1^step, in f64 then rounded, as src/ops/adamw.rs
    float bc2;            // 1 - beta2^step
    unsigned int update;  // 1: AdamW applies this step
    unsigned int halted;  // sticky: a step had a non-finite loss or gradient norm; no update since
    unsigned int pad;
};

struct StepRecord {
    unsigned long long step;
    double loss_sum;             // Σ losses over the scored targets
    unsigned long long scored;   // scored targets
    double grad_sq;              // Σ over every parameter of Σ grad², before clipping
    unsigned int updated;        // AdamW applied
    unsigned int halted;         // the run had halted (this step or earlier)
};

#endif  // ROBO_POET_STEP_CUH
