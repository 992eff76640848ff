// AdamW (decoupled weight decay) for one tensor, and the deterministic f64 sum of squares the
// global gradient norm is built from. CPU reference: src/ops/adamw.rs (adamw_update,
// sum_squares). Host launchers: src/gpu/kernels/optim.rs.

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

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels/optim.rs)
//
// adamw_update: block (256), grid (ceil(n / 256)).
// sum_squares_partial: block (256), grid (clamp(ceil(n / 256), 1, SUM_SQUARES_PARTIALS)); 2 KiB of
// static shared memory. sum_squares_final: block (256), grid (1); 2 KiB of static shared memory.
