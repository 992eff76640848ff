// Causal scaled-dot-product attention, fused (flash-style): no T×T tensor. The forward keeps a
// running row max and sum per query row (online softmax) while it walks the key tiles up to the
// diagonal, applies dropout AFTER the softmax (the Philox mask multiplies the probabilities, which
// commutes with the row normalisation), and writes only out (B, T, C) and the row logsumexp lse
// (B, NH, T). The backward recomputes the probabilities from q, k and lse: one kernel for
// D_i = dO_i · O_i, one over key tiles for dk and dv, one over query tiles for dq: three launches,
// each output element owned by one block (no atomics, deterministic). Masks are the step-by-step
// path's bits: element index ((b·NH + h)·T + i)·T + j (kernels/attention.cu, philox.cuh).
// CPU reference: src/ops/attention_fused.rs. Host launchers: src/gpu/kernels/attention_fused.rs.
//
// Tiles are FA_TILE query rows × FA_TILE key rows; a block of FA_THREADS threads gives each query
// (or key) row of a tile 4 threads. Every tile lives in dynamic shared memory with a row stride of
// HS + 1 floats (odd for even HS: threads walking a column hit distinct banks), so any head size
// works: above 48 KiB (HS > 95 in the forward) the host raises the kernel's shared memory limit.
//
// Each kernel comes in three precisions (the _tf32 and _bf16 names: `--precision`): fp32, every
// product an f32 dot product per thread; tf32 / bf16, the tile products q·kᵀ, p·v (forward) and
// q·kᵀ, dO·vᵀ, Pᵀ·dO, dSᵀ·q, dS·k (backward) on the tensor cores (fa_mma: mma.sync with operands
// rounded as they are loaded from shared memory, f32 accumulation), their results through shared
// memory; the online softmax, dropout, lse and D stay f32. Tests: tests/emu_attention_fused.rs.

#include "mma.cuh"
#include "philox.cuh"

// ----------------------------------------------------------------------------------------------
// kernels

#define FA_TILE 32
#define FA_THREADS 128
#define FA_FULL_MASK 0xffffffffu
#define FA_LOWEST (-3.402823466e38f)  // a masked score: exp(FA_LOWEST − m) = 0, and no inf − inf

// The dropout of one launch: the key's seed, tensor and p as arguments, the step from memory
// (so a CUDA graph replays each step's masks); off when step is null or p is 0.
struct FaDropout {
    unsigned long long seed;
    unsigned long long step;
    unsigned int tensor;
    float p;
    float scale;
    bool on;
};

__device__ __forceinline__ FaDropout fa_dropout(unsigned long long seed, const unsigned long long* step,
                                                unsigned int tensor, float p, float scale) {
    FaDropout d;
    d.on = step != nullptr && p > 0.0f;
    d.seed = seed;
    d.step = d.on ? *step : 0ull;
    d.tensor = tensor;
    d.p = p;
    d.scale = scale;
    return d;
}

// The mask multipliers of elements e0 .. e0 + 7 (0 or 1/(1−p); 1 without dropout), from the two
// or three Philox draws (groups of four elements) they span: each draw once, kept in registers.
__device__ __forceinline__ void fa_multipliers8(const FaDropout& d, unsigned long long e0, float (&mult)[8]) {
    if (!d.on) {
        for (int jj = 0; jj < 8; jj++) mult[jj] = 1.0f;
        return;
    }
    const unsigned long long g0 = e0 >> 2;
    const uint4 w0 = dropout_words(d.seed, d.step, d.tensor, g0);
    const uint4 w1 = dropout_words(d.seed, d.step, d.tensor, g0 + 1);
    const uint4 w2 = (e0 & 3) ? dropout_words(d.seed, d.step, d.tensor, g0 + 2) : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int jj = 0; jj < 8; jj++) {
        const int k = (int)(e0 & 3) + jj;  // 0 .. 10: which of the 12 words
        const uint4 w = k < 4 ? w0 : k < 8 ? w1 : w2;
        mult[jj] = dropout_multiplier(dropout_word(w, k & 3), d.p, d.scale);
    }
}

