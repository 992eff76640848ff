// The linear layers' GEMMs on the tensor cores: kernels/matmul.cuh's kernels instantiated with a
// TF32 engine (names + _tf32: mma.sync m16n8k8, operands rounded with cvt.rna.tf32.f32) and a
// BF16 engine (names + _bf16: mma.sync m16n8k16, operands rounded to nearest even), both with
// f32 storage and f32 accumulation. Same parameters, block (16, 8) and grid as the fp32 kernels
// of kernels/matmul.cu. CPU reference: src/ops/matmul.rs with the operands rounded the same way
// (tests/emu_matmul_tc.rs). Fragment layouts: kernels/mma.cuh.
//
// The engine: the block's 4 warps tile the 64 x 64 output 2 x 2, 32 x 32 per warp, i.e. 2 x 4 mma
// tiles of 16 x 8 and 32 accumulators per thread. A and B are staged as f32 by cp.async, 16 k per
// stage, double-buffered (the copies of stage k + 1 fly while stage k is multiplied); 16-byte
// copies where the operand's contiguous extent is a multiple of 4 and the whole chunk is in range,
// 4-byte copies with zero fill at the edges. The operands are rounded to TF32 / BF16 when they are
// loaded from shared memory into fragments.

#include "mma.cuh"
#include "matmul.cuh"

// One stage of one operand's shared tile: 64 rows (m of A, n of B) by MATMUL_BK k values. A
// k-contiguous operand is stored [row][k] with a row stride of MATMUL_BK + 4 = 20 floats, an
// operand contiguous along its rows [k][row] with a stride of 64 + 8 = 72 floats: either way the
// 32 lanes' TF32 fragment reads (row g, k t: 8 x 4 lanes) hit 32 distinct banks, and every 4-float
// chunk a 16-byte cp.async writes is 16-byte aligned.
template <bool K_CONTIG>
struct TcTile {
    static constexpr int kStride = K_CONTIG ? MATMUL_BK + 4 : MATMUL_BM + 8;
    static constexpr int kFloats = K_CONTIG ? MATMUL_BM * kStride : MATMUL_BK * kStride;
    static __device__ __forceinline__ int at(int r, int k) { return K_CONTIG ? r * kStride + k : k * kStride + r; }
};

// Issues the copies of rows [r0, r0 + 64) x k [k0, k0 + MATMUL_BK) of X into `tile`, zero outside
// rows < R and k < k_end. K_CONTIG: X(r, k) = x[r·K + k], else x[k·R + r]. `vec`: 16-byte copies
// are allowed (the contiguous extent and the base are 16-byte aligned).
template <bool K_CONTIG>
__device__ __forceinline__ void tc_stage(float* tile, const float* x, int R, int K, int r0, int k0, int k_end,
                                         bool vec, int tid) {
    constexpr int kChunks = MATMUL_BM * MATMUL_BK / 4;
    for (int c = tid; c < kChunks; c += MATMUL_THREADS) {
        // K_CONTIG: consecutive threads walk k (4 chunks per row); else they walk the rows
        const int rr = K_CONTIG ? c / (MATMUL_BK / 4) : (c % (MATMUL_BM / 4)) * 4;
        const int kk = K_CONTIG ? (c % (MATMUL_BK / 4)) * 4 : c / (MATMUL_BM / 4);
        const int r = r0 + rr;
        const int k = k0 + kk;
        float* dst = tile + TcTile<K_CONTIG>::at(rr, kk);
        const bool whole = K_CONTIG ? r < R && k + 3 < k_end : k < k_end && r + 3 < R;
        if (vec && whole) {
            cp_async_16(dst, K_CONTIG ? x + (size_t)r * K + k : x + (size_t)k * R + r);
            continue;
        }
        for (int q = 0; q < 4; q++) {
            const int rq = K_CONTIG ? r : r + q;
            const int kq = K_CONTIG ? k + q : k;
            const bool ok = rq < R && kq < k_end;
            const float* src = !ok ? x : K_CONTIG ? x + (size_t)rq * K + kq : x + (size_t)kq * R + rq;
            cp_async_4(dst + q, src, ok);  // the 4 are consecutive in the tile either way
        }
    }
}

template <bool BF16>
struct TcEngine {
    static constexpr int kBM = MATMUL_BM;
    static constexpr int kBN = MATMUL_BN;
    static constexpr int kThreads = MATMUL_THREADS;
    static constexpr int kAcc = MATMUL_ACC;

