// TEST-ONLY: a store just before the start of a buffer, which the emulated device's leading
// guard band (or AddressSanitizer) must report (tests/emu_bad_kernels.rs). Never launched by the
// project.

// out (blockDim.x): an off-by-one in the other direction.
extern "C" __global__ void store_before_start(float* out) {
    const int i = (int)threadIdx.x - 1;
    out[i] = 1.0f;  // BUG: thread 0 writes out[-1]
}
