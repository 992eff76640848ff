// What the kernel test bench's scheduler (runtime.h) works on: CUDA's built-in index variables,
// one launch's resident blocks and their threads, barriers and warp collectives, and how they are
// named in error and deadlock reports. Included by runtime.h (never by kernels); see there and
// docs/KERNEL_BENCH.md for the model.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "fiber.h"

#if defined(__SANITIZE_THREAD__)
extern "C" {
void AnnotateIgnoreSyncBegin(const char* file, int line);
void AnnotateIgnoreSyncEnd(const char* file, int line);
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#endif

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The built-in index variables: set per emulated thread before it runs a block.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace emu {

constexpr unsigned kWarpSize = 32;
// Shared memory a launch may use without cuFuncSetAttribute (static + dynamic), as on every GPU
// since Kepler. Larger launches need the opt-in (LaunchDesc::shared_limit).
constexpr size_t kMaxSharedBytes = 48 * 1024;
constexpr size_t kSharedAlign = 128;
constexpr unsigned char kPoisonByte = 0xFF;

// Thrown into emulated threads to unwind them when their launch is abandoned.
struct Abort {};

// Hides the scheduler's own memory accesses and locking from ThreadSanitizer (no-op otherwise).
struct Quiet {
#if defined(__SANITIZE_THREAD__)
    Quiet() {
        AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
        AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
        AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    }
    ~Quiet() {
        AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
        AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
        AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
    }
#else
    Quiet() {}
    ~Quiet() {}
#endif
    Quiet(const Quiet&) = delete;
    Quiet& operator=(const Quiet&) = delete;
};

// CUDA's ordering guarantees, announced to ThreadSanitizer (no-ops otherwise).
inline void tsan_release(void* addr) {
#if defined(__SANITIZE_THREAD__)
    __tsan_release(addr);
#else
    (void)addr;
#endif
}
inline void tsan_acquire(void* addr) {
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(addr);
#else
    (void)addr;
#endif
}

[[noreturn]] inline void fatal(const char* what, std::source_location loc) {
    std::fprintf(stderr, "robo-poet kernel emulator: %s at %s:%u\n", what, loc.file_name(),
                 (unsigned)loc.line());
    std::abort();
}

inline bool same_site(const std::source_location& a, const std::source_location& b) {
    return a.line() == b.line() && a.column() == b.column() &&
           (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}

enum class State : unsigned char { ready, running, at_barrier, at_warp, at_grid, exited };

// One warp-level collective in flight (shuffle, vote, ballot or __syncwarp): the lanes named in
// `mask` meet here; each leaves a value and reads the others' once all have arrived.
struct Collective {
    const char* op;
    std::source_location loc;
    unsigned mask;
    bool any_site;  // __syncwarp may be reached from different calls; shuffles may not
    unsigned arrived = 0;
    bool complete = false;
    int readers = 0;
    unsigned long long value[kWarpSize] = {};
    // Gathers of more than one word per lane (the tensor-core mma): the lanes' words, lane l's
    // at wide[l * words] for the collective's `words` (warp_collective's argument).
    std::vector<uint32_t> wide;
};

// One cp.async in flight (kernels/emu/mma.h): `bytes` bytes to shared memory at `dst`, the first
// `src_bytes` of them read from `src`, the rest zero. `group` is the commit group it belongs to
// (-1 while uncommitted).
struct AsyncCopy {
    void* dst;
    const void* src;
    unsigned bytes, src_bytes;
    long long group;
};

struct Thread {
    State state = State::ready;
    std::condition_variable cv;  // OS-thread mode: woken when it gets the token
    const char* op = nullptr;    // where it waits, for deadlock reports
    std::source_location loc;
    unsigned mask = 0;
    // Fiber mode: the saved stack pointer, and the per-thread state the scheduler swaps in.
    void* sp = nullptr;
    uint3 idx{};
    unsigned bar_gen = 0;
    // The thread's cp.async copies not yet waited for, and how many groups it has committed.
    std::vector<AsyncCopy> copies;
    long long groups = 0;
};

// Objects whose addresses carry the barrier's ordering for ThreadSanitizer; fresh per block.
struct BarrierSync {
    char generation[2];
};

// One resident block: the state of its threads, its barrier, its warp collectives and its shared
// memory. A normal launch has one, reused by every block of the grid in turn; a cooperative
// launch has one per block of the grid, all resident at once.
struct Block {
    uint3 idx{};
    unsigned long long linear = 0;  // its blockIdx in CUDA's order (x fastest), for reports
    Thread* th = nullptr;           // its threads: Launch::th[base, base + nthreads)
    int base = 0;
    int live = 0;  // threads that have not exited
    int bar_arrived = 0, bar_true = 0;
    bool bar_mixed = false;
    std::source_location bar_loc;
    unsigned bar_gen = 0;
    int bar_count[2] = {0, 0}, bar_size[2] = {0, 0};
    std::vector<std::vector<Collective*>> colls;  // per warp
    std::vector<std::pair<const void*, void*>> shared;
    size_t static_shared_bytes = 0;
    void* dyn_shared = nullptr;
    BarrierSync* sync = nullptr;
};

using Body = void (*)(void* ctx);

struct Launch {
    const char* kernel;
    dim3 grid, block;
    size_t dyn_bytes;
    size_t shared_limit = 48 * 1024;
    Body body;
    void* ctx;
    int nthreads, nwarps;
    // A cooperative launch runs its whole grid as one wave, so that grid_sync can work.
    bool cooperative = false;
    int resident = 1;  // blocks per wave: 1, or every block of the grid when cooperative
    int nslots = 0;    // resident * nthreads: one CUDA thread (fiber or OS thread) per slot

    std::mutex m;
    std::unique_ptr<Thread[]> th;  // per slot: block r's thread t is slot r * nthreads + t
    std::vector<Block> blocks;     // the resident blocks
    std::condition_variable launcher_cv;
    bool quit = false;
    bool reverse = false;  // hand the token down the thread (and block) order instead of up
    bool fibers = false;   // CUDA threads are fibers on the launching thread, not OS threads
    void* main_sp = nullptr;  // fiber mode: the launcher's context while a fiber runs
    void* tsan_main = nullptr;  // fiber mode under ThreadSanitizer: the launcher's TSan thread
    // Fiber mode under ThreadSanitizer: addresses that carry the ordering of the launch's start
    // (launcher -> every CUDA thread) and end (every CUDA thread -> launcher).
    char tsan_start = 0, tsan_end = 0;
#if defined(__SANITIZE_ADDRESS__)
    const void* main_stack = nullptr;  // the launcher's stack, for AddressSanitizer's fiber switches
    size_t main_stack_size = 0;
    int switch_from = -1;
#endif

    // The running wave.
    unsigned long long wave_gen = 0;
    int live = 0, current = -1;  // threads of the wave that have not exited; the token's slot
    std::atomic<unsigned long long> handoffs{0};  // progress, for the watchdog
    // The grid barrier: threads waiting in grid_sync, the barrier words they passed (the first
    // arrival's call site too, for messages), and the generation, whose parity picks the address
    // that carries the barrier's ordering for ThreadSanitizer (as BarrierSync for a block).
    int grid_arrived = 0;
    unsigned* grid_words = nullptr;
    std::source_location grid_loc;
    unsigned grid_gen = 0;
    char tsan_grid[2] = {0, 0};
    size_t max_static_shared = 0;  // the most static shared memory one block used
    bool aborted = false;
    std::string error;
};

inline thread_local Launch* tl_launch = nullptr;
inline thread_local int tl_tid = 0;            // the running CUDA thread's index in its block
inline thread_local Block* tl_block = nullptr;  // and its block
inline thread_local unsigned tl_bar_gen = 0;

inline int slot_of(const Block& B, int t) { return B.base + t; }

inline unsigned warp_lanes(const Launch& L, int warp) {
    int n = std::min<int>(kWarpSize, L.nthreads - warp * (int)kWarpSize);
    return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
}

inline unsigned exited_lanes(const Launch& L, const Block& B, int warp) {
    unsigned m = 0;
    for (unsigned l = 0; l < kWarpSize; l++) {
        int t = warp * (int)kWarpSize + (int)l;
        if (t >= L.nthreads || B.th[t].state == State::exited) m |= 1u << l;
    }
    return m;
}

inline std::string block_name(const Block& B) {
    char b[96];
    std::snprintf(b, sizeof b, "block (%u, %u, %u)", B.idx.x, B.idx.y, B.idx.z);
    return b;
}

inline std::string thread_name(const Launch& L, int t) {
    char b[96];
    unsigned bx = L.block.x, by = L.block.y;
    std::snprintf(b, sizeof b, "thread (%u, %u, %u)", t % bx, (t / bx) % by, t / (bx * by));
    return b;
}

// Linear thread ids as ranges: "0-15, 32-47".
inline std::string id_ranges(const std::vector<int>& ids) {
    std::string s;
    for (size_t i = 0; i < ids.size();) {
        size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) j++;
        if (!s.empty()) s += ", ";
        s += std::to_string(ids[i]);
        if (j > i) {
            // Two appends, not `"-" + to_string(...)`: GCC 12 at -O2 reports a false -Wrestrict
            // (GCC bug 105329) on the temporary string, flooding every release build's output.
            s += '-';
            s += std::to_string(ids[j]);
        }
        i = j + 1;
    }
    return s;
}

inline std::string site(const std::source_location& loc) {
    return std::string(loc.file_name()) + ":" + std::to_string(loc.line());
}

// Caller holds L.m. Stops the launch: every waiting thread wakes up and unwinds.
inline void abort_locked(Launch& L, std::string why) {
    if (!L.aborted) {
        L.aborted = true;
        L.error = std::move(why);
    }
    for (int s = 0; s < L.nslots; s++) L.th[s].cv.notify_one();
    L.launcher_cv.notify_one();
}

// Where the threads of a stuck wave wait, grouped by call: for a normal launch (one block) the
// threads of each group; for a cooperative one the blocks, and the threads where a group holds
// only some of a block's live threads. Then why the barriers cannot complete.
inline std::string deadlock_report(const Launch& L) {
    struct Group {
        State state;
        const char* op;
        std::source_location loc;
        unsigned mask;
        std::vector<std::pair<int, std::vector<int>>> blocks;  // (resident block, its thread ids)
    };
    std::vector<Group> groups;
    int waiting = 0;
    for (int r = 0; r < L.resident; r++) {
        const Block& B = L.blocks[r];
        for (int t = 0; t < L.nthreads; t++) {
            const Thread& th = B.th[t];
            if (th.state != State::at_barrier && th.state != State::at_warp && th.state != State::at_grid) continue;
            waiting++;
            auto g = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
                return g.state == th.state && g.op == th.op && g.mask == th.mask && same_site(g.loc, th.loc);
            });
            if (g == groups.end()) {
                groups.push_back({th.state, th.op, th.loc, th.mask, {}});
                g = groups.end() - 1;
            }
            if (g->blocks.empty() || g->blocks.back().first != r) g->blocks.push_back({r, {}});
            g->blocks.back().second.push_back(t);
        }
    }
    const int total = L.nslots;
    std::string r = L.cooperative ? "deadlock in the grid of a cooperative launch (" + std::to_string(L.resident) +
                                        " blocks resident): no thread can proceed; "
                                  : "deadlock in " + block_name(L.blocks[0]) + ": no thread can proceed; ";
    r += std::to_string(waiting) + " of " + std::to_string(total) + " threads are waiting:";
    for (const Group& g : groups) {
        std::string who;
        if (!L.cooperative) {
            who = "threads " + id_ranges(g.blocks[0].second);
        } else {
            std::vector<int> whole;
            std::string partial;
            for (const auto& [b, ids] : g.blocks) {
                if ((int)ids.size() == L.blocks[b].live) {
                    whole.push_back(b);
                } else {
                    partial += "; block " + std::to_string(b) + ": threads " + id_ranges(ids);
                }
            }
            if (!whole.empty()) who = (whole.size() == 1 ? "block " : "blocks ") + id_ranges(whole) + " (every live thread)";
            who += whole.empty() ? partial.substr(2) : partial;
        }
        if (g.state == State::at_warp) {
            char m[16];
            std::snprintf(m, sizeof m, "0x%08x", g.mask);
            r += "\n  " + std::string(g.op) + "(mask " + m + ") at " + site(g.loc) + ": " + who;
        } else {
            r += "\n  " + std::string(g.op) + "() at " + site(g.loc) + ": " + who;
        }
    }
    bool mixed = false;
    for (int b = 0; b < L.resident; b++) mixed |= L.blocks[b].bar_mixed;
    if (mixed) r += "\n  (divergent __syncthreads: every live thread of a block must reach the same barrier call)";
    if (!L.cooperative) {
        int exited = 0;
        for (int t = 0; t < L.nthreads; t++) exited += L.blocks[0].th[t].state == State::exited;
        if (exited) r += "\n  " + std::to_string(exited) + " threads have exited";
        return r;
    }
    // Why the grid barrier cannot complete.
    std::vector<int> gone, mixed_blocks;
    int exited = 0;
    for (int b = 0; b < L.resident; b++) {
        const Block& B = L.blocks[b];
        int at_grid = 0, elsewhere = 0;
        for (int t = 0; t < L.nthreads; t++) {
            exited += B.th[t].state == State::exited;
            at_grid += B.th[t].state == State::at_grid;
            elsewhere += B.th[t].state == State::at_barrier || B.th[t].state == State::at_warp;
        }
        if (B.live == 0) gone.push_back(b);
        else if (at_grid && elsewhere) mixed_blocks.push_back(b);
        else if (at_grid && B.th[0].state == State::exited)
            r += "\n  block " + std::to_string(b) + " " + block_name(B).substr(6) +
                 ": its thread (0, 0, 0) has exited, and a block arrives at the grid barrier through that thread "
                 "(kernels/grid.cuh): this block never arrives";
    }
    if (!gone.empty())
        r += std::string("\n  ") + (gone.size() == 1 ? "block " : "blocks ") + id_ranges(gone) +
             (gone.size() == 1 ? " has" : " have") +
             " exited: a block that returns never arrives at a grid_sync the others wait in (on a GPU the grid hangs)";
    if (!mixed_blocks.empty())
        r += std::string("\n  ") + (mixed_blocks.size() == 1 ? "block " : "blocks ") + id_ranges(mixed_blocks) +
             ": some threads wait in grid_sync, others at a block barrier or warp collective; grid_sync begins "
             "with a __syncthreads of the whole block, so they never meet";
    if (exited) r += "\n  " + std::to_string(exited) + " threads have exited";
    return r;
}

}  // namespace emu
