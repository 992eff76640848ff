// Causal scaled-dot-product attention, forward and backward, step by step:
//   scores = q·kᵀ·scale  →  causal mask + softmax (probs, saved)  →  dropout (weights)  →  · v
// q, k, v, out are (B, T, C) with C = NH·HS, head h owning channels h·HS .. (h+1)·HS; scores,
// probs and weights are (B, NH, T, T) = (R, T, T) with R = B·NH, zero above the diagonal.
// Dropout masks come from Philox (philox.cuh), element index ((b·NH + h)·T + i)·T + j, and are
// regenerated in the backward pass, never stored.
// CPU reference: src/ops/attention.rs (the step ops attention_scores_forward,
// causal_softmax_forward, dropout_forward, attention_values_forward and their backwards).
// Host launchers: src/gpu/kernels/attention.rs.
//
// No float atomics: every output element has one owning thread that sums its terms in a fixed
// order, so a launch is bit-for-bit repeatable.

#include "philox.cuh"

// ----------------------------------------------------------------------------------------------
// tiled products over one head (device functions; the kernels below pick the tiles)

#define ATT_TILE 32            // output tiles are ATT_TILE x ATT_TILE; also the reduction step
#define ATT_ROWS_PER_THREAD 4  // block is (ATT_TILE, ATT_TILE / ATT_ROWS_PER_THREAD)
#define ATT_ROW_STEP (ATT_TILE / ATT_ROWS_PER_THREAD)

// Thread (tx, ty) of a block owns column tx of the output tile and rows ty, ty + ROW_STEP, ...;
// a warp is one ty, so it reads one shared row as a broadcast and 32 consecutive columns. Tiles
// past the ragged edges (and entries above the diagonal) are staged as zeros, so the inner loops
// need no bounds checks.

// Tile (ti, tj) of out (T, T): out[i][j] = scale · Σ_d a[i][d]·b[j][d] for j <= i. Above the
// diagonal inside the tile: zeros when zero_above, otherwise left untouched. a, b point at the
// head's first channel of a (T, C) batch row.
__device__ __forceinline__ void causal_dot_tile(float* out,      // (T, T)
                                                const float* a,  // (T, C) from channel h·HS
                                                const float* b,  // (T, C) from channel h·HS
                                                int T, int C, int HS, float scale, int ti, int tj,
                                                bool zero_above) {
    // +1 column: b_tile is read down a column (one row per lane), which would hit one bank 32 times
    __shared__ float a_tile[ATT_TILE][ATT_TILE + 1];  // (rows i, d)
    __shared__ float b_tile[ATT_TILE][ATT_TILE + 1];  // (columns j, d)
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int row0 = ti * ATT_TILE;
    const int col0 = tj * ATT_TILE;

    float acc[ATT_ROWS_PER_THREAD];
    for (int r = 0; r < ATT_ROWS_PER_THREAD; r++) acc[r] = 0.0f;

    for (int d0 = 0; d0 < HS; d0 += ATT_TILE) {
        const int d = d0 + tx;  // coalesced along the channels
        for (int rr = ty; rr < ATT_TILE; rr += ATT_ROW_STEP) {
            const int i = row0 + rr;
            const int j = col0 + rr;
            a_tile[rr][tx] = (i < T && d < HS) ? a[(size_t)i * C + d] : 0.0f;
            b_tile[rr][tx] = (j < T && d < HS) ? b[(size_t)j * C + d] : 0.0f;
        }
        __syncthreads();  // tiles complete before anyone reads them
        for (int kk = 0; kk < ATT_TILE; kk++) {
            const float bv = b_tile[tx][kk];
            for (int r = 0; r < ATT_ROWS_PER_THREAD; r++) acc[r] += a_tile[ty + r * ATT_ROW_STEP][kk] * bv;
        }
        __syncthreads();  // everyone done reading before the next tiles overwrite them
    }

    const int j = col0 + tx;
    if (j >= T) return;
    for (int r = 0; r < ATT_ROWS_PER_THREAD; r++) {
        const int i = row0 + ty + r * ATT_ROW_STEP;
        if (i >= T) break;
        if (j <= i) out[(size_t)i * T + j] = acc[r] * scale;
        else if (zero_above) out[(size_t)i * T + j] = 0.0f;
    }
}

