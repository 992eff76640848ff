// Attention row-sum check (a training diagnostic): for probs (R, T, T), every row should sum to 1.
// Reduces the largest deviation |Σ_j p − 1| over all rows and counts the rows whose deviation
// exceeds a tolerance (or is NaN). Both reductions are atomics whose result does not depend on the
// order blocks run in (max of bit patterns, integer count); the project allows no order-dependent
// float atomics in reductions. Host launcher: src/gpu/kernels.rs.

// ----------------------------------------------------------------------------------------------
// kernels

// One warp per row; lane 0 publishes the row's deviation. The caller zeroes both outputs first.
// max_dev_bits holds a float's bit pattern: for non-negative floats (and NaN, whose bits are
// larger than +inf's) unsigned order is float order, so atomicMax on the bits is a float max.
extern "C" __global__ void attention_row_sum_check(unsigned int* max_dev_bits,  // (1) f32 bits
                                                   unsigned int* bad_rows,      // (1)
                                                   const float* probs,          // (R, T, T)
                                                   int R, int T, float tol) {
    const int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (row >= R * T) return;  // whole warps leave together
    const float* p = probs + (size_t)row * T;

    float sum = 0.0f;
    for (int j = lane; j < T; j += 32) sum += p[j];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);

    if (lane == 0) {
        const float dev = fabsf(sum - 1.0f);  // fabsf clears the sign of a NaN too
        atomicMax(max_dev_bits, __float_as_uint(dev));
        if (!(dev <= tol)) atomicAdd(bad_rows, 1u);  // NaN counts as bad
    }
}

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels.rs)
//
// attention_row_sum_check: block (128), grid (ceil(R·T / 4)): one warp per row; no shared memory.
