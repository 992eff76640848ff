// Running one launch: blocks in order, their CUDA threads as fibers or OS threads, the watchdog,
// and the launcher that build.rs exports for every kernel (the emulated cuLaunchKernel). Included
// by cuda_emu.h.
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
    int tid;
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
    tl_tid = a.tid;
    unsigned long long seen = 0;
    for (;;) {
        {
            Quiet q;
            std::unique_lock<std::mutex> lk(L.m);
            Thread& me = L.th[a.tid];
            while (!L.quit && !(L.block_gen != seen && (L.current == a.tid || L.aborted))) me.cv.wait(lk);
            if (L.quit) return nullptr;
            seen = L.block_gen;
            if (L.aborted) {
                exit_thread(L);
                continue;
            }
            me.state = State::running;
            unsigned bx = L.block.x, by = L.block.y;
            threadIdx = {a.tid % bx, (a.tid / bx) % by, a.tid / (bx * by)};
            blockIdx = L.block_idx;
            blockDim = L.block;
            gridDim = L.grid;
            tl_bar_gen = 0;
            tl_sync = L.sync;
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

// Caller holds the lock. Waits until every thread of the block has exited; aborts the process
// (the only way to stop a thread that never yields) if the token has not moved for too long.
inline void wait_block(Launch& L, std::unique_lock<std::mutex>& lk) {
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
                         L.kernel, block_name(L).c_str(), thread_name(L, L.current).c_str(), limit);
            std::abort();
        }
    }
}

inline void free_block_memory(Launch& L) {
    for (auto& [k, p] : L.shared) ::operator delete(p, std::align_val_t(kSharedAlign));
    L.shared.clear();
    if (L.dyn_shared) ::operator delete(L.dyn_shared, std::align_val_t(kSharedAlign));
    L.dyn_shared = nullptr;
    for (auto& w : L.colls) {
        for (Collective* c : w) delete c;
        w.clear();
    }
    delete L.sync;
    L.sync = nullptr;
}

// Caller holds the lock. Resets the scheduler for block `idx` and gives the token to the first
// thread of the schedule.
inline void start_block(Launch& L, uint3 idx) {
    L.block_idx = idx;
    L.live = L.nthreads;
    for (int t = 0; t < L.nthreads; t++) L.th[t].state = State::ready;
    L.bar_arrived = L.bar_true = 0;
    L.bar_mixed = false;
    L.bar_gen = 0;
    L.static_shared_bytes = 0;
    L.dyn_shared = alloc_shared(L.dyn_bytes);
    L.sync = new BarrierSync{};
    L.block_gen++;
    L.current = L.reverse ? L.nthreads - 1 : 0;
}

// Caller holds the lock; every thread of the block has exited. Returns the block's error, if any.
inline std::string finish_block(Launch& L) {
    std::string error;
    if (L.aborted) error = L.error;
    else if (L.static_shared_bytes + L.dyn_bytes > L.shared_limit)
        error = block_name(L) + ": uses " + std::to_string(L.static_shared_bytes) + " bytes of static and " +
                std::to_string(L.dyn_bytes) + " bytes of dynamic shared memory, more than the " +
                std::to_string(L.shared_limit) +
                (L.shared_limit == kMaxSharedBytes ? " a block gets without cuFuncSetAttribute"
                                                   : " a block can opt in to");
    free_block_memory(L);
    return error;
}

// Calls f(block index) for every block in CUDA's order until f returns an error.
template <class F>
std::string for_each_block(const Launch& L, F f) {
    std::string error;
    for (unsigned z = 0; z < L.grid.z && error.empty(); z++)
        for (unsigned y = 0; y < L.grid.y && error.empty(); y++)
            for (unsigned x = 0; x < L.grid.x && error.empty(); x++) error = f(uint3{x, y, z});
    return error;
}

