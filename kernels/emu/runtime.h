// The scheduler behind the kernel test bench: runs one CUDA launch on the CPU.
//
// Included by cuda_emu.h (never by kernels). See docs/KERNEL_BENCH.md for the model:
//   * exactly one CUDA thread of a block runs at a time. It runs until it blocks (__syncthreads, a
//     warp collective) or exits, then hands a token to the next runnable thread in thread order
//     (or in reverse order). The schedule is deterministic, and hostile to missing barriers:
//     thread 0 runs its whole phase before thread 1 starts it.
//   * a CUDA thread is a fiber (fiber.h: its own mmap'd stack and a hand-written x86-64 context
//     switch of a few nanoseconds), and the launching OS thread runs all of them: handing the token
//     over is a switch to the next fiber, which gets its threadIdx and barrier generation from the
//     switch. Off x86-64, or with ROBO_POET_EMU_THREADS=os, every CUDA thread is an OS thread
//     instead and the token is passed with condition variables. Both modes share all of the logic
//     below but wait_turn, and give the same schedule.
//   * blocks run one after another; each block gets fresh shared memory filled with 0xFF bytes
//     (NaN as f32/f16/bf16, -1 as an integer), so reading shared memory nobody wrote shows up.
//   * when the running thread blocks and no thread can run, the block is deadlocked: the launch
//     fails with a report of where every thread waits (file:line), and the waiting threads are
//     unwound with an exception. A thread that spins without ever blocking trips a watchdog.
//   * under ThreadSanitizer the scheduler's own memory accesses and locking are hidden (Quiet, or
//     not instrumented at all: ROBO_POET_EMU_NO_TSAN) and CUDA's synchronisation is announced
//     instead (a barrier orders every thread of the block; a warp collective orders its lanes; the
//     launcher's work before a launch is ordered before every CUDA thread, and every CUDA thread
//     before what the launcher does after it), so TSan reports exactly the races a GPU would have.
//     In fiber mode each stack of the pool has its own TSan fiber (fiber.h), so TSan sees one
//     thread per CUDA thread as with OS threads; fiber switches are announced with
//     __tsan_switch_to_fiber_no_sync, so that the token passing, like the OS mode's hidden
//     condition variables, orders nothing. Nothing else orders two CUDA threads: the blocks of a
//     launch stay unordered, as on a GPU.
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
// since Kepler. Larger launches need the opt-in the Device trait does not expose yet.
constexpr size_t kMaxSharedBytes = 48 * 1024;
constexpr size_t kSharedAlign = 128;
constexpr unsigned char kPoisonByte = 0xFF;

// Thrown into emulated threads to unwind them when their block is abandoned.
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

enum class State : unsigned char { ready, running, at_barrier, at_warp, exited };

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

using Body = void (*)(void* ctx);

struct Launch {
    const char* kernel;
    dim3 grid, block;
    size_t dyn_bytes;
    size_t shared_limit = 48 * 1024;
    Body body;
    void* ctx;
    int nthreads, nwarps;

    std::mutex m;
    std::unique_ptr<Thread[]> th;
    std::condition_variable launcher_cv;
    bool quit = false;
    bool reverse = false;  // hand the token down the thread order instead of up
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

    // The running block.
    unsigned long long block_gen = 0;
    uint3 block_idx{};
    int live = 0, current = -1;
    std::atomic<unsigned long long> handoffs{0};  // progress, for the watchdog
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
    bool aborted = false;
    std::string error;
};

inline thread_local Launch* tl_launch = nullptr;
inline thread_local int tl_tid = 0;
inline thread_local unsigned tl_bar_gen = 0;
inline thread_local BarrierSync* tl_sync = nullptr;

inline unsigned warp_lanes(const Launch& L, int warp) {
    int n = std::min<int>(kWarpSize, L.nthreads - warp * (int)kWarpSize);
    return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
}

inline unsigned exited_lanes(const Launch& L, int warp) {
    unsigned m = 0;
    for (unsigned l = 0; l < kWarpSize; l++) {
        int t = warp * (int)kWarpSize + (int)l;
        if (t >= L.nthreads || L.th[t].state == State::exited) m |= 1u << l;
    }
    return m;
}

