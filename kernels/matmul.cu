// Linear layer, forward and backward, with weight stored (OC, IC) as in PyTorch's Linear:
//   out = inp · weightᵀ + bias        dinp += dout · weight
//   dweight += doutᵀ · inp            dbias += Σ_n dout
// The products are one shared-memory tiled kernel body over a (M, K) x (K, NC) product with the
// operands' layouts as template parameters (kernels/matmul.cuh); this file instantiates it with
// the fp32 SIMT engine under the plain names (matmul_forward, ...), and kernels/matmul_tc.cu with
// the tensor-core engines under the same names + _tf32 / _bf16. Reductions are deterministic: no
// float atomics; a split over N is summed by a second kernel in a fixed order.
// CPU reference: src/ops/matmul.rs (matmul_forward, matmul_backward, column_sums_into).
// Host launchers: src/gpu/kernels/matmul.rs.

#include "matmul.cuh"

// ----------------------------------------------------------------------------------------------
// kernels

// matmul_forward, matmul_forward_accumulate, matmul_backward_input, matmul_backward_weight (with
// one split, gridDim.z = 1 and accumulate = 1, it adds straight into dweight; with several,
// accumulate = 0 and split z writes its own partial product at dweight + z·OC·IC, which
// matmul_split_sum then adds up in order), matmul_forward_qkv, matmul_forward_gelu,
// matmul_backward_input_qkv, matmul_backward_input_gelu, linear_backward_params,
// matmul_forward_accumulate_splitk (gates += h_prev · W_hhᵀ on the LSTM's per-timestep path) and
// matmul_backward_input_splitk (dh_prev += dgates · W_hh): see kernels/matmul.cuh.
MATMUL_GEMM_KERNELS(, SimtEngine)

// The three single-product kernels on 128 x 128 tiles (SimtEngine128, block (16, 16)): same
// parameters, same results bit for bit (each output is the same k-ordered chain); the launchers
// pick them at fp32 when the output has enough 128 x 128 tiles to fill the GPU. ptxas gives them
// about 150 registers (one block of 8 warps per SM); capping them at 128 for two blocks per SM
// (__launch_bounds__(256, 2)) spills, which --check-spills refuses.
extern "C" __global__ void __launch_bounds__(SimtEngine128::kThreads)
    matmul_forward_128(float* out, const float* inp, const float* weight, const float* bias, int N, int IC, int OC) {
    matmul_tile<SimtEngine128, true, true>(out, inp, weight, bias, N, OC, IC, 0, IC, false);
}
extern "C" __global__ void __launch_bounds__(SimtEngine128::kThreads)
    matmul_forward_accumulate_128(float* out, const float* inp, const float* weight, int N, int IC, int OC) {
    matmul_tile<SimtEngine128, true, true>(out, inp, weight, nullptr, N, OC, IC, 0, IC, true);
}
extern "C" __global__ void __launch_bounds__(SimtEngine128::kThreads)
    matmul_backward_input_128(float* dinp, const float* dout, const float* weight, int N, int IC, int OC) {
    matmul_tile<SimtEngine128, true, false>(dinp, dout, weight, nullptr, N, IC, OC, 0, OC, true);
}

// out[e] += Σ_s partials[s·count + e] for s = 0, 1, ..., splits − 1, summed in f64 in that order
// (deterministic, and as exact as src/ops's f64 column sums). One thread per element, so loads
// and stores are coalesced.
extern "C" __global__ void matmul_split_sum(float* out,             // (count)
                                            const float* partials,  // (splits, count)
                                            int splits, int count) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= count) return;
    double sum = out[e];
    for (int s = 0; s < splits; s++) sum += partials[(size_t)s * count + e];
    out[e] = (float)sum;
}

#define BIAS_COLS 32  // columns per block: a warp reads 128 consecutive bytes of a row
#define BIAS_ROWS 16  // blockDim.y: rows summed side by side

// Column sums of dout over rows [z·row_chunk, (z+1)·row_chunk), z = blockIdx.y, in f64. Thread
// (tx, ty) sums column col0 + tx over rows ty, ty + BIAS_ROWS, ... of the chunk; the BIAS_ROWS
// partial sums are then added in ty order by the ty = 0 warp. With one split (gridDim.y = 1,
// accumulate = 1) the sum is added to dbias (as f64, like the reference); with several
// (accumulate = 0) split z writes its sum to dbias + z·OC for matmul_split_sum.
extern "C" __global__ void __launch_bounds__(BIAS_COLS * BIAS_ROWS)
    bias_backward(float* dbias,       // (OC), or (splits, OC) partials
                  const float* dout,  // (N, OC)
                  int N, int OC, int row_chunk, int accumulate) {
    __shared__ double partial[BIAS_ROWS][BIAS_COLS];  // (rows side by side, columns)

    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int col = blockIdx.x * BIAS_COLS + tx;
    const int row_begin = blockIdx.y * row_chunk;
    const int row_end = min(N, row_begin + row_chunk);

    double sum = 0.0;
    if (col < OC)
        for (int r = row_begin + ty; r < row_end; r += BIAS_ROWS) sum += dout[(size_t)r * OC + col];
    partial[ty][tx] = sum;
    __syncthreads();  // every row's partial sum written before the ty = 0 warp adds them
    if (ty != 0 || col >= OC) return;
    double total = 0.0;
    for (int k = 0; k < BIAS_ROWS; k++) total += partial[k][tx];
    float* o = dbias + (size_t)blockIdx.y * OC + col;
    *o = accumulate ? (float)((double)*o + total) : (float)total;
}

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels/matmul.rs)
//
// matmul_forward, matmul_forward_accumulate, matmul_backward_input: block (16, 8), grid
// (ceil(NC / 64), ceil(M / 64)) with (M, NC) = (N, OC) resp. (N, IC); no dynamic shared memory,
// 17 KiB static (two buffers of both tiles). N <= 65535 · 64 (grid.y limit). Their _128 twins:
// block (16, 16), grid (ceil(NC / 128), ceil(M / 128)), 33 KiB static.
// matmul_backward_weight: block (16, 8), grid (ceil(IC / 64), ceil(OC / 64), splits), each split
// k_chunk rows of N (a multiple of 16); then, if splits > 1, matmul_split_sum over OC·IC.
// matmul_split_sum: block (256), grid (ceil(count / 256)).
// bias_backward: block (32, 16), grid (ceil(OC / 32), splits), 4 KiB static shared memory; then,
// if splits > 1, matmul_split_sum over OC.
// matmul_forward_qkv: as matmul_forward with grid.z = 3. matmul_forward_gelu,
// matmul_backward_input_qkv, matmul_backward_input_gelu: as matmul_forward / matmul_backward_input.
// matmul_forward_accumulate_splitk, matmul_backward_input_splitk: block (16, 8), grid (tiles of
// out, splits); partials (splits, M, NC) and counters (tiles) when splits > 1.
// linear_backward_params: block (16, 8), grid (ceil(IC / 64), ceil(OC / 64), count · splits);
// partials (count, splits, OC·IC + OC) floats and counters (count, tiles) u32 when splits > 1.
