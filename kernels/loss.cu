// Fused softmax + cross-entropy over the vocabulary: the softmax is never stored. Forward writes
// per-row losses; backward recomputes the row's softmax statistics from the logits; the training
// step's forward_backward does both in one pass over each row, with the gradient scale read from
// device memory (kernels/step.cuh). CPU reference: src/ops/loss.rs. Host launchers:
// src/gpu/kernels/loss.rs.

#include "step.cuh"

// ----------------------------------------------------------------------------------------------
// kernels

#define LOSS_FULL_MASK 0xffffffffu
#define LOSS_IGNORE 0xffffffffu  // ops::IGNORE: no target at this position
#define LOSS_NAN __int_as_float(0x7fc00000)
// The running max starts at the most negative finite float, not −inf: a −inf logit then adds
// exp(−inf) = 0 instead of exp(−inf − (−inf)) = NaN.
#define LOSS_LOWEST (-3.402823466e38f)

// Online softmax statistics of one row, one warp: each lane keeps a running max m and the sum s of
// exp(x − m) over its entries (rescaling s when m grows), so the row is read once; then the lanes
// merge their (m, s) pairs by shuffles. On return every lane holds the row's max and Σ exp(x − max)
// (>= 1 when V > 0: the max entry contributes exp(0)).
__device__ __forceinline__ void loss_row_stats(const float* x, int V, int lane, float* max_out, float* sum_out) {
    float m = LOSS_LOWEST;
    float s = 0.0f;
    for (int j = lane; j < V; j += 32) {
        const float v = x[j];
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else {
            s += expf(v - m);
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        const float mo = __shfl_xor_sync(LOSS_FULL_MASK, m, offset);
        const float so = __shfl_xor_sync(LOSS_FULL_MASK, s, offset);
        const float mn = fmaxf(m, mo);
        s = s * expf(m - mn) + so * expf(mo - mn);
        m = mn;
    }
    *max_out = m;
    *sum_out = s;
}

// losses = −log softmax(logits)[target] = log Σ exp(x − max) − (x[target] − max), one warp per row.
// An IGNORE row gets 0; a target >= V (a corrupt batch) gets NaN, never an out-of-bounds read.
extern "C" __global__ void cross_entropy_forward(float* losses,                // (N)
                                                 const float* logits,          // (N, V)
                                                 const unsigned int* targets,  // (N)
                                                 int N, int V) {
    const int row = (int)(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (row >= N) return;  // whole warps leave together, so the shuffles below see full warps
    const unsigned int target = targets[row];
    if (target == LOSS_IGNORE) {  // the same for the whole warp
        if (lane == 0) losses[row] = 0.0f;
        return;
    }
    const float* x = logits + (size_t)row * V;
    float m, s;
    loss_row_stats(x, V, lane, &m, &s);
    if (lane == 0) losses[row] = target < (unsigned int)V ? logf(s) - (x[target] - m) : LOSS_NAN;
}

// dlogits += scale · (softmax(logits) − onehot(target)), one warp per row; IGNORE rows untouched, a
// target >= V makes the row NaN.
extern "C" __global__ void cross_entropy_backward(float* dlogits,               // (N, V), accumulated
                                                  const float* logits,          // (N, V)
                                                  const unsigned int* targets,  // (N)
                                                  float scale, int N, int V) {
    const int row = (int)(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (row >= N) return;  // whole warps leave together
    const unsigned int target = targets[row];
    if (target == LOSS_IGNORE) return;
    const float* x = logits + (size_t)row * V;
    float* d = dlogits + (size_t)row * V;
    float m, s;
    loss_row_stats(x, V, lane, &m, &s);
    const float inv = target < (unsigned int)V ? 1.0f / s : LOSS_NAN;
    for (int j = lane; j < V; j += 32) {
        const float p = expf(x[j] - m) * inv;
        d[j] += scale * (p - ((unsigned int)j == target ? 1.0f : 0.0f));
    }
}

// The training step's loss: losses as cross_entropy_forward, and dlogits OVERWRITTEN with
// sc->loss_scale · (softmax(logits) − onehot(target)) (zero rows for IGNORE targets), from one
// reading of each row's statistics: cross_entropy_forward then cross_entropy_backward into a
// zeroed dlogits, in one launch and one pass.
extern "C" __global__ void cross_entropy_forward_backward(float* losses,                // (N)
                                                          float* dlogits,               // (N, V)
                                                          const float* logits,          // (N, V)
                                                          const unsigned int* targets,  // (N)
                                                          const StepScalars* sc,        // (1)
                                                          int N, int V) {
    const int row = (int)(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (row >= N) return;  // whole warps leave together
    const unsigned int target = targets[row];
    float* d = dlogits + (size_t)row * V;
    if (target == LOSS_IGNORE) {
        if (lane == 0) losses[row] = 0.0f;
        for (int j = lane; j < V; j += 32) d[j] = 0.0f;
        return;
    }
    const float* x = logits + (size_t)row * V;
    float m, s;
    loss_row_stats(x, V, lane, &m, &s);
    const bool valid = target < (unsigned int)V;
    if (lane == 0) losses[row] = valid ? logf(s) - (x[target] - m) : LOSS_NAN;
    const float scale = sc->loss_scale;
    const float inv = valid ? 1.0f / s : LOSS_NAN;
    for (int j = lane; j < V; j += 32) {
        const float p = expf(x[j] - m) * inv;
        d[j] = 0.0f + scale * (p - ((unsigned int)j == target ? 1.0f : 0.0f));
    }
}

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels/loss.rs)
//
// cross_entropy_forward, cross_entropy_backward, cross_entropy_forward_backward: block (128), grid
// (ceil(N / 4)): one warp per row, four rows per block; no shared memory.
