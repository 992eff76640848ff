// The scheduler behind the kernel test bench: runs one CUDA launch on the CPU.
//
// Included by cuda_emu.h (never by kernels). See docs/KERNEL_BENCH.md for the model:
//   * exactly one CUDA thread runs at a time. It runs until it blocks (__syncthreads, a warp
//     collective, grid_sync) or exits, then hands a token to the next runnable thread of its block
//     in thread order (or in reverse order). The schedule is deterministic, and hostile to missing
//     barriers: thread 0 runs its whole phase before thread 1 starts it.
//   * a CUDA thread is a fiber (fiber.h: its own mmap'd stack and a hand-written x86-64 context
//     switch of a few nanoseconds), and the launching OS thread runs all of them: handing the token
//     over is a switch to the next fiber, which gets its threadIdx, blockIdx and barrier generation
//     from the switch. Off x86-64, or with ROBO_POET_EMU_THREADS=os, every CUDA thread is an OS
//     thread instead and the token is passed with condition variables. Both modes share all of the
//     logic below but wait_turn, and give the same schedule.
//   * the blocks that are resident at once form a wave: a normal launch runs one block per wave,
//     one wave after another; a cooperative launch (cuLaunchCooperativeKernel) runs the whole grid
//     as one wave, every thread of every block resident. Within a wave the token stays in one block
//     until none of its threads can run, then moves to the next block with a runnable thread, in
//     block order (reversed with the thread order); grid_sync is the barrier that makes the threads
//     of other blocks runnable again. Each block gets fresh shared memory filled with 0xFF bytes
//     (NaN as f32/f16/bf16, -1 as an integer), so reading shared memory nobody wrote shows up.
//   * when the running thread blocks and no thread of the wave can run, the wave is deadlocked:
//     the launch fails with a report of where every thread waits (file:line), and the waiting
//     threads are unwound with an exception. A thread that spins without ever blocking trips a
//     watchdog.
//   * under ThreadSanitizer the scheduler's own memory accesses and locking are hidden (Quiet, or
//     not instrumented at all: ROBO_POET_EMU_NO_TSAN) and CUDA's synchronisation is announced
//     instead (a barrier orders every thread of the block; grid_sync every thread of the grid; a
//     warp collective orders its lanes; the launcher's work before a launch is ordered before every
//     CUDA thread, and every CUDA thread before what the launcher does after it), so TSan reports
//     exactly the races a GPU would have. In fiber mode each stack of the pool has its own TSan
//     fiber (fiber.h), so TSan sees one thread per resident CUDA thread as with OS threads; fiber
//     switches are announced with __tsan_switch_to_fiber_no_sync, so that the token passing, like
//     the OS mode's hidden condition variables, orders nothing. Nothing else orders two CUDA
//     threads: the blocks of a launch stay unordered, as on a GPU.
//   * under AddressSanitizer fiber switches are announced (__sanitizer_start_switch_fiber), so it
//     knows which stack is live and reports overflows on fiber stacks like any other.
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
    return a.line() == b.line() && a.column() == b.column() && std::strcmp(a.file_name(), b.file_name()) == 0;
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

// The first thread of block B that can run, in the schedule's order; -1 if none.
inline int first_ready(const Launch& L, const Block& B) {
    for (int k = 0; k < L.nthreads; k++) {
        int t = L.reverse ? L.nthreads - 1 - k : k;
        if (B.th[t].state == State::ready) return t;
    }
    return -1;
}

// Whether every block of the wave has arrived at the grid barrier: all its live threads wait in
// grid_sync, its thread (0, 0, 0) among them (on a GPU that thread arrives for the block).
inline bool grid_complete(const Launch& L) {
    if (!L.cooperative || L.grid_arrived == 0 || L.grid_arrived != L.live) return false;
    for (const Block& B : L.blocks)
        if (B.live == 0 || B.th[0].state != State::at_grid) return false;
    return true;
}

