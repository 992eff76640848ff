// The emulator's twins of kernels/mma.cuh: warp-level tensor-core MMA, the TF32 operand
// conversion and cp.async, with the semantics the PTX ISA documents (section numbers below are
// those of the PTX ISA 8.x/9.x: 9.7.14 "Warp Level Matrix Multiply-Accumulate Instructions" and
// 9.7.9.25 "Data Movement and Conversion Instructions: cp.async").
//
// * mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 and mma.sync.aligned.m16n8k16.row.col.
//   f32.bf16.bf16.f32: the 32 lanes of a warp meet (a warp collective that gathers every lane's
//   fragment registers), the emulator rebuilds A, B and C from the fragment layouts of 9.7.14.5.7
//   and 9.7.14.5.8, and each lane gets its D fragment. Products are exact and summed in double,
//   then rounded to f32 once: at least as accurate as the hardware, whose accumulation order and
//   rounding are not specified, so the kernels' tests compare with a tolerance (tests/emu_mma.rs
//   derives it). Refused as the hardware would misbehave: a warp with a lane absent or exited
//   (.aligned: every lane executes the same mma), lanes at different mma calls, and TF32 operands
//   whose low 13 bits are not zero (not converted with cvt.rna.tf32.f32: the hardware's result is
//   then not defined by the ISA, so the kernel must convert explicitly).
// * cvt.rna.tf32.f32: round to nearest, ties away from zero, to TF32 (10 stored mantissa bits),
//   returned in a .b32 whose low 13 bits are zero (9.7.9.21 cvt).
// * cp.async (4, 8 or 16 bytes, with the src-size operand's zero fill), cp.async.commit_group and
//   cp.async.wait_group N: the copies of a thread are queued and complete, as the ISA allows, at
//   the latest moment (the wait that covers their group) under the forward schedule, and at once
//   under the reverse schedule; so a kernel that reads shared memory before its wait sees stale
//   (NaN-poisoned) data in one schedule, and one that overwrites a stage other threads still read
//   races in the other. Misaligned addresses and sizes other than 4, 8, 16 are refused, as ptxas or
//   the hardware would.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <string>

