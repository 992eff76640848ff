// TEST-ONLY: kernels whose threads wait for each other forever on a GPU (or do something
// undefined there). The test bench must report each with the file:line of the waits instead of
// hanging (tests/emu_bad_kernels.rs). Never launched by the project.

// Half of each warp waits at one barrier, the other half at another: every thread has arrived
// somewhere, but no barrier has all of the block.
extern "C" __global__ void divergent_syncthreads(float* out) {  // out (blockDim.x)
    float v = (float)threadIdx.x;
    if (threadIdx.x % 32 < 16) {
        __syncthreads();
        v += 1.0f;
    } else {
        __syncthreads();
        v -= 1.0f;
    }
    out[threadIdx.x] = v;
}

// Lanes 0-15 wait at the barrier for lanes 16-31, which wait in a full-warp shuffle for lanes 0-15.
extern "C" __global__ void barrier_vs_shuffle(float* out) {  // out (blockDim.x)
    float v = (float)threadIdx.x;
    if (threadIdx.x % 32 < 16) {
        __syncthreads();
    } else {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    }
    out[threadIdx.x] = v;
}

// Lane 0 shuffles with a mask that leaves itself out: undefined on the GPU.
extern "C" __global__ void shuffle_mask_without_caller(float* out) {  // out (blockDim.x)
    float v = (float)threadIdx.x;
    v = __shfl_down_sync(0xfffffffeu, v, 1);
    out[threadIdx.x] = v;
}
