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

#include "state.h"

namespace emu {

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
// With `words` > 0 each lane also leaves `words` 32-bit words from `wide_in`, and `on_wide` is
// called once per lane, with the scheduler's lock held, on every lane's words (32 · words, lane
// by lane; zero for lanes that did not take part) and the arrived mask: it must not fail the
// launch itself (kernel_error takes the lock), only record what to report.
using WideFn = void (*)(const uint32_t* all, unsigned arrived, void* ctx);
inline void warp_collective(const char* op, bool any_site, unsigned mask, unsigned long long value,
                            std::source_location loc, unsigned long long* values, unsigned* arrived,
                            const uint32_t* wide_in = nullptr, int words = 0, WideFn on_wide = nullptr,
                            void* ctx = nullptr) {
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
            c = new Collective{};
            c->op = op;
            c->loc = loc;
            c->mask = mask;
            c->any_site = any_site;
            B.colls[warp].push_back(c);
        }
        c->value[lane] = value;
        if (words > 0) {
            if (c->wide.empty()) c->wide.assign((size_t)kWarpSize * words, 0u);
            std::memcpy(&c->wide[(size_t)lane * words], wide_in, sizeof(uint32_t) * words);
        }
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
        if (on_wide) on_wide(c->wide.data(), c->arrived, ctx);
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