inline std::string block_name(const Launch& L) {
    char b[96];
    std::snprintf(b, sizeof b, "block (%u, %u, %u)", L.block_idx.x, L.block_idx.y, L.block_idx.z);
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

// Caller holds L.m. Stops the block: every waiting thread wakes up and unwinds.
inline void abort_locked(Launch& L, std::string why) {
    if (!L.aborted) {
        L.aborted = true;
        L.error = std::move(why);
    }
    for (int t = 0; t < L.nthreads; t++) L.th[t].cv.notify_one();
    L.launcher_cv.notify_one();
}

inline std::string deadlock_report(const Launch& L) {
    struct Group {
        bool warp;
        const char* op;
        std::source_location loc;
        unsigned mask;
        std::vector<int> ids;
    };
    std::vector<Group> groups;
    int waiting = 0;
    for (int t = 0; t < L.nthreads; t++) {
        const Thread& th = L.th[t];
        if (th.state != State::at_barrier && th.state != State::at_warp) continue;
        waiting++;
        auto g = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
            return g.op == th.op && g.mask == th.mask && same_site(g.loc, th.loc);
        });
        if (g == groups.end()) groups.push_back({th.state == State::at_warp, th.op, th.loc, th.mask, {t}});
        else g->ids.push_back(t);
    }
    std::string r = "deadlock in " + block_name(L) + ": no thread can proceed; " + std::to_string(waiting) +
                    " of " + std::to_string(L.nthreads) + " threads are waiting:";
    for (const Group& g : groups) {
        char where[512];
        if (g.warp)
            std::snprintf(where, sizeof where, "\n  %s(mask 0x%08x) at %s:%u: threads %s", g.op, g.mask,
                          g.loc.file_name(), (unsigned)g.loc.line(), id_ranges(g.ids).c_str());
        else
            std::snprintf(where, sizeof where, "\n  %s() at %s:%u: threads %s", g.op, g.loc.file_name(),
                          (unsigned)g.loc.line(), id_ranges(g.ids).c_str());
        r += where;
    }
    if (L.bar_mixed)
        r += "\n  (divergent __syncthreads: every live thread of a block must reach the same barrier call)";
    int exited = 0;
    for (int t = 0; t < L.nthreads; t++) exited += L.th[t].state == State::exited;
    if (exited) r += "\n  " + std::to_string(exited) + " threads have exited";
    return r;
}

