// Linear layer forward: out = inp · weightᵀ + bias, with weight stored (OC, IC) as in PyTorch's
// Linear. Tiled through shared memory. CPU reference: src/ops/matmul.rs (matmul_forward).
// Host launcher: src/gpu/kernels.rs.

// ----------------------------------------------------------------------------------------------
// kernels

#define MATMUL_TILE 32             // output tile is MATMUL_TILE x MATMUL_TILE; also the k step
#define MATMUL_ROWS_PER_THREAD 4   // block is (MATMUL_TILE, MATMUL_TILE / MATMUL_ROWS_PER_THREAD)
#define MATMUL_ROW_STEP (MATMUL_TILE / MATMUL_ROWS_PER_THREAD)

// One block computes one tile of out. Thread (tx, ty) owns column tx of the tile and rows
// ty, ty + ROW_STEP, ...; a warp is one ty, so its lanes read one shared row (a broadcast) and 32
// consecutive shared columns. Tiles of inp and weight past the ragged edges are filled with zeros,
// so the inner loop needs no bounds checks.
extern "C" __global__ void matmul_forward(float* out,           // (N, OC)
                                          const float* inp,     // (N, IC)
                                          const float* weight,  // (OC, IC)
                                          const float* bias,    // (OC), or null for no bias
                                          int N, int IC, int OC) {
    // +1 column: w_tile is read down a column (one row per lane), which would hit one bank 32 times
    __shared__ float inp_tile[MATMUL_TILE][MATMUL_TILE + 1];  // (rows of out, k)
    __shared__ float w_tile[MATMUL_TILE][MATMUL_TILE + 1];    // (columns of out, k)

    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int row0 = blockIdx.y * MATMUL_TILE;
    const int col0 = blockIdx.x * MATMUL_TILE;

    float acc[MATMUL_ROWS_PER_THREAD];
    for (int r = 0; r < MATMUL_ROWS_PER_THREAD; r++) acc[r] = 0.0f;

    for (int k0 = 0; k0 < IC; k0 += MATMUL_TILE) {
        // each thread stages column k0 + tx of ROWS_PER_THREAD rows of both tiles (coalesced)
        const int k = k0 + tx;
        for (int r = ty; r < MATMUL_TILE; r += MATMUL_ROW_STEP) {
            const int i = row0 + r;
            const int o = col0 + r;
            inp_tile[r][tx] = (i < N && k < IC) ? inp[(size_t)i * IC + k] : 0.0f;
            w_tile[r][tx] = (o < OC && k < IC) ? weight[(size_t)o * IC + k] : 0.0f;
        }
        __syncthreads();  // tiles complete before anyone reads them
        for (int kk = 0; kk < MATMUL_TILE; kk++) {
            const float w = w_tile[tx][kk];
            for (int r = 0; r < MATMUL_ROWS_PER_THREAD; r++) acc[r] += inp_tile[ty + r * MATMUL_ROW_STEP][kk] * w;
        }
        __syncthreads();  // everyone done reading before the next tiles overwrite them
    }

    const int o = col0 + tx;
    if (o >= OC) return;
    const float b = bias ? bias[o] : 0.0f;
    for (int r = 0; r < MATMUL_ROWS_PER_THREAD; r++) {
        const int i = row0 + ty + r * MATMUL_ROW_STEP;
        if (i < N) out[(size_t)i * OC + o] = acc[r] + b;
    }
}

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels.rs)
//
// matmul_forward: grid (ceil(OC / 32), ceil(N / 32)), block (32, 8), no dynamic shared memory;
// 8.4 KiB of static shared memory. N <= 65535 * 32 (grid.y limit).
