// The LSTM's pointwise cell for one timestep, gate order (i, f, g, o) as in PyTorch:
//   i, f, o = σ(a_i, a_f, a_o)   g = tanh(a_g)   c = f ⊙ c_prev + i ⊙ g   h = o ⊙ tanh(c)
// and its backward. The gate GEMMs around it are kernels/matmul.cu. tanh is the CPU reference's
// tanh_fast, 1 − 2 / (e^{2u} + 1), which saturates cleanly to ±1.
// CPU reference: src/ops/lstm.rs (lstm_cell_forward, lstm_cell_backward).
// Host launchers: src/gpu/kernels/lstm.rs.
//
// The persistent forms run a whole layer's recurrence in ONE cooperative launch: block b owns the
// hidden units j in [b·U, (b+1)·U) with all four of their gates, so the cell update is local to
// the block; its rows of W_hh stay in shared memory for the whole sequence; h of the previous step
// (B, H) is read from global memory (L2); a grid barrier (grid.cuh) separates the timesteps.

#include "grid.cuh"

// ----------------------------------------------------------------------------------------------
// kernels

__device__ __forceinline__ float lstm_sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }

__device__ __forceinline__ float lstm_tanh(float u) { return 1.0f - 2.0f / (__expf(2.0f * u) + 1.0f); }

// One thread per (n, j) of the B·H cell elements; consecutive threads take consecutive j, so each
// of the four gate rows is read and written coalesced. The gates are replaced by their
// activations in place (they are what the backward needs).
extern "C" __global__ void lstm_cell_forward(float* gates,         // (B, 4H) pre-activations in, activations out
                                             const float* c_prev,  // (B, H), or null for zeros
                                             float* c,             // (B, H)
                                             float* h,             // (B, H)
                                             int B, int H) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    const int n = idx / H;
    const int j = idx % H;
    float* g = gates + (size_t)n * 4 * H + j;
    const float ig = lstm_sigmoid(g[0]);
    const float fg = lstm_sigmoid(g[H]);
    const float gg = lstm_tanh(g[2 * H]);
    const float og = lstm_sigmoid(g[3 * H]);
    g[0] = ig;
    g[H] = fg;
    g[2 * H] = gg;
    g[3 * H] = og;
    const float cp = c_prev ? c_prev[idx] : 0.0f;
    const float cv = fg * cp + ig * gg;
    c[idx] = cv;
    h[idx] = og * lstm_tanh(cv);
}

// One thread per (n, j). dc_in and dc_out are (B, H) views with rows dc_stride apart, so the
// layer can keep the running cell gradient inside dgates' i-gate columns: dc_in may alias
// columns 0..H of dgates (dc_stride = 4H). dc_out must not overlap this step's dgates (it is
// written last), but may be dc_in itself when dc_in is a separate buffer (an in-place update, as
// the CPU reference does). Every input of (n, j) is read into registers before any output of
// (n, j) is written, and no thread touches another thread's (n, j), so both aliasings are safe
// without barriers.
extern "C" __global__ void lstm_cell_backward(float* dgates,         // (B, 4H), overwritten
                                              float* dc_out,         // (B, H) stride dc_stride, or null
                                              const float* dc_in,    // (B, H) stride dc_stride, or null for zeros
                                              int dc_stride,
                                              const float* dh,       // (B, H)
                                              const float* gates,    // (B, 4H) activations
                                              const float* c,        // (B, H)
                                              const float* c_prev,   // (B, H), or null for zeros
                                              int B, int H) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    const int n = idx / H;
    const int j = idx % H;
    const size_t gi = (size_t)n * 4 * H + j;
    const size_t ci = (size_t)n * dc_stride + j;
    const float ig = gates[gi];
    const float fg = gates[gi + H];
    const float gg = gates[gi + 2 * H];
    const float og = gates[gi + 3 * H];
    const float d_h = dh[idx];
    const float dc = dc_in ? dc_in[ci] : 0.0f;  // read before dgates[gi] (maybe the same float) is written
    const float cp = c_prev ? c_prev[idx] : 0.0f;
    const float tc = lstm_tanh(c[idx]);
    const float d_c = dc + d_h * og * (1.0f - tc * tc);
    float* dg = dgates + gi;
    dg[0] = d_c * gg * ig * (1.0f - ig);
    dg[H] = d_c * cp * fg * (1.0f - fg);
    dg[2 * H] = d_c * ig * (1.0f - gg * gg);
    dg[3 * H] = d_h * tc * og * (1.0f - og);
    if (dc_out) dc_out[ci] = d_c * fg;
}

#define LSTM_PT_THREADS 128  // threads per block of the persistent kernels