// OS-thread mode: runs every block of the launch; returns the first error ("" on success).
inline std::string run_grid_threads(Launch& L, bool* started) {
    L.th.reset(new Thread[L.nthreads]);
    L.colls.resize(L.nwarps);
    std::vector<pthread_t> handles;
    std::vector<WorkerArg> args(L.nthreads);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    pthread_attr_setstacksize(&attr, 4u << 20);
#else
    pthread_attr_setstacksize(&attr, 1u << 20);
#endif
    std::string error;
    for (int t = 0; t < L.nthreads; t++) {
        args[t] = {&L, t};
        pthread_t h;
        if (pthread_create(&h, &attr, worker_main, &args[t]) != 0) {
            error = "could not start " + std::to_string(L.nthreads) + " threads for one block";
            break;
        }
        handles.push_back(h);
    }
    pthread_attr_destroy(&attr);
    *started = error.empty();
    if (error.empty())
        error = for_each_block(L, [&](uint3 idx) {
            Quiet q;
            std::unique_lock<std::mutex> lk(L.m);
            start_block(L, idx);
            L.th[L.current].cv.notify_one();
            wait_block(L, lk);
            return finish_block(L);
        });
    {
        Quiet q;
        std::lock_guard<std::mutex> lk(L.m);
        L.quit = true;
        for (int t = 0; t < L.nthreads; t++) L.th[t].cv.notify_one();
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
                             L->kernel, block_name(*L).c_str(), thread_name(*L, L->current).c_str(), limit);
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

// A fiber's life in one block: the kernel body for its CUDA thread (unless the block has already
// failed), then its exit. Returns, so ThreadSanitizer's view of the fiber's calls stays balanced.
__attribute__((noinline)) inline void fiber_run(Launch& L) {
    bool run;
    {
        Quiet q;
        std::lock_guard<std::mutex> lk(L.m);
        run = !L.aborted;
        if (run) L.th[tl_tid].state = State::running;
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
    transfer(L, tl_tid, L.aborted ? -1 : L.current, true);
    fatal("an exited fiber was resumed", std::source_location::current());
}

// Fiber mode: runs every block of the launch on this OS thread; returns the first error.
inline std::string run_grid_fibers(Launch& L, bool* started) {
    L.th.reset(new Thread[L.nthreads]);
    L.colls.resize(L.nwarps);
    if (!fiber::reserve_stacks(L.nthreads)) {
        *started = false;
        return "could not map " + std::to_string(L.nthreads) + " fiber stacks for one block";
    }
    *started = true;
    const unsigned bx = L.block.x, by = L.block.y;
    for (int t = 0; t < L.nthreads; t++) L.th[t].idx = {t % bx, (t / bx) % by, t / (bx * by)};
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
    std::string error = for_each_block(L, [&](uint3 idx) {
        Quiet q;  // the launcher's bookkeeping between blocks orders nothing
        {
            std::lock_guard<std::mutex> lk(L.m);
            start_block(L, idx);
        }
        blockIdx = idx;
        tl_sync = L.sync;
        const auto& stacks = fiber::stack_pool();
        for (int t = 0; t < L.nthreads; t++) {
            L.th[t].sp = fiber::prepare(stacks[t], fiber_main);
            L.th[t].bar_gen = 0;
        }
        transfer(L, -1, L.current, false);
        // Back here when no fiber can run: the block has finished, or it failed and the threads
        // still waiting must unwind (or, never started, exit).
        while (L.live > 0) {
            if (!L.aborted) {
                std::lock_guard<std::mutex> lk(L.m);
                abort_locked(L, block_name(L) + ": the fiber scheduler lost the token (emulator bug)");
            }
            int t = 0;
            while (L.th[t].state == State::exited) t++;
            L.current = t;
            transfer(L, -1, t, false);
        }
        std::lock_guard<std::mutex> lk(L.m);
        return finish_block(L);
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
        std::string bad_env = choose_threads(&L.fibers);
        if (!bad_env.empty()) return report(d, kLaunchRejected, bad_env);
        L.body = &KernelCall<Args...>::run;
        L.ctx = &call;
        L.nthreads = (int)(L.block.x * L.block.y * L.block.z);
        L.nwarps = (L.nthreads + (int)kWarpSize - 1) / (int)kWarpSize;
        bool started = false;
        std::string err = run_grid(L, &started);
        if (err.empty()) return kLaunchOk;
        return report(d, started ? kLaunchFailed : kLaunchRejected, err);
    } catch (std::exception& e) {
        return report(d, kLaunchRejected, std::string("emulator failure: ") + e.what());
    }
}

}  // namespace emu
