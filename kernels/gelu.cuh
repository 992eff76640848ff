// GELU, tanh approximation, as src/ops/norm.rs (gelu_forward, gelu_backward): shared by the
// elementwise kernels (kernels/norm.cu) and the matmul epilogues that fuse it (kernels/matmul.cu),
// so both give the same bits.

#ifndef ROBO_POET_GELU_CUH
#define ROBO_POET_GELU_CUH

#define GELU_K 0.7978846f  // sqrt(2/pi), as ops::norm's GELU_K

// tanh through one exp, 1 − 2 / (e^{2u} + 1), as ops::tanh_fast: saturates cleanly to ±1.
__device__ __forceinline__ float gelu_tanh(float u) { return 1.0f - 2.0f / (expf(2.0f * u) + 1.0f); }

__device__ __forceinline__ float gelu_value(float x) {
    return 0.5f * x * (1.0f + gelu_tanh(GELU_K * (x + 0.044715f * x * x * x)));
}

// d gelu(x) / dx.
__device__ __forceinline__ float gelu_grad(float x) {
    const float t = gelu_tanh(GELU_K * (x + 0.044715f * x * x * x));
    const float du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

#endif  // ROBO_POET_GELU_CUH
