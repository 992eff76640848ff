// AdamW (decoupled weight decay) for one tensor, and the deterministic f64 sum of squares the
// global gradient norm is built from; and the multi-tensor versions the training step uses: the
// gradient norm over every parameter in two launches (grad_norm_partials, step_finalize), and
// AdamW over every parameter in one (adamw_multi), with the clip factor, learning rate and bias
// corrections read from device memory (kernels/step.cuh). CPU reference: src/ops/adamw.rs
// (adamw_update, sum_squares, clip_scale). Host launchers: src/gpu/kernels/optim.rs.

#include "step.cuh"

// ----------------------------------------------------------------------------------------------
// kernels

#define OPTIM_FULL_MASK 0xffffffffu
#define SUM_SQUARES_BLOCK 256     // threads per block of both sum_squares kernels
#define SUM_SQUARES_PARTIALS 256  // gpu::kernels::SUM_SQUARES_PARTIALS: the most partial sums

// One thread per element. The bias corrections bc1 = 1 − β1^step and bc2 = 1 − β2^step come from
// the host (computed in f64, rounded to f32, as the CPU reference does); the expression order is
// the reference's, so the update matches it up to FMA contraction.
extern "C" __global__ void adamw_update(float* param,       // (n)
                                        const float* grad,  // (n)
                                        float* m,           // (n), first moment
                                        float* v,           // (n), second moment
                                        int n, float lr, float beta1, float beta2, float eps,
                                        float weight_decay,  // 0 for tensors without decay
                                        float bc1, float bc2, float grad_scale) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;  // unsigned: no overflow near 2^31
    if (i >= (unsigned)n) return;
    const float g = grad[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi / bc1;
    const float vhat = vi / bc2;
    const float p = param[i];
    param[i] = p - lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * p);
}

// Sum of a block's doubles in a fixed order, so the same inputs give the same bits whatever order
// the threads run in: lane k of warp 0 adds the SUM_SQUARES_BLOCK / 32 values k, k + 32, ...
// serially (consecutive lanes, consecutive banks), then a shuffle tree adds the 32 lane sums. Thread 0 gets the total. Every thread of
// the block must call it. (One barrier and one shuffle tree: a shuffle tree per warp would cost
// the emulator several times as many thread switches for no measurable gain on the GPU.)
__device__ double sum_squares_block_sum(double v) {
    __shared__ double values[SUM_SQUARES_BLOCK];
    values[threadIdx.x] = v;
    __syncthreads();  // every thread's value is in place
    double total = 0.0;
    if (threadIdx.x < 32) {  // warp 0, whole
        for (int k = threadIdx.x; k < SUM_SQUARES_BLOCK; k += 32) total += values[k];
        for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(OPTIM_FULL_MASK, total, offset);
    }
    return total;
}