// Tile (ti, td) of out (T, C): out[i][d] = (accumulate ? out[i][d] : 0) + scale · Σ_{j<=i}
// w[i][j]·x[j][d]. Only the column tiles j0 <= the tile's last row are visited: w is causal.
__device__ __forceinline__ void causal_rows_product_tile(float* out,      // (T, C) from channel h·HS
                                                         const float* w,  // (T, T)
                                                         const float* x,  // (T, C) from channel h·HS
                                                         int T, int C, int HS, float scale, int ti,
                                                         int td, bool accumulate) {
    __shared__ float w_tile[ATT_TILE][ATT_TILE + 1];  // (rows i, j)
    __shared__ float x_tile[ATT_TILE][ATT_TILE + 1];  // (j, channels d)
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int row0 = ti * ATT_TILE;
    const int d = td * ATT_TILE + tx;
    const int j_end = min(T, row0 + ATT_TILE);  // one past the last j any row of the tile sees

    float acc[ATT_ROWS_PER_THREAD];
    for (int r = 0; r < ATT_ROWS_PER_THREAD; r++) acc[r] = 0.0f;

    for (int j0 = 0; j0 < j_end; j0 += ATT_TILE) {
        for (int rr = ty; rr < ATT_TILE; rr += ATT_ROW_STEP) {
            const int i = row0 + rr;
            const int j = j0 + tx;  // coalesced along the row of w
            w_tile[rr][tx] = (i < T && j <= i) ? w[(size_t)i * T + j] : 0.0f;
            const int jr = j0 + rr;  // coalesced along the channels
            x_tile[rr][tx] = (jr < T && d < HS) ? x[(size_t)jr * C + d] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < ATT_TILE; kk++) {
            const float xv = x_tile[kk][tx];
            for (int r = 0; r < ATT_ROWS_PER_THREAD; r++) acc[r] += w_tile[ty + r * ATT_ROW_STEP][kk] * xv;
        }
        __syncthreads();
    }

    if (d >= HS) return;
    for (int r = 0; r < ATT_ROWS_PER_THREAD; r++) {
        const int i = row0 + ty + r * ATT_ROW_STEP;
        if (i >= T) break;
        float* o = out + (size_t)i * C + d;
        *o = accumulate ? *o + scale * acc[r] : scale * acc[r];
    }
}

// Tile (tj, td) of out (T, C): out[j][d] += scale · Σ_{i>=j} w[i][j]·x[i][d] (wᵀ·x). Only the
// row tiles from the diagonal down are visited: w is causal.
__device__ __forceinline__ void causal_cols_product_tile(float* out,      // (T, C) from channel h·HS
                                                         const float* w,  // (T, T)
                                                         const float* x,  // (T, C) from channel h·HS
                                                         int T, int C, int HS, float scale, int tj,
                                                         int td) {
    __shared__ float w_tile[ATT_TILE][ATT_TILE + 1];  // (i, columns j)
    __shared__ float x_tile[ATT_TILE][ATT_TILE + 1];  // (i, channels d)
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int col0 = tj * ATT_TILE;
    const int d = td * ATT_TILE + tx;

    float acc[ATT_ROWS_PER_THREAD];
    for (int r = 0; r < ATT_ROWS_PER_THREAD; r++) acc[r] = 0.0f;

    for (int i0 = col0; i0 < T; i0 += ATT_TILE) {
        for (int rr = ty; rr < ATT_TILE; rr += ATT_ROW_STEP) {
            const int i = i0 + rr;
            const int j = col0 + tx;  // coalesced along the row of w
            w_tile[rr][tx] = (i < T && j <= i) ? w[(size_t)i * T + j] : 0.0f;
            x_tile[rr][tx] = (i < T && d < HS) ? x[(size_t)i * C + d] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < ATT_TILE; kk++) {
            const float xv = x_tile[kk][tx];
            for (int r = 0; r < ATT_ROWS_PER_THREAD; r++) acc[r] += w_tile[kk][ty + r * ATT_ROW_STEP] * xv;
        }
        __syncthreads();
    }

    if (d >= HS) return;
    for (int r = 0; r < ATT_ROWS_PER_THREAD; r++) {
        const int j = col0 + ty + r * ATT_ROW_STEP;
        if (j >= T) break;
        float* o = out + (size_t)j * C + d;
        *o += scale * acc[r];
    }
}