namespace emu {

// ---- fragment layouts (PTX ISA 9.7.14.5.7 "Matrix Fragments for mma.m16n8k8", .tf32, and
// 9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with floating point type", .bf16). groupID g =
// lane >> 2, threadID_in_group t = lane % 4. A is M x K ("row"), B is K x N ("col", indexed
// (k, n)), C and D are M x N. Element i of a lane's fragment:
//   tf32 A a0..a3: row g + 8·(i & 1), col t + 4·(i >> 1)   (g for a0, a2; t for a0, a1)
//   tf32 B b0, b1: row (k) t + 4·i, col g
//   bf16 A a0..a7: row g + 8·((i >> 1) & 1), col 2t + (i & 1) + 8·(i >> 2); two per register,
//        the lower index in the lower 16 bits
//   bf16 B b0..b3: row (k) 2t + (i & 1) + 8·(i >> 1), col g
//   f32 C, D c0..c3: row g + 8·(i >> 1), col 2t + (i & 1)
// mma_compute below reads them inverted: which lane and register hold A (row, k) and B (k, col).
// tests/emu_mma.rs checks every lane against these tables written out from the ISA text.

inline float bf16_bits_to_float(uint32_t h) { return std::bit_cast<float>(h << 16); }

// One warp's grid of MI x NI mma tiles sharing their A fragments along rows and B fragments
// along columns (a warp tile of (16·MI) x (8·NI)): every lane gathers its A (MI x 4 words) and B
// (NI x 2 words) registers, and computes its own D registers (MI·NI x 4, tile (mi, ni) at
// d[(mi·NI + ni)·4]) from its own C (= d on entry) and the A rows and B columns it needs, found
// through the inverse of the fragment tables above. `bf16`: two bf16 per word, else one tf32.
struct MmaJob {
    bool bf16;
    int mi, ni, words, lane;
    const float* c;
    float* d;
    std::string error;
    const char* op;
    std::source_location loc;
};

// (Optimised whatever the build's level: the tensor-core tests spend most of their time here.)
__attribute__((optimize("O3"))) inline void mma_compute(const uint32_t* all, unsigned arrived, void* ctx) {
    MmaJob& j = *static_cast<MmaJob*>(ctx);
    if (arrived != 0xffffffffu) {
        char buf[320];
        std::snprintf(buf, sizeof buf,
                      "%s at %s:%u: lanes 0x%08x of the warp did not take part (they exited, or the block's "
                      "last warp is partial); mma.sync.aligned needs all 32 lanes of the warp",
                      j.op, j.loc.file_name(), (unsigned)j.loc.line(), ~arrived);
        j.error = buf;
        return;
    }
    const int K = j.bf16 ? 16 : 8;
    const int g = j.lane >> 2, t = j.lane & 3;
    auto word = [&](int lane, int w) -> uint32_t {
        const uint32_t v = all[(size_t)lane * j.words + w];
        if (!j.bf16 && (v & 0x1fffu) && j.error.empty()) {
            char buf[320];
            std::snprintf(buf, sizeof buf,
                          "%s at %s:%u: lane %d's %s register %d holds 0x%08x, not a TF32 value (low 13 bits set): "
                          "convert the operand with cvt.rna.tf32.f32 (tf32_rna in kernels/mma.cuh)",
                          j.op, j.loc.file_name(), (unsigned)j.loc.line(), lane, w < 4 * j.mi ? "A" : "B",
                          w < 4 * j.mi ? w % 4 : (w - 4 * j.mi) % 2, v);
            j.error = buf;
        }
        return v;
    };
    // A (tile mi) at (row, k) and B (tile ni) at (k, col), by the inverse fragment tables.
    auto a_at = [&](int mi, int row, int k) -> float {
        if (j.bf16) {
            const int i = (k & 1) + 2 * (row >> 3) + 4 * (k >> 3);
            const uint32_t w = word((row & 7) * 4 + ((k & 7) >> 1), mi * 4 + (i >> 1));
            return bf16_bits_to_float((w >> (16 * (i & 1))) & 0xffffu);
        }
        return std::bit_cast<float>(word((row & 7) * 4 + (k & 3), mi * 4 + (row >> 3) + 2 * (k >> 2)));
    };
    auto b_at = [&](int ni, int k, int col) -> float {
        if (j.bf16) {
            const int i = (k & 1) + 2 * (k >> 3);
            const uint32_t w = word(col * 4 + ((k & 7) >> 1), 4 * j.mi + ni * 2 + (i >> 1));
            return bf16_bits_to_float((w >> (16 * (i & 1))) & 0xffffu);
        }
        return std::bit_cast<float>(word(col * 4 + (k & 3), 4 * j.mi + ni * 2 + (k >> 2)));
    };
    // This lane's rows g, g + 8 of every A tile and columns 2t, 2t + 1 of every B tile.
    double arow[8][2][16], bcol[16][2][16];
    for (int mi = 0; mi < j.mi; mi++)
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < K; k++) arow[mi][h][k] = a_at(mi, g + 8 * h, k);
    for (int ni = 0; ni < j.ni; ni++)
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < K; k++) bcol[ni][h][k] = b_at(ni, k, 2 * t + h);
    for (int mi = 0; mi < j.mi; mi++)
        for (int ni = 0; ni < j.ni; ni++)
            for (int r = 0; r < 4; r++) {
                const double* x = arow[mi][r >> 1];
                const double* y = bcol[ni][r & 1];
                const int e = (mi * j.ni + ni) * 4 + r;
                double sum = j.c[e];
                for (int k = 0; k < K; k++) sum += x[k] * y[k];
                j.d[e] = (float)sum;
            }
}

inline void mma_sync(const char* op, bool bf16, int mi, int ni, const uint32_t* a, const uint32_t* b, float* d,
                     std::source_location loc) {
    constexpr int kMaxWords = 64;
    const int words = 4 * mi + 2 * ni;
    if (mi > 8 || ni > 16) kernel_error(std::string(op) + ": mma grid larger than 8 x 16 tiles: not emulated");
    uint32_t mine[kMaxWords];
    std::memcpy(mine, a, sizeof(uint32_t) * 4 * mi);
    std::memcpy(mine + 4 * mi, b, sizeof(uint32_t) * 2 * ni);
    float c[8 * 16 * 4];
    std::memcpy(c, d, sizeof(float) * 4 * mi * ni);
    MmaJob job{bf16, mi, ni, words, tl_tid % (int)kWarpSize, c, d, {}, op, loc};
    unsigned long long values[kWarpSize];
    unsigned arrived = 0;
    warp_collective(op, false, 0xffffffffu, 0, loc, values, &arrived, mine, words, mma_compute, &job);
    if (!job.error.empty()) kernel_error(job.error);
}

// cvt.rna.tf32.f32: finite values round to nearest, ties away from zero (adding half a TF32 ulp
// to the magnitude bits carries into the exponent as it should, up to infinity); infinities stay;
// NaN becomes the canonical 0x7fffffff with the low 13 bits cleared.
inline uint32_t cvt_rna_tf32(float x) {
    const uint32_t u = std::bit_cast<uint32_t>(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x007fffffu) ? 0x7fffe000u : u;
    return (u + 0x1000u) & 0xffffe000u;
}

