// PROVISIONAL (replaced by the cooperative-launch branch): the grid barrier's interface.
#ifndef ROBO_POET_GRID_CUH
#define ROBO_POET_GRID_CUH
#ifdef ROBO_POET_EMU
__device__ inline void grid_sync(unsigned int* barrier) {
    (void)barrier;
    __syncthreads();
}
#else
__device__ inline void grid_sync(unsigned int* barrier) {
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
        volatile unsigned int* gen = barrier + 1;
        const unsigned int g = *gen;
        __threadfence();
        const unsigned int blocks = gridDim.x * gridDim.y * gridDim.z;
        if (atomicAdd(barrier, 1u) == blocks - 1) {
            barrier[0] = 0u;
            __threadfence();
            atomicAdd(barrier + 1, 1u);
        } else {
            while (*gen == g) {
            }
        }
        __threadfence();
    }
    __syncthreads();
}
#endif
#endif
