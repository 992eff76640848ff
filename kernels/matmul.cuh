// The GEMM kernels of the linear layers, written once over a tile engine and instantiated per
// precision: kernels/matmul.cu (fp32, the SIMT engine below) and kernels/matmul_tc.cu (tf32 and
// bf16 on the tensor cores). An engine computes a block's 64 x 64 tile of a (M, K) x (K, NC)
// product into 32 accumulators per thread, and says where each accumulator sits in the tile; the
// stores, the fused epilogues, the split-K and the bias reduction are shared. Every engine runs
// in a block of (16, 8) threads on the same grid, so the host launchers only change the kernel's
// name with the precision (src/gpu/kernels/matmul.rs). No float atomics: a split over K is summed
// in a fixed order.

#ifndef ROBO_POET_MATMUL_CUH
#define ROBO_POET_MATMUL_CUH

#define MATMUL_BM 64   // rows of out per block tile
#define MATMUL_BN 64   // columns of out per block tile
#define MATMUL_BK 16   // k step: depth of the shared tiles
#define MATMUL_TM 8    // SIMT: rows of out per thread, MATMUL_TY apart
#define MATMUL_TN 4    // SIMT: columns of out per thread, MATMUL_TX apart
#define MATMUL_TX (MATMUL_BN / MATMUL_TN)  // 16: block is (MATMUL_TX, MATMUL_TY)
#define MATMUL_TY (MATMUL_BM / MATMUL_TM)  // 8
#define MATMUL_THREADS (MATMUL_TX * MATMUL_TY)
#define MATMUL_ACC (MATMUL_TM * MATMUL_TN)  // accumulators per thread, every engine
// Shared tiles are stored k-major, [k][m], padded to a row stride of 66 floats (2 mod 32 banks):
// staging a k-contiguous operand writes 16 k values x 2 rows per warp, which then land in 32
// distinct banks; an m-contiguous operand writes one k row, 32 consecutive floats.
#define MATMUL_PAD 2

#include "gelu.cuh"

// ---- the fp32 SIMT engine
// acc += A (M, K) · B (K, NC) over k in [k_begin, k_end), for the tile of out at block
// (blockIdx.x, blockIdx.y). Layouts: A_K_CONTIG means A(m, k) = a[m·K + k], else a[k·M + m];
// B_K_CONTIG means B(k, n) = b[n·K + k], else b[k·NC + n]. Staging always walks the contiguous
// index across consecutive threads, so global loads are coalesced in every layout. Thread
// (tx, ty) owns rows ty + MATMUL_TY·i and columns tx + MATMUL_TX·j of the tile (accumulator
// i·MATMUL_TN + j): a warp (two ty, sixteen tx) reads two broadcast A values and sixteen
// consecutive B values per k. Elements of the tiles outside M, NC or the k range are zero, so the
// inner loop has no checks. When `row_sum` is given, threads 0..MATMUL_BM−1 also add A's tile rows
// over k into it in f64 (row_sum for row row0 + tid: the bias gradient, read from the staged
// tiles for free).
// Stages rows [r0, r0 + 64) x k [k0, k0 + MATMUL_BK) of X into tile[k][row], zero outside rows < R
// and k < k_end. K_CONTIG: X(r, k) = x[r·K + k], else x[k·R + r]; consecutive threads walk the
// contiguous index, so the global loads are coalesced either way.
template <bool K_CONTIG>
__device__ __forceinline__ void simt_stage(float (&tile)[MATMUL_BK][MATMUL_BM + MATMUL_PAD], const float* x, int R,
                                           int K, int r0, int k0, int k_end, int tid) {
    for (int e = tid; e < MATMUL_BM * MATMUL_BK; e += MATMUL_THREADS) {
        const int kk = K_CONTIG ? e % MATMUL_BK : e / MATMUL_BM;
        const int rr = K_CONTIG ? e / MATMUL_BK : e % MATMUL_BM;
        const int r = r0 + rr;
        const int k = k0 + kk;
        float v = 0.0f;
        if (r < R && k < k_end) v = K_CONTIG ? x[(size_t)r * K + k] : x[(size_t)k * R + r];
        tile[kk][rr] = v;
    }
}

