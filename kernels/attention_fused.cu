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

// Block (query tile qt = blockIdx.x, head bh = blockIdx.y). Thread t owns query row t / 4 of the
// tile and, of each key tile, the 8 keys 8·(t % 4) .. +7 (its scores, probabilities and mask
// draws), and the output channels t % 4, t % 4 + 4, ... of its row. Key tiles above the diagonal
// are never visited.
extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attention_fused_forward(float* out,        // (B, T, C)
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

        float s[8];
        float mx = FA_LOWEST;
        for (int jj = 0; jj < 8; jj++) {
            const int col = part * 8 + jj;
            const int j = kt * FA_TILE + col;
            const bool live = i < T && j <= i;  // j <= i < T: a real key at or before the query
            s[jj] = live ? fa_dot(Qs + row * hsp, Ks + col * hsp, HS) * scale : FA_LOWEST;
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
        __syncthreads();  // the row's probabilities written by its 4 threads

        for (int c = part; c < HS; c += 4) {
            float acc = Os[row * hsp + c] * alpha;
            for (int jj = 0; jj < FA_TILE; jj++) acc += Ps[row * (FA_TILE + 1) + jj] * Vs[jj * hsp + c];
            Os[row * hsp + c] = acc;
        }
        __syncthreads();  // done with K, V and P before the next tile overwrites them
    }
    if (i >= T) return;
    const float inv = 1.0f / l;  // l >= 1: the row's max term is exp(0)
    float* o = out + ((size_t)b * T + i) * C + (size_t)h * HS;
    for (int c = part; c < HS; c += 4) o[c] = Os[row * hsp + c] * inv;
    if (part == 0) lse[(size_t)bh * T + i] = m + logf(l);
}

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
// P·mult into Pd (when given) and dS into dS.
__device__ __forceinline__ void fa_probs_and_grads(float* Pd, float* dS, const float* Qs, const float* Ks,
                                                   const float* Vs, const float* dOs, const float* lse_s,
                                                   const float* D_s, int qt, int kt, int bh, int T, int HS,
                                                   float scale, const FaDropout& drop) {
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
            pv = __expf(fa_dot(Qs + row * hsp, Ks + col * hsp, HS) * scale - lse_s[row]);
            mu = mult[jj];
            const float dp = mu * fa_dot(dOs + row * hsp, Vs + col * hsp, HS);
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
extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attention_fused_backward_dkdv(float* dk,           // (B, T, C), accumulated
                                  float* dv,           // (B, T, C), accumulated
                                  const float* q,      // (B, T, C)
                                  const float* k,      // (B, T, C)
                                  const float* v,      // (B, T, C)
                                  const float* dout,   // (B, T, C)
                                  const float* lse,    // (B, NH, T)
                                  const float* D,      // (B, NH, T)
                                  int NH, int T, int HS, float scale, unsigned long long seed,
                                  const unsigned long long* step, unsigned int tensor, float p, float keep_scale) {
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
        fa_probs_and_grads(Pd, dS, Qs, Ks, Vs, dOs, lse_s, D_s, qt, kt, bh, T, HS, scale, drop);
        __syncthreads();  // P·mult and dS of the pair written
        for (int c = part; c < HS; c += 4) {
            float acc_v = 0.0f, acc_k = 0.0f;
            for (int r = 0; r < FA_TILE; r++) {
                acc_v += Pd[r * (FA_TILE + 1) + krow] * dOs[r * hsp + c];
                acc_k += dS[r * (FA_TILE + 1) + krow] * Qs[r * hsp + c];
            }
            dVs[krow * hsp + c] += acc_v;
            dKs[krow * hsp + c] += scale * acc_k;
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
extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attention_fused_backward_dq(float* dq,           // (B, T, C), accumulated
                                const float* q,      // (B, T, C)
                                const float* k,      // (B, T, C)
                                const float* v,      // (B, T, C)
                                const float* dout,   // (B, T, C)
                                const float* lse,    // (B, NH, T)
                                const float* D,      // (B, NH, T)
                                int NH, int T, int HS, float scale, unsigned long long seed,
                                const unsigned long long* step, unsigned int tensor, float p, float keep_scale) {
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
        fa_probs_and_grads(nullptr, dS, Qs, Ks, Vs, dOs, lse_s, D_s, qt, kt, bh, T, HS, scale, drop);
        __syncthreads();  // dS of the pair written
        for (int c = part; c < HS; c += 4) {
            float acc = 0.0f;
            for (int jj = 0; jj < FA_TILE; jj++) acc += dS[row * (FA_TILE + 1) + jj] * Ks[jj * hsp + c];
            dQs[row * hsp + c] += scale * acc;
        }
        __syncthreads();  // done with K, V and dS before the next key tile
    }
    const int i = qt * FA_TILE + row;
    if (i >= T) return;
    const size_t o = ((size_t)b * T + i) * C + (size_t)h * HS;
    for (int c = part; c < HS; c += 4) dq[o + c] += dQs[row * hsp + c];
}

// The fused path's row check: for every row, |Σ_{j ≤ i} exp(s_ij − lse_i) − 1|, recomputed from q, k
// and the saved lse (a real check of the logsumexp the backward relies on). One warp per row;
// result[0] = the largest deviation as f32 bits (an unsigned max orders non-negative floats and
// puts NaN above all), result[1] += rows over tol (or NaN). result must be zero before.
extern "C" __global__ void attention_lse_check(unsigned int* result,  // (2)
                                               const float* q,        // (B, T, C)
                                               const float* k,        // (B, T, C)
                                               const float* lse,      // (B, NH, T)
                                               int NH, int T, int HS, float scale, int R, float tol) {
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
        for (int d = 0; d < HS; d++) acc += qi[d] * kj[d];
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
// (4·32·(HS + 1) + 32·33) floats. attention_fused_backward_dkdv: the same grid, (6·32·(HS + 1) +
// 2·32·33 + 64) floats. attention_fused_backward_dq: the same grid, (5·32·(HS + 1) + 32·33 + 64)
// floats. attention_fused_backward_prep, attention_lse_check: block (128), grid (ceil(B·NH·T / 4)).
