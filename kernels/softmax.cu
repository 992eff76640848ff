// Causal softmax of attention scores: probs (R, T, T) from scores (R, T, T), R = B·NH. Row i of
// each T×T matrix normalises its entries j <= i (max-subtracted, so large scores do not overflow)
// and writes exact zeros for j > i. CPU reference: src/ops/attention.rs (causal_softmax_forward).
// Host launcher: src/gpu/kernels/attention.rs. The fused softmax + dropout of the attention layer
// is causal_softmax_dropout_forward in kernels/attention.cu.

// ----------------------------------------------------------------------------------------------
// kernels

#define SOFTMAX_FULL_MASK 0xffffffffu

__device__ __forceinline__ float softmax_warp_max(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(SOFTMAX_FULL_MASK, v, offset));
    return v;
}

__device__ __forceinline__ float softmax_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(SOFTMAX_FULL_MASK, v, offset);
    return v;
}

// One warp per row of R·T rows; lanes stride over the row. The exponentials are stored on the
// first pass and rescaled on the second: each lane rereads only entries it wrote itself.
extern "C" __global__ void causal_softmax_forward(float* probs,         // (R, T, T)
                                                  const float* scores,  // (R, T, T)
                                                  int R, int T) {
    const int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (row >= R * T) return;  // whole warps leave together, so the shuffles below see full warps
    const int i = row % T;     // query position: entries 0..=i are live
    const float* x = scores + (size_t)row * T;
    float* y = probs + (size_t)row * T;

    float m = __int_as_float((int)0xff800000);  // -inf: lanes with no live entry must not win the max
    for (int j = lane; j <= i; j += 32) m = fmaxf(m, x[j]);
    m = softmax_warp_max(m);

    float sum = 0.0f;
    for (int j = lane; j <= i; j += 32) {
        const float e = __expf(x[j] - m);
        y[j] = e;
        sum += e;
    }
    sum = softmax_warp_sum(sum);  // >= 1: the max entry contributes exp(0)

    const float inv = 1.0f / sum;
    for (int j = lane; j < T; j += 32) y[j] = j <= i ? y[j] * inv : 0.0f;
}

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels/attention.rs)
//
// causal_softmax_forward: block (128), grid (ceil(R·T / 4)): one warp per row, four rows per
// block; no shared memory.
