// Running one launch: its waves of resident blocks in order (one block per wave, or the whole grid
// for a cooperative launch), their CUDA threads as fibers or OS threads, the watchdog, and the
// launcher that build.rs exports for every kernel (the emulated cuLaunchKernel and
// cuLaunchCooperativeKernel). Included by cuda_emu.h.
#pragma once

#include <thread>

#include "runtime.h"

#if defined(__SANITIZE_ADDRESS__)
extern "C" void __sanitizer_set_death_callback(void (*callback)(void));
#endif

namespace emu {

// The C ABI of one launch; mirrored by `EmuLaunchDesc` in src/gpu/emu.rs.
struct LaunchDesc {
    unsigned int grid[3];
    unsigned int block[3];
    unsigned long long shared_bytes;
    void** params;
    unsigned long long num_params;
    char* error;
    unsigned long long error_cap;
    unsigned int reverse;  // 1: run each block's threads from the last to the first
    // 1: run nothing; write the kernel's parameter count to num_params and the size of each
    // parameter to param_sizes[0..min(count, param_sizes_cap)] (graph capture copies the values).
    unsigned int query_params;
    unsigned long long* param_sizes;
    unsigned long long param_sizes_cap;
    // Static + dynamic shared memory a block may use: 48 KiB, or the opt-in maximum when the
    // kernel's MAX_DYNAMIC_SHARED_SIZE_BYTES attribute was raised (src/gpu/emu.rs checks the
    // dynamic part against the attribute).
    unsigned long long shared_limit;
    // 1: a cooperative launch (cuLaunchCooperativeKernel): every block of the grid is resident at
    // once, so grid_sync works. src/gpu/emu.rs has checked that the grid fits on the device.
    unsigned int cooperative;
    // Out: the most static shared memory one block of the launch used (src/gpu/emu.rs checks a
    // cooperative grid's co-residency with it when the kernel has no ptxas report).
    unsigned long long static_shared_used;
};

// Under ThreadSanitizer, races are reported per OS thread or TSan fiber: name each after the
// CUDA thread it runs now. (The "previous access" of a report may have come from an earlier block.)
inline void name_thread(const Launch& L) {
#if defined(__SANITIZE_THREAD__)
    char name[96];
    std::snprintf(name, sizeof name, "CUDA thread (%u, %u, %u) of block (%u, %u, %u)", threadIdx.x, threadIdx.y,
                  threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z);
#if ROBO_POET_EMU_HAVE_FIBERS
    if (L.fibers) {
        __tsan_set_fiber_name(__tsan_get_current_fiber(), name);
        return;
    }
#endif
    pthread_setname_np(pthread_self(), name);  // TSan records the whole name, even if the OS refuses it
#else
    (void)L;
#endif
}

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer names OS threads only: add the kernel, block and thread to its report.
inline void on_sanitizer_death() {
    if (Launch* L = tl_launch)
        std::fprintf(stderr,
                     "robo-poet kernel emulator: the error above happened in kernel %s, block (%u, %u, %u), "
                     "thread (%u, %u, %u)\n",
                     L->kernel, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
}
#endif

struct WorkerArg {
    Launch* L;
    int slot;
};

// Runs the kernel body as the current CUDA thread, which holds the token, and unwinds it if the
// block is abandoned meanwhile.
inline void run_body(Launch& L) {
    name_thread(L);
    try {
        L.body(L.ctx);
    } catch (Abort&) {
    } catch (std::exception& e) {
        fail_thread(L, std::string("C++ exception escaped the kernel: ") + e.what());
    } catch (...) {
        fail_thread(L, "C++ exception escaped the kernel");
    }
}

inline void* worker_main(void* p) {
    WorkerArg a = *static_cast<WorkerArg*>(p);
    Launch& L = *a.L;
    tl_launch = &L;
    {
        Quiet q;
        tl_block = &L.blocks[a.slot / L.nthreads];
        tl_tid = a.slot - tl_block->base;
    }
    unsigned long long seen = 0;
    for (;;) {
        {
            Quiet q;
            std::unique_lock<std::mutex> lk(L.m);
            Thread& me = L.th[a.slot];
            while (!L.quit && !(L.wave_gen != seen && (L.current == a.slot || L.aborted))) me.cv.wait(lk);
            if (L.quit) return nullptr;
            seen = L.wave_gen;
            if (L.aborted) {
                exit_thread(L);
                continue;
            }
            me.state = State::running;
            threadIdx = me.idx;
            blockIdx = tl_block->idx;
            blockDim = L.block;
            gridDim = L.grid;
            tl_bar_gen = 0;
        }
        run_body(L);
        Quiet q;
        std::lock_guard<std::mutex> lk(L.m);
        exit_thread(L);
    }
}

inline double watchdog_seconds() {
    const char* s = std::getenv("ROBO_POET_EMU_WATCHDOG_SECS");
    return s ? std::atof(s) : 60.0;
}

// The block holding the token, for the watchdog's message.
inline std::string running_block_name(const Launch& L) {
    return L.current >= 0 ? block_name(L.blocks[L.current / L.nthreads]) : std::string("a block");
}

// Caller holds the lock. Waits until every thread of the wave has exited; aborts the process
// (the only way to stop a thread that never yields) if the token has not moved for too long.
inline void wait_wave(Launch& L, std::unique_lock<std::mutex>& lk) {
    const double limit = watchdog_seconds();
    auto last = std::chrono::steady_clock::now();
    unsigned long long seen = L.handoffs;
    while (L.live > 0) {
        L.launcher_cv.wait_for(lk, std::chrono::milliseconds(200));
        auto now = std::chrono::steady_clock::now();
        if (L.handoffs != seen) {
            seen = L.handoffs;
            last = now;
        } else if (limit > 0 && !L.aborted && std::chrono::duration<double>(now - last).count() > limit) {
            std::fprintf(stderr,
                         "robo-poet kernel emulator: kernel %s, %s: %s has run for %.0f s without reaching a "
                         "barrier, a warp collective or its end (an endless loop?). A running CUDA thread cannot "
                         "be stopped; aborting the process. (ROBO_POET_EMU_WATCHDOG_SECS sets the limit.)\n",
                         L.kernel, running_block_name(L).c_str(), thread_name(L, L.current % L.nthreads).c_str(),
                         limit);
            std::abort();
        }
    }
}

inline void free_block_memory(Block& B) {
    for (auto& [k, p] : B.shared) ::operator delete(p, std::align_val_t(kSharedAlign));
    B.shared.clear();
    if (B.dyn_shared) ::operator delete(B.dyn_shared, std::align_val_t(kSharedAlign));
    B.dyn_shared = nullptr;
    for (auto& w : B.colls) {
        for (Collective* c : w) delete c;
        w.clear();
    }
    delete B.sync;
    B.sync = nullptr;
}

// Blocks in the grid, in CUDA's order (x fastest).
inline unsigned long long grid_blocks(const Launch& L) {
    return (unsigned long long)L.grid.x * L.grid.y * L.grid.z;
}

// Sizes the launch's slots and resident blocks: one block, or the whole grid when cooperative.
inline void setup_slots(Launch& L) {
    L.resident = L.cooperative ? (int)grid_blocks(L) : 1;
    L.nslots = L.resident * L.nthreads;
    L.th.reset(new Thread[L.nslots]);
    L.blocks.resize(L.resident);
    const unsigned bx = L.block.x, by = L.block.y;
    for (int r = 0; r < L.resident; r++) {
        Block& B = L.blocks[r];
        B.base = r * L.nthreads;
        B.th = &L.th[B.base];
        B.colls.resize(L.nwarps);
        for (int t = 0; t < L.nthreads; t++) B.th[t].idx = {t % bx, (t / bx) % by, t / (bx * by)};
    }
}

// Caller holds the lock. Resets the scheduler for the wave whose first block is block `first` in
// CUDA's order, and gives the token to the first thread of the schedule: thread 0 of the first
// block, or with the reverse schedule the last thread of the last block.
inline void start_wave(Launch& L, unsigned long long first) {
    const unsigned long long gx = L.grid.x, gy = L.grid.y;
    for (int r = 0; r < L.resident; r++) {
        Block& B = L.blocks[r];
        const unsigned long long b = first + (unsigned long long)r;
        B.linear = b;
        B.idx = {(unsigned)(b % gx), (unsigned)((b / gx) % gy), (unsigned)(b / (gx * gy))};
        B.live = L.nthreads;
        B.bar_arrived = B.bar_true = 0;
        B.bar_mixed = false;
        B.bar_gen = 0;
        B.static_shared_bytes = 0;
        B.dyn_shared = alloc_shared(L.dyn_bytes);
        B.sync = new BarrierSync{};
        for (int t = 0; t < L.nthreads; t++) {
            B.th[t].state = State::ready;
            B.th[t].copies.clear();  // a thread that exited with copies in flight left them
            B.th[t].groups = 0;
        }
    }
    L.live = L.nslots;
    L.grid_arrived = 0;
    L.grid_words = nullptr;
    L.wave_gen++;
    L.current = L.reverse ? L.nslots - 1 : 0;
}

// Caller holds the lock; every thread of the wave has exited. Returns the wave's error, if any.
inline std::string finish_wave(Launch& L) {
    std::string error;
    if (L.aborted) error = L.error;
    for (Block& B : L.blocks) {
        L.max_static_shared = std::max(L.max_static_shared, B.static_shared_bytes);
        if (error.empty() && B.static_shared_bytes + L.dyn_bytes > L.shared_limit)
            error = block_name(B) + ": uses " + std::to_string(B.static_shared_bytes) + " bytes of static and " +
                    std::to_string(L.dyn_bytes) + " bytes of dynamic shared memory, more than the " +
                    std::to_string(L.shared_limit) +
                    (L.shared_limit == kMaxSharedBytes ? " a block gets without cuFuncSetAttribute"
                                                       : " a block can opt in to");
        free_block_memory(B);
    }
    return error;
}

// Calls f(first block) for every wave in order until f returns an error: one wave per block, or
// one wave of the whole grid when cooperative.
template <class F>
std::string for_each_wave(const Launch& L, F f) {
    std::string error;
    const unsigned long long step = (unsigned long long)L.resident;
    for (unsigned long long b = 0; b < grid_blocks(L) && error.empty(); b += step) error = f(b);
    return error;
}

// OS-thread mode: runs every wave of the launch; returns the first error ("" on success).
inline std::string run_grid_threads(Launch& L, bool* started) {
    std::vector<pthread_t> handles;
    std::vector<WorkerArg> args(L.nslots);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    pthread_attr_setstacksize(&attr, 4u << 20);
#else
    pthread_attr_setstacksize(&attr, 1u << 20);
#endif
    std::string error;
    for (int s = 0; s < L.nslots; s++) {
        args[s] = {&L, s};
        pthread_t h;
        if (pthread_create(&h, &attr, worker_main, &args[s]) != 0) {
            error = "could not start " + std::to_string(L.nslots) +
                    (L.cooperative ? " OS threads for the grid of a cooperative launch (every thread resident)"
                                   : " OS threads for one block");
            break;
        }
        handles.push_back(h);
    }
    pthread_attr_destroy(&attr);
    *started = error.empty();
    if (error.empty())
        error = for_each_wave(L, [&](unsigned long long first) {
            Quiet q;
            std::unique_lock<std::mutex> lk(L.m);
            start_wave(L, first);
            L.th[L.current].cv.notify_one();
            wait_wave(L, lk);
            return finish_wave(L);
        });
    {
        Quiet q;
        std::lock_guard<std::mutex> lk(L.m);
        L.quit = true;
        for (int s = 0; s < L.nslots; s++) L.th[s].cv.notify_one();
    }
    for (pthread_t h : handles) pthread_join(h, nullptr);
    return error;
}

#if ROBO_POET_EMU_HAVE_FIBERS
// Fiber mode's watchdog: the launching thread runs the fibers, so a fiber that never yields can
// only be noticed from another thread. One thread serves the process (launches are serialised).
struct Watchdog {
    std::mutex m;
    std::condition_variable cv;
    Launch* launch = nullptr;
    unsigned long long generation = 0;  // a new launch may reuse the last one's address
    bool started = false;
};

// Never destroyed: its thread waits on it until the process ends.
inline Watchdog& watchdog() {
    static Watchdog* w = new Watchdog;
    return *w;
}

[[noreturn]] inline void watchdog_main() {
    Watchdog& w = watchdog();
    const double limit = watchdog_seconds();
    std::unique_lock<std::mutex> lk(w.m);
    for (;;) {
        w.cv.wait(lk, [&] { return w.launch != nullptr; });
        Launch* L = w.launch;
        const unsigned long long gen = w.generation;
        unsigned long long seen = L->handoffs.load(std::memory_order_relaxed);
        auto last = std::chrono::steady_clock::now();
        while (w.launch == L && w.generation == gen) {
            w.cv.wait_for(lk, std::chrono::milliseconds(200));
            if (w.launch != L || w.generation != gen) break;
            auto now = std::chrono::steady_clock::now();
            unsigned long long h = L->handoffs.load(std::memory_order_relaxed);
            if (h != seen) {
                seen = h;
                last = now;
            } else if (limit > 0 && std::chrono::duration<double>(now - last).count() > limit) {
                // The fiber is stuck: L->current and the block index are not changing under us.
                std::fprintf(stderr,
                             "robo-poet kernel emulator: kernel %s, %s: %s has run for %.0f s without reaching a "
                             "barrier, a warp collective or its end (an endless loop?). A running CUDA thread "
                             "cannot be stopped; aborting the process. (ROBO_POET_EMU_WATCHDOG_SECS sets the "
                             "limit.)\n",
                             L->kernel, running_block_name(*L).c_str(),
                             thread_name(*L, L->current % L->nthreads).c_str(), limit);
                std::abort();
            }
        }
    }
}

// Starts (L) or stops (nullptr) watching a launch.
inline void watch(Launch* L) {
    Watchdog& w = watchdog();
    std::lock_guard<std::mutex> lk(w.m);
    w.launch = L;
    w.generation++;
    if (L && !w.started) {
        std::thread(watchdog_main).detach();
        w.started = true;
    }
    w.cv.notify_one();
}

// A fiber's life in one wave: the kernel body for its CUDA thread (unless the launch has already
// failed), then its exit. Returns, so ThreadSanitizer's view of the fiber's calls stays balanced.
__attribute__((noinline)) inline void fiber_run(Launch& L) {
    bool run;
    {
        Quiet q;
        std::lock_guard<std::mutex> lk(L.m);
        run = !L.aborted;
        if (run) L.th[my_slot()].state = State::running;
    }
    tsan_acquire(&L.tsan_start);
    if (run) run_body(L);
    tsan_release(&L.tsan_end);
    Quiet q;
    std::lock_guard<std::mutex> lk(L.m);
    exit_thread(L);
}

// The first code a fiber runs: its CUDA thread, then the token to the next. Not instrumented by
// ThreadSanitizer: it never returns.
[[noreturn]] ROBO_POET_EMU_NO_TSAN inline void fiber_main() {
    Launch& L = *tl_launch;
#if defined(__SANITIZE_ADDRESS__)
    asan_switched(L, nullptr);
#endif
    fiber_run(L);
    // Past fiber_run's announcement of this thread's end to ThreadSanitizer, which the launcher
    // acquires before it frees the blocks: the scheduler's own read of its slot orders nothing.
    int me;
    {
        Quiet q;
        me = my_slot();
    }
    transfer(L, me, L.aborted ? -1 : L.current, true);
    fatal("an exited fiber was resumed", std::source_location::current());
}

// Fiber mode: runs every wave of the launch on this OS thread; returns the first error.
inline std::string run_grid_fibers(Launch& L, bool* started) {
    if (!fiber::reserve_stacks(L.nslots)) {
        *started = false;
        if (!L.cooperative) return "could not map " + std::to_string(L.nslots) + " fiber stacks for one block";
        return "could not map " + std::to_string(L.nslots) +
               " fiber stacks, one per thread of the grid of a cooperative launch (every thread is resident; the "
               "kernel's " + std::to_string(grid_blocks(L)) + " blocks of " + std::to_string(L.nthreads) +
               " threads are more than this process can map: each stack is two mappings, and vm.max_map_count "
               "bounds them)";
    }
    *started = true;
#if defined(__SANITIZE_THREAD__)
    L.tsan_main = __tsan_get_current_fiber();
#endif
    {
        // The per-launch and per-block built-ins are this OS thread's; transfer() swaps the rest.
        Quiet q;  // every CUDA thread reads them
        tl_launch = &L;
        blockDim = L.block;
        gridDim = L.grid;
    }
    struct Watching {  // until this function returns, by any path
        explicit Watching(Launch* L) { watch(L); }
        ~Watching() {
            watch(nullptr);
            Quiet q;
            tl_launch = nullptr;
        }
    } watching(&L);
    tsan_release(&L.tsan_start);
    std::string error = for_each_wave(L, [&](unsigned long long first) {
        Quiet q;  // the launcher's bookkeeping between waves orders nothing
        {
            std::lock_guard<std::mutex> lk(L.m);
            start_wave(L, first);
        }
        const auto& stacks = fiber::stack_pool();
        for (int s = 0; s < L.nslots; s++) {
            L.th[s].sp = fiber::prepare(stacks[s], fiber_main);
            L.th[s].bar_gen = 0;
        }
        transfer(L, -1, L.current, false);
        // Back here when no fiber can run: the wave has finished, or it failed and the threads
        // still waiting must unwind (or, never started, exit).
        while (L.live > 0) {
            if (!L.aborted) {
                std::lock_guard<std::mutex> lk(L.m);
                abort_locked(L, running_block_name(L) + ": the fiber scheduler lost the token (emulator bug)");
            }
            int s = 0;
            while (L.th[s].state == State::exited) s++;
            L.current = s;
            transfer(L, -1, s, false);
        }
        std::lock_guard<std::mutex> lk(L.m);
        return finish_wave(L);
    });
    tsan_acquire(&L.tsan_end);
    return error;
}
#endif

// Which scheduler runs CUDA threads: fibers where they exist, unless ROBO_POET_EMU_THREADS=os.
// Returns an error for a value it does not know.
inline std::string choose_threads(bool* fibers) {
    const char* v = std::getenv("ROBO_POET_EMU_THREADS");
    std::string s = v ? v : "";
    *fibers = ROBO_POET_EMU_HAVE_FIBERS && s != "os";
    if (s.empty() || s == "os") return "";
    if (s == "fiber") {
        if (ROBO_POET_EMU_HAVE_FIBERS) return "";
        return "ROBO_POET_EMU_THREADS=fiber: fibers are not available in this build (not x86-64); unset it or "
               "use `os`";
    }
    return "ROBO_POET_EMU_THREADS=" + s + ": expected `fiber` (the default where available) or `os`";
}

inline std::string run_grid(Launch& L, bool* started) {
    setup_slots(L);
#if ROBO_POET_EMU_HAVE_FIBERS
    if (L.fibers) return run_grid_fibers(L, started);
#endif
    return run_grid_threads(L, started);
}

// Launch results, as src/gpu/emu.rs reads them.
constexpr int kLaunchOk = 0;
constexpr int kLaunchRejected = 1;  // never ran: bad parameter list, threads unavailable
constexpr int kLaunchFailed = 2;    // ran and failed: deadlock, misuse of an intrinsic, ...

inline int report(LaunchDesc* d, int code, const std::string& msg) {
    if (d->error && d->error_cap > 0) {
        size_t n = std::min<size_t>(msg.size(), d->error_cap - 1);
        std::memcpy(d->error, msg.data(), n);
        d->error[n] = 0;
    }
    return code;
}

// Launches are serialised process-wide: this bounds the number of OS threads when tests run in
// parallel, and fiber mode's stack pool and watchdog rely on one launch at a time.
inline std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}

template <class... Args>
struct KernelCall {
    void (*kernel)(Args...);
    std::tuple<std::remove_cvref_t<Args>...> args;
    static void run(void* p) {
        auto* self = static_cast<KernelCall*>(p);
        std::apply(self->kernel, self->args);
    }
};

template <class... Args, size_t... I>
KernelCall<Args...> unpack(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
    return {kernel, {*static_cast<std::remove_cvref_t<Args>*>(params[I])...}};
}

// The emulated cuLaunchKernel for one kernel; build.rs exports one extern "C" wrapper per kernel.
template <class... Args>
int launch(void (*kernel)(Args...), const char* name, LaunchDesc* d) noexcept {
    try {
        if (d->query_params) {
            const unsigned long long sizes[] = {sizeof(std::remove_cvref_t<Args>)..., 0};
            for (size_t i = 0; i < sizeof...(Args) && i < d->param_sizes_cap; i++) d->param_sizes[i] = sizes[i];
            d->num_params = sizeof...(Args);
            return kLaunchOk;
        }
        if (d->num_params != sizeof...(Args))
            return report(d, kLaunchRejected,
                          "the kernel takes " + std::to_string(sizeof...(Args)) + " parameters, the launch passed " +
                              std::to_string(d->num_params));
        auto call = unpack(kernel, d->params, std::index_sequence_for<Args...>{});
#if defined(__SANITIZE_ADDRESS__)
        static const bool hooked = (__sanitizer_set_death_callback(on_sanitizer_death), true);
        (void)hooked;
#endif
        std::lock_guard<std::mutex> serial(launch_mutex());
        Launch L;
        L.kernel = name;
        L.grid = dim3(d->grid[0], d->grid[1], d->grid[2]);
        L.block = dim3(d->block[0], d->block[1], d->block[2]);
        L.dyn_bytes = d->shared_bytes;
        L.shared_limit = d->shared_limit ? d->shared_limit : kMaxSharedBytes;
        L.reverse = d->reverse != 0;
        L.cooperative = d->cooperative != 0;
        std::string bad_env = choose_threads(&L.fibers);
        if (!bad_env.empty()) return report(d, kLaunchRejected, bad_env);
        L.body = &KernelCall<Args...>::run;
        L.ctx = &call;
        L.nthreads = (int)(L.block.x * L.block.y * L.block.z);
        L.nwarps = (L.nthreads + (int)kWarpSize - 1) / (int)kWarpSize;
        // One slot (fiber stack or OS thread, and its bookkeeping) per resident CUDA thread.
        if (L.cooperative && grid_blocks(L) * (unsigned long long)L.nthreads > (1ull << 24))
            return report(d, kLaunchRejected,
                          "a cooperative grid of " + std::to_string(grid_blocks(L)) + " blocks of " +
                              std::to_string(L.nthreads) + " threads is more than the emulator can keep resident");
        bool started = false;
        std::string err = run_grid(L, &started);
        d->static_shared_used = L.max_static_shared;
        if (err.empty()) return kLaunchOk;
        return report(d, started ? kLaunchFailed : kLaunchRejected, err);
    } catch (std::exception& e) {
        return report(d, kLaunchRejected, std::string("emulator failure: ") + e.what());
    }
}

}  // namespace emu