struct SimtEngine {
    template <bool A_K_CONTIG, bool B_K_CONTIG>
    static __device__ __forceinline__ void acc(float (&acc)[MATMUL_ACC],
                                               const float* a,  // (M, K) or (K, M), see above
                                               const float* b,  // (NC, K) or (K, NC), see above
                                               int M, int NC, int K, int k_begin, int k_end, double* row_sum) {
        __shared__ float a_tile[MATMUL_BK][MATMUL_BM + MATMUL_PAD];  // (k, rows of out)
        __shared__ float b_tile[MATMUL_BK][MATMUL_BN + MATMUL_PAD];  // (k, columns of out)

        const int tx = threadIdx.x;
        const int ty = threadIdx.y;
        const int tid = ty * MATMUL_TX + tx;
        const int row0 = blockIdx.y * MATMUL_BM;
        const int col0 = blockIdx.x * MATMUL_BN;

        for (int k0 = k_begin; k0 < k_end; k0 += MATMUL_BK) {
            simt_stage<A_K_CONTIG>(a_tile, a, M, K, row0, k0, k_end, tid);
            simt_stage<B_K_CONTIG>(b_tile, b, NC, K, col0, k0, k_end, tid);
            __syncthreads();  // tiles complete before anyone reads them
            if (row_sum && tid < MATMUL_BM)
                for (int kk = 0; kk < MATMUL_BK; kk++) *row_sum += (double)a_tile[kk][tid];
            for (int kk = 0; kk < MATMUL_BK; kk++) {
                float av[MATMUL_TM];
                float bv[MATMUL_TN];
                for (int i = 0; i < MATMUL_TM; i++) av[i] = a_tile[kk][ty + i * MATMUL_TY];
                for (int j = 0; j < MATMUL_TN; j++) bv[j] = b_tile[kk][tx + j * MATMUL_TX];
                for (int i = 0; i < MATMUL_TM; i++)
                    for (int j = 0; j < MATMUL_TN; j++) acc[i * MATMUL_TN + j] += av[i] * bv[j];
            }
            __syncthreads();  // everyone done reading before the next tiles overwrite them
        }
    }

    // The tile row and column of this thread's accumulator e.
    static __device__ __forceinline__ void coord(int e, int& r, int& c) {
        r = threadIdx.y + (e / MATMUL_TN) * MATMUL_TY;
        c = threadIdx.x + (e % MATMUL_TN) * MATMUL_TX;
    }
};

__device__ __forceinline__ void matmul_acc_zero(float (&acc)[MATMUL_ACC]) {
    for (int e = 0; e < MATMUL_ACC; e++) acc[e] = 0.0f;
}

// What the store of a tile does with v = acc + bias at (m, n).
#define MATMUL_STORE 0       // out = v
#define MATMUL_ACCUMULATE 1  // out += v
#define MATMUL_GELU 2        // out = v (the pre-activation) and act = gelu(v)
#define MATMUL_GELU_GRAD 3   // out += gelu'(act[m, n]) · v (act holds the pre-activation)

template <class E, int MODE>
__device__ __forceinline__ void matmul_tile_store(const float (&acc)[MATMUL_ACC],
                                                  float* out,         // (M, NC)
                                                  float* act,         // (M, NC) for the GELU modes
                                                  const float* bias,  // (NC), or null
                                                  int M, int NC) {
    const int row0 = blockIdx.y * MATMUL_BM;
    const int col0 = blockIdx.x * MATMUL_BN;
    for (int e = 0; e < MATMUL_ACC; e++) {
        int r, c;
        E::coord(e, r, c);
        const int m = row0 + r;
        const int n = col0 + c;
        if (m >= M || n >= NC) continue;
        const size_t k = (size_t)m * NC + n;
        const float v = acc[e] + (bias ? bias[n] : 0.0f);
        if (MODE == MATMUL_STORE) out[k] = v;
        if (MODE == MATMUL_ACCUMULATE) out[k] = out[k] + v;
        if (MODE == MATMUL_GELU) {
            out[k] = v;
            act[k] = gelu_value(v);
        }
        if (MODE == MATMUL_GELU_GRAD) out[k] = out[k] + gelu_grad(act[k]) * v;
    }
}