// Caller holds L.m; the grid barrier is complete. Does what the GPU barrier does to its words
// (the count must be back at 0, the generation advances) and makes every waiting thread runnable.
// Returns false, having failed the launch, if the count is not 0: something else wrote the words,
// or they were not zeroed before the launch.
inline bool release_grid(Launch& L) {
    unsigned count = std::atomic_ref<unsigned>(L.grid_words[0]).load(std::memory_order_relaxed);
    if (count != 0) {
        char b[640];
        std::snprintf(b, sizeof b,
                      "grid_sync() at %s:%u: the barrier's count word (barrier[0], at %p) is %u, not 0: it must be 0 "
                      "when a cooperative launch starts (zero both words once, e.g. with memset_d8, and let nothing "
                      "else write them); on a GPU the barrier would release early or hang",
                      L.grid_loc.file_name(), (unsigned)L.grid_loc.line(), (void*)L.grid_words, count);
        abort_locked(L, b);
        return false;
    }
    std::atomic_ref<unsigned>(L.grid_words[1]).fetch_add(1u, std::memory_order_relaxed);
    for (int s = 0; s < L.nslots; s++)
        if (L.th[s].state == State::at_grid) L.th[s].state = State::ready;
    L.grid_arrived = 0;
    L.grid_words = nullptr;
    L.grid_gen++;
    return true;
}

// Caller holds L.m and gives up the token (it blocked or exited) from slot `from`. Picks the next
// runnable thread of its block in thread order, else the first one of the next block that has
// one; with none left the wave is done, its grid barrier complete, or deadlocked.
inline void pass_token(Launch& L, int from) {
    if (L.aborted) {
        if (L.live == 0) L.launcher_cv.notify_one();
        return;
    }
    L.handoffs.fetch_add(1, std::memory_order_relaxed);
    auto give = [&](int slot) {
        L.current = slot;
        if (!L.fibers) L.th[slot].cv.notify_one();  // a fiber is switched to by the caller
    };
    const int n = L.nthreads, r0 = from / n, t0 = from % n;
    const Block& B0 = L.blocks[r0];
    for (int k = 1; k <= n; k++) {
        int t = L.reverse ? (t0 - k + n) % n : (t0 + k) % n;
        if (B0.th[t].state == State::ready) return give(slot_of(B0, t));
    }
    // Only grid_sync makes the threads of other blocks runnable, so every other block either has
    // not run since (all its live threads can run) or has none that can.
    for (int k = 1; k < L.resident; k++) {
        const Block& B = L.blocks[L.reverse ? (r0 - k + L.resident) % L.resident : (r0 + k) % L.resident];
        int t = first_ready(L, B);
        if (t >= 0) return give(slot_of(B, t));
    }
    L.current = -1;
    if (L.live == 0) {
        L.launcher_cv.notify_one();
        return;
    }
    if (grid_complete(L)) {
        if (!release_grid(L)) return;
        for (int k = 0; k < L.resident; k++) {
            const Block& B = L.blocks[L.reverse ? L.resident - 1 - k : k];
            int t = first_ready(L, B);
            if (t >= 0) return give(slot_of(B, t));
        }
    }
    abort_locked(L, deadlock_report(L));
}

#if ROBO_POET_EMU_HAVE_FIBERS
#if defined(__SANITIZE_ADDRESS__)
// Completes AddressSanitizer's view of a fiber switch on the side that was switched to.
inline void asan_switched(Launch& L, void* fake_stack) {
    const void* from_stack;
    size_t from_size;
    __sanitizer_finish_switch_fiber(fake_stack, &from_stack, &from_size);
    if (L.switch_from < 0) {
        L.main_stack = from_stack;
        L.main_stack_size = from_size;
    }
}
#endif

// Fiber mode: suspends slot `from` (a CUDA thread, or -1 for the launcher) and resumes slot `to`,
// after giving it its thread-local state. `final`: `from` has exited and is never resumed. Not
// instrumented by ThreadSanitizer, since a final switch never returns; the (instrumented) helpers
// it calls run under Quiet, which ends before the switch, so a fiber never keeps it.
ROBO_POET_EMU_NO_TSAN inline void transfer(Launch& L, int from, int to, bool final) {
    void** save;
    void* target;
#if defined(__SANITIZE_THREAD__)
    void* tsan_to;
#endif
    {
        Quiet q;  // the scheduler's bookkeeping and thread-locals
        if (from >= 0) L.th[from].bar_gen = tl_bar_gen;
        if (to >= 0) {
            Block& B = L.blocks[to / L.nthreads];
            tl_block = &B;
            tl_tid = to - B.base;
            threadIdx = L.th[to].idx;
            blockIdx = B.idx;
            tl_bar_gen = L.th[to].bar_gen;
        }
        save = from >= 0 ? &L.th[from].sp : &L.main_sp;
        target = to >= 0 ? L.th[to].sp : L.main_sp;
#if defined(__SANITIZE_THREAD__)
        tsan_to = to >= 0 ? fiber::stack_pool()[to].tsan : L.tsan_main;
#endif
    }
#if defined(__SANITIZE_ADDRESS__)
    void* fake_stack = nullptr;
    L.switch_from = from;
    if (to >= 0) {
        const fiber::Stack& s = fiber::stack_pool()[to];
        __sanitizer_start_switch_fiber(final ? nullptr : &fake_stack, s.base, s.size);
    } else {
        __sanitizer_start_switch_fiber(final ? nullptr : &fake_stack, L.main_stack, L.main_stack_size);
    }
#else
    (void)final;
#endif
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(tsan_to, __tsan_switch_to_fiber_no_sync);
#endif
    fiber::switch_stack(save, target);
#if defined(__SANITIZE_ADDRESS__)
    asan_switched(L, fake_stack);
#endif
}

