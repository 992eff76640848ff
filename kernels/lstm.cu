// The LSTM's pointwise cell for one timestep, gate order (i, f, g, o) as in PyTorch:
//   i, f, o = σ(a_i, a_f, a_o)   g = tanh(a_g)   c = f ⊙ c_prev + i ⊙ g   h = o ⊙ tanh(c)
// and its backward. The gate GEMMs around it are kernels/matmul.cu. tanh is the CPU reference's
// tanh_fast, 1 − 2 / (e^{2u} + 1), which saturates cleanly to ±1.
// CPU reference: src/ops/lstm.rs (lstm_cell_forward, lstm_cell_backward).
// Host launchers: src/gpu/kernels/lstm.rs.

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

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels/lstm.rs)
//
// lstm_cell_forward, lstm_cell_backward: block (256), grid (ceil(B·H / 256)); no shared memory.
// B·H < 2^31.
