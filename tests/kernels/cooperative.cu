// TEST-ONLY: kernels for cooperative launches and the grid barrier of kernels/grid.cuh
// (tests/emu_cooperative.rs): blocks that exchange values through global memory between
// grid_syncs, a persistent reduction, and the ways a grid barrier goes wrong. Never launched by
// the project. Every kernel takes the barrier words (2 unsigned ints, zeroed before the first
// launch) as `barrier`.

#include "grid.cuh"

// slots, out (gridDim · blockDim): for each of `rounds` rounds every thread g of the grid
// publishes g · 7 + round + 1 in slots[g], waits for the grid, reads the slot of the same thread
// of the block `round + 1` blocks further on and the slot of thread N − 1 − g, and waits again
// before the next round overwrites them. out[g] is the sum of what it read: right only if the
// barrier orders every block's writes before every other block's reads.
extern "C" __global__ void coop_exchange(int* slots, int* out, unsigned int* barrier, int rounds) {
    const int nthreads = blockDim.x * blockDim.y * blockDim.z;
    const int nblocks = gridDim.x * gridDim.y * gridDim.z;
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int n = nblocks * nthreads;
    const int g = b * nthreads + t;
    int acc = 0;
    for (int round = 0; round < rounds; round++) {
        slots[g] = g * 7 + round + 1;
        grid_sync(barrier);
        acc += slots[((b + round + 1) % nblocks) * nthreads + t];
        acc += slots[n - 1 - g];
        grid_sync(barrier);
    }
    out[g] = acc;
}

// in (n), block_sums (gridDim.x), totals (rounds): a persistent reduction with grid-stride loops.
// Each round every block sums its values (a shared-memory tree over warps, shuffles within each
// warp) into block_sums[blockIdx.x]; after the grid barrier every thread adds the blocks' sums in
// block order, thread 0 of block 0 records the total, and every value becomes (value + total) mod
// 1009 for the next round. Integers, so the host can replay it exactly.
extern "C" __global__ void coop_grid_sum(const int* in, int* block_sums, int* totals, unsigned int* barrier,
                                         int n, int rounds) {
    __shared__ int warp_sums[32];
    const int t = threadIdx.x;
    const int lane = t % 32;
    const int stride = gridDim.x * blockDim.x;
    const int first = blockIdx.x * blockDim.x + t;
    const int per_thread = (n + stride - 1) / stride;
    int values[8];  // per_thread <= 8 (the test's shapes)
    for (int k = 0; k < per_thread; k++) {
        const int i = first + k * stride;
        values[k] = i < n ? in[i] : 0;
    }
    for (int round = 0; round < rounds; round++) {
        int s = 0;
        for (int k = 0; k < per_thread; k++) s += values[k];
        // Lanes that do not exist (a partial last warp) are left out of the mask.
        const int warp_threads = min(32, (int)blockDim.x - (t / 32) * 32);
        const unsigned mask = warp_threads == 32 ? 0xffffffffu : (1u << warp_threads) - 1u;
        for (int offset = 16; offset > 0; offset /= 2) {
            const int other = __shfl_down_sync(mask, s, offset);
            if (lane + offset < warp_threads) s += other;
        }
        if (lane == 0) warp_sums[t / 32] = s;
        __syncthreads();
        if (t == 0) {
            int block_sum = 0;
            for (int w = 0; w < ((int)blockDim.x + 31) / 32; w++) block_sum += warp_sums[w];
            block_sums[blockIdx.x] = block_sum;
        }
        grid_sync(barrier);
        int total = 0;
        for (int b = 0; b < (int)gridDim.x; b++) total += block_sums[b];
        if (blockIdx.x == 0 && t == 0) totals[round] = total;
        for (int k = 0; k < per_thread; k++) {
            const int i = first + k * stride;
            values[k] = i < n ? (values[k] + total) % 1009 : 0;
        }
        // block_sums and warp_sums are rewritten next round: everybody must have read them.
        grid_sync(barrier);
    }
}

// out (gridDim.x · blockDim.x): threads >= live return before the barriers, as grid.cuh allows
// for any thread but (0, 0, 0) of a block. The others exchange as coop_exchange's first round.
extern "C" __global__ void coop_early_exit(int* slots, int* out, unsigned int* barrier, int live) {
    const int t = threadIdx.x;
    const int g = blockIdx.x * blockDim.x + t;
    if (t >= live) return;
    slots[g] = g + 1;
    grid_sync(barrier);
    out[g] = slots[((blockIdx.x + 1) % gridDim.x) * blockDim.x + t];
}

// out (gridDim.x · blockDim.x + 1): 16 KiB of static shared memory per block (with the KiB the
// driver reserves, 13 blocks per SM). Thread 0 of each block counts its block in out[last]; after
// the grid barrier every thread reads the count: every block.
extern "C" __global__ void coop_static_shared(int* out, unsigned int* barrier) {
    __shared__ int tile[4096];
    const int n = gridDim.x * blockDim.x;
    tile[threadIdx.x] = 1;
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(&out[n], tile[0]);
    grid_sync(barrier);
    out[blockIdx.x * blockDim.x + threadIdx.x] = out[n];
}

// ---- broken on purpose

// slots, out (gridDim.x · blockDim.x): the exchange without its grid_sync. In block order each
// block reads the next block's slot before that block has run; in reverse order the last block
// reads block 0's before it has run. ThreadSanitizer reports the race either way.
extern "C" __global__ void exchange_without_grid_sync(int* slots, int* out) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    slots[g] = g + 1;
    out[g] = slots[((blockIdx.x + 1) % gridDim.x) * blockDim.x + threadIdx.x];  // BUG: no grid_sync
}

// out (gridDim.x · blockDim.x): block `gone` returns; the others wait for it at the grid barrier
// forever (on a GPU the grid hangs).
extern "C" __global__ void block_returns_before_grid_sync(int* out, unsigned int* barrier, int gone) {
    if ((int)blockIdx.x == gone) return;
    grid_sync(barrier);
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

// out (gridDim.x · blockDim.x): thread (0, 0, 0) of block `gone` returns, and with it the thread
// that arrives for the block; its other threads and the other blocks wait forever.
extern "C" __global__ void first_thread_returns_before_grid_sync(int* out, unsigned int* barrier, int gone) {
    if ((int)blockIdx.x == gone && threadIdx.x == 0) return;
    grid_sync(barrier);
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

// out (gridDim.x · blockDim.x): in block 0 the first warp waits in grid_sync while the others wait
// at a __syncthreads; neither can complete (grid_sync starts with a __syncthreads).
extern "C" __global__ void grid_sync_vs_syncthreads(int* out, unsigned int* barrier) {
    if (blockIdx.x == 0 && threadIdx.x >= 32) {
        __syncthreads();
    } else {
        grid_sync(barrier);
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

// barriers (4): odd blocks pass the second pair of words: not one barrier.
extern "C" __global__ void grid_sync_with_different_words(unsigned int* barriers) {
    grid_sync(barriers + 2 * (blockIdx.x % 2));
}