// tile [FA_TILE][HS + 1] = rows r0 .. r0 + FA_TILE − 1 of head h of x (B, T, C), zero past T.
// Consecutive threads read consecutive channels of a row: coalesced.
__device__ __forceinline__ void fa_load(float* tile, const float* x, int b, int h, int r0, int T, int C, int HS) {
    const int hsp = HS + 1;
    for (int e = threadIdx.x; e < FA_TILE * HS; e += FA_THREADS) {
        const int r = e / HS;
        const int c = e % HS;
        const int t = r0 + r;
        tile[r * hsp + c] = t < T ? x[((size_t)b * T + t) * C + (size_t)h * HS + c] : 0.0f;
    }
}

__device__ __forceinline__ void fa_zero(float* tile, int n) {
    for (int e = threadIdx.x; e < n; e += FA_THREADS) tile[e] = 0.0f;
}

// Σ_d a[d]·b[d] over one row of each tile.
__device__ __forceinline__ float fa_dot(const float* a, const float* b, int HS) {
    float acc = 0.0f;
    for (int d = 0; d < HS; d++) acc += a[d] * b[d];
    return acc;
}

// The max / sum of a value over the 4 threads of a tile row (consecutive lanes of one warp).
__device__ __forceinline__ float fa_row_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(FA_FULL_MASK, v, 1));
    return fmaxf(v, __shfl_xor_sync(FA_FULL_MASK, v, 2));
}
__device__ __forceinline__ float fa_row_sum(float v) {
    v += __shfl_xor_sync(FA_FULL_MASK, v, 1);
    return v + __shfl_xor_sync(FA_FULL_MASK, v, 2);
}

// ----------------------------------------------------------------------------------------------
// the products on the tensor cores (the _tf32 and _bf16 kernels)

#define FA_FP32 0  // f32 dot products, one thread per output (the exact default)
#define FA_TF32 1  // mma.sync m16n8k8, operands rounded with cvt.rna.tf32.f32, f32 accumulation
#define FA_BF16 2  // mma.sync m16n8k16, operands rounded to BF16 (nearest even), f32 accumulation

#define FA_MMA_STORE 0    // D = A·B
#define FA_MMA_RESCALE 1  // D = D·row_scale[r] + A·B
#define FA_MMA_ADD 2      // D += mul·(A·B)

// X(i, j) = x[i·is + j·js], or 0 when !ok (past K or N: the fragments' padding).
__device__ __forceinline__ float fa_at(const float* x, int i, int j, int is, int js, bool ok) {
    return ok ? x[i * is + j * js] : 0.0f;
}