// The (T, T) matrix of head r = blockIdx.z and the head's first channel in a (B, T, C) tensor.
__device__ __forceinline__ size_t att_head_tt(int T) { return (size_t)blockIdx.z * T * T; }
__device__ __forceinline__ size_t att_head_btc(int NH, int T, int HS) {
    const int b = blockIdx.z / NH;
    const int h = blockIdx.z % NH;
    return (size_t)b * T * (NH * HS) + (size_t)h * HS;
}

// ----------------------------------------------------------------------------------------------
// kernels: products

// scores = q·kᵀ·scale for j <= i. blockIdx.x enumerates only the tiles on or below the diagonal,
// row by row: (0,0), (1,0), (1,1), (2,0), ...
extern "C" __global__ void attention_scores_forward(float* scores,   // (B, NH, T, T)
                                                    const float* q,  // (B, T, C)
                                                    const float* k,  // (B, T, C)
                                                    int NH, int T, int HS, float scale) {
    const int idx = blockIdx.x;
    int ti = (int)((sqrtf(8.0f * (float)idx + 1.0f) - 1.0f) * 0.5f);  // then fix float rounding
    while (ti * (ti + 1) / 2 > idx) ti--;
    while ((ti + 1) * (ti + 2) / 2 <= idx) ti++;
    const int tj = idx - ti * (ti + 1) / 2;
    const size_t qk = att_head_btc(NH, T, HS);
    causal_dot_tile(scores + att_head_tt(T), q + qk, k + qk, T, NH * HS, HS, scale, ti, tj, false);
}

// out = weights·v per head.
extern "C" __global__ void attention_values_forward(float* out,            // (B, T, C)
                                                    const float* weights,  // (B, NH, T, T)
                                                    const float* v,        // (B, T, C)
                                                    int NH, int T, int HS) {
    const size_t x = att_head_btc(NH, T, HS);
    causal_rows_product_tile(out + x, weights + att_head_tt(T), v + x, T, NH * HS, HS, 1.0f, blockIdx.y,
                             blockIdx.x, false);
}

// dv += weightsᵀ·dout per head.
extern "C" __global__ void attention_values_backward_dv(float* dv,             // (B, T, C)
                                                        const float* weights,  // (B, NH, T, T)
                                                        const float* dout,     // (B, T, C)
                                                        int NH, int T, int HS) {
    const size_t x = att_head_btc(NH, T, HS);
    causal_cols_product_tile(dv + x, weights + att_head_tt(T), dout + x, T, NH * HS, HS, 1.0f, blockIdx.y,
                             blockIdx.x);
}

// dweights = dout·vᵀ for j <= i, 0 above: every tile is written, the ones wholly above the
// diagonal with zeros only.
extern "C" __global__ void attention_values_backward_dweights(float* dweights,    // (B, NH, T, T)
                                                              const float* dout,  // (B, T, C)
                                                              const float* v,     // (B, T, C)
                                                              int NH, int T, int HS) {
    const int ti = blockIdx.y;
    const int tj = blockIdx.x;
    float* out = dweights + att_head_tt(T);
    if (tj > ti) {  // the whole block leaves together, before any barrier
        const int j = tj * ATT_TILE + threadIdx.x;
        if (j >= T) return;
        for (int rr = threadIdx.y; rr < ATT_TILE; rr += ATT_ROW_STEP) {
            const int i = ti * ATT_TILE + rr;
            if (i < T) out[(size_t)i * T + j] = 0.0f;
        }
        return;
    }
    const size_t x = att_head_btc(NH, T, HS);
    causal_dot_tile(out, dout + x, v + x, T, NH * HS, HS, 1.0f, ti, tj, true);
}