// gates (T, B, 4H): on entry x·W_ihᵀ + b for every step (one GEMM before the launch); on exit the
// activations. For each t: block b adds h[t−1] · W_hh[rows of its units]ᵀ to its units' four gate
// pre-activations (one thread per (row n, gate row r) dot product of length H, four interleaved
// partial sums added in a fixed order: no warp collectives, no atomics), then applies the cell to
// its (n, j) and writes c[t], h[t]; the grid barrier then publishes h[t] to every block. Shared
// memory: W slice [4U][S] with S = H | 1 (odd, so the rows a warp reads at one k fall in distinct
// banks); row q·U + u is W_hh row q·H + j0 + u.
extern "C" __global__ void __launch_bounds__(LSTM_PT_THREADS)
    lstm_persistent_forward(float* gates,          // (T, B, 4H)
                            float* c,              // (T, B, H)
                            float* h,              // (T, B, H)
                            const float* w_hh,     // (4H, H)
                            unsigned int* barrier, // (2), zero before the first launch
                            int T, int B, int H, int U) {
    extern __shared__ float lstm_smem[];
    float* Ws = lstm_smem;  // [4U][S]
    const int S = H | 1;
    const int j0 = blockIdx.x * U;
    const int units = min(U, H - j0);  // the last block may own fewer
    for (int e = threadIdx.x; e < 4 * U * H; e += LSTM_PT_THREADS) {
        const int r = e / H;  // q·U + u
        const int k = e % H;
        const int q = r / U;
        const int u = r % U;
        Ws[(size_t)r * S + k] = u < units ? w_hh[(size_t)(q * H + j0 + u) * H + k] : 0.0f;
    }
    __syncthreads();  // the W slice is in place
    const size_t gstep = (size_t)B * 4 * H;
    const size_t hstep = (size_t)B * H;
    for (int t = 0; t < T; t++) {
        float* g = gates + (size_t)t * gstep;
        if (t > 0) {
            const float* hp = h + (size_t)(t - 1) * hstep;
            for (int o = threadIdx.x; o < B * 4 * units; o += LSTM_PT_THREADS) {
                const int n = o / (4 * units);
                const int r = o % (4 * units);
                const int q = r / units;
                const int u = r % units;
                const float* w = Ws + (size_t)(q * U + u) * S;
                const float* x = hp + (size_t)n * H;
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
                int k = 0;
                for (; k + 4 <= H; k += 4) {
                    a0 += x[k] * w[k];
                    a1 += x[k + 1] * w[k + 1];
                    a2 += x[k + 2] * w[k + 2];
                    a3 += x[k + 3] * w[k + 3];
                }
                for (; k < H; k++) a0 += x[k] * w[k];
                g[(size_t)n * 4 * H + q * H + j0 + u] += (a0 + a1) + (a2 + a3);
            }
            __syncthreads();  // the block's pre-activations of step t are complete
        }
        for (int e = threadIdx.x; e < B * units; e += LSTM_PT_THREADS) {
            const int n = e / units;
            const int j = j0 + e % units;
            float* gn = g + (size_t)n * 4 * H + j;
            const float ig = lstm_sigmoid(gn[0]);
            const float fg = lstm_sigmoid(gn[H]);
            const float gg = lstm_tanh(gn[2 * H]);
            const float og = lstm_sigmoid(gn[3 * H]);
            gn[0] = ig;
            gn[H] = fg;
            gn[2 * H] = gg;
            gn[3 * H] = og;
            const size_t idx = (size_t)t * hstep + (size_t)n * H + j;
            const float cp = t > 0 ? c[idx - hstep] : 0.0f;
            const float cv = fg * cp + ig * gg;
            c[idx] = cv;
            h[idx] = og * lstm_tanh(cv);
        }
        if (t + 1 < T) grid_sync(barrier);  // h[t] of every unit, before any block reads it
    }
}

