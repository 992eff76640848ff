// Running one launch: worker threads, blocks in order, the watchdog, and the launcher that
// build.rs exports for every kernel (the emulated cuLaunchKernel). Included by cuda_emu.h.
#pragma once

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
};

// Under ThreadSanitizer, races are reported per OS thread: name each after the CUDA thread it
// runs now. (The "previous access" of a report may have come from an earlier block.)
inline void name_thread() {
#if defined(__SANITIZE_THREAD__)
    char name[96];
    std::snprintf(name, sizeof name, "CUDA thread (%u, %u, %u) of block (%u, %u, %u)", threadIdx.x, threadIdx.y,
                  threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z);
    pthread_setname_np(pthread_self(), name);  // TSan records the whole name, even if the OS refuses it
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
        name_thread();
        try {
            L.body(L.ctx);
        } catch (Abort&) {
        } catch (std::exception& e) {
            fail_thread(L, std::string("C++ exception escaped the kernel: ") + e.what());
        } catch (...) {
            fail_thread(L, "C++ exception escaped the kernel");
        }
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

// Runs every block of the launch; returns the first error ("" on success).
inline std::string run_grid(Launch& L, bool* started) {
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
    for (unsigned z = 0; z < L.grid.z && error.empty(); z++)
        for (unsigned y = 0; y < L.grid.y && error.empty(); y++)
            for (unsigned x = 0; x < L.grid.x && error.empty(); x++) {
                Quiet q;
                std::unique_lock<std::mutex> lk(L.m);
                L.block_idx = {x, y, z};
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
                L.th[L.current].cv.notify_one();
                wait_block(L, lk);
                if (L.aborted) error = L.error;
                else if (L.static_shared_bytes + L.dyn_bytes > kMaxSharedBytes)
                    error = block_name(L) + ": uses " + std::to_string(L.static_shared_bytes) + " bytes of static and " +
                            std::to_string(L.dyn_bytes) + " bytes of dynamic shared memory, more than the " +
                            std::to_string(kMaxSharedBytes) + " a block gets without cuFuncSetAttribute";
                free_block_memory(L);
            }
    {
        Quiet q;
        std::lock_guard<std::mutex> lk(L.m);
        L.quit = true;
        for (int t = 0; t < L.nthreads; t++) L.th[t].cv.notify_one();
    }
    for (pthread_t h : handles) pthread_join(h, nullptr);
    return error;
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

// Launches are serialised process-wide: blocks already use every core, and this bounds the
// number of OS threads when tests run in parallel.
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
        L.reverse = d->reverse != 0;
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
