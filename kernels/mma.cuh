// Tensor-core building blocks as small __device__ wrappers over inline PTX: the TF32 conversion,
// the warp-level mma of the two shapes the GEMMs use, and cp.async staging. Under the emulator
// (ROBO_POET_EMU) the same functions come from kernels/emu/mma.h, which implements the PTX ISA's
// fragment layouts and conversions (and refuses what the hardware would not do), so a kernel that
// puts an element in the wrong register fails in `cargo test`. Tests: tests/emu_mma.rs.
//
// Fragment layouts (PTX ISA 9.7.14.5.7 / 9.7.14.5.8), with g = lane >> 2 and t = lane % 4:
//   m16n8k8 .tf32   A (16 x 8):  a0 (g, t)  a1 (g+8, t)  a2 (g, t+4)  a3 (g+8, t+4)
//                   B (8 x 8):   b0 (k t, n g)  b1 (k t+4, n g)
//   m16n8k16 .bf16  A (16 x 16): reg0 (g, 2t..2t+1)  reg1 (g+8, 2t..2t+1)
//                                reg2 (g, 2t+8..2t+9)  reg3 (g+8, 2t+8..2t+9)
//                   B (16 x 8):  reg0 (k 2t..2t+1, n g)  reg1 (k 2t+8..2t+9, n g)
//                   (two bf16 per register, the lower index in the lower 16 bits)
//   C, D (.f32)     (16 x 8):    c0 (g, 2t)  c1 (g, 2t+1)  c2 (g+8, 2t)  c3 (g+8, 2t+1)
#ifndef ROBO_POET_MMA_CUH
#define ROBO_POET_MMA_CUH

// Round to nearest, ties to even, to BF16 (the upper half of the f32); NaN stays a quiet NaN.
// Plain integer code, the same on the GPU and in the emulator.
__device__ __forceinline__ unsigned bf16_rne(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (u >> 16) | 0x0040u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// Two f32 rounded to BF16 and packed: `lo` in bits 0..15, `hi` in bits 16..31.
__device__ __forceinline__ unsigned bf16x2_rne(float lo, float hi) { return bf16_rne(lo) | (bf16_rne(hi) << 16); }

#ifndef ROBO_POET_EMU

// cvt.rna.tf32.f32: round to nearest, ties away from zero; the low 13 bits of the result are 0.
__device__ __forceinline__ unsigned tf32_rna(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// d = A · B + d, one m16n8k8 tile with TF32 operands and f32 accumulation.
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d = A · B + d, one m16n8k16 tile with BF16 operands and f32 accumulation.
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The MI x NI mma tiles of a warp tile, tile (mi, ni) at d[(mi·NI + ni)·4 ..] += A_mi · B_ni (the
// emulator runs them as one warp collective).
template <int MI, int NI>
__device__ __forceinline__ void mma_grid_m16n8k8_tf32(float* d, const unsigned (&a)[MI][4], const unsigned (&b)[NI][2]) {
    for (int mi = 0; mi < MI; mi++)
        for (int ni = 0; ni < NI; ni++) mma_m16n8k8_tf32(*reinterpret_cast<float(*)[4]>(d + (mi * NI + ni) * 4), a[mi], b[ni]);
}

template <int MI, int NI>
__device__ __forceinline__ void mma_grid_m16n8k16_bf16(float* d, const unsigned (&a)[MI][4], const unsigned (&b)[NI][2]) {
    for (int mi = 0; mi < MI; mi++)
        for (int ni = 0; ni < NI; ni++) mma_m16n8k16_bf16(*reinterpret_cast<float(*)[4]>(d + (mi * NI + ni) * 4), a[mi], b[ni]);
}

__device__ __forceinline__ unsigned shared_address(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// 4 bytes global -> shared through L1 (.ca), or 4 zero bytes when !valid (src-size 0: src is not
// read, but must still be a valid address).
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(shared_address(dst)), "l"(src),
                 "r"(valid ? 4 : 0)
                 : "memory");
}

// 16 bytes global -> shared, bypassing L1 (.cg); both addresses 16-byte aligned.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(shared_address(dst)), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

#endif  // !ROBO_POET_EMU
#endif  // ROBO_POET_MMA_CUH
