// Philox4x32-10 counter-based random numbers for dropout masks on the device. The CPU twin is
// src/philox.rs, and the two must stay bit for bit in step: a mask element is a pure function of
// (seed, step, tensor, element), so the backward kernels regenerate the forward's mask instead of
// storing it, and the CPU reference checks the GPU's masks exactly.
//
// Layout of one draw (as src/philox.rs): key = (seed low 32 bits, seed high 32 bits); counter =
// (element / 4 low 32 bits, element / 4 high 32 bits, tensor, step low 32 bits). The four output
// words serve elements 4q .. 4q+3 in order. A word w becomes u = (w >> 8)·2^-24 in [0, 1), exact
// in f32, and the element is KEPT when u >= p.

#ifndef ROBO_POET_PHILOX_CUH
#define ROBO_POET_PHILOX_CUH

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

// The Philox4x32 block function with 10 rounds (Salmon et al., SC'11).
__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k.x += PHILOX_W0;
            k.y += PHILOX_W1;
        }
        const unsigned int hi0 = __umulhi(PHILOX_M0, c.x);
        const unsigned int lo0 = PHILOX_M0 * c.x;
        const unsigned int hi1 = __umulhi(PHILOX_M1, c.z);
        const unsigned int lo1 = PHILOX_M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

// The four raw words for elements 4q .. 4q+3 of dropout tensor `tensor` at `step`.
__device__ __forceinline__ uint4 dropout_words(unsigned long long seed, unsigned long long step,
                                               unsigned int tensor, unsigned long long q) {
    return philox4x32_10(make_uint4((unsigned int)q, (unsigned int)(q >> 32), tensor, (unsigned int)step),
                         make_uint2((unsigned int)seed, (unsigned int)(seed >> 32)));
}

// Word `lane` (0..3) of a draw; with a constant lane (unrolled loops) this is a register pick.
__device__ __forceinline__ unsigned int dropout_word(uint4 w, int lane) {
    return lane == 0 ? w.x : lane == 1 ? w.y : lane == 2 ? w.z : w.w;
}

// The mask multiplier of one element: `scale` (1/(1−p), computed by the host exactly as
// DropoutKey::scale) when kept, 0 when dropped. (w >> 8) has 24 bits, so the float conversion
// and the power-of-two product are exact, as on the CPU.
__device__ __forceinline__ float dropout_multiplier(unsigned int w, float p, float scale) {
    const float u = (float)(w >> 8) * (1.0f / 16777216.0f);
    return u >= p ? scale : 0.0f;
}

#endif  // ROBO_POET_PHILOX_CUH
