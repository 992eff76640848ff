// TEST-ONLY: misuses of the tensor-core wrappers of kernels/mma.cuh that the hardware does not
// allow, each of which the emulator must report (tests/emu_mma.rs), and two cp.async probes that
// pin down when the emulator completes a copy. Never launched by the project.

#include "mma.cuh"

// One TF32 mma on zero operands by every lane that reaches it; d (blockDim.x, 4).
__device__ __forceinline__ void zero_mma(float* d) {
    unsigned a[4] = {0u, 0u, 0u, 0u}, b[2] = {0u, 0u};
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_m16n8k8_tf32(acc, a, b);
    for (int i = 0; i < 4; i++) d[threadIdx.x * 4 + i] = acc[i];
}

// Lane `gone` returns before the mma: .aligned needs all 32 lanes. One warp.
extern "C" __global__ void mma_with_exited_lane(float* d, int gone) {
    if ((int)threadIdx.x == gone) return;
    zero_mma(d);
}

// Launched with a block that is not a whole number of warps: its last warp is partial.
extern "C" __global__ void mma_in_partial_warp(float* d) { zero_mma(d); }

// The two halves of the warp reach different mma instructions. One warp.
extern "C" __global__ void mma_divergent(float* d) {
    unsigned a[4] = {0u, 0u, 0u, 0u}, b[2] = {0u, 0u};
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (threadIdx.x < 16)
        mma_m16n8k8_tf32(acc, a, b);
    else
        mma_m16n8k8_tf32(acc, a, b);
    for (int i = 0; i < 4; i++) d[threadIdx.x * 4 + i] = acc[i];
}

// A TF32 operand passed as raw f32 bits (no cvt.rna.tf32.f32): `x` has low mantissa bits set.
extern "C" __global__ void mma_unconverted_operand(float* d, float x) {
    unsigned a[4] = {__float_as_uint(x), 0u, 0u, 0u}, b[2] = {0u, 0u};
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_m16n8k8_tf32(acc, a, b);
    for (int i = 0; i < 4; i++) d[threadIdx.x * 4 + i] = acc[i];
}

// A 16-byte cp.async to a shared address 4 bytes past a 16-byte boundary. One thread.
extern "C" __global__ void cp_async_misaligned(float* out, const float* in) {
    __shared__ __align__(16) float s[8];
    cp_async_16(&s[1], in);
    cp_async_commit();
    cp_async_wait<0>();
    out[0] = s[1];
}

// out (blockDim.x, 2): each thread copies in[t] into shared slot t with cp.async and commits;
// then, after a barrier but before its wait, every thread reads slot t + 1 (out[.., 0]); after
// the wait and another barrier, slot t + 1 again (out[.., 1]). Reading before the wait is a bug:
// the first value is undefined (the emulator: the NaN poison under the forward schedule, where a
// copy lands at the wait; the copied value under the reverse schedule, where it lands at once).
extern "C" __global__ void cp_async_read_before_wait(float* out, const float* in) {
    __shared__ __align__(16) float s[256];
    const int t = threadIdx.x;
    const int n = blockDim.x;
    cp_async_4(&s[t], &in[t], true);
    cp_async_commit();
    __syncthreads();
    out[t * 2 + 0] = s[(t + 1) % n];
    cp_async_wait<0>();
    __syncthreads();
    out[t * 2 + 1] = s[(t + 1) % n];
}

// out (blockDim.x, 3): three groups per thread (in[t], in[n + t], in[2n + t] into three slots,
// the middle one with src-size 0: zero fill); wait_group 2 completes only the first group,
// wait_group 1 the second, wait_group 0 all. After each wait (and a barrier) thread t reads its
// neighbour's slot of the group that must have landed.
extern "C" __global__ void cp_async_groups(float* out, const float* in) {
    __shared__ __align__(16) float s[3][256];
    const int t = threadIdx.x;
    const int n = blockDim.x;
    const int u = (t + 1) % n;
    cp_async_4(&s[0][t], &in[t], true);
    cp_async_commit();
    cp_async_4(&s[1][t], &in[n + t], false);
    cp_async_commit();
    cp_async_4(&s[2][t], &in[2 * n + t], true);
    cp_async_commit();
    cp_async_wait<2>();
    __syncthreads();
    out[t * 3 + 0] = s[0][u];
    cp_async_wait<1>();
    __syncthreads();
    out[t * 3 + 1] = s[1][u];
    cp_async_wait<0>();
    __syncthreads();
    out[t * 3 + 2] = s[2][u];
}