// Fiber mode: runs whoever holds the token now, or returns to the launcher when nobody does.
inline void yield_fiber(Launch& L, int me) {
    int to = (L.aborted || L.current < 0) ? -1 : L.current;
    if (to != me) transfer(L, me, to, false);
}
#endif

// The running CUDA thread's slot.
inline int my_slot() { return slot_of(*tl_block, tl_tid); }

// Caller holds the lock (through lk). Waits until this thread holds the token again.
inline void wait_turn(Launch& L, std::unique_lock<std::mutex>& lk) {
    const int slot = my_slot();
    Thread& me = L.th[slot];
#if ROBO_POET_EMU_HAVE_FIBERS
    if (L.fibers) {
        if (L.current != slot && !L.aborted) {
            lk.unlock();  // the next fiber runs on this OS thread and takes the lock
            yield_fiber(L, slot);
            lk.lock();
        }
    } else
#endif
        while (L.current != slot && !L.aborted) me.cv.wait(lk);
    if (L.aborted) throw Abort{};
    me.state = State::running;
}

inline void try_complete_barrier(const Launch& L, Block& B) {
    if (B.bar_arrived == 0 || B.bar_arrived != B.live || B.bar_mixed) return;
    for (int t = 0; t < L.nthreads; t++)
        if (B.th[t].state == State::at_barrier) B.th[t].state = State::ready;
    B.bar_count[B.bar_gen & 1] = B.bar_true;
    B.bar_size[B.bar_gen & 1] = B.bar_arrived;
    B.bar_gen++;
    B.bar_arrived = 0;
    B.bar_true = 0;
    B.bar_mixed = false;
}

inline void try_complete_collective(Launch& L, Block& B, int warp, Collective* c) {
    if (c->complete) return;
    unsigned need = c->mask & ~exited_lanes(L, B, warp);
    if ((c->arrived & need) != need) return;
    c->complete = true;
    c->readers = __builtin_popcount(c->arrived);
    for (unsigned l = 0; l < kWarpSize; l++)
        if (c->arrived & (1u << l)) B.th[warp * kWarpSize + l].state = State::ready;
}

inline Launch& current_launch(const char* op, std::source_location loc) {
    if (!tl_launch) fatal(op, loc);
    return *tl_launch;
}

// __syncthreads and its counting variants. mode: 0 plain, 1 count, 2 and, 3 or.
inline int block_barrier(const char* op, int pred, int mode, std::source_location loc) {
    Launch& L = current_launch("__syncthreads() called outside a kernel", loc);
    void* order;
    {
        Quiet q;  // the scheduler's thread-locals: in fiber mode every CUDA thread's
        order = &tl_block->sync->generation[tl_bar_gen & 1];
    }
    tsan_release(order);
    int count, size;
    {
        Quiet q;
        std::unique_lock<std::mutex> lk(L.m);
        Block& B = *tl_block;
        Thread& me = B.th[tl_tid];
        me.state = State::at_barrier;
        me.op = op;
        me.loc = loc;
        me.mask = 0;
        if (B.bar_arrived == 0) B.bar_loc = loc;
        else if (!same_site(B.bar_loc, loc)) B.bar_mixed = true;
        B.bar_arrived++;
        B.bar_true += pred != 0;
        try_complete_barrier(L, B);
        pass_token(L, my_slot());
        wait_turn(L, lk);
        count = B.bar_count[tl_bar_gen & 1];
        size = B.bar_size[tl_bar_gen & 1];
        tl_bar_gen++;
    }
    tsan_acquire(order);
    switch (mode) {
    case 1: return count;
    case 2: return count == size;
    case 3: return count > 0;
    default: return 0;
    }
}