// ---- cp.async
inline Thread& running_thread() { return tl_block->th[tl_tid]; }

inline void complete_copy(const AsyncCopy& c) {
    std::memcpy(c.dst, c.src, c.src_bytes);
    std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
}

inline void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes, std::source_location loc) {
    Launch& L = current_launch("cp.async called outside a kernel", loc);
    const auto misaligned = [&](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % bytes != 0; };
    if (bytes != 4 && bytes != 8 && bytes != 16)
        kernel_error("cp.async at " + site(loc) + ": cp-size " + std::to_string(bytes) + " (must be 4, 8 or 16)");
    if (src_bytes > bytes)
        kernel_error("cp.async at " + site(loc) + ": src-size " + std::to_string(src_bytes) + " exceeds cp-size " +
                     std::to_string(bytes));
    if (misaligned(dst) || (src_bytes > 0 && misaligned(src)))
        kernel_error("cp.async at " + site(loc) + ": " + (misaligned(dst) ? "shared" : "global") + " address " +
                     std::to_string(reinterpret_cast<std::uintptr_t>(misaligned(dst) ? dst : src)) +
                     " is not aligned to the copy's " + std::to_string(bytes) + " bytes");
    AsyncCopy c{dst, src, bytes, src_bytes, -1};
    if (L.reverse) {
        complete_copy(c);  // the earliest the hardware may complete it
        return;
    }
    Quiet q;
    running_thread().copies.push_back(c);
}

inline void cp_async_commit() {
    current_launch("cp.async.commit_group called outside a kernel", std::source_location::current());
    Quiet q;
    Thread& me = running_thread();
    for (AsyncCopy& c : me.copies)
        if (c.group < 0) c.group = me.groups;
    me.groups++;
}

// Completes every committed copy but those of the `pending` most recent groups.
inline void cp_async_wait(int pending) {
    current_launch("cp.async.wait_group called outside a kernel", std::source_location::current());
    std::vector<AsyncCopy> due;
    {
        Quiet q;
        Thread& me = running_thread();
        auto keep = me.copies.begin();
        for (auto it = me.copies.begin(); it != me.copies.end(); ++it) {
            if (it->group >= 0 && it->group < me.groups - pending) due.push_back(*it);
            else *keep++ = *it;
        }
        me.copies.erase(keep, me.copies.end());
    }
    for (const AsyncCopy& c : due) complete_copy(c);
}

}  // namespace emu

// ---- the kernels' API (kernels/mma.cuh declares the same functions for the GPU)
inline unsigned tf32_rna(float x) { return emu::cvt_rna_tf32(x); }

// d = A · B + d for one m16n8k8 tile: a (4 TF32), b (2 TF32), d (4 f32), fragments per PTX ISA
// 9.7.14.5.7.
inline void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                             std::source_location loc = std::source_location::current()) {
    emu::mma_sync("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", false, 1, 1, a, b, d, loc);
}

// d = A · B + d for one m16n8k16 tile: a (4 x bf16x2), b (2 x bf16x2), d (4 f32), fragments per
// PTX ISA 9.7.14.5.8.
inline void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                              std::source_location loc = std::source_location::current()) {
    emu::mma_sync("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", true, 1, 1, a, b, d, loc);
}

// The MI x NI grid of mma tiles of a warp tile: tile (mi, ni) is d[(mi·NI + ni)·4 ..] +=
// A_mi · B_ni (kernels/mma.cuh: on the GPU, MI·NI mma.sync instructions; here one collective).
template <int MI, int NI>
inline void mma_grid_m16n8k8_tf32(float* d, const unsigned (&a)[MI][4], const unsigned (&b)[NI][2],
                                  std::source_location loc = std::source_location::current()) {
    emu::mma_sync("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", false, MI, NI, &a[0][0], &b[0][0], d, loc);
}
template <int MI, int NI>
inline void mma_grid_m16n8k16_bf16(float* d, const unsigned (&a)[MI][4], const unsigned (&b)[NI][2],
                                   std::source_location loc = std::source_location::current()) {
    emu::mma_sync("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", true, MI, NI, &a[0][0], &b[0][0], d, loc);
}

// 4 bytes from global `src` to shared `dst`, or 4 zero bytes when !valid (src is then not read).
inline void cp_async_4(void* dst, const void* src, bool valid,
                       std::source_location loc = std::source_location::current()) {
    emu::cp_async(dst, src, 4, valid ? 4 : 0, loc);
}
// 16 bytes, both addresses 16-byte aligned.
inline void cp_async_16(void* dst, const void* src, std::source_location loc = std::source_location::current()) {
    emu::cp_async(dst, src, 16, 16, loc);
}
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N> inline void cp_async_wait() { emu::cp_async_wait(N); }
