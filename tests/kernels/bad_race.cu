// TEST-ONLY: a race between blocks on global memory, which no schedule of one block at a time
// can expose; only ThreadSanitizer sees it (tests/emu_bad_kernels.rs). Never launched by the
// project.

// out (gridDim.x · blockDim.x): block b writes slots shifted by b, so block 1's last thread
// writes the slot block 0's first thread wrote.
extern "C" __global__ void cross_block_race(float* out) {
    const int n = gridDim.x * blockDim.x;
    out[(blockIdx.x * blockDim.x + threadIdx.x + blockIdx.x) % n] = (float)blockIdx.x;
}

// out (blockDim.x): each thread publishes a value in shared memory and reads its lower
// neighbour's with no barrier in between. In thread order the neighbour has always written
// first, so only the reverse schedule (or ThreadSanitizer) exposes the missing barrier.
extern "C" __global__ void neighbour_read_without_barrier(float* out) {
    __shared__ float s[1024];
    const int t = threadIdx.x;
    s[t] = (float)t;
    out[t] = t > 0 ? s[t - 1] : 0.0f;  // BUG: no __syncthreads() since the neighbour's write
}

// count (1): every thread of the grid adds 1 with a plain read-modify-write instead of atomicAdd.
// One thread at a time never interleaves inside the += , so the count comes out right here; only
// ThreadSanitizer reports it.
extern "C" __global__ void count_without_atomic(int* count) {
    *count += 1;  // BUG: atomicAdd(count, 1)
}