// Joins (or starts) the warp collective for `mask`, blocks until every live lane of the mask has
// arrived, and copies out the lanes' values. `arrived` tells which lanes took part: reading a lane
// that did not (exited, absent, or outside the mask) is undefined on the GPU.
inline void warp_collective(const char* op, bool any_site, unsigned mask, unsigned long long value,
                            std::source_location loc, unsigned long long* values, unsigned* arrived) {
    Launch& L = current_launch("warp collective called outside a kernel", loc);
    const int warp = tl_tid / (int)kWarpSize;
    const unsigned lane = (unsigned)tl_tid % kWarpSize;
    Collective* c = nullptr;
    {
        Quiet q;
        std::unique_lock<std::mutex> lk(L.m);
        Block& B = *tl_block;
        std::string err;
        if (!(mask & (1u << lane))) {
            char b[256];
            std::snprintf(b, sizeof b, "%s(mask 0x%08x) at %s:%u called by lane %u, which is not in the mask", op,
                          mask, loc.file_name(), (unsigned)loc.line(), lane);
            err = b;
        } else {
            for (Collective* x : B.colls[warp])
                if (!x->complete && x->mask == mask) c = x;
            // __syncwarp calls may meet from different places; a shuffle or vote must be the same call.
            bool compatible = !c || (any_site ? c->any_site : !c->any_site && same_site(c->loc, loc));
            if (!compatible) {
                char b[640];
                std::snprintf(b, sizeof b,
                              "divergent warp collective in warp %d: lane %u called %s at %s:%u while other lanes "
                              "of mask 0x%08x wait in %s at %s:%u",
                              warp, lane, op, loc.file_name(), (unsigned)loc.line(), mask, c->op,
                              c->loc.file_name(), (unsigned)c->loc.line());
                err = b;
            }
        }
        if (!err.empty()) {
            abort_locked(L, block_name(B) + ", " + thread_name(L, tl_tid) + ": " + err);
            throw Abort{};
        }
        if (!c) {
            c = new Collective{op, loc, mask, any_site};
            B.colls[warp].push_back(c);
        }
        c->value[lane] = value;
        c->arrived |= 1u << lane;
        Thread& me = B.th[tl_tid];
        me.state = State::at_warp;
        me.op = op;
        me.loc = loc;
        me.mask = mask;
        try_complete_collective(L, B, warp, c);
    }
    tsan_release(c);
    {
        Quiet q;
        std::unique_lock<std::mutex> lk(L.m);
        pass_token(L, my_slot());
        wait_turn(L, lk);
        std::memcpy(values, c->value, sizeof c->value);
        *arrived = c->arrived;
    }
    tsan_acquire(c);
    {
        Quiet q;
        std::lock_guard<std::mutex> lk(L.m);
        if (--c->readers == 0) {
            auto& v = tl_block->colls[warp];
            v.erase(std::find(v.begin(), v.end(), c));
            delete c;
        }
    }
}

inline unsigned live_lanes() {
    Launch& L = current_launch("__activemask() called outside a kernel", std::source_location::current());
    Quiet q;
    std::lock_guard<std::mutex> lk(L.m);
    int warp = tl_tid / (int)kWarpSize;
    return warp_lanes(L, warp) & ~exited_lanes(L, *tl_block, warp);
}

inline void* alloc_shared(size_t bytes) {
    void* p = ::operator new(std::max<size_t>(bytes, 1), std::align_val_t(kSharedAlign));
    std::memset(p, kPoisonByte, bytes);
    return p;
}

// The storage of one `__shared__` declaration (keyed by the declaration) for the running block.
inline void* block_shared(const void* key, size_t bytes, std::source_location loc) {
    Launch& L = current_launch("__shared__ variable used outside a kernel (file-scope __shared__ is not "
                               "supported: declare it inside the kernel)",
                               loc);
    Quiet q;
    std::lock_guard<std::mutex> lk(L.m);
    Block& B = *tl_block;
    for (auto& [k, p] : B.shared)
        if (k == key) return p;
    void* p = alloc_shared(bytes);
    B.shared.emplace_back(key, p);
    B.static_shared_bytes += bytes;
    return p;
}

