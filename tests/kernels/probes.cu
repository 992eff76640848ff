// TEST-ONLY: small kernels that pin down the emulator's CUDA semantics (tests/emu_semantics.rs):
// indices, shuffles on partial warps, votes, shared-memory poisoning, early exit past barriers,
// atomics, counting barriers and warp-synchronous code. Never launched by the project.

// out (gridDim · blockDim, 8): every thread's view of the built-in variables.
extern "C" __global__ void probe_indices(int* out) {
    const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int nthreads = blockDim.x * blockDim.y * blockDim.z;
    int* o = out + (size_t)(block * nthreads + thread) * 8;
    o[0] = threadIdx.x;
    o[1] = threadIdx.y;
    o[2] = threadIdx.z;
    o[3] = blockIdx.x;
    o[4] = blockIdx.y;
    o[5] = blockIdx.z;
    o[6] = nthreads;
    o[7] = gridDim.x * gridDim.y * gridDim.z;
}

// out (blockDim.x, 8): warp collectives, with a partial last warp when blockDim.x % 32 != 0.
extern "C" __global__ void probe_shuffles(int* out) {
    const int t = threadIdx.x;
    const int warp_threads = min(32, (int)blockDim.x - (t / 32) * 32);
    const unsigned mask = warp_threads == 32 ? 0xffffffffu : (1u << warp_threads) - 1u;
    const int v = t * 10;
    int* o = out + t * 8;
    o[0] = __shfl_sync(mask, v, 3);
    o[1] = __shfl_up_sync(mask, v, 2);
    o[2] = __shfl_down_sync(mask, v, 5);
    o[3] = __shfl_xor_sync(mask, v, 1, 8);
    o[4] = __shfl_sync(mask, v, 2, 16);
    o[5] = (int)__ballot_sync(mask, t % 3 == 0);
    o[6] = __any_sync(mask, t == 40);
    o[7] = __all_sync(mask, t < 47);
}

// out (gridDim.x, 2, 64) as f32 bits: block b's view of a static and a dynamic shared array of
// which thread 0 wrote only the first 32 entries. Needs 64 threads and 256 B dynamic memory.
extern "C" __global__ void probe_shared_poison(unsigned* out) {
    __shared__ float s[64];
    extern __shared__ float dyn[];
    if (threadIdx.x == 0)
        for (int i = 0; i < 32; i++) s[i] = dyn[i] = (float)(blockIdx.x + 1);
    __syncthreads();
    out[(blockIdx.x * 2 + 0) * 64 + threadIdx.x] = __float_as_uint(s[threadIdx.x]);
    out[(blockIdx.x * 2 + 1) * 64 + threadIdx.x] = __float_as_uint(dyn[threadIdx.x]);
}

// out (blockDim.x): threads >= live leave at once; the rest pass two barriers without them.
extern "C" __global__ void probe_early_exit(int* out, int live) {
    __shared__ int s[1024];
    const int t = threadIdx.x;
    if (t >= live) return;
    s[t] = t * 2;
    __syncthreads();
    const int next = s[(t + 1) % live];
    __syncthreads();
    s[t] = next + 1;
    __syncthreads();
    out[t] = s[t];
}

// Order-independent atomics over the whole grid; outputs start zeroed.
// iout (4), uout (4), fout (1), ull (1)
extern "C" __global__ void probe_atomics(int* iout, unsigned* uout, float* fout, unsigned long long* ull) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(&iout[0], 1);
    atomicMax(&iout[1], g);
    atomicMin(&iout[2], -g);
    atomicSub(&iout[3], 2);
    atomicInc(&uout[0], 9u);  // counts modulo 10
    atomicOr(&uout[1], 1u << (g % 32));
    atomicAdd(&uout[2], (unsigned)g);
    unsigned old = atomicAdd(&uout[3], 0u);  // a CAS loop: uout[3] = max(uout[3], g * 3)
    while (old < (unsigned)g * 3u) {
        const unsigned seen = atomicCAS(&uout[3], old, (unsigned)g * 3u);
        if (seen == old) break;
        old = seen;
    }
    atomicAdd(fout, 0.5f);
    atomicAdd(ull, 1ull << 33);
}

// out (3): the counting barriers over one block.
extern "C" __global__ void probe_sync_count(int* out) {
    const int t = threadIdx.x;
    const int count = __syncthreads_count(t % 3 == 0);
    const int all = __syncthreads_and(t < 1000);
    const int any = __syncthreads_or(t == 5);
    if (t == 0) {
        out[0] = count;
        out[1] = all;
        out[2] = any;
    }
}

// out (1): sum of 64 floats, finished by one warp in shared memory. The legacy pre-Volta form
// relies on lanes running in lockstep and races without it; the fixed form separates each step's
// reads from its writes with __syncwarp. Launch one block of 64 threads.
__device__ float warp_tail_sum(const float* in, bool syncwarp) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    s[t] = in[t];
    __syncthreads();
    if (t < 32) {
        volatile float* v = s;
        for (int offset = 32; offset > 0; offset /= 2) {
            if (syncwarp) {
                const float x = v[t] + v[t + offset];
                __syncwarp();
                v[t] = x;
                __syncwarp();
            } else {
                v[t] = v[t] + v[t + offset];  // BUG on Volta and later: no lockstep
            }
        }
    }
    __syncthreads();
    return s[0];
}

extern "C" __global__ void probe_warp_sum_syncwarp(float* out, const float* in) {
    const float r = warp_tail_sum(in, true);
    if (threadIdx.x == 0) out[0] = r;
}

extern "C" __global__ void probe_warp_sum_no_syncwarp(float* out, const float* in) {
    const float r = warp_tail_sum(in, false);
    if (threadIdx.x == 0) out[0] = r;
}

// out (4) = the 16 bytes at in + offset, read as one float4 (global), written as one float4 into
// shared memory at float index soff and read back; then out[4..6) = the float2 at in + offset2.
// One thread. A 16-byte access needs offset and soff multiples of 4 floats, an 8-byte one offset2
// even (in and the shared array are 16-byte aligned): otherwise the GPU faults the launch.
extern "C" __global__ void probe_vector_access(float* out, const float* in, int offset, int soff, int offset2) {
    __shared__ __align__(16) float s[12];
    const float4 v = *reinterpret_cast<const float4*>(in + offset);
    *reinterpret_cast<float4*>(&s[soff]) = v;
    for (int i = 0; i < 4; i++) out[i] = s[soff + i];
    const float2 w = *reinterpret_cast<const float2*>(in + offset2);
    out[4] = w.x;
    out[5] = w.y;
}
