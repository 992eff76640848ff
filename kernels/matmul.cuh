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
#define MATMUL_TM 8    // SIMT: rows of out per thread (consecutive)
#define MATMUL_TN 4    // SIMT: columns of out per thread (consecutive)
#define MATMUL_TX (MATMUL_BN / MATMUL_TN)  // 16: block is (MATMUL_TX, MATMUL_TY)
#define MATMUL_TY (MATMUL_BM / MATMUL_TM)  // 8
#define MATMUL_THREADS (MATMUL_TX * MATMUL_TY)
#define MATMUL_ACC (MATMUL_TM * MATMUL_TN)  // accumulators per thread, every engine
// Shared tiles are stored k-major, [k][m], padded to a row stride of 68 floats: rows stay 16-byte
// aligned for float4 reads and writes, and 68 = 4 mod 32 banks spreads the scalar writes of a
// k-contiguous operand's staging over the banks (at most 2 threads of a warp per bank).
#define MATMUL_PAD 4

#include "gelu.cuh"

// ---- the fp32 SIMT engine
// acc += A (M, K) · B (K, NC) over k in [k_begin, k_end), for the tile of out at block
// (blockIdx.x, blockIdx.y). Layouts: A_K_CONTIG means A(m, k) = a[m·K + k], else a[k·M + m];
// B_K_CONTIG means B(k, n) = b[n·K + k], else b[k·NC + n].
//
// Two tile shapes (SimtEngineT's parameters): SimtEngine, 64 x 64 of 128 threads (16, 8), where
// thread (tx, ty) owns the 8 consecutive rows 8·ty .. 8·ty + 7 and the 4 consecutive columns
// 4·tx .. 4·tx + 3 (accumulator i·4 + j is row 8·ty + i, column 4·tx + j); and SimtEngine128,
// 128 x 128 of 256 threads (16, 16), where the thread owns rows 4·ty .. +3 and 64 + 4·ty .. +3
// and columns 4·tx .. +3 and 64 + 4·tx .. +3 (64 accumulators: twice the work per shared read).
// Either way each thread reads its A and B values per k as float4 from shared memory (a warp:
// broadcast A addresses, consecutive 16-byte B chunks). Every accumulator is one chain
// acc += a·b over k in increasing order, whatever the mapping: the sums are those of a plain k
// loop, and the two shapes give the same bits.
//
// The tiles are double-buffered through registers: while the block multiplies the tiles of one
// k step, each thread holds its share of the next step's (two groups of 4 elements per operand),
// loaded from global memory as float4 where the layout allows it, and writes them into the other
// buffer afterwards; one __syncthreads per k step. Elements outside M, NC or the k range are
// zero, so the inner loop has no checks. The tiles are free again when acc returns. When `row_sum` is given, threads 0..MATMUL_BM−1 also add
// A's tile rows over k into it in f64 (row_sum for row row0 + tid: the bias gradient, read from
// the staged tiles for free).
// The 4-element group `it` (0, 1) of thread tid in a ROWS-row x MATMUL_BK tile staged by
// THREADS threads (ROWS·MATMUL_BK = 8·THREADS): K_CONTIG groups run along k (row rr, k kk ..
// kk+3), the others along rows (k kk, rows rr .. rr+3). Consecutive threads cover consecutive
// groups of the contiguous index, so global loads are coalesced.
template <bool K_CONTIG, int ROWS, int THREADS>
__device__ __forceinline__ void simt_group(int tid, int it, int& rr, int& kk) {
    static_assert(ROWS * MATMUL_BK == 8 * THREADS, "two groups of 4 per thread");
    const int g = tid + it * THREADS;
    rr = K_CONTIG ? g / (MATMUL_BK / 4) : (g % (ROWS / 4)) * 4;
    kk = K_CONTIG ? (g % (MATMUL_BK / 4)) * 4 : g / (ROWS / 4);
}

// Loads this thread's 8 elements of rows [r0, r0 + ROWS) x k [k0, k0 + MATMUL_BK) of X (zero
// outside rows < R and k < k_end). K_CONTIG: X(r, k) = x[r·K + k], else x[k·R + r]. `vec`: the
// contiguous index's stride and x are 16-byte aligned, so a whole in-range group is one float4.
template <bool K_CONTIG, int ROWS, int THREADS>
__device__ __forceinline__ void simt_load(float (&v)[8], const float* x, int R, int K, int r0, int k0, int k_end,
                                          int tid, bool vec) {
    for (int it = 0; it < 2; it++) {
        int rr, kk;
        simt_group<K_CONTIG, ROWS, THREADS>(tid, it, rr, kk);
        const int r = r0 + rr;
        const int k = k0 + kk;
        float* o = &v[it * 4];
        const bool whole = K_CONTIG ? r < R && k + 3 < k_end : r + 3 < R && k < k_end;
        if (vec && whole) {
            const float4 q =
                *reinterpret_cast<const float4*>(K_CONTIG ? &x[(size_t)r * K + k] : &x[(size_t)k * R + r]);
            o[0] = q.x;
            o[1] = q.y;
            o[2] = q.z;
            o[3] = q.w;
        } else {
            for (int q = 0; q < 4; q++) {
                const int rq = K_CONTIG ? r : r + q;
                const int kq = K_CONTIG ? k + q : k;
                o[q] = rq < R && kq < k_end ? (K_CONTIG ? x[(size_t)rq * K + kq] : x[(size_t)kq * R + rq]) : 0.0f;
            }
        }
    }
}