// dq += scale·dscores·k per head.
extern "C" __global__ void attention_scores_backward_dq(float* dq,             // (B, T, C)
                                                        const float* dscores,  // (B, NH, T, T)
                                                        const float* k,        // (B, T, C)
                                                        int NH, int T, int HS, float scale) {
    const size_t x = att_head_btc(NH, T, HS);
    causal_rows_product_tile(dq + x, dscores + att_head_tt(T), k + x, T, NH * HS, HS, scale, blockIdx.y,
                             blockIdx.x, true);
}

// dk += scale·dscoresᵀ·q per head.
extern "C" __global__ void attention_scores_backward_dk(float* dk,             // (B, T, C)
                                                        const float* dscores,  // (B, NH, T, T)
                                                        const float* q,        // (B, T, C)
                                                        int NH, int T, int HS, float scale) {
    const size_t x = att_head_btc(NH, T, HS);
    causal_cols_product_tile(dk + x, dscores + att_head_tt(T), q + x, T, NH * HS, HS, scale, blockIdx.y,
                             blockIdx.x);
}

// ----------------------------------------------------------------------------------------------
// kernels: softmax and dropout, one warp per row

#define ATT_FULL_MASK 0xffffffffu

__device__ __forceinline__ float att_warp_max(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(ATT_FULL_MASK, v, offset));
    return v;
}

// A butterfly: every lane ends with the same, bitwise identical sum (a + b == b + a in IEEE).
__device__ __forceinline__ float att_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(ATT_FULL_MASK, v, offset);
    return v;
}

// Row `row` of an (R, T, T) tensor starts at element e0 = row·T, which need not be a multiple of
// 4. Its live entries 0..=i are split into Philox groups (4 elements, aligned in the tensor's
// element index): group g covers entries j = 4g − off .. 4g − off + 3 with off = e0 mod 4, and
// lane L owns groups L, L + 32, ... in EVERY pass, so each lane rereads only entries it wrote
// itself (no barrier needed, in place is safe) and draws each Philox block once.

// probs = causal softmax(scores), row by row; with weights non-null, also weights = probs ⊙ mask.
// probs may be scores (in place); weights must be neither.
extern "C" __global__ void causal_softmax_dropout_forward(float* probs,         // (R, T, T)
                                                          float* weights,       // (R, T, T), or null: no dropout
                                                          const float* scores,  // (R, T, T)
                                                          int R, int T, unsigned long long seed,
                                                          const unsigned long long* step_ptr,  // (1), or null
                                                          unsigned int tensor, float p, float scale) {
    const unsigned long long step = step_ptr ? *step_ptr : 0ull;  // from memory: graph replays

    const int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (row >= R * T) return;  // whole warps leave together, so the shuffles below see full warps
    const int i = row % T;     // query position: entries 0..=i are live
    const unsigned long long e0 = (unsigned long long)row * T;
    const int off = (int)(e0 & 3);
    const int groups = (off + i) / 4 + 1;
    const float* x = scores + e0;
    float* y = probs + e0;

    float m = __int_as_float((int)0xff800000);  // -inf: lanes with no live entry must not win the max
    for (int g = lane; g < groups; g += 32) {
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const int j = 4 * g - off + l;
            if (j >= 0 && j <= i) m = fmaxf(m, x[j]);
        }
    }
    m = att_warp_max(m);

    float sum = 0.0f;
    for (int g = lane; g < groups; g += 32) {
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const int j = 4 * g - off + l;
            if (j >= 0 && j <= i) {
                const float e = __expf(x[j] - m);
                y[j] = e;  // with probs == scores, x[j] has had its last read
                sum += e;
            }
        }
    }
    sum = att_warp_sum(sum);  // >= 1: the max entry contributes exp(0)
    const float inv = 1.0f / sum;

    float* wrow = weights ? weights + e0 : nullptr;
    for (int g = lane; g < groups; g += 32) {
        uint4 words = make_uint4(0u, 0u, 0u, 0u);
        if (wrow) words = dropout_words(seed, step, tensor, (e0 >> 2) + (unsigned long long)g);
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const int j = 4 * g - off + l;
            if (j >= 0 && j <= i) {
                const float pj = y[j] * inv;
                y[j] = pj;
                if (wrow) wrow[j] = pj * dropout_multiplier(dropout_word(words, l), p, scale);
            }
        }
    }
    for (int j = i + 1 + lane; j < T; j += 32) {
        y[j] = 0.0f;
        if (wrow) wrow[j] = 0.0f;
    }
}