// Stage 1: block b sums x[i]² in f64 over i = b·256 + t, stepping by gridDim.x·256, into
// partials[b]. The partition depends only on n and the grid (which the host derives from n).
extern "C" __global__ void sum_squares_partial(double* partials,  // (gridDim.x) <= SUM_SQUARES_PARTIALS
                                               const float* x,    // (n)
                                               int n) {
    const size_t stride = (size_t)gridDim.x * SUM_SQUARES_BLOCK;
    double acc = 0.0;
    for (size_t i = (size_t)blockIdx.x * SUM_SQUARES_BLOCK + threadIdx.x; i < (size_t)n; i += stride) {
        const double xi = (double)x[i];
        acc += xi * xi;
    }
    const double total = sum_squares_block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// Stage 2: one block adds the `count` partials by the same fixed tree into out[0].
extern "C" __global__ void sum_squares_final(double* out,             // (1)
                                             const double* partials,  // (count)
                                             int count) {             // <= SUM_SQUARES_BLOCK
    const double v = (int)threadIdx.x < count ? partials[threadIdx.x] : 0.0;
    const double total = sum_squares_block_sum(v);
    if (threadIdx.x == 0) out[0] = total;
}

// ---- the multi-tensor step -------------------------------------------------------------------
// Every parameter tensor lives in one arena region per kind (parameters, gradients, first and
// second moments), each tensor at the same offset in all four. The host cuts the tensors into
// chunks that never straddle two tensors (src/backend/cuda/arena.rs): chunk c covers
// chunk_len[c] floats at chunk_offset[c], belongs to tensor chunk_tensor[c] (chunks of a tensor
// are consecutive) and decays when chunk_decay[c] is 1. The partition depends only on the
// shapes, so every sum below is in a fixed order: bit-identical run to run.

// Block c: partials[c] = Σ grads[chunk]² in f64.
extern "C" __global__ void grad_norm_partials(double* partials,                       // (chunks)
                                              const float* grads,                    // gradient region
                                              const unsigned long long* chunk_offset,  // (chunks)
                                              const unsigned int* chunk_len,          // (chunks)
                                              int chunks) {
    const int c = blockIdx.x;
    if (c >= chunks) return;  // the whole block
    const float* x = grads + chunk_offset[c];
    const unsigned int n = chunk_len[c];
    double acc = 0.0;
    for (unsigned int i = threadIdx.x; i < n; i += SUM_SQUARES_BLOCK) {
        const double xi = (double)x[i];
        acc += xi * xi;
    }
    const double total = sum_squares_block_sum(acc);
    if (threadIdx.x == 0) partials[c] = total;
}

// 1 − a^n with a^n by repeated squaring in f64, the same sequence of products as Rust's
// f64::powi (LLVM's __powidf2), so the bias corrections equal the CPU reference's bits.
__device__ __forceinline__ float optim_bias_correction(float a, unsigned long long n) {
    double base = (double)a;
    double r = 1.0;
    int b = (int)n;
    for (;;) {
        if (b & 1) r *= base;
        b /= 2;
        if (b == 0) break;
        base *= base;
    }
    return (float)(1.0 - r);
}

// One block (SUM_SQUARES_BLOCK threads) closes a training step on the device: each tensor's Σ g²
// from its chunks' partials (in chunk order), the global Σ g² (in tensor order), the loss sum over
// the N scored rows (IGNORE rows skipped; a block tree in f64), then thread 0 decides:
// the step updates when the loss and the norm are finite and the run has not halted (a
// non-finite step halts it for good, so every later AdamW is skipped, as the host loop stops at
// the first non-finite step it reads); the clip factor is ops::adamw::clip_scale's, the bias
// corrections AdamW's. It writes StepState for adamw_multi and the step's StepRecord into
// ring[step % ring_len]. Per-tensor sums are kept from the first non-finite step on (the host
// names its first non-finite gradient from them).
extern "C" __global__ void step_finalize(StepState* state,                 // (1), persistent
                                         StepRecord* ring,                 // (ring_len)
                                         double* tensor_sq,                // (tensors)
                                         const double* partials,           // (chunks)
                                         const unsigned int* chunk_tensor, // (chunks)
                                         int chunks, int tensors,
                                         const float* losses,              // (N)
                                         const unsigned int* targets,      // (N)
                                         int N,
                                         const StepScalars* sc,            // (1)
                                         float clip, float beta1, float beta2, int ring_len) {
    __shared__ double block_sum;
    __shared__ double block_count;
    double loss = 0.0;
    double scored = 0.0;
    for (int i = threadIdx.x; i < N; i += SUM_SQUARES_BLOCK) {
        if (targets[i] != 0xffffffffu) {  // ops::IGNORE
            loss += (double)losses[i];
            scored += 1.0;
        }
    }
    const double loss_total = sum_squares_block_sum(loss);
    if (threadIdx.x == 0) block_sum = loss_total;
    __syncthreads();  // thread 0's total written before the next sum reuses the shared values
    const double count_total = sum_squares_block_sum(scored);
    if (threadIdx.x == 0) block_count = count_total;
    __syncthreads();
    if (threadIdx.x != 0) return;

    const bool was_halted = state->halted != 0;
    double total = 0.0;
    double acc = 0.0;
    int t = 0;
    bool started = false;
    for (int c = 0; c < chunks; c++) {
        const int tc = (int)chunk_tensor[c];
        if (started && tc != t) {
            if (!was_halted) tensor_sq[t] = acc;
            total += acc;
            acc = 0.0;
        }
        t = tc;
        started = true;
        acc += partials[c];
    }
    if (started) {
        if (!was_halted) tensor_sq[t] = acc;
        total += acc;
    }
    (void)tensors;

    const double sum = block_sum;
    const unsigned long long n = (unsigned long long)block_count;
    const double mean = sum / (double)(n > 0 ? n : 1);
    const double norm = sqrt(total);
    const bool finite = isfinite(mean) && isfinite(norm);
    const bool halted = was_halted || !finite;
    const unsigned long long step = sc->step;
    float factor = 1.0f;
    if (clip > 0.0f && norm > (double)clip) factor = (float)((double)clip / norm);
    state->clip_factor = factor;
    state->bc1 = optim_bias_correction(beta1, step);
    state->bc2 = optim_bias_correction(beta2, step);
    state->update = halted ? 0u : 1u;
    state->halted = halted ? 1u : 0u;
    StepRecord* r = ring + (step % (unsigned long long)ring_len);
    r->step = step;
    r->loss_sum = sum;
    r->scored = n;
    r->grad_sq = total;
    r->updated = halted ? 0u : 1u;
    r->halted = halted ? 1u : 0u;
}

// AdamW over every parameter: block c updates chunk c, as adamw_update with grad_scale =
// state->clip_factor, lr = sc->lr and the bias corrections from state (the same expression, so
// the same bits). Nothing happens when step_finalize said no update.
extern "C" __global__ void adamw_multi(float* params,                         // parameter region
                                       const float* grads,                    // gradient region
                                       float* m,                              // first moments
                                       float* v,                              // second moments
                                       const unsigned long long* chunk_offset, // (chunks)
                                       const unsigned int* chunk_len,         // (chunks)
                                       const unsigned int* chunk_decay,       // (chunks)
                                       int chunks,
                                       const StepState* state,                // (1)
                                       const StepScalars* sc,                 // (1)
                                       float beta1, float beta2, float eps, float weight_decay) {
    const int c = blockIdx.x;
    if (c >= chunks || state->update == 0u) return;
    const unsigned long long off = chunk_offset[c];
    const unsigned int n = chunk_len[c];
    const float lr = sc->lr;
    const float grad_scale = state->clip_factor;
    const float bc1 = state->bc1;
    const float bc2 = state->bc2;
    const float wd = chunk_decay[c] ? weight_decay : 0.0f;
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) {
        const unsigned long long k = off + i;
        const float g = grads[k] * grad_scale;
        const float mi = beta1 * m[k] + (1.0f - beta1) * g;
        const float vi = beta2 * v[k] + (1.0f - beta2) * g * g;
        m[k] = mi;
        v[k] = vi;
        const float mhat = mi / bc1;
        const float vhat = vi / bc2;
        const float p = params[k];
        params[k] = p - lr * (mhat / (sqrtf(vhat) + eps) + wd * p);
    }
}

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels/optim.rs)
//
// adamw_update: block (256), grid (ceil(n / 256)).
// sum_squares_partial: block (256), grid (clamp(ceil(n / 256), 1, SUM_SQUARES_PARTIALS)); 2 KiB of
// static shared memory. sum_squares_final: block (256), grid (1); 2 KiB of static shared memory.
// grad_norm_partials: block (256), grid (chunks). step_finalize: block (256), grid (1).
// adamw_multi: block (256), grid (chunks).