// Writes the 8 elements simt_load fetched into tile[k][row].
template <bool K_CONTIG, int ROWS, int THREADS>
__device__ __forceinline__ void simt_store(float (&tile)[MATMUL_BK][ROWS + MATMUL_PAD], const float (&v)[8], int tid) {
    for (int it = 0; it < 2; it++) {
        int rr, kk;
        simt_group<K_CONTIG, ROWS, THREADS>(tid, it, rr, kk);
        if (K_CONTIG) {
            for (int q = 0; q < 4; q++) tile[kk + q][rr] = v[it * 4 + q];
        } else {
            *reinterpret_cast<float4*>(&tile[kk][rr]) = make_float4(v[it * 4], v[it * 4 + 1], v[it * 4 + 2], v[it * 4 + 3]);
        }
    }
}

// Whether X's groups may be read as float4: x 16-byte aligned and, along the contiguous index,
// a row stride (K, resp. R) and a first k that are multiples of 4.
template <bool K_CONTIG>
__device__ __forceinline__ bool simt_vec(const float* x, int R, int K, int k_begin) {
    const bool base = ((unsigned long long)x & 15ull) == 0;
    return K_CONTIG ? base && K % 4 == 0 && k_begin % 4 == 0 : base && R % 4 == 0;
}

// The SIMT engine of a BM x BN tile of TX x TY threads: thread (tx, ty) owns RG groups of 4
// consecutive rows, group g starting at tile row RBASE·ty + RSTEP·g, and CG groups of 4
// consecutive columns, group g at CBASE·tx + CSTEP·g.
template <int BM, int BN, int TX, int TY, int RG, int RBASE, int RSTEP, int CG, int CBASE, int CSTEP>
struct SimtEngineT {
    static constexpr int kBM = BM;
    static constexpr int kBN = BN;
    static constexpr int kThreads = TX * TY;
    static constexpr int kTM = 4 * RG;  // rows of out per thread
    static constexpr int kTN = 4 * CG;  // columns of out per thread
    static constexpr int kAcc = kTM * kTN;
    static_assert(BM == TY * kTM && BN == TX * kTN, "the threads cover the tile");

    // The tile row of the thread's row i (0 .. kTM − 1) and the tile column of its column j.
    static __device__ __forceinline__ int row(int ty, int i) { return RBASE * ty + RSTEP * (i >> 2) + (i & 3); }
    static __device__ __forceinline__ int col(int tx, int j) { return CBASE * tx + CSTEP * (j >> 2) + (j & 3); }

