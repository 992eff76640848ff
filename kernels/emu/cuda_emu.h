// CUDA C++ for g++: lets kernels/*.cu compile as C++20 and run on the CPU with CUDA's semantics.
//
// build.rs force-includes this header (`-include`) when it compiles the kernels for the test
// bench; the .cu files never include it, so they stay plain CUDA for NVRTC. Only what CUDA has is
// declared here (no atomicMax on float, no shuffles of structs): a kernel that compiles against
// this header should compile with NVRTC too. The scheduler lives in runtime.h and launch.h.
// See docs/KERNEL_BENCH.md.
#pragma once

// The standard headers come first: they must not see the qualifier macros below (libstdc++
// itself writes __attribute__((__noinline__))). Discovery needs only the macros.
#ifndef ROBO_POET_EMU_DISCOVERY
#include <math.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "launch.h"
#include "mma.h"
#endif

// ---- qualifiers (build.rs's discovery pass defines __global__ as a marker before this point)
#ifndef __global__
#define __global__
#endif
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// build.rs rewrites every `__shared__` declaration; one that reaches the compiler was hidden from
// the rewrite (built by token pasting, say). Write it out literally.
#define __shared__ __shared___must_be_written_literally_in_kernel_source_for_the_emulator
#define ROBO_POET_EMU 1

#ifndef ROBO_POET_EMU_DISCOVERY

constexpr int warpSize = 32;

// ---- vector types (the ones the kernels may load through reinterpret_cast, so CUDA's alignment)
struct alignas(8) float2 { float x, y; };
struct float3 { float x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float3 make_float3(float x, float y, float z) { return {x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return {x, y, z}; }
inline dim3 make_dim3(unsigned x, unsigned y, unsigned z) { return dim3(x, y, z); }

namespace emu {
// `reinterpret_cast<V*>(p)` in kernel source, V a vector type above: build.rs rewrites it to this.
// The hardware's vector loads and stores (ld/st .v2, .v4) need an address aligned to the vector's
// size; a misaligned one faults the launch ("misaligned address", cudaErrorMisalignedAddress),
// where a plain C++ load on the CPU would go through. So the cast of a misaligned address is
// refused here (the kernels dereference every such cast at once). tests/emu_semantics.rs.
template <class P, class U>
inline P vector_cast(U* p, std::source_location loc = std::source_location::current()) {
    using V = std::remove_cv_t<std::remove_pointer_t<P>>;
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p);
    if (a % alignof(V) != 0) {
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "misaligned address at %s:%u: a %zu-byte vector access at 0x%llx, not a multiple of %zu "
                      "(on the GPU the launch faults: cudaErrorMisalignedAddress)",
                      loc.file_name(), (unsigned)loc.line(), sizeof(V), (unsigned long long)a, alignof(V));
        kernel_error(buf);
    }
    return reinterpret_cast<P>(p);
}
}  // namespace emu

// ---- min / max as CUDA's device library overloads them
#define ROBO_EMU_MINMAX(T)                          \
    inline T min(T a, T b) { return b < a ? b : a; } \
    inline T max(T a, T b) { return a < b ? b : a; }
ROBO_EMU_MINMAX(int)
ROBO_EMU_MINMAX(unsigned int)
ROBO_EMU_MINMAX(long long)
ROBO_EMU_MINMAX(unsigned long long)
#undef ROBO_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- math intrinsics. The fast-math ones keep the GPU's main error source: __expf is
// ex2.approx(x * log2 e) on the GPU, so the product is rounded to float here too.
namespace emu {
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
}  // namespace emu
inline float __expf(float x) { return exp2f(x * emu::kLog2e); }
inline float __exp10f(float x) { return exp2f(x * 3.3219280948873623f); }
inline float __logf(float x) { return log2f(x) * emu::kLn2; }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log2f(x) * 0.30102999566398120f; }
inline float __powf(float x, float y) { return exp2f(y * log2f(x)); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x), *c = cosf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline unsigned __float2uint_rn(float x) { return (unsigned)nearbyintf(x); }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned x) { return (float)x; }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }

// ---- integer intrinsics
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline int __mul24(int a, int b) { return (int)((long long)((a << 8) >> 8) * ((b << 8) >> 8)); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }

