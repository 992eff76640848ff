// Layernorm (forward, backward), GELU (tanh approximation, forward, backward), the residual add
// and gradient accumulation. CPU reference: src/ops/norm.rs. Host launchers:
// src/gpu/kernels/norm.rs.

// ----------------------------------------------------------------------------------------------
// kernels

#define NORM_FULL_MASK 0xffffffffu
#define LAYERNORM_EPS 1e-5f           // ops::norm::LAYERNORM_EPS
#define LN_PARAMS_ROW_LANES 32        // layernorm_backward_params: block (32, LN_PARAMS_ROW_LANES)
#define GELU_K 0.7978846f             // sqrt(2/pi), as ops::norm's GELU_K

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

// dinp of layernorm, one warp per row: with x̂ = (x − mean)·rstd and dx̂ = dout·weight,
// dinp += rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)).
extern "C" __global__ void layernorm_backward_input(float* dinp,          // (N, C), accumulated
                                                    const float* dout,    // (N, C)
                                                    const float* inp,     // (N, C)
                                                    const float* weight,  // (C)
                                                    const float* mean,    // (N)
                                                    const float* rstd,    // (N)
                                                    int N, int C) {
    const int row = (int)(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (row >= N) return;  // whole warps leave together
    const float* x = inp + (size_t)row * C;
    const float* d = dout + (size_t)row * C;
    float* dx = dinp + (size_t)row * C;
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
        dx[i] += rs * (d[i] * weight[i] - m1 - xh * m2);
    }
}

// dweight and dbias of layernorm: column sums over the N rows, deterministic without atomics.
// A block owns 32 columns; thread (tx, ty) sums rows ty, ty + 32, ... of column c0 + tx in f64
// (a warp reads 32 consecutive floats of one row: coalesced), then thread (tx, 0) adds the 32
// row-lane partials in ty order. The partition depends only on N, so the result is bit-identical
// run to run.
extern "C" __global__ void layernorm_backward_params(float* dweight,      // (C), accumulated
                                                     float* dbias,        // (C), accumulated
                                                     const float* dout,   // (N, C)
                                                     const float* inp,    // (N, C)
                                                     const float* mean,   // (N)
                                                     const float* rstd,   // (N)
                                                     int N, int C) {
    __shared__ double dw_part[LN_PARAMS_ROW_LANES][32];  // (row lane, column of the block)
    __shared__ double db_part[LN_PARAMS_ROW_LANES][32];

    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int c = blockIdx.x * 32 + tx;

    double dw = 0.0;
    double db = 0.0;
    if (c < C) {
        for (int n = ty; n < N; n += LN_PARAMS_ROW_LANES) {
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

    if (ty != 0 || c >= C) return;
    double sw = 0.0;
    double sb = 0.0;
    for (int r = 0; r < LN_PARAMS_ROW_LANES; r++) {
        sw += dw_part[r][tx];
        sb += db_part[r][tx];
    }
    dweight[c] = (float)((double)dweight[c] + sw);
    dbias[c] = (float)((double)dbias[c] + sb);
}

// tanh through one exp, 1 − 2 / (e^{2u} + 1), as ops::tanh_fast: saturates cleanly to ±1.
__device__ __forceinline__ float norm_tanh(float u) { return 1.0f - 2.0f / (expf(2.0f * u) + 1.0f); }

// The elementwise kernels below: one thread per element. The index is unsigned so that it cannot
// overflow in the last block when n is near 2^31.
extern "C" __global__ void gelu_forward(float* out,        // (n)
                                        const float* inp,  // (n)
                                        int n) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned)n) return;
    const float x = inp[i];
    out[i] = 0.5f * x * (1.0f + norm_tanh(GELU_K * (x + 0.044715f * x * x * x)));
}

extern "C" __global__ void gelu_backward(float* dinp,        // (n), accumulated
                                         const float* inp,   // (n)
                                         const float* dout,  // (n)
                                         int n) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned)n) return;
    const float x = inp[i];
    const float t = norm_tanh(GELU_K * (x + 0.044715f * x * x * x));
    const float du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
    const float grad = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    dinp[i] += grad * dout[i];
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
// layernorm_forward, layernorm_backward_input: block (128), grid (ceil(N / 4)): one warp per row,
// four rows per block; no shared memory.
// layernorm_backward_params: block (32, 32), grid (ceil(C / 32)); 16 KiB of static shared memory.
// gelu_forward, gelu_backward, add_forward, accumulate: block (256), grid (ceil(n / 256)).
