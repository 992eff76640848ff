// Layernorm (forward, backward), GELU (tanh approximation, forward, backward), the residual add
// and gradient accumulation; and the fused forms the training step uses: residual add +
// layernorm forward, and the whole layernorm backward (input gradient, plus an optional residual
// gradient, and the weight and bias gradients split over rows) in one launch. CPU reference:
// src/ops/norm.rs. Host launchers: src/gpu/kernels/norm.rs.

// ----------------------------------------------------------------------------------------------
// kernels

#define NORM_FULL_MASK 0xffffffffu
#define LAYERNORM_EPS 1e-5f           // ops::norm::LAYERNORM_EPS

#include "gelu.cuh"

__device__ __forceinline__ float norm_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(NORM_FULL_MASK, v, offset);
    return v;
}

// One warp per row of N rows; lanes stride over the C channels. Two passes over the row (mean,
// then the squared deviations from it) in f32: the one-pass E[x²] − E[x]² cancels badly when
// |mean| >> std. The row stays in L1 between passes.
extern "C" __global__ void layernorm_forward(float* out,           // (N, C)
                                             float* mean,          // (N)
                                             float* rstd,          // (N)
                                             const float* inp,     // (N, C)
                                             const float* weight,  // (C)
                                             const float* bias,    // (C)
                                             int N, int C) {
    const int row = (int)(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (row >= N) return;  // whole warps leave together, so the shuffles below see full warps
    const float* x = inp + (size_t)row * C;
    float* y = out + (size_t)row * C;

    float sum = 0.0f;
    for (int i = lane; i < C; i += 32) sum += x[i];
    const float mu = norm_warp_sum(sum) / (float)C;

    float sq = 0.0f;
    for (int i = lane; i < C; i += 32) {
        const float d = x[i] - mu;
        sq += d * d;
    }
    const float rs = rsqrtf(norm_warp_sum(sq) / (float)C + LAYERNORM_EPS);

    for (int i = lane; i < C; i += 32) y[i] = (x[i] - mu) * rs * weight[i] + bias[i];
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

// res = a + b, then out = layernorm(res) · weight + bias with its mean and rstd, one warp per
// row: the residual add and layernorm_forward of the same row in one launch, with the same
// arithmetic (so the same bits as add_forward then layernorm_forward).
extern "C" __global__ void add_layernorm_forward(float* res,           // (N, C)
                                                 float* out,           // (N, C)
                                                 float* mean,          // (N)
                                                 float* rstd,          // (N)
                                                 const float* a,       // (N, C)
                                                 const float* b,       // (N, C)
                                                 const float* weight,  // (C)
                                                 const float* bias,    // (C)
                                                 int N, int C) {
    const int row = (int)(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (row >= N) return;  // whole warps leave together
    const size_t o = (size_t)row * C;
    float* x = res + o;
    float* y = out + o;

    float sum = 0.0f;
    for (int i = lane; i < C; i += 32) {
        const float r = a[o + i] + b[o + i];
        x[i] = r;  // each lane reads back only what it wrote
        sum += r;
    }
    const float mu = norm_warp_sum(sum) / (float)C;

    float sq = 0.0f;
    for (int i = lane; i < C; i += 32) {
        const float d = x[i] - mu;
        sq += d * d;
    }
    const float rs = rsqrtf(norm_warp_sum(sq) / (float)C + LAYERNORM_EPS);

    for (int i = lane; i < C; i += 32) y[i] = (x[i] - mu) * rs * weight[i] + bias[i];
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

#define LN_BWD_THREADS 256               // layernorm_backward's block
#define LN_BWD_ROWS (LN_BWD_THREADS / 32)  // rows per input-gradient block; row lanes per params block

// The whole layernorm backward in one launch; blocks have two roles:
// - blocks [0, row_blocks): dinp of LN_BWD_ROWS rows, one warp per row: with x̂ = (x − mean)·rstd
//   and dx̂ = dout·weight, dinp += rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)), then + dresidual
//   (when given) as `accumulate` would add it;
// - the next col_blocks · splits blocks: column partial sums of dweight and dbias over the rows
//   [split · row_chunk, (split + 1) · row_chunk) of 32 columns, thread (tx, ty) summing column
//   c0 + tx over rows ty, ty + LN_BWD_ROWS, ... of the chunk in f64, then the LN_BWD_ROWS lanes
//   in ty order, into partials[(split · 2 + {0, 1}) · C + c]. The last block of a column group
//   to finish (an integer counter: which block is last does not change any sum) adds the splits'
//   partials in split order to dweight and dbias, and resets the counter for the next launch.
// Deterministic: every partition depends on N, C and splits only; no float atomics.
extern "C" __global__ void __launch_bounds__(LN_BWD_THREADS)
    layernorm_backward(float* dinp,              // (N, C), accumulated
                       float* dweight,           // (C), accumulated
                       float* dbias,             // (C), accumulated
                       double* partials,         // (splits, 2, C)
                       unsigned int* counters,   // (col_blocks), zero between launches
                       const float* dout,        // (N, C)
                       const float* inp,         // (N, C)
                       const float* weight,      // (C)
                       const float* mean,        // (N)
                       const float* rstd,        // (N)
                       const float* dresidual,   // (N, C), or null
                       int N, int C, int row_chunk, int splits) {
    const int row_blocks = (N + LN_BWD_ROWS - 1) / LN_BWD_ROWS;
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    if ((int)blockIdx.x < row_blocks) {
        const int row = (int)blockIdx.x * LN_BWD_ROWS + warp;
        if (row >= N) return;  // whole warps
        const size_t o = (size_t)row * C;
        const float* x = inp + o;
        const float* d = dout + o;
        float* dx = dinp + o;
        const float mu = mean[row];
        const float rs = rstd[row];
        float sum_dxh = 0.0f;
        float sum_dxh_xh = 0.0f;
        for (int i = lane; i < C; i += 32) {
            const float xh = (x[i] - mu) * rs;
            const float dxh = d[i] * weight[i];
            sum_dxh += dxh;
            sum_dxh_xh += dxh * xh;
        }
        const float m1 = norm_warp_sum(sum_dxh) / (float)C;
        const float m2 = norm_warp_sum(sum_dxh_xh) / (float)C;
        for (int i = lane; i < C; i += 32) {
            const float xh = (x[i] - mu) * rs;
            float g = dx[i] + rs * (d[i] * weight[i] - m1 - xh * m2);
            if (dresidual) g += dresidual[o + i];
            dx[i] = g;
        }
        return;
    }

    __shared__ double dw_part[LN_BWD_ROWS][32];  // (row lane, column of the block)
    __shared__ double db_part[LN_BWD_ROWS][32];
    __shared__ unsigned int is_last;
    const int col_blocks = (C + 31) / 32;
    const int p = (int)blockIdx.x - row_blocks;
    const int group = p % col_blocks;
    const int split = p / col_blocks;
    const int tx = lane;
    const int ty = warp;
    const int c = group * 32 + tx;
    const int row_begin = split * row_chunk;
    const int row_end = min(N, row_begin + row_chunk);
    double dw = 0.0;
    double db = 0.0;
    if (c < C) {
        for (int n = row_begin + ty; n < row_end; n += LN_BWD_ROWS) {
            const size_t k = (size_t)n * C + c;
            const float xh = (inp[k] - mean[n]) * rstd[n];
            const float g = dout[k];
            dw += (double)(g * xh);  // product rounded to f32 first, as the CPU reference does
            db += (double)g;
        }
    }
    dw_part[ty][tx] = dw;
    db_part[ty][tx] = db;
    __syncthreads();  // every row lane's partial is in place
    if (splits == 1) {  // the only split: straight into the gradients, no partials or counters
        if (ty == 0 && c < C) {
            double sw = 0.0;
            double sb = 0.0;
            for (int r = 0; r < LN_BWD_ROWS; r++) {
                sw += dw_part[r][tx];
                sb += db_part[r][tx];
            }
            dweight[c] = (float)((double)dweight[c] + sw);
            dbias[c] = (float)((double)dbias[c] + sb);
        }
        return;
    }
    if (ty == 0 && c < C) {
        double sw = 0.0;
        double sb = 0.0;
        for (int r = 0; r < LN_BWD_ROWS; r++) {
            sw += dw_part[r][tx];
            sb += db_part[r][tx];
        }
        partials[((size_t)split * 2 + 0) * C + c] = sw;
        partials[((size_t)split * 2 + 1) * C + c] = sb;
        __threadfence();  // the partials are visible to every block before the counter moves
    }
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(&counters[group], 1u) == (unsigned int)(splits - 1);
    __syncthreads();
    if (!is_last) return;
    if (ty == 0 && c < C) {
        double sw = 0.0;
        double sb = 0.0;
        for (int s = 0; s < splits; s++) {  // split order, whichever block came last
            sw += __ldcg(&partials[((size_t)s * 2 + 0) * C + c]);
            sb += __ldcg(&partials[((size_t)s * 2 + 1) * C + c]);
        }
        dweight[c] = (float)((double)dweight[c] + sw);
        dbias[c] = (float)((double)dbias[c] + sb);
    }
    if (threadIdx.x == 0) counters[group] = 0u;
}

// The elementwise kernels below: one thread per element. The index is unsigned so that it cannot
// overflow in the last block when n is near 2^31.
extern "C" __global__ void gelu_forward(float* out,        // (n)
                                        const float* inp,  // (n)
                                        int n) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned)n) return;
    out[i] = gelu_value(inp[i]);
}

extern "C" __global__ void gelu_backward(float* dinp,        // (n), accumulated
                                         const float* inp,   // (n)
                                         const float* dout,  // (n)
                                         int n) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned)n) return;
    dinp[i] += gelu_grad(inp[i]) * dout[i];
}

extern "C" __global__ void add_forward(float* out,      // (n)
                                       const float* a,  // (n)
                                       const float* b,  // (n)
                                       int n) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (unsigned)n) out[i] = a[i] + b[i];
}

extern "C" __global__ void accumulate(float* dst,        // (n), accumulated
                                      const float* src,  // (n)
                                      int n) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (unsigned)n) dst[i] += src[i];
}

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels/norm.rs)
//
// layernorm_forward, add_layernorm_forward: block (128), grid (ceil(N / 4)): one warp per row,
// four rows per block; no shared memory.
// layernorm_backward: block (256), grid (ceil(N / 8) + ceil(C / 32) · splits); 4 KiB static shared
// memory; partials (splits, 2, C) f64 and counters (ceil(C / 32)) u32 from the caller when
// splits > 1 (none with one split).
// gelu_forward, gelu_backward, add_forward, accumulate: block (256), grid (ceil(n / 256)).