// Backward through time of lstm_persistent_forward: dgates (T, B, 4H) written for every step, dh
// (T, B, H) on entry the gradient reaching each h from above (the layer on top or the head) and on
// exit the total (the recurrent part added). For t from T−1 down: block b first adds to its units'
// dh[t] the recurrent gradient dgates[t+1] · W_hh[:, its units]: each (n, u) dot product of length
// 4H is cut into P consecutive parts (P from the host, so that B·U·P threads are busy), one thread
// per part, the parts added in order through shared memory; then it runs the cell backward of its
// (n, j), the running gradient of c kept in shared memory across the steps; the grid barrier
// publishes dgates[t]. Shared memory: the W_hh columns of its units [U][S4] with S4 = 4H + 1, the
// running dc [B][U], and when P > 1 the parts [B·U][P].
extern "C" __global__ void __launch_bounds__(LSTM_PT_THREADS)
    lstm_persistent_backward(float* dgates,         // (T, B, 4H), written
                             float* dh,             // (T, B, H), in: from above; out: total
                             const float* gates,    // (T, B, 4H) activations
                             const float* c,        // (T, B, H)
                             const float* w_hh,     // (4H, H)
                             unsigned int* barrier, // (2), zero before the first launch
                             int T, int B, int H, int U, int P) {
    extern __shared__ float lstm_smem[];
    const int S4 = 4 * H + 1;
    float* Wc = lstm_smem;                 // [U][S4]: Wc[u][r] = W_hh[r][j0 + u]
    float* dcs = Wc + (size_t)U * S4;      // [B][U]
    float* parts = dcs + (size_t)B * U;    // [B·U][P] when P > 1
    const int j0 = blockIdx.x * U;
    const int units = min(U, H - j0);
    for (int e = threadIdx.x; e < U * 4 * H; e += LSTM_PT_THREADS) {
        const int u = e / (4 * H);
        const int r = e % (4 * H);
        Wc[(size_t)u * S4 + r] = u < units ? w_hh[(size_t)r * H + j0 + u] : 0.0f;
    }
    for (int e = threadIdx.x; e < B * U; e += LSTM_PT_THREADS) dcs[e] = 0.0f;
    __syncthreads();  // W columns and dc in place
    const size_t gstep = (size_t)B * 4 * H;
    const size_t hstep = (size_t)B * H;
    const int len = (4 * H + P - 1) / P;  // rows of one part
    for (int t = T - 1; t >= 0; t--) {
        float* dht = dh + (size_t)t * hstep;
        if (t + 1 < T) {
            grid_sync(barrier);  // dgates[t + 1] of every unit written
            const float* dgn = dgates + (size_t)(t + 1) * gstep;
            for (int w = threadIdx.x; w < B * units * P; w += LSTM_PT_THREADS) {
                const int o = w / P;
                const int p = w % P;
                const int n = o / units;
                const int u = o % units;
                const float* wc = Wc + (size_t)u * S4;
                const float* d = dgn + (size_t)n * 4 * H;
                const int r0 = p * len;
                const int r1 = min(4 * H, r0 + len);
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
                int r = r0;
                for (; r + 4 <= r1; r += 4) {
                    a0 += d[r] * wc[r];
                    a1 += d[r + 1] * wc[r + 1];
                    a2 += d[r + 2] * wc[r + 2];
                    a3 += d[r + 3] * wc[r + 3];
                }
                for (; r < r1; r++) a0 += d[r] * wc[r];
                const float acc = (a0 + a1) + (a2 + a3);
                if (P == 1) {
                    dht[(size_t)n * H + j0 + u] += acc;
                } else {
                    parts[(size_t)o * P + p] = acc;
                }
            }
            if (P > 1) {
                __syncthreads();  // every part written
                for (int o = threadIdx.x; o < B * units; o += LSTM_PT_THREADS) {
                    float acc = 0.0f;
                    for (int p = 0; p < P; p++) acc += parts[(size_t)o * P + p];
                    dht[(size_t)(o / units) * H + j0 + o % units] += acc;
                }
            }
            __syncthreads();  // the block's dh[t] is complete
        }
        for (int e = threadIdx.x; e < B * units; e += LSTM_PT_THREADS) {
            const int n = e / units;
            const int u = e % units;
            const int j = j0 + u;
            const size_t gi = (size_t)t * gstep + (size_t)n * 4 * H + j;
            const size_t ci = (size_t)t * hstep + (size_t)n * H + j;
            const float ig = gates[gi];
            const float fg = gates[gi + H];
            const float gg = gates[gi + 2 * H];
            const float og = gates[gi + 3 * H];
            const float d_h = dht[(size_t)n * H + j];
            const float cp = t > 0 ? c[ci - hstep] : 0.0f;
            const float tc = lstm_tanh(c[ci]);
            const float d_c = dcs[n * U + u] + d_h * og * (1.0f - tc * tc);
            float* dg = dgates + gi;
            dg[0] = d_c * gg * ig * (1.0f - ig);
            dg[H] = d_c * cp * fg * (1.0f - fg);
            dg[2 * H] = d_c * ig * (1.0f - gg * gg);
            dg[3 * H] = d_h * tc * og * (1.0f - og);
            dcs[n * U + u] = d_c * fg;
        }
    }
}

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels/lstm.rs)
//
// lstm_cell_forward, lstm_cell_backward: block (256), grid (ceil(B·H / 256)); no shared memory.
// B·H < 2^31.
// lstm_persistent_forward, lstm_persistent_backward: cooperative, block (LSTM_PT_THREADS = 128),
// grid (ceil(H / U)) no larger than the device's co-resident blocks; dynamic shared memory
// 4·U·(H | 1) floats (forward), U·(4H + 1) + B·U (+ B·U·P when P > 1) floats (backward).
