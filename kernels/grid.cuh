// A grid-wide barrier for persistent kernels: grid_sync(barrier) returns once every thread of every
// block of the grid has called it, and memory written before it by any thread of the grid is
// visible to every thread after it. Only for kernels launched cooperatively
// (Device::launch_cooperative, cuLaunchCooperativeKernel), which guarantees every block of the grid
// is resident at once; in a normal launch blocks that have not started cannot arrive, and the grid
// hangs (the emulator fails the launch instead).
//
// Contract:
//   * every thread of every block calls grid_sync the same number of times, with the same
//     `barrier`. A block arrives through its thread (0, 0, 0) after a __syncthreads of the block,
//     so threads of a block other than (0, 0, 0) may have returned; a block whose thread (0, 0, 0)
//     has returned, or that has returned altogether, never arrives and the grid hangs.
//   * `barrier` points at 2 unsigned ints of global memory: barrier[0] is the arrival count,
//     barrier[1] the generation. The count must be 0 when the launch starts; the generation may
//     hold anything. Each completed barrier leaves the count at 0 again and adds 1 to the
//     generation (wrapping), so words zeroed once serve every later cooperative launch, graph
//     replays included, as long as one launch at a time uses them and nothing else writes them.
//   * grid_sync includes a __syncthreads, so it must not be called from divergent code within a
//     block either.
//
// On the GPU it is a software barrier, as cooperative groups' grid.sync() is (with another word
// layout): __syncthreads; thread 0 of each block arrives with an atomicAdd on the count after a
// __threadfence (which publishes the block's writes, ordered before it by the __syncthreads); the
// last block to arrive resets the count and then bumps the generation, the others spin on a
// volatile read of the generation; then __threadfence (so this block's later reads see what the
// others published) and __syncthreads. The generation is read before arriving, so the last
// block's bump can never be missed. Cost: two block barriers, one atomic per block and a spin on
// one word.
//
// In the emulator (ROBO_POET_EMU, kernels/emu/runtime.h) grid_sync is the scheduler's own grid
// barrier: it suspends the calling CUDA thread until every block has arrived by the rule above,
// reports a grid that cannot complete as a deadlock with each waiting thread's file:line, and
// updates the two words as the GPU code does (it fails the launch if the count is not 0).

#ifndef ROBO_POET_GRID_CUH
#define ROBO_POET_GRID_CUH

#ifdef ROBO_POET_EMU
__device__ __forceinline__ void grid_sync(unsigned int* barrier,
                                          std::source_location loc = std::source_location::current()) {
    ::emu::grid_sync(barrier, loc);
}
#else
__device__ __forceinline__ void grid_sync(unsigned int* barrier) {
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
        volatile unsigned int* generation = barrier + 1;
        const unsigned int seen = *generation;
        const unsigned int blocks = gridDim.x * gridDim.y * gridDim.z;
        __threadfence();
        if (atomicAdd(barrier, 1u) == blocks - 1) {
            // Every other block now spins on the generation and leaves the count alone: reset it
            // for the next barrier before releasing them.
            atomicExch(barrier, 0u);
            __threadfence();
            atomicAdd(barrier + 1, 1u);
        } else {
            while (*generation == seen) {
            }
        }
        __threadfence();
    }
    __syncthreads();
}
#endif

#endif  // ROBO_POET_GRID_CUH