// ---- loads and stores with cache hints: plain accesses on the CPU
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---- memory fences
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- atomics: relaxed read-modify-writes, only for the types CUDA provides them for
namespace emu {
template <class T> inline std::atomic_ref<T> aref(T* p) { return std::atomic_ref<T>(*p); }
template <class T, class F> inline T cas_loop(T* p, F f) {
    auto a = aref(p);
    T old = a.load(std::memory_order_relaxed);
    while (!a.compare_exchange_weak(old, f(old), std::memory_order_relaxed)) {}
    return old;
}
constexpr auto relaxed = std::memory_order_relaxed;
}  // namespace emu

#define ROBO_EMU_ATOMIC(NAME, T, EXPR) \
    inline T NAME(T* p, T v) { return emu::cas_loop(p, [v](T old) -> T { return EXPR; }); }
inline int atomicAdd(int* p, int v) { return emu::aref(p).fetch_add(v, emu::relaxed); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return emu::aref(p).fetch_add(v, emu::relaxed); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return emu::aref(p).fetch_add(v, emu::relaxed);
}
inline float atomicAdd(float* p, float v) { return emu::aref(p).fetch_add(v, emu::relaxed); }
inline double atomicAdd(double* p, double v) { return emu::aref(p).fetch_add(v, emu::relaxed); }
inline int atomicSub(int* p, int v) { return emu::aref(p).fetch_sub(v, emu::relaxed); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return emu::aref(p).fetch_sub(v, emu::relaxed); }
inline int atomicExch(int* p, int v) { return emu::aref(p).exchange(v, emu::relaxed); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return emu::aref(p).exchange(v, emu::relaxed); }
inline unsigned long long atomicExch(unsigned long long* p, unsigned long long v) {
    return emu::aref(p).exchange(v, emu::relaxed);
}
inline float atomicExch(float* p, float v) { return emu::aref(p).exchange(v, emu::relaxed); }
ROBO_EMU_ATOMIC(atomicMin, int, v < old ? v : old)
ROBO_EMU_ATOMIC(atomicMin, unsigned, v < old ? v : old)
ROBO_EMU_ATOMIC(atomicMin, long long, v < old ? v : old)
ROBO_EMU_ATOMIC(atomicMin, unsigned long long, v < old ? v : old)
ROBO_EMU_ATOMIC(atomicMax, int, v > old ? v : old)
ROBO_EMU_ATOMIC(atomicMax, unsigned, v > old ? v : old)
ROBO_EMU_ATOMIC(atomicMax, long long, v > old ? v : old)
ROBO_EMU_ATOMIC(atomicMax, unsigned long long, v > old ? v : old)
ROBO_EMU_ATOMIC(atomicInc, unsigned, old >= v ? 0u : old + 1u)
ROBO_EMU_ATOMIC(atomicDec, unsigned, (old == 0u || old > v) ? v : old - 1u)
#undef ROBO_EMU_ATOMIC
#define ROBO_EMU_BITWISE(T)                                                                  \
    inline T atomicAnd(T* p, T v) { return emu::aref(p).fetch_and(v, emu::relaxed); }       \
    inline T atomicOr(T* p, T v) { return emu::aref(p).fetch_or(v, emu::relaxed); }         \
    inline T atomicXor(T* p, T v) { return emu::aref(p).fetch_xor(v, emu::relaxed); }       \
    inline T atomicCAS(T* p, T compare, T v) {                                              \
        emu::aref(p).compare_exchange_strong(compare, v, emu::relaxed, emu::relaxed);        \
        return compare;                                                                      \
    }
ROBO_EMU_BITWISE(int)
ROBO_EMU_BITWISE(unsigned)
ROBO_EMU_BITWISE(unsigned long long)
#undef ROBO_EMU_BITWISE