    // acc += A (M, K) · B (K, NC) over k in [k_begin, k_end), layouts as SimtEngine::acc; with
    // `row_sum`, threads 0..63 add A's tile row `tid` over k in f64 from the staged f32 values.
    template <bool A_K_CONTIG, bool B_K_CONTIG>
    static __device__ __forceinline__ void acc(float (&acc)[MATMUL_ACC], const float* a, const float* b, int M,
                                               int NC, int K, int k_begin, int k_end, double* row_sum) {
        using TA = TcTile<A_K_CONTIG>;
        using TB = TcTile<B_K_CONTIG>;
        constexpr int kA = TA::kFloats;
        constexpr int kB = TB::kFloats;
        __shared__ __align__(16) float a_tile[2 * kA];
        __shared__ __align__(16) float b_tile[2 * kB];

        const int tid = threadIdx.y * MATMUL_TX + threadIdx.x;
        const int lane = tid & 31;
        const int warp = tid >> 5;
        const int g = lane >> 2;
        const int t = lane & 3;
        const int wm = (warp >> 1) * 32;  // the warp's rows and columns in the tile
        const int wn = (warp & 1) * 32;
        const int row0 = blockIdx.y * MATMUL_BM;
        const int col0 = blockIdx.x * MATMUL_BN;
        const bool a_vec = (A_K_CONTIG ? K % 4 == 0 && k_begin % 4 == 0 : M % 4 == 0) &&
                           reinterpret_cast<size_t>(a) % 16 == 0;
        const bool b_vec = (B_K_CONTIG ? K % 4 == 0 && k_begin % 4 == 0 : NC % 4 == 0) &&
                           reinterpret_cast<size_t>(b) % 16 == 0;
        if (k_begin >= k_end) return;

        tc_stage<A_K_CONTIG>(a_tile, a, M, K, row0, k_begin, k_end, a_vec, tid);
        tc_stage<B_K_CONTIG>(b_tile, b, NC, K, col0, k_begin, k_end, b_vec, tid);
        cp_async_commit();
        int s = 0;
        for (int k0 = k_begin; k0 < k_end; k0 += MATMUL_BK, s ^= 1) {
            if (k0 + MATMUL_BK < k_end) {  // the next stage, into the buffer everyone finished with
                tc_stage<A_K_CONTIG>(a_tile + (s ^ 1) * kA, a, M, K, row0, k0 + MATMUL_BK, k_end, a_vec, tid);
                tc_stage<B_K_CONTIG>(b_tile + (s ^ 1) * kB, b, NC, K, col0, k0 + MATMUL_BK, k_end, b_vec, tid);
            }
            cp_async_commit();  // (possibly empty) so that "all but the newest group" is this stage
            cp_async_wait<1>();
            __syncthreads();  // every thread's copies of this stage have landed
            const float* at = a_tile + s * kA;
            const float* bt = b_tile + s * kB;
            if (row_sum && tid < MATMUL_BM)
                for (int kk = 0; kk < MATMUL_BK; kk++) *row_sum += (double)at[TA::at(tid, kk)];
            if (BF16) {
                unsigned af[2][4], bfr[4][2];
                for (int mi = 0; mi < 2; mi++) {
                    const int r = wm + mi * 16 + g;
                    af[mi][0] = bf16x2_rne(at[TA::at(r, 2 * t)], at[TA::at(r, 2 * t + 1)]);
                    af[mi][1] = bf16x2_rne(at[TA::at(r + 8, 2 * t)], at[TA::at(r + 8, 2 * t + 1)]);
                    af[mi][2] = bf16x2_rne(at[TA::at(r, 2 * t + 8)], at[TA::at(r, 2 * t + 9)]);
                    af[mi][3] = bf16x2_rne(at[TA::at(r + 8, 2 * t + 8)], at[TA::at(r + 8, 2 * t + 9)]);
                }
                for (int ni = 0; ni < 4; ni++) {
                    const int n = wn + ni * 8 + g;
                    bfr[ni][0] = bf16x2_rne(bt[TB::at(n, 2 * t)], bt[TB::at(n, 2 * t + 1)]);
                    bfr[ni][1] = bf16x2_rne(bt[TB::at(n, 2 * t + 8)], bt[TB::at(n, 2 * t + 9)]);
                }
                mma_grid_m16n8k16_bf16<2, 4>(acc, af, bfr);
            } else {
                for (int kk = 0; kk < MATMUL_BK; kk += 8) {
                    unsigned af[2][4], bfr[4][2];
                    for (int mi = 0; mi < 2; mi++) {
                        const int r = wm + mi * 16 + g;
                        af[mi][0] = tf32_rna(at[TA::at(r, kk + t)]);
                        af[mi][1] = tf32_rna(at[TA::at(r + 8, kk + t)]);
                        af[mi][2] = tf32_rna(at[TA::at(r, kk + t + 4)]);
                        af[mi][3] = tf32_rna(at[TA::at(r + 8, kk + t + 4)]);
                    }
                    for (int ni = 0; ni < 4; ni++) {
                        const int n = wn + ni * 8 + g;
                        bfr[ni][0] = tf32_rna(bt[TB::at(n, kk + t)]);
                        bfr[ni][1] = tf32_rna(bt[TB::at(n, kk + t + 4)]);
                    }
                    mma_grid_m16n8k8_tf32<2, 4>(acc, af, bfr);
                }
            }
            __syncthreads();  // everyone done reading stage s before it is refilled
        }
    }