// The single-product tile: out (+)= A · B (+ bias).
template <class E, bool A_K_CONTIG, bool B_K_CONTIG>
__device__ __forceinline__ void matmul_tile(float* out, const float* a, const float* b, const float* bias, int M,
                                            int NC, int K, int k_begin, int k_end, bool accumulate) {
    float acc[MATMUL_ACC];
    matmul_acc_zero(acc);
    E::template acc<A_K_CONTIG, B_K_CONTIG>(acc, a, b, M, NC, K, k_begin, k_end, nullptr);
    if (accumulate)
        matmul_tile_store<E, MATMUL_ACCUMULATE>(acc, out, nullptr, bias, M, NC);
    else
        matmul_tile_store<E, MATMUL_STORE>(acc, out, nullptr, bias, M, NC);
}

// The weight and bias gradients of `count` (1, or 3 for q, k, v sharing one input) linear layers
// in one launch: dweight_j (OC, IC) += dout_jᵀ · inp and dbias_j (OC) += Σ_n dout_j, over N split
// into `splits` chunks of k_chunk rows. blockIdx.z = j · splits + s; the tile blocks with
// blockIdx.x = 0 also sum their 64 rows of dout_j for the bias from the staged tiles, in f64
// (from the f32 values, whatever the engine's precision). With one split the block adds straight
// into dweight and dbias. With several, split s writes its partial tile (and bias rows) into the
// workspace, and the last of a tile's `splits` blocks to finish (an integer counter; which one it
// is changes no sum) adds the partials in split order, in f64 as matmul_split_sum, and resets the
// tile's counter for the next launch.
template <class E>
__device__ __forceinline__ void linear_backward_params_body(float* dw0, float* dw1, float* dw2, float* db0,
                                                            float* db1, float* db2, const float* d0,
                                                            const float* d1, const float* d2, const float* inp,
                                                            float* partials, unsigned int* counters, int N, int IC,
                                                            int OC, int k_chunk, int splits) {
    __shared__ unsigned int is_last;
    const int j = blockIdx.z / splits;
    const int s = blockIdx.z % splits;
    float* dweight = j == 0 ? dw0 : j == 1 ? dw1 : dw2;
    float* dbias = j == 0 ? db0 : j == 1 ? db1 : db2;
    const float* dout = j == 0 ? d0 : j == 1 ? d1 : d2;
    const int k_begin = s * k_chunk;
    const int k_end = min(N, k_begin + k_chunk);
    const bool bias_block = dbias != nullptr && blockIdx.x == 0;
    const int tid = threadIdx.y * MATMUL_TX + threadIdx.x;
    const int row0 = blockIdx.y * MATMUL_BM;

    float acc[MATMUL_ACC];
    matmul_acc_zero(acc);
    double row_sum = 0.0;
    E::template acc<false, false>(acc, dout, inp, OC, IC, N, k_begin, k_end, bias_block ? &row_sum : nullptr);

    if (splits == 1) {
        matmul_tile_store<E, MATMUL_ACCUMULATE>(acc, dweight, nullptr, nullptr, OC, IC);
        if (bias_block && tid < MATMUL_BM && row0 + tid < OC)
            dbias[row0 + tid] = (float)((double)dbias[row0 + tid] + row_sum);
        return;
    }
    const size_t per_split = (size_t)OC * IC + OC;
    float* mine = partials + ((size_t)j * splits + s) * per_split;
    matmul_tile_store<E, MATMUL_STORE>(acc, mine, nullptr, nullptr, OC, IC);
    if (bias_block && tid < MATMUL_BM && row0 + tid < OC) mine[(size_t)OC * IC + row0 + tid] = (float)row_sum;
    __threadfence();  // this block's partials are visible to every block before the counter moves
    __syncthreads();
    const int tiles = gridDim.x * gridDim.y;
    unsigned int* counter = counters + (size_t)j * tiles + blockIdx.y * gridDim.x + blockIdx.x;
    if (tid == 0) is_last = atomicAdd(counter, 1u) == (unsigned int)(splits - 1);
    __syncthreads();
    if (!is_last) return;
    const float* base = partials + (size_t)j * splits * per_split;
    const int col0 = blockIdx.x * MATMUL_BN;
    for (int e = tid; e < MATMUL_BM * MATMUL_BN; e += MATMUL_THREADS) {
        const int m = row0 + e / MATMUL_BN;
        const int n = col0 + e % MATMUL_BN;
        if (m >= OC || n >= IC) continue;
        const size_t k = (size_t)m * IC + n;
        double sum = dweight[k];
        for (int t = 0; t < splits; t++) sum += __ldcg(&base[(size_t)t * per_split + k]);
        dweight[k] = (float)sum;
    }
    if (bias_block && tid < MATMUL_BM && row0 + tid < OC) {
        const size_t k = (size_t)OC * IC + row0 + tid;
        double sum = dbias[row0 + tid];
        for (int t = 0; t < splits; t++) sum += __ldcg(&base[(size_t)t * per_split + k]);
        dbias[row0 + tid] = (float)sum;
    }
    if (tid == 0) *counter = 0u;
}