inline void* dynamic_shared(std::source_location loc) {
    current_launch("extern __shared__ array used outside a kernel", loc);
    return tl_block->dyn_shared;  // set before the block starts, constant while it runs
}

// `__shared__ T name;` is rewritten by build.rs into a static SharedDecl<T> plus a reference to
// the running block's copy; the static only serves as the key.
template <class T>
struct SharedDecl {
    T& get(std::source_location loc = std::source_location::current()) {
        return *static_cast<T*>(block_shared(this, sizeof(T), loc));
    }
};

inline void exit_thread(Launch& L) {
    Block& B = *tl_block;
    B.th[tl_tid].state = State::exited;
    B.live--;
    L.live--;
    if (!L.aborted) {
        try_complete_barrier(L, B);
        const int warp = tl_tid / (int)kWarpSize;
        for (Collective* c : B.colls[warp]) try_complete_collective(L, B, warp, c);
    }
    pass_token(L, my_slot());
}

inline void fail_thread(Launch& L, const std::string& what) {
    Quiet q;
    std::lock_guard<std::mutex> lk(L.m);
    abort_locked(L, block_name(*tl_block) + ", " + thread_name(L, tl_tid) + ": " + what);
}

// Fails the launch from inside a kernel (misuse of an intrinsic) and unwinds the calling thread.
[[noreturn]] inline void kernel_error(const std::string& what) {
    fail_thread(current_launch("kernel_error outside a kernel", std::source_location::current()), what);
    throw Abort{};
}

// grid_sync of kernels/grid.cuh in the emulator: the barrier over every thread of a cooperative
// launch's grid. A block arrives once all its live threads wait here with its thread (0, 0, 0)
// among them (on a GPU, grid.cuh's thread 0 arrives for its block after a __syncthreads), and the
// barrier completes when every block has arrived (pass_token); a block that has exited never
// arrives, and the grid deadlocks, as on a GPU. `barrier` must be the same words for every thread
// (the barrier is released as the GPU's would be: release_grid).
inline void grid_sync(unsigned int* barrier, std::source_location loc) {
    Launch& L = current_launch("grid_sync() called outside a kernel", loc);
    bool cooperative;
    {
        Quiet q;
        cooperative = L.cooperative;
    }
    if (!cooperative)
        kernel_error("grid_sync() at " + site(loc) +
                     " in a launch that is not cooperative: a grid barrier needs every block of the grid resident "
                     "at once, so launch the kernel with Device::launch_cooperative (cuLaunchCooperativeKernel); on a "
                     "GPU this hangs or is undefined");
    if (!barrier || reinterpret_cast<std::uintptr_t>(barrier) % alignof(unsigned int) != 0) {
        char b[96];
        std::snprintf(b, sizeof b, "%p", (void*)barrier);
        kernel_error("grid_sync() at " + site(loc) + ": the barrier words at " + b +
                     " are not an aligned device address (2 unsigned ints, zeroed before the first launch)");
    }
    void* order;
    {
        Quiet q;
        std::unique_lock<std::mutex> lk(L.m);
        Block& B = *tl_block;
        if (L.grid_arrived == 0) {
            L.grid_words = barrier;
            L.grid_loc = loc;
        } else if (barrier != L.grid_words) {
            char b[512];
            std::snprintf(b, sizeof b,
                          "grid_sync() at %s:%u with barrier words at %p, while other threads wait in grid_sync() at "
                          "%s:%u with the words at %p: every thread of the grid must pass the same words",
                          loc.file_name(), (unsigned)loc.line(), (void*)barrier, L.grid_loc.file_name(),
                          (unsigned)L.grid_loc.line(), (void*)L.grid_words);
            abort_locked(L, block_name(B) + ", " + thread_name(L, tl_tid) + ": " + b);
            throw Abort{};
        }
        order = &L.tsan_grid[L.grid_gen & 1];
    }
    tsan_release(order);
    {
        Quiet q;
        std::unique_lock<std::mutex> lk(L.m);
        Thread& me = tl_block->th[tl_tid];
        me.state = State::at_grid;
        me.op = "grid_sync";
        me.loc = loc;
        me.mask = 0;
        L.grid_arrived++;
        pass_token(L, my_slot());
        wait_turn(L, lk);
    }
    tsan_acquire(order);
}

}  // namespace emu