// weights = probs ⊙ mask, zero above the diagonal: the forward's mask, regenerated. One thread
// per Philox group of 4 elements.
extern "C" __global__ void attention_dropout_weights(float* weights,      // (R, T, T)
                                                     const float* probs,  // (R, T, T)
                                                     int R, int T, unsigned long long seed,
                                                     const unsigned long long* step_ptr,  // (1)
                                                     unsigned int tensor, float p, float scale) {
    const unsigned long long step = *step_ptr;
    const unsigned long long n = (unsigned long long)R * T * T;
    const unsigned long long g = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * g >= n) return;
    const uint4 words = dropout_words(seed, step, tensor, g);
    const unsigned long long tt = (unsigned long long)T;
#pragma unroll
    for (int l = 0; l < 4; l++) {
        const unsigned long long e = 4 * g + l;
        if (e >= n) break;
        const unsigned long long j = e % tt;
        const unsigned long long i = (e / tt) % tt;
        weights[e] = j <= i ? probs[e] * dropout_multiplier(dropout_word(words, l), p, scale) : 0.0f;
    }
}

// dP = dweights ⊙ mask (dropout != 0) or dweights; dscores = P ⊙ (dP − Σ_j P·dP), zero above the
// diagonal. dscores may be dweights (in place): the first pass parks dP in dscores, the second
// rereads it, each lane only its own entries. The row sum is a fixed per-lane order plus a fixed
// butterfly: deterministic.
extern "C" __global__ void causal_softmax_dropout_backward(float* dscores,         // (R, T, T)
                                                           const float* dweights,  // (R, T, T)
                                                           const float* probs,     // (R, T, T)
                                                           int R, int T, int dropout,
                                                           unsigned long long seed,
                                                           const unsigned long long* step_ptr,  // (1), or null
                                                           unsigned int tensor, float p, float scale) {
    const unsigned long long step = step_ptr ? *step_ptr : 0ull;
    const int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (row >= R * T) return;  // whole warps leave together
    const int i = row % T;
    const unsigned long long e0 = (unsigned long long)row * T;
    const int off = (int)(e0 & 3);
    const int groups = (off + i) / 4 + 1;
    const float* dw = dweights + e0;
    const float* pr = probs + e0;
    float* ds = dscores + e0;

    float dot = 0.0f;
    for (int g = lane; g < groups; g += 32) {
        uint4 words = make_uint4(0u, 0u, 0u, 0u);
        if (dropout) words = dropout_words(seed, step, tensor, (e0 >> 2) + (unsigned long long)g);
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const int j = 4 * g - off + l;
            if (j >= 0 && j <= i) {
                float dp = dw[j];
                if (dropout) dp *= dropout_multiplier(dropout_word(words, l), p, scale);
                ds[j] = dp;  // with dscores == dweights, dw[j] has had its last read
                dot += pr[j] * dp;
            }
        }
    }
    dot = att_warp_sum(dot);

    for (int g = lane; g < groups; g += 32) {
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const int j = 4 * g - off + l;
            if (j >= 0 && j <= i) ds[j] = pr[j] * (ds[j] - dot);
        }
    }
    for (int j = i + 1 + lane; j < T; j += 32) ds[j] = 0.0f;
}

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels/attention.rs); nt = ceil(T / 32), R = B·NH
//
// Tiled products: block (32, 8), 8.4 KiB of static shared memory, no dynamic shared memory.
//   attention_scores_forward: grid (nt·(nt + 1)/2, 1, R): only the tiles on or below the diagonal.
//   attention_values_backward_dweights: grid (nt, nt, R); tiles above the diagonal write zeros.
//   attention_values_forward, attention_scores_backward_dq (rows of out),
//   attention_values_backward_dv, attention_scores_backward_dk (rows of dv / dk):
//     grid (ceil(HS / 32), nt, R).
// causal_softmax_dropout_forward, causal_softmax_dropout_backward: block (128), grid
//   (ceil(R·T / 4)): one warp per row, four rows per block; no shared memory.
// attention_dropout_weights: block (256), grid (ceil(R·T·T / 4 / 256)): one thread per Philox group.
