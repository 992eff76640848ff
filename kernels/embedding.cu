// Token embedding plus an optional learned position embedding: a gather forward, a deterministic
// scatter-add backward. CPU reference: src/ops/embedding.rs. Host launchers:
// src/gpu/kernels/embedding.rs.

// ----------------------------------------------------------------------------------------------
// kernels

#define EMBEDDING_FULL_MASK 0xffffffffu

// One thread per element of out. A token id >= V (a corrupt batch) gives a NaN row, which the loss
// will show, instead of a read past the end of wte.
extern "C" __global__ void embedding_forward(float* out,                  // (B, T, C) = (N, C)
                                             const unsigned int* tokens,  // (B, T)
                                             const float* wte,            // (V, C)
                                             const float* wpe,            // (>= T, C), or null
                                             int N, int T, int C, int V) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * C) return;
    const int n = (int)(idx / C);
    const int c = (int)(idx % C);
    const unsigned int tok = tokens[n];
    if (tok >= (unsigned int)V) {
        out[idx] = __int_as_float(0x7fc00000);  // quiet NaN
        return;
    }
    float v = wte[(size_t)tok * C + c];
    if (wpe) v += wpe[(size_t)(n % T) * C + c];  // no `+ 0.0f` without wpe: it would turn −0 into +0
    out[idx] = v;
}

// dwte: one warp per (vocab row v, 32 channels). The warp scans all N tokens in order, 32 at a
// time: a ballot marks the positions holding v, and the lanes add those positions' dout in
// increasing n, exactly the order of the CPU reference, so the sums are deterministic (and equal
// the reference's) without atomics. Rows that occur nowhere cost one ballot per 32 tokens.
// Tokens >= V match no row: they are skipped.
extern "C" __global__ void embedding_backward_token(float* dwte,                 // (V, C), accumulated
                                                    const float* dout,           // (N, C)
                                                    const unsigned int* tokens,  // (N)
                                                    int N, int C, int V) {
    const int v = (int)(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32);  // blockDim.x % 32 == 0
    const int lane = threadIdx.x % 32;
    if (v >= V) return;  // whole warps leave together, so the ballots below see full warps
    const int c = blockIdx.y * 32 + lane;
    const bool live = c < C;  // lanes past C still vote: the ballot needs the whole warp

    float acc = live ? dwte[(size_t)v * C + c] : 0.0f;
    for (int n0 = 0; n0 < N; n0 += 32) {
        const int n = n0 + lane;
        const bool match = n < N && tokens[n] == (unsigned int)v;
        unsigned int hits = __ballot_sync(EMBEDDING_FULL_MASK, match);
        while (hits) {  // lowest bit first: positions in increasing order
            const int k = __ffs((int)hits) - 1;
            hits &= hits - 1;
            if (live) acc += dout[(size_t)(n0 + k) * C + c];
        }
    }
    if (live) dwte[(size_t)v * C + c] = acc;
}

// dwpe rows 0..T: one thread per (t, c), summing dout over the batch in order b = 0..B.
extern "C" __global__ void embedding_backward_position(float* dwpe,        // (>= T, C), accumulated
                                                       const float* dout,  // (B, T, C)
                                                       int B, int T, int C) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;  // t·C + c
    const size_t plane = (size_t)T * C;
    if (idx >= plane) return;
    float acc = dwpe[idx];
    for (int b = 0; b < B; b++) acc += dout[(size_t)b * plane + idx];
    dwpe[idx] = acc;
}

// ----------------------------------------------------------------------------------------------
// launch shape (src/gpu/kernels/embedding.rs)
//
// embedding_forward: block (256), grid (ceil(N·C / 256)).
// embedding_backward_token: block (128), grid (ceil(V / 4), ceil(C / 32)): one warp per vocab row
// and 32 channels; no shared memory.
// embedding_backward_position: block (256), grid (ceil(T·C / 256)).