// out (M, NC) += A (M, K) · B (K, NC) with K split into `splits` chunks of k_chunk (blockIdx.z):
// for a short, wide reduction (the LSTM's recurrence: M = B rows only) the output alone has too
// few tiles to fill the GPU. Each split writes its partial tile to `partials`; the last of a
// tile's splits to finish (an integer counter; which one it is changes no sum) adds them to out in
// split order, in f64 (as matmul_split_sum), and resets the tile's counter. With one split it adds
// straight into out.
template <class E, bool A_K_CONTIG, bool B_K_CONTIG>
__device__ __forceinline__ void matmul_splitk(float* out, const float* a, const float* b, float* partials,
                                              unsigned int* counters, int M, int NC, int K, int k_chunk,
                                              int splits) {
    __shared__ unsigned int is_last;
    const int s = blockIdx.z;
    const int k_begin = s * k_chunk;
    const int k_end = min(K, k_begin + k_chunk);
    const int tid = threadIdx.y * MATMUL_TX + threadIdx.x;
    float acc[MATMUL_ACC];
    matmul_acc_zero(acc);
    E::template acc<A_K_CONTIG, B_K_CONTIG>(acc, a, b, M, NC, K, k_begin, k_end, nullptr);
    if (splits == 1) {
        matmul_tile_store<E, MATMUL_ACCUMULATE>(acc, out, nullptr, nullptr, M, NC);
        return;
    }
    matmul_tile_store<E, MATMUL_STORE>(acc, partials + (size_t)s * M * NC, nullptr, nullptr, M, NC);
    __threadfence();  // this split's partial tile is visible before the counter moves
    __syncthreads();
    unsigned int* counter = counters + blockIdx.y * gridDim.x + blockIdx.x;
    if (tid == 0) is_last = atomicAdd(counter, 1u) == (unsigned int)(splits - 1);
    __syncthreads();
    if (!is_last) return;
    const int row0 = blockIdx.y * MATMUL_BM;
    const int col0 = blockIdx.x * MATMUL_BN;
    for (int e = tid; e < MATMUL_BM * MATMUL_BN; e += MATMUL_THREADS) {
        const int m = row0 + e / MATMUL_BN;
        const int n = col0 + e % MATMUL_BN;
        if (m >= M || n >= NC) continue;
        const size_t k = (size_t)m * NC + n;
        double sum = out[k];
        for (int t = 0; t < splits; t++) sum += __ldcg(&partials[(size_t)t * M * NC + k]);
        out[k] = (float)sum;
    }
    if (tid == 0) *counter = 0u;
}