// D (FA_TILE x N, shared, row stride ldd) (MODE) A (FA_TILE x K) · B (K x N), all in shared
// memory with element strides: A(r, k) = A[r·a_rs + k·a_ks], B(k, n) = B[k·b_ks + n·b_ns]. The 4
// warps split D: warp w takes rows 16·(w % 2) .. +15 and the 8-column chunks w / 2, w / 2 + 2, ...;
// each chunk is one 16 x 8 accumulator walked over K in mma steps (8 for tf32, 16 for bf16), the
// operands rounded as they are loaded into fragments (layouts: kernels/mma.cuh). Every element of
// D is written by one lane; call with the whole block, between barriers.
template <int PREC, int MODE>
__device__ __forceinline__ void fa_mma(float* D, int ldd, const float* A, int a_rs, int a_ks, const float* B, int b_ks,
                                       int b_ns, int N, int K, const float* row_scale, float mul) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int r0 = (warp & 1) * 16 + g;  // this lane's A rows r0, r0 + 8
    constexpr int KS = PREC == FA_BF16 ? 16 : 8;
    const int chunks = (N + 7) / 8;
    for (int ch = warp >> 1; ch < chunks; ch += 2) {  // uniform over the warp
        const int n = ch * 8 + g;                      // this lane's B column
        const bool n_ok = n < N;
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int k0 = 0; k0 < K; k0 += KS) {
            unsigned a[4], b[2];
            if (PREC == FA_BF16) {
                const int k = k0 + 2 * t;  // this lane's k pairs: k, k + 1 and k + 8, k + 9
                const bool k0k = k < K, k1k = k + 1 < K, k8k = k + 8 < K, k9k = k + 9 < K;
                a[0] = bf16x2_rne(fa_at(A, r0, k, a_rs, a_ks, k0k), fa_at(A, r0, k + 1, a_rs, a_ks, k1k));
                a[1] = bf16x2_rne(fa_at(A, r0 + 8, k, a_rs, a_ks, k0k), fa_at(A, r0 + 8, k + 1, a_rs, a_ks, k1k));
                a[2] = bf16x2_rne(fa_at(A, r0, k + 8, a_rs, a_ks, k8k), fa_at(A, r0, k + 9, a_rs, a_ks, k9k));
                a[3] = bf16x2_rne(fa_at(A, r0 + 8, k + 8, a_rs, a_ks, k8k),
                                  fa_at(A, r0 + 8, k + 9, a_rs, a_ks, k9k));
                b[0] = bf16x2_rne(fa_at(B, k, n, b_ks, b_ns, n_ok && k0k), fa_at(B, k + 1, n, b_ks, b_ns, n_ok && k1k));
                b[1] = bf16x2_rne(fa_at(B, k + 8, n, b_ks, b_ns, n_ok && k8k),
                                  fa_at(B, k + 9, n, b_ks, b_ns, n_ok && k9k));
                mma_m16n8k16_bf16(d, a, b);
            } else {
                const int k = k0 + t;  // this lane's k: k and k + 4
                const bool k0k = k < K, k4k = k + 4 < K;
                a[0] = tf32_rna(fa_at(A, r0, k, a_rs, a_ks, k0k));
                a[1] = tf32_rna(fa_at(A, r0 + 8, k, a_rs, a_ks, k0k));
                a[2] = tf32_rna(fa_at(A, r0, k + 4, a_rs, a_ks, k4k));
                a[3] = tf32_rna(fa_at(A, r0 + 8, k + 4, a_rs, a_ks, k4k));
                b[0] = tf32_rna(fa_at(B, k, n, b_ks, b_ns, n_ok && k0k));
                b[1] = tf32_rna(fa_at(B, k + 4, n, b_ks, b_ns, n_ok && k4k));
                mma_m16n8k8_tf32(d, a, b);
            }
        }
        for (int e = 0; e < 4; e++) {  // D element e: row g (+ 8 for e >= 2), column 2t (+ 1 for odd e)
            const int r = r0 + 8 * (e >> 1);
            const int c = ch * 8 + 2 * t + (e & 1);
            if (c >= N) continue;
            float& o = D[r * ldd + c];
            if (MODE == FA_MMA_STORE) o = d[e];
            else if (MODE == FA_MMA_RESCALE) o = o * row_scale[r] + d[e];
            else o += mul * d[e];
        }
    }
}

// x rounded as the products of precision `prec` round their operands (for the row check).
__device__ __forceinline__ float fa_round(float x, int prec) {
    return prec == FA_TF32 ? __uint_as_float(tf32_rna(x)) : prec == FA_BF16 ? __uint_as_float(bf16_rne(x) << 16) : x;
}