// ---- block barriers
inline void __syncthreads(std::source_location loc = std::source_location::current()) {
    emu::block_barrier("__syncthreads", 0, 0, loc);
}
inline int __syncthreads_count(int pred, std::source_location loc = std::source_location::current()) {
    return emu::block_barrier("__syncthreads_count", pred, 1, loc);
}
inline int __syncthreads_and(int pred, std::source_location loc = std::source_location::current()) {
    return emu::block_barrier("__syncthreads_and", pred, 2, loc);
}
inline int __syncthreads_or(int pred, std::source_location loc = std::source_location::current()) {
    return emu::block_barrier("__syncthreads_or", pred, 3, loc);
}

// ---- warp collectives
namespace emu {
template <class T>
concept ShuffleType = std::is_arithmetic_v<T> && sizeof(T) <= 8;

// Every lane leaves `var`; returns the value of lane `src` (absolute lane id), or of the lane
// itself where CUDA says so. A source lane that did not take part yields all-ones bits (NaN).
template <ShuffleType T>
T shuffle(const char* op, unsigned mask, T var, int width, std::source_location loc, auto src_of) {
    unsigned long long bits = 0, values[kWarpSize];
    unsigned arrived;
    std::memcpy(&bits, &var, sizeof(T));
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
        kernel_error(std::string(op) + " at " + loc.file_name() + ":" + std::to_string(loc.line()) +
                     ": width " + std::to_string(width) + " is not a power of two <= 32");
    warp_collective(op, false, mask, bits, loc, values, &arrived);
    const int lane = tl_tid % (int)kWarpSize;
    const int src = src_of(lane, lane & ~(width - 1));
    if (src == lane) return var;
    unsigned long long out = (arrived >> src) & 1u ? values[src] : ~0ull;
    T r;
    std::memcpy(&r, &out, sizeof(T));
    return r;
}
}  // namespace emu

template <emu::ShuffleType T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
              std::source_location loc = std::source_location::current()) {
    return emu::shuffle("__shfl_sync", mask, var, width, loc,
                        [&](int, int base) { return base + (src_lane & (width - 1)); });
}
template <emu::ShuffleType T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 std::source_location loc = std::source_location::current()) {
    return emu::shuffle("__shfl_up_sync", mask, var, width, loc, [&](int lane, int base) {
        return lane - base >= (int)delta ? lane - (int)delta : lane;
    });
}
template <emu::ShuffleType T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   std::source_location loc = std::source_location::current()) {
    return emu::shuffle("__shfl_down_sync", mask, var, width, loc, [&](int lane, int base) {
        return lane - base + (int)delta < width ? lane + (int)delta : lane;
    });
}
template <emu::ShuffleType T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                  std::source_location loc = std::source_location::current()) {
    return emu::shuffle("__shfl_xor_sync", mask, var, width, loc, [&](int lane, int base) {
        int src = lane ^ lane_mask;
        return src >= base + width ? lane : src;  // a later group is out of reach: own value
    });
}

namespace emu {
// The predicates of the lanes that took part, as a bit mask, and which lanes took part.
inline std::pair<unsigned, unsigned> vote(const char* op, unsigned mask, int pred, std::source_location loc) {
    unsigned long long values[kWarpSize];
    unsigned arrived, ballot = 0;
    warp_collective(op, false, mask, pred != 0, loc, values, &arrived);
    for (unsigned l = 0; l < kWarpSize; l++)
        if ((arrived >> l) & 1u && values[l]) ballot |= 1u << l;
    return {ballot, arrived};
}
}  // namespace emu

inline unsigned __ballot_sync(unsigned mask, int pred, std::source_location loc = std::source_location::current()) {
    return emu::vote("__ballot_sync", mask, pred, loc).first;
}
inline int __any_sync(unsigned mask, int pred, std::source_location loc = std::source_location::current()) {
    return emu::vote("__any_sync", mask, pred, loc).first != 0;
}
inline int __all_sync(unsigned mask, int pred, std::source_location loc = std::source_location::current()) {
    auto [ballot, arrived] = emu::vote("__all_sync", mask, pred, loc);
    return ballot == arrived;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location loc = std::source_location::current()) {
    unsigned long long values[emu::kWarpSize];
    unsigned arrived;
    emu::warp_collective("__syncwarp", true, mask, 0, loc, values, &arrived);
}
inline unsigned __activemask() { return emu::live_lanes(); }

#endif  // ROBO_POET_EMU_DISCOVERY