// Caller holds L.m and gives up the token (it blocked or exited). Picks the next runnable thread
// in thread order; with none left the block is done, or deadlocked.
inline void pass_token(Launch& L, int from) {
    if (L.aborted) {
        if (L.live == 0) L.launcher_cv.notify_one();
        return;
    }
    L.handoffs.fetch_add(1, std::memory_order_relaxed);
    for (int k = 1; k <= L.nthreads; k++) {
        int t = L.reverse ? (from - k + L.nthreads) % L.nthreads : (from + k) % L.nthreads;
        if (L.th[t].state == State::ready) {
            L.current = t;
            if (!L.fibers) L.th[t].cv.notify_one();  // a fiber is switched to by the caller
            return;
        }
    }
    L.current = -1;
    if (L.live == 0) L.launcher_cv.notify_one();
    else abort_locked(L, deadlock_report(L));
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

// Fiber mode: suspends `from` (a CUDA thread, or -1 for the launcher) and resumes `to`, after
// giving it its thread-local state. `final`: `from` has exited and is never resumed. Not
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
            tl_tid = to;
            threadIdx = L.th[to].idx;
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

// Caller holds the lock (through lk). Waits until this thread holds the token again.
inline void wait_turn(Launch& L, std::unique_lock<std::mutex>& lk) {
    Thread& me = L.th[tl_tid];
#if ROBO_POET_EMU_HAVE_FIBERS
    if (L.fibers) {
        if (L.current != tl_tid && !L.aborted) {
            lk.unlock();  // the next fiber runs on this OS thread and takes the lock
            yield_fiber(L, tl_tid);
            lk.lock();
        }
    } else
#endif
        while (L.current != tl_tid && !L.aborted) me.cv.wait(lk);
    if (L.aborted) throw Abort{};
    me.state = State::running;
}

inline void try_complete_barrier(Launch& L) {
    if (L.bar_arrived == 0 || L.bar_arrived != L.live || L.bar_mixed) return;
    for (int t = 0; t < L.nthreads; t++)
        if (L.th[t].state == State::at_barrier) L.th[t].state = State::ready;
    L.bar_count[L.bar_gen & 1] = L.bar_true;
    L.bar_size[L.bar_gen & 1] = L.bar_arrived;
    L.bar_gen++;
    L.bar_arrived = 0;
    L.bar_true = 0;
    L.bar_mixed = false;
}

inline void try_complete_collective(Launch& L, int warp, Collective* c) {
    if (c->complete) return;
    unsigned need = c->mask & ~exited_lanes(L, warp);
    if ((c->arrived & need) != need) return;
    c->complete = true;
    c->readers = __builtin_popcount(c->arrived);
    for (unsigned l = 0; l < kWarpSize; l++)
        if (c->arrived & (1u << l)) L.th[warp * kWarpSize + l].state = State::ready;
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
        order = &tl_sync->generation[tl_bar_gen & 1];
    }
    tsan_release(order);
    int count, size;
    {
        Quiet q;
        std::unique_lock<std::mutex> lk(L.m);
        Thread& me = L.th[tl_tid];
        me.state = State::at_barrier;
        me.op = op;
        me.loc = loc;
        me.mask = 0;
        if (L.bar_arrived == 0) L.bar_loc = loc;
        else if (!same_site(L.bar_loc, loc)) L.bar_mixed = true;
        L.bar_arrived++;
        L.bar_true += pred != 0;
        try_complete_barrier(L);
        pass_token(L, tl_tid);
        wait_turn(L, lk);
        count = L.bar_count[tl_bar_gen & 1];
        size = L.bar_size[tl_bar_gen & 1];
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
        std::string err;
        if (!(mask & (1u << lane))) {
            char b[256];
            std::snprintf(b, sizeof b, "%s(mask 0x%08x) at %s:%u called by lane %u, which is not in the mask", op,
                          mask, loc.file_name(), (unsigned)loc.line(), lane);
            err = b;
        } else {
            for (Collective* x : L.colls[warp])
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
            abort_locked(L, block_name(L) + ", " + thread_name(L, tl_tid) + ": " + err);
            throw Abort{};
        }
        if (!c) {
            c = new Collective{op, loc, mask, any_site};
            L.colls[warp].push_back(c);
        }
        c->value[lane] = value;
        c->arrived |= 1u << lane;
        Thread& me = L.th[tl_tid];
        me.state = State::at_warp;
        me.op = op;
        me.loc = loc;
        me.mask = mask;
        try_complete_collective(L, warp, c);
    }
    tsan_release(c);
    {
        Quiet q;
        std::unique_lock<std::mutex> lk(L.m);
        pass_token(L, tl_tid);
        wait_turn(L, lk);
        std::memcpy(values, c->value, sizeof c->value);
        *arrived = c->arrived;
    }
    tsan_acquire(c);
    {
        Quiet q;
        std::lock_guard<std::mutex> lk(L.m);
        if (--c->readers == 0) {
            auto& v = L.colls[warp];
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
    return warp_lanes(L, warp) & ~exited_lanes(L, warp);
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
    for (auto& [k, p] : L.shared)
        if (k == key) return p;
    void* p = alloc_shared(bytes);
    L.shared.emplace_back(key, p);
    L.static_shared_bytes += bytes;
    return p;
}

inline void* dynamic_shared(std::source_location loc) {
    Launch& L = current_launch("extern __shared__ array used outside a kernel", loc);
    return L.dyn_shared;  // set before the block starts, constant while it runs
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
    Thread& me = L.th[tl_tid];
    me.state = State::exited;
    L.live--;
    if (!L.aborted) {
        try_complete_barrier(L);
        for (Collective* c : L.colls[tl_tid / (int)kWarpSize]) try_complete_collective(L, tl_tid / (int)kWarpSize, c);
    }
    pass_token(L, tl_tid);
}

inline void fail_thread(Launch& L, const std::string& what) {
    Quiet q;
    std::lock_guard<std::mutex> lk(L.m);
    abort_locked(L, block_name(L) + ", " + thread_name(L, tl_tid) + ": " + what);
}

// Fails the launch from inside a kernel (misuse of an intrinsic) and unwinds the calling thread.
[[noreturn]] inline void kernel_error(const std::string& what) {
    fail_thread(current_launch("kernel_error outside a kernel", std::source_location::current()), what);
    throw Abort{};
}

}  // namespace emu