// Block (query tile qt = blockIdx.x, head bh = blockIdx.y). Thread t owns query row t / 4 of the
// tile and, of each key tile, the 8 keys 8·(t % 4) .. +7 (its scores, probabilities and mask
// draws), and the output channels t % 4, t % 4 + 4, ... of its row. Key tiles above the diagonal
// are never visited.
// The tensor-core kernels (PREC tf32 / bf16) compute the key tile's scores q·kᵀ into Ps with
// fa_mma (the softmax then reads them back) and O = O·alpha + P·V with fa_mma, alpha per row in
// alpha_s; everything else is the fp32 kernel's.
template <int PREC>
__device__ __forceinline__ void fa_forward(float* out,        // (B, T, C)
                                           float* lse,        // (B, NH, T)
                                           const float* q,    // (B, T, C)
                                           const float* k,    // (B, T, C)
                                           const float* v,    // (B, T, C)
                                           int NH, int T, int HS, float scale, unsigned long long seed,
                                           const unsigned long long* step,  // (1), or null: no dropout
                                           unsigned int tensor, float p, float keep_scale) {
    extern __shared__ float fa_smem[];
    const int hsp = HS + 1;
    float* Qs = fa_smem;             // [FA_TILE][hsp]
    float* Ks = Qs + FA_TILE * hsp;  // [FA_TILE][hsp]
    float* Vs = Ks + FA_TILE * hsp;  // [FA_TILE][hsp]
    float* Os = Vs + FA_TILE * hsp;  // [FA_TILE][hsp], the unnormalised output rows
    float* Ps = Os + FA_TILE * hsp;  // [FA_TILE][FA_TILE + 1], this key tile's masked probabilities
    float* alpha_s = Ps + FA_TILE * (FA_TILE + 1);  // [FA_TILE], tensor-core kernels only
    const int qt = blockIdx.x;
    const int bh = blockIdx.y;
    const int b = bh / NH;
    const int h = bh % NH;
    const int C = NH * HS;
    const int row = threadIdx.x / 4;
    const int part = threadIdx.x % 4;
    const int i = qt * FA_TILE + row;
    const FaDropout drop = fa_dropout(seed, step, tensor, p, keep_scale);

    fa_load(Qs, q, b, h, qt * FA_TILE, T, C, HS);
    fa_zero(Os, FA_TILE * hsp);
    float m = FA_LOWEST;  // running max of row i
    float l = 0.0f;       // running Σ exp(s − m) of row i (probabilities before dropout)
    for (int kt = 0; kt <= qt; kt++) {
        fa_load(Ks, k, b, h, kt * FA_TILE, T, C, HS);
        fa_load(Vs, v, b, h, kt * FA_TILE, T, C, HS);
        __syncthreads();  // Q (first time), K and V tiles complete
        if (PREC != FA_FP32) {
            fa_mma<PREC, FA_MMA_STORE>(Ps, FA_TILE + 1, Qs, hsp, 1, Ks, 1, hsp, FA_TILE, HS, nullptr, 0.0f);
            __syncthreads();  // the tile's scores in Ps
        }

        float s[8];
        float mx = FA_LOWEST;
        for (int jj = 0; jj < 8; jj++) {
            const int col = part * 8 + jj;
            const int j = kt * FA_TILE + col;
            const bool live = i < T && j <= i;  // j <= i < T: a real key at or before the query
            const float dot = !live ? 0.0f
                              : PREC == FA_FP32 ? fa_dot(Qs + row * hsp, Ks + col * hsp, HS)
                                                : Ps[row * (FA_TILE + 1) + col];
            s[jj] = live ? dot * scale : FA_LOWEST;
            mx = fmaxf(mx, s[jj]);
        }
        const float m_new = fmaxf(m, fa_row_max(mx));
        const float alpha = __expf(m - m_new);  // rescales what the row has summed so far
        float mult[8];
        fa_multipliers8(drop, ((unsigned long long)bh * T + i) * T + kt * FA_TILE + part * 8, mult);
        float sum = 0.0f;
        for (int jj = 0; jj < 8; jj++) {
            const int col = part * 8 + jj;
            const int j = kt * FA_TILE + col;
            const bool live = i < T && j <= i;
            const float pj = live ? __expf(s[jj] - m_new) : 0.0f;
            sum += pj;
            Ps[row * (FA_TILE + 1) + col] = pj * (live ? mult[jj] : 0.0f);
        }
        l = l * alpha + fa_row_sum(sum);
        m = m_new;
        if (PREC != FA_FP32 && part == 0) alpha_s[row] = alpha;
        __syncthreads();  // the row's probabilities written by its 4 threads

        if (PREC == FA_FP32) {
            for (int c = part; c < HS; c += 4) {
                float acc = Os[row * hsp + c] * alpha;
                for (int jj = 0; jj < FA_TILE; jj++) acc += Ps[row * (FA_TILE + 1) + jj] * Vs[jj * hsp + c];
                Os[row * hsp + c] = acc;
            }
        } else {
            fa_mma<PREC, FA_MMA_RESCALE>(Os, hsp, Ps, FA_TILE + 1, 1, Vs, hsp, 1, HS, FA_TILE, alpha_s, 1.0f);
        }
        __syncthreads();  // done with K, V and P before the next tile overwrites them
    }
    if (i >= T) return;
    const float inv = 1.0f / l;  // l >= 1: the row's max term is exp(0)
    float* o = out + ((size_t)b * T + i) * C + (size_t)h * HS;
    for (int c = part; c < HS; c += 4) o[c] = Os[row * hsp + c] * inv;
    if (part == 0) lse[(size_t)bh * T + i] = m + logf(l);
}

#define FA_KERNELS(SUFFIX, PREC)                                                                                 \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) attention_fused_forward##SUFFIX(                      \
        float* out, float* lse, const float* q, const float* k, const float* v, int NH, int T, int HS, float scale, \
        unsigned long long seed, const unsigned long long* step, unsigned int tensor, float p, float keep_scale) {  \
        fa_forward<PREC>(out, lse, q, k, v, NH, T, HS, scale, seed, step, tensor, p, keep_scale);                  \
    }