    // Accumulator e is element e % 4 of mma tile (mi, ni) = (e / 16, (e / 4) % 4): row g (+ 8
    // for elements 2, 3), column 2t (+ 1 for the odd ones) of that 16 x 8 tile.
    static __device__ __forceinline__ void coord(int e, int& r, int& c) {
        const int tid = threadIdx.y * MATMUL_TX + threadIdx.x;
        const int lane = tid & 31;
        const int warp = tid >> 5;
        const int i = e & 3;
        r = (warp >> 1) * 32 + (e >> 4) * 16 + (lane >> 2) + 8 * (i >> 1);
        c = (warp & 1) * 32 + ((e >> 2) & 3) * 8 + (lane & 3) * 2 + (i & 1);
    }
};

MATMUL_GEMM_KERNELS(_tf32, TcEngine<false>)
MATMUL_GEMM_KERNELS(_bf16, TcEngine<true>)

// ---- layout probes (tests/emu_mma.rs, and the GPU check): one warp, one mma, each lane's
// registers loaded from and stored to per-lane arrays, so that the test, not the kernel, decides
// which matrix element each register holds.

// d_raw (32, 4) = the D registers of mma.m16n8k8.tf32 whose lanes held a_raw (32, 4), b_raw
// (32, 2) (each rounded with cvt.rna.tf32.f32) and c_raw (32, 4). Block of 32 threads.
extern "C" __global__ void mma_probe_tf32(float* d_raw, const float* a_raw, const float* b_raw, const float* c_raw) {
    const int l = threadIdx.x;
    unsigned a[4], b[2];
    float d[4];
    for (int i = 0; i < 4; i++) a[i] = tf32_rna(a_raw[l * 4 + i]);
    for (int i = 0; i < 2; i++) b[i] = tf32_rna(b_raw[l * 2 + i]);
    for (int i = 0; i < 4; i++) d[i] = c_raw[l * 4 + i];
    mma_m16n8k8_tf32(d, a, b);
    for (int i = 0; i < 4; i++) d_raw[l * 4 + i] = d[i];
}

// d_raw (32, 4) = the D registers of mma.m16n8k16.bf16 whose lanes held the elements a_raw
// (32, 8) and b_raw (32, 4) (rounded to BF16, packed two per register, the lower index in the
// lower half) and c_raw (32, 4). Block of 32 threads.
extern "C" __global__ void mma_probe_bf16(float* d_raw, const float* a_raw, const float* b_raw, const float* c_raw) {
    const int l = threadIdx.x;
    unsigned a[4], b[2];
    float d[4];
    for (int i = 0; i < 4; i++) a[i] = bf16x2_rne(a_raw[l * 8 + 2 * i], a_raw[l * 8 + 2 * i + 1]);
    for (int i = 0; i < 2; i++) b[i] = bf16x2_rne(b_raw[l * 4 + 2 * i], b_raw[l * 4 + 2 * i + 1]);
    for (int i = 0; i < 4; i++) d[i] = c_raw[l * 4 + i];
    mma_m16n8k16_bf16(d, a, b);
    for (int i = 0; i < 4; i++) d_raw[l * 4 + i] = d[i];
}

// out (n) = the TF32 (cvt.rna) and BF16 (round to nearest even) roundings of in (n), as f32:
// out_tf32[i] has bits tf32_rna(in[i]), out_bf16[i] the BF16 in its upper half.
extern "C" __global__ void precision_round_probe(float* out_tf32, float* out_bf16, const float* in, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out_tf32[i] = __uint_as_float(tf32_rna(in[i]));
    out_bf16[i] = __uint_as_float(bf16_rne(in[i]) << 16);
}