// The GEMM kernels of one engine, named BASE##SUFFIX (SUFFIX empty for fp32, _tf32, _bf16).
// Parameters and launch shapes: see kernels/matmul.cu, whose fp32 set is the reference.
#define MATMUL_GEMM_KERNELS(SUFFIX, E)                                                                             \
    /* out = inp · weightᵀ + bias: M = N, NC = OC, K = IC; both operands are k-contiguous. */                      \
    extern "C" __global__ void __launch_bounds__(MATMUL_THREADS)                                                   \
        matmul_forward##SUFFIX(float* out, const float* inp, const float* weight, const float* bias, int N,        \
                               int IC, int OC) {                                                                   \
        matmul_tile<E, true, true>(out, inp, weight, bias, N, OC, IC, 0, IC, false);                               \
    }                                                                                                              \
    /* out += inp · weightᵀ (no bias). */                                                                          \
    extern "C" __global__ void __launch_bounds__(MATMUL_THREADS)                                                   \
        matmul_forward_accumulate##SUFFIX(float* out, const float* inp, const float* weight, int N, int IC,        \
                                          int OC) {                                                                \
        matmul_tile<E, true, true>(out, inp, weight, nullptr, N, OC, IC, 0, IC, true);                             \
    }                                                                                                              \
    /* dinp += dout · weight: M = N, NC = IC, K = OC; dout is k-contiguous, weight n-contiguous. */                \
    extern "C" __global__ void __launch_bounds__(MATMUL_THREADS)                                                   \
        matmul_backward_input##SUFFIX(float* dinp, const float* dout, const float* weight, int N, int IC,          \
                                      int OC) {                                                                    \
        matmul_tile<E, true, false>(dinp, dout, weight, nullptr, N, IC, OC, 0, OC, true);                          \
    }                                                                                                              \
    /* dweight (+)= doutᵀ · inp over rows [z·k_chunk, (z+1)·k_chunk) of N: M = OC, NC = IC, K = N. */             \
    extern "C" __global__ void __launch_bounds__(MATMUL_THREADS)                                                   \
        matmul_backward_weight##SUFFIX(float* dweight, const float* dout, const float* inp, int N, int IC, int OC, \
                                       int k_chunk, int accumulate) {                                              \
        const int z = blockIdx.z;                                                                                  \
        const int k_begin = z * k_chunk;                                                                           \
        const int k_end = min(N, k_begin + k_chunk);                                                               \
        float* out = dweight + (size_t)z * OC * IC;                                                                \
        matmul_tile<E, false, false>(out, dout, inp, nullptr, OC, IC, N, k_begin, k_end, accumulate != 0);         \
    }                                                                                                              \
    /* The attention block's three projections in one launch: blockIdx.z picks the weight. */                      \
    extern "C" __global__ void __launch_bounds__(MATMUL_THREADS)                                                   \
        matmul_forward_qkv##SUFFIX(float* out0, float* out1, float* out2, const float* inp, const float* w0,       \
                                   const float* w1, const float* w2, const float* b0, const float* b1,             \
                                   const float* b2, int N, int IC, int OC) {                                       \
        const int z = blockIdx.z;                                                                                  \
        float* out = z == 0 ? out0 : z == 1 ? out1 : out2;                                                         \
        const float* w = z == 0 ? w0 : z == 1 ? w1 : w2;                                                           \
        const float* b = z == 0 ? b0 : z == 1 ? b1 : b2;                                                           \
        matmul_tile<E, true, true>(out, inp, w, b, N, OC, IC, 0, IC, false);                                       \
    }                                                                                                              \
    /* pre = inp · weightᵀ + bias and out = gelu(pre) from the same registers. */                                  \
    extern "C" __global__ void __launch_bounds__(MATMUL_THREADS)                                                   \
        matmul_forward_gelu##SUFFIX(float* pre, float* out, const float* inp, const float* weight,                 \
                                    const float* bias, int N, int IC, int OC) {                                    \
        float acc[MATMUL_ACC];                                                                                     \
        matmul_acc_zero(acc);                                                                                      \
        E::template acc<true, true>(acc, inp, weight, N, OC, IC, 0, IC, nullptr);                                  \
        matmul_tile_store<E, MATMUL_GELU>(acc, pre, out, bias, N, OC);                                             \
    }                                                                                                              \
    /* dinp += dout0 · w0 + dout1 · w1 + dout2 · w2, summed in registers, added once. */                           \
    extern "C" __global__ void __launch_bounds__(MATMUL_THREADS)                                                   \
        matmul_backward_input_qkv##SUFFIX(float* dinp, const float* d0, const float* d1, const float* d2,          \
                                          const float* w0, const float* w1, const float* w2, int N, int IC,        \
                                          int OC) {                                                                \
        float acc[MATMUL_ACC];                                                                                     \
        matmul_acc_zero(acc);                                                                                      \
        E::template acc<true, false>(acc, d0, w0, N, IC, OC, 0, OC, nullptr);                                      \
        E::template acc<true, false>(acc, d1, w1, N, IC, OC, 0, OC, nullptr);                                      \
        E::template acc<true, false>(acc, d2, w2, N, IC, OC, 0, OC, nullptr);                                      \
        matmul_tile_store<E, MATMUL_ACCUMULATE>(acc, dinp, nullptr, nullptr, N, IC);                               \
    }                                                                                                              \
    /* dpre += gelu'(pre) ⊙ (dout · weight). */                                                                    \
    extern "C" __global__ void __launch_bounds__(MATMUL_THREADS)                                                   \
        matmul_backward_input_gelu##SUFFIX(float* dpre, const float* pre, const float* dout, const float* weight,  \
                                           int N, int IC, int OC) {                                                \
        float acc[MATMUL_ACC];                                                                                     \
        matmul_acc_zero(acc);                                                                                      \
        E::template acc<true, false>(acc, dout, weight, N, IC, OC, 0, OC, nullptr);                                \
        matmul_tile_store<E, MATMUL_GELU_GRAD>(acc, dpre, const_cast<float*>(pre), nullptr, N, IC);                \
    }                                                                                                              \
    /* The weight and bias gradients of 1 or 3 linear layers (linear_backward_params_body). */                     \
    extern "C" __global__ void __launch_bounds__(MATMUL_THREADS)                                                   \
        linear_backward_params##SUFFIX(float* dw0, float* dw1, float* dw2, float* db0, float* db1, float* db2,     \
                                       const float* d0, const float* d1, const float* d2, const float* inp,        \
                                       float* partials, unsigned int* counters, int N, int IC, int OC,             \
                                       int k_chunk, int splits) {                                                  \
        linear_backward_params_body<E>(dw0, dw1, dw2, db0, db1, db2, d0, d1, d2, inp, partials, counters, N, IC,   \
                                       OC, k_chunk, splits);                                                       \
    }                                                                                                              \
    /* out (N, OC) += inp (N, IC) · weightᵀ, K = IC split (the LSTM's forward recurrence). */                      \
    extern "C" __global__ void __launch_bounds__(MATMUL_THREADS)                                                   \
        matmul_forward_accumulate_splitk##SUFFIX(float* out, const float* inp, const float* weight,                \
                                                 float* partials, unsigned int* counters, int N, int IC, int OC,   \
                                                 int k_chunk, int splits) {                                        \
        matmul_splitk<E, true, true>(out, inp, weight, partials, counters, N, OC, IC, k_chunk, splits);            \
    }                                                                                                              \
    /* dinp (N, IC) += dout (N, OC) · weight, K = OC split (the LSTM's backward recurrence). */                    \
    extern "C" __global__ void __launch_bounds__(MATMUL_THREADS)                                                   \
        matmul_backward_input_splitk##SUFFIX(float* dinp, const float* dout, const float* weight,                  \
                                             float* partials, unsigned int* counters, int N, int IC, int OC,       \
                                             int k_chunk, int splits) {                                            \
        matmul_splitk<E, true, false>(dinp, dout, weight, partials, counters, N, IC, OC, k_chunk, splits);         \
    }

#endif  // ROBO_POET_MATMUL_CUH