    template <bool A_K_CONTIG, bool B_K_CONTIG>
    static __device__ __forceinline__ void acc(float (&acc)[kAcc],
                                               const float* a,  // (M, K) or (K, M), see above
                                               const float* b,  // (NC, K) or (K, NC), see above
                                               int M, int NC, int K, int k_begin, int k_end, double* row_sum) {
        __shared__ __align__(16) float a_tile[2][MATMUL_BK][BM + MATMUL_PAD];  // (buffer, k, rows of out)
        __shared__ __align__(16) float b_tile[2][MATMUL_BK][BN + MATMUL_PAD];  // (buffer, k, columns)

        const int tx = threadIdx.x;
        const int ty = threadIdx.y;
        const int tid = ty * TX + tx;
        const int row0 = blockIdx.y * BM;
        const int col0 = blockIdx.x * BN;
        const bool a_vec = simt_vec<A_K_CONTIG>(a, M, K, k_begin);
        const bool b_vec = simt_vec<B_K_CONTIG>(b, NC, K, k_begin);
        if (k_begin >= k_end) return;

        float av_next[8], bv_next[8];
        simt_load<A_K_CONTIG, BM, kThreads>(av_next, a, M, K, row0, k_begin, k_end, tid, a_vec);
        simt_load<B_K_CONTIG, BN, kThreads>(bv_next, b, NC, K, col0, k_begin, k_end, tid, b_vec);
        simt_store<A_K_CONTIG, BM, kThreads>(a_tile[0], av_next, tid);
        simt_store<B_K_CONTIG, BN, kThreads>(b_tile[0], bv_next, tid);
        __syncthreads();  // the first tiles complete before anyone reads them

        int buf = 0;
        for (int k0 = k_begin; k0 < k_end; k0 += MATMUL_BK) {
            const bool more = k0 + MATMUL_BK < k_end;
            if (more) {  // the next step's elements, in flight while this step multiplies
                simt_load<A_K_CONTIG, BM, kThreads>(av_next, a, M, K, row0, k0 + MATMUL_BK, k_end, tid, a_vec);
                simt_load<B_K_CONTIG, BN, kThreads>(bv_next, b, NC, K, col0, k0 + MATMUL_BK, k_end, tid, b_vec);
            }
            if (row_sum && tid < BM)
                for (int kk = 0; kk < MATMUL_BK; kk++) *row_sum += (double)a_tile[buf][kk][tid];
#pragma unroll
            for (int kk = 0; kk < MATMUL_BK; kk++) {
                float av[kTM], bv[kTN];
                for (int g = 0; g < RG; g++) {
                    const float4 x = *reinterpret_cast<const float4*>(&a_tile[buf][kk][row(ty, 4 * g)]);
                    av[4 * g] = x.x;
                    av[4 * g + 1] = x.y;
                    av[4 * g + 2] = x.z;
                    av[4 * g + 3] = x.w;
                }
                for (int g = 0; g < CG; g++) {
                    const float4 x = *reinterpret_cast<const float4*>(&b_tile[buf][kk][col(tx, 4 * g)]);
                    bv[4 * g] = x.x;
                    bv[4 * g + 1] = x.y;
                    bv[4 * g + 2] = x.z;
                    bv[4 * g + 3] = x.w;
                }
                for (int i = 0; i < kTM; i++)
                    for (int j = 0; j < kTN; j++) acc[i * kTN + j] += av[i] * bv[j];
            }
            if (more) {
                // The other buffer was last read in the previous step, before the barrier that
                // ended it, so it can be overwritten now; the barrier below publishes it.
                simt_store<A_K_CONTIG, BM, kThreads>(a_tile[buf ^ 1], av_next, tid);
                simt_store<B_K_CONTIG, BN, kThreads>(b_tile[buf ^ 1], bv_next, tid);
                __syncthreads();
                buf ^= 1;
            }
        }
        // Every thread is done with the tiles before the block's next acc call (the qkv
        // backward makes three) stages into them.
        __syncthreads();
    }

    // The tile row and column of this thread's accumulator e.
    static __device__ __forceinline__ void coord(int e, int& r, int& c) {
        r = row(threadIdx.y, e / kTN);
        c = col(threadIdx.x, e % kTN);
    }
};

// 64 x 64, block (16, 8): rows 8·ty .. +7, columns 4·tx .. +3.
typedef SimtEngineT<MATMUL_BM, MATMUL_BN, MATMUL_TX, MATMUL_TY, 2, 8, 4, 1, 4, 0> SimtEngine;
// 128 x 128, block (16, 16): rows 4·ty .. +3 and 64 + 4·ty .. +3, columns likewise.
typedef SimtEngineT<128, 128, 16, 16, 2, 4, 64, 2, 4, 64> SimtEngine128;
static_assert(SimtEngine::kAcc == MATMUL_ACC && SimtEngine::kThreads == MATMUL_THREADS, "the 64 x 64 engine");

template <int N>
__device__ __forceinline__ void matmul_acc_zero(float (&acc)[N]) {
    for (int e = 0; e < N; e++) acc[e] = 0.0f;
}

// What the store of a tile does with v = acc + bias at (m, n).
#define MATMUL_STORE 0       // out = v
#define MATMUL_ACCUMULATE 1  // out += v
#define MATMUL_GELU 2        // out = v (the pre-activation) and act = gelu(v)
#define MATMUL_GELU_GRAD 3   // out += gelu'(act[m, n]) · v (act holds the pre-activation)

template <class E, int MODE>
__device__ __forceinline__ void matmul_tile_store(const float (&acc)[E::kAcc],
                                                  float* out,         // (M, NC)
                                                  float* act,         // (M, NC) for the GELU modes
                                                  const float* bias,  // (NC), or null
                                                  int M, int NC) {
    const int row0 = blockIdx.y * E::kBM;
    const int col0 = blockIdx.x * E::kBN;
    for (int e = 0; e < E::kAcc; e++) {
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

// The single-product tile: out (+)= A · B (+ bias). Any engine (either tile shape).
template <class E, bool A_K_CONTIG, bool B_K_CONTIG>
__device__ __forceinline__ void matmul_tile(float* out, const float* a, const float* b, const float* bias, int M,
                                            int NC, int K, int k_begin, int k_end, bool accumulate) {
    float acc[E::kAcc];
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
    static_assert(E::kBM == MATMUL_BM && E::kBN == MATMUL_BN && E::kThreads == MATMUL_THREADS, "64 x 64 engines");
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
    static_assert(E::kBM == MATMUL_BM && E::kBN == MATMUL_BN && E::kThreads == MATMUL_THREADS, "64 x 64 engines");
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

// The GEMM kernels of one 64 x 64 engine, named BASE##SUFFIX (SUFFIX empty for fp32, _tf32, _bf16).
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