FA_KERNELS(, FA_FP32)
FA_KERNELS(_tf32, FA_TF32)
FA_KERNELS(_bf16, FA_BF16)

// D (B, NH, T): D_i = Σ_c dO_ic · O_ic per row, one warp per row (of R = B·NH·T rows).
extern "C" __global__ void attention_fused_backward_prep(float* D,             // (B, NH, T)
                                                         const float* dout,    // (B, T, C)
                                                         const float* out,     // (B, T, C)
                                                         int NH, int T, int HS, int R) {
    const int r = (int)(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (r >= R) return;  // whole warps
    const int bh = r / T;
    const int i = r % T;
    const int b = bh / NH;
    const int h = bh % NH;
    const size_t o = ((size_t)b * T + i) * (size_t)(NH * HS) + (size_t)h * HS;
    float acc = 0.0f;
    for (int c = lane; c < HS; c += 32) acc += dout[o + c] * out[o + c];
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(FA_FULL_MASK, acc, off);
    if (lane == 0) D[r] = acc;
}

// The probabilities of one (query tile, key tile) pair and their gradients, shared by the two
// backward kernels: thread (row, part) computes, for its query row i and its 8 keys j,
// P = exp(s − lse_i), the mask multiplier, dP = mult · dO_i · v_j and dS = P (dP − D_i), writing
// P·mult into Pd (when given) and dS into dS. The tensor-core kernels computed the pair's q·kᵀ into
// Ss and dO·vᵀ into dPs beforehand (fa_mma); each thread reads its elements there before it
// writes the same elements of Pd and dS, so Ss may be Pd and dPs may be dS.
template <int PREC>
__device__ __forceinline__ void fa_probs_and_grads(float* Pd, float* dS, const float* Ss, const float* dPs,
                                                   const float* Qs, const float* Ks, const float* Vs,
                                                   const float* dOs, const float* lse_s, const float* D_s, int qt,
                                                   int kt, int bh, int T, int HS, float scale,
                                                   const FaDropout& drop) {
    const int hsp = HS + 1;
    const int row = threadIdx.x / 4;
    const int part = threadIdx.x % 4;
    const int i = qt * FA_TILE + row;
    float mult[8];
    fa_multipliers8(drop, ((unsigned long long)bh * T + i) * T + kt * FA_TILE + part * 8, mult);
    for (int jj = 0; jj < 8; jj++) {
        const int col = part * 8 + jj;
        const int j = kt * FA_TILE + col;
        const bool live = i < T && j <= i;
        float pv = 0.0f, mu = 0.0f, ds = 0.0f;
        if (live) {
            const int e = row * (FA_TILE + 1) + col;
            const float sv = PREC == FA_FP32 ? fa_dot(Qs + row * hsp, Ks + col * hsp, HS) : Ss[e];
            pv = __expf(sv * scale - lse_s[row]);
            mu = mult[jj];
            const float dp = mu * (PREC == FA_FP32 ? fa_dot(dOs + row * hsp, Vs + col * hsp, HS) : dPs[e]);
            ds = pv * (dp - D_s[row]);
        }
        if (Pd) Pd[row * (FA_TILE + 1) + col] = pv * mu;
        dS[row * (FA_TILE + 1) + col] = ds;
    }
}

// The per-row lse and D of query tile qt into shared memory (zero past T).
__device__ __forceinline__ void fa_load_rows(float* lse_s, float* D_s, const float* lse, const float* D, int bh,
                                             int qt, int T) {
    if (threadIdx.x < FA_TILE) {
        const int i = qt * FA_TILE + threadIdx.x;
        lse_s[threadIdx.x] = i < T ? lse[(size_t)bh * T + i] : 0.0f;
        D_s[threadIdx.x] = i < T ? D[(size_t)bh * T + i] : 0.0f;
    }
}

// dk, dv (B, T, C) += their gradients: block (key tile kt = blockIdx.x, head bh = blockIdx.y)
// walks the query tiles from the diagonal down; thread t owns key row t / 4 of the tile and its
// channels t % 4, t % 4 + 4, ... of dK and dV.
// The tensor-core kernels compute the pair's scores into Pd and dO·vᵀ into dS (fa_mma; the
// probabilities and their gradients then replace them in place), and dV += (P·mult)ᵀ·dO,
// dK += scale·dSᵀ·Q with fa_mma.
template <int PREC>
__device__ __forceinline__ void fa_backward_dkdv(float* dk,           // (B, T, C), accumulated
                                                 float* dv,           // (B, T, C), accumulated
                                                 const float* q,      // (B, T, C)
                                                 const float* k,      // (B, T, C)
                                                 const float* v,      // (B, T, C)
                                                 const float* dout,   // (B, T, C)
                                                 const float* lse,    // (B, NH, T)
                                                 const float* D,      // (B, NH, T)
                                                 int NH, int T, int HS, float scale, unsigned long long seed,
                                                 const unsigned long long* step, unsigned int tensor, float p,
                                                 float keep_scale) {
    extern __shared__ float fa_smem[];
    const int hsp = HS + 1;
    const int tile = FA_TILE * hsp;
    float* Ks = fa_smem;
    float* Vs = Ks + tile;
    float* dKs = Vs + tile;
    float* dVs = dKs + tile;
    float* Qs = dVs + tile;
    float* dOs = Qs + tile;
    float* Pd = dOs + tile;                      // [FA_TILE][FA_TILE + 1]
    float* dS = Pd + FA_TILE * (FA_TILE + 1);    // [FA_TILE][FA_TILE + 1]
    float* lse_s = dS + FA_TILE * (FA_TILE + 1);  // [FA_TILE]
    float* D_s = lse_s + FA_TILE;                // [FA_TILE]
    const int kt = blockIdx.x;
    const int bh = blockIdx.y;
    const int b = bh / NH;
    const int h = bh % NH;
    const int C = NH * HS;
    const int krow = threadIdx.x / 4;
    const int part = threadIdx.x % 4;
    const FaDropout drop = fa_dropout(seed, step, tensor, p, keep_scale);
    const int tiles = (T + FA_TILE - 1) / FA_TILE;

    fa_load(Ks, k, b, h, kt * FA_TILE, T, C, HS);
    fa_load(Vs, v, b, h, kt * FA_TILE, T, C, HS);
    fa_zero(dKs, tile);
    fa_zero(dVs, tile);
    for (int qt = kt; qt < tiles; qt++) {
        fa_load(Qs, q, b, h, qt * FA_TILE, T, C, HS);
        fa_load(dOs, dout, b, h, qt * FA_TILE, T, C, HS);
        fa_load_rows(lse_s, D_s, lse, D, bh, qt, T);
        __syncthreads();  // tiles complete
        if (PREC != FA_FP32) {
            fa_mma<PREC, FA_MMA_STORE>(Pd, FA_TILE + 1, Qs, hsp, 1, Ks, 1, hsp, FA_TILE, HS, nullptr, 0.0f);
            fa_mma<PREC, FA_MMA_STORE>(dS, FA_TILE + 1, dOs, hsp, 1, Vs, 1, hsp, FA_TILE, HS, nullptr, 0.0f);
            __syncthreads();  // the pair's q·kᵀ and dO·vᵀ
        }
        fa_probs_and_grads<PREC>(Pd, dS, Pd, dS, Qs, Ks, Vs, dOs, lse_s, D_s, qt, kt, bh, T, HS, scale, drop);
        __syncthreads();  // P·mult and dS of the pair written
        if (PREC == FA_FP32) {
            for (int c = part; c < HS; c += 4) {
                float acc_v = 0.0f, acc_k = 0.0f;
                for (int r = 0; r < FA_TILE; r++) {
                    acc_v += Pd[r * (FA_TILE + 1) + krow] * dOs[r * hsp + c];
                    acc_k += dS[r * (FA_TILE + 1) + krow] * Qs[r * hsp + c];
                }
                dVs[krow * hsp + c] += acc_v;
                dKs[krow * hsp + c] += scale * acc_k;
            }
        } else {  // A(key, query) = P[query][key]: the transposes read in place
            fa_mma<PREC, FA_MMA_ADD>(dVs, hsp, Pd, 1, FA_TILE + 1, dOs, hsp, 1, HS, FA_TILE, nullptr, 1.0f);
            fa_mma<PREC, FA_MMA_ADD>(dKs, hsp, dS, 1, FA_TILE + 1, Qs, hsp, 1, HS, FA_TILE, nullptr, scale);
        }
        __syncthreads();  // done with Q, dO, P and dS before the next query tile
    }
    const int j = kt * FA_TILE + krow;
    if (j >= T) return;
    const size_t o = ((size_t)b * T + j) * C + (size_t)h * HS;
    for (int c = part; c < HS; c += 4) {
        dk[o + c] += dKs[krow * hsp + c];
        dv[o + c] += dVs[krow * hsp + c];
    }
}

// dq (B, T, C) += its gradient: block (query tile qt = blockIdx.x, head bh = blockIdx.y) walks
// the key tiles up to the diagonal; thread t owns query row t / 4 and its channels t % 4, ... of dQ.
// The tensor-core kernels compute the pair's scores into Ss (one more [FA_TILE][FA_TILE + 1] of
// shared memory) and dO·vᵀ into dS, and dQ += scale·dS·K with fa_mma.
template <int PREC>
__device__ __forceinline__ void fa_backward_dq(float* dq,           // (B, T, C), accumulated
                                               const float* q,      // (B, T, C)
                                               const float* k,      // (B, T, C)
                                               const float* v,      // (B, T, C)
                                               const float* dout,   // (B, T, C)
                                               const float* lse,    // (B, NH, T)
                                               const float* D,      // (B, NH, T)
                                               int NH, int T, int HS, float scale, unsigned long long seed,
                                               const unsigned long long* step, unsigned int tensor, float p,
                                               float keep_scale) {
    extern __shared__ float fa_smem[];
    const int hsp = HS + 1;
    const int tile = FA_TILE * hsp;
    float* Qs = fa_smem;
    float* dOs = Qs + tile;
    float* dQs = dOs + tile;
    float* Ks = dQs + tile;
    float* Vs = Ks + tile;
    float* dS = Vs + tile;                       // [FA_TILE][FA_TILE + 1]
    float* lse_s = dS + FA_TILE * (FA_TILE + 1);  // [FA_TILE]
    float* D_s = lse_s + FA_TILE;                // [FA_TILE]
    float* Ss = D_s + FA_TILE;                   // [FA_TILE][FA_TILE + 1], tensor-core kernels only
    const int qt = blockIdx.x;
    const int bh = blockIdx.y;
    const int b = bh / NH;
    const int h = bh % NH;
    const int C = NH * HS;
    const int row = threadIdx.x / 4;
    const int part = threadIdx.x % 4;
    const FaDropout drop = fa_dropout(seed, step, tensor, p, keep_scale);

    fa_load(Qs, q, b, h, qt * FA_TILE, T, C, HS);
    fa_load(dOs, dout, b, h, qt * FA_TILE, T, C, HS);
    fa_load_rows(lse_s, D_s, lse, D, bh, qt, T);
    fa_zero(dQs, tile);
    for (int kt = 0; kt <= qt; kt++) {
        fa_load(Ks, k, b, h, kt * FA_TILE, T, C, HS);
        fa_load(Vs, v, b, h, kt * FA_TILE, T, C, HS);
        __syncthreads();  // tiles complete
        if (PREC != FA_FP32) {
            fa_mma<PREC, FA_MMA_STORE>(Ss, FA_TILE + 1, Qs, hsp, 1, Ks, 1, hsp, FA_TILE, HS, nullptr, 0.0f);
            fa_mma<PREC, FA_MMA_STORE>(dS, FA_TILE + 1, dOs, hsp, 1, Vs, 1, hsp, FA_TILE, HS, nullptr, 0.0f);
            __syncthreads();  // the pair's q·kᵀ and dO·vᵀ
        }
        fa_probs_and_grads<PREC>(nullptr, dS, Ss, dS, Qs, Ks, Vs, dOs, lse_s, D_s, qt, kt, bh, T, HS, scale, drop);
        __syncthreads();  // dS of the pair written
        if (PREC == FA_FP32) {
            for (int c = part; c < HS; c += 4) {
                float acc = 0.0f;
                for (int jj = 0; jj < FA_TILE; jj++) acc += dS[row * (FA_TILE + 1) + jj] * Ks[jj * hsp + c];
                dQs[row * hsp + c] += scale * acc;
            }
        } else {
            fa_mma<PREC, FA_MMA_ADD>(dQs, hsp, dS, FA_TILE + 1, 1, Ks, hsp, 1, HS, FA_TILE, nullptr, scale);
        }
        __syncthreads();  // done with K, V and dS before the next key tile
    }
    const int i = qt * FA_TILE + row;
    if (i >= T) return;
    const size_t o = ((size_t)b * T + i) * C + (size_t)h * HS;
    for (int c = part; c < HS; c += 4) dq[o + c] += dQs[row * hsp + c];
}

#define FA_BACKWARD_KERNELS(SUFFIX, PREC)                                                                       \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) attention_fused_backward_dkdv##SUFFIX(               \
        float* dk, float* dv, const float* q, const float* k, const float* v, const float* dout, const float* lse, \
        const float* D, int NH, int T, int HS, float scale, unsigned long long seed,                               \
        const unsigned long long* step, unsigned int tensor, float p, float keep_scale) {                          \
        fa_backward_dkdv<PREC>(dk, dv, q, k, v, dout, lse, D, NH, T, HS, scale, seed, step, tensor, p,              \
                               keep_scale);                                                                        \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) attention_fused_backward_dq##SUFFIX(                 \
        float* dq, const float* q, const float* k, const float* v, const float* dout, const float* lse,            \
        const float* D, int NH, int T, int HS, float scale, unsigned long long seed,                               \
        const unsigned long long* step, unsigned int tensor, float p, float keep_scale) {                          \
        fa_backward_dq<PREC>(dq, q, k, v, dout, lse, D, NH, T, HS, scale, seed, step, tensor, p, keep_scale);       \
    }
