// TEST-ONLY: a race between blocks on global memory, which no schedule of one block at a time
// can expose; only ThreadSanitizer sees it (tests/emu_bad_kernels.rs). Never launched by the
// project.

// out (gridDim.x · blockDim.x): block b writes slots shifted by b, so block 1's last thread
// writes the slot block 0's first thread wrote.
extern "C" __global__ void cross_block_race(float* out) {
    const int n = gridDim.x * blockDim.x;
    out[(blockIdx.x * blockDim.x + threadIdx.x + blockIdx.x) % n] = (float)blockIdx.x;
}