FA_BACKWARD_KERNELS(, FA_FP32)
FA_BACKWARD_KERNELS(_tf32, FA_TF32)
FA_BACKWARD_KERNELS(_bf16, FA_BF16)

// The fused path's row check: for every row, |Σ_{j ≤ i} exp(s_ij − lse_i) − 1|, recomputed from q, k
// and the saved lse (a real check of the logsumexp the backward relies on), with q and k rounded
// as the forward of precision `prec` (FA_FP32 / FA_TF32 / FA_BF16) rounded them. One warp per row;
// result[0] = the largest deviation as f32 bits (an unsigned max orders non-negative floats and
// puts NaN above all), result[1] += rows over tol (or NaN). result must be zero before.
extern "C" __global__ void attention_lse_check(unsigned int* result,  // (2)
                                               const float* q,        // (B, T, C)
                                               const float* k,        // (B, T, C)
                                               const float* lse,      // (B, NH, T)
                                               int NH, int T, int HS, float scale, int R, float tol, int prec) {
    const int r = (int)(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (r >= R) return;  // whole warps
    const int bh = r / T;
    const int i = r % T;
    const int b = bh / NH;
    const int h = bh % NH;
    const size_t C = (size_t)NH * HS;
    const float* qi = q + ((size_t)b * T + i) * C + (size_t)h * HS;
    const float li = lse[r];
    float sum = 0.0f;
    for (int j = lane; j <= i; j += 32) {
        const float* kj = k + ((size_t)b * T + j) * C + (size_t)h * HS;
        float acc = 0.0f;
        for (int d = 0; d < HS; d++) acc += fa_round(qi[d], prec) * fa_round(kj[d], prec);
        sum += __expf(acc * scale - li);
    }
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(FA_FULL_MASK, sum, off);
    if (lane != 0) return;
    const float dev = fabsf(sum - 1.0f);  // fabsf clears the sign of a NaN too
    atomicMax(&result[0], __float_as_uint(dev));
    if (!(dev <= tol)) atomicAdd(&result[1], 1u);
}

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels/attention_fused.rs)
//
// attention_fused_forward: block (128), grid (ceil(T / 32), B·NH), dynamic shared memory
// (4·32·(HS + 1) + 32·33) floats (+ 32 for the _tf32 / _bf16 kernels). attention_fused_backward_dkdv:
// the same grid, (6·32·(HS + 1) + 2·32·33 + 64) floats. attention_fused_backward_dq: the same grid,
// (5·32·(HS + 1) + 32·33 + 64) floats (+ 32·33 for _tf32 / _bf16). The _tf32 and _bf16 kernels take
// the same parameters as the fp32 ones. attention_fused_backward_prep, attention_lse_check: block (128), grid (ceil(B·NH·T / 4)).
