// Fibers for the kernel test bench: a user-space stack per CUDA thread and a hand-written x86-64
// context switch, so handing the token from one CUDA thread to the next costs a few nanoseconds
// instead of an OS context switch. Included by runtime.h; the scheduling itself lives there.
//
// Why not ucontext: swapcontext saves the signal mask with a system call on every switch.
// Only the registers the System V ABI makes callee-saved are switched (rbx, rbp, r12-r15, and rsp
// through the stack); the MXCSR and x87 control words are not, since no kernel changes the
// rounding mode. Fibers never move between OS threads, so `thread_local` addresses stay valid.
//
// Under ThreadSanitizer every stack of the pool gets its own TSan fiber (__tsan_create_fiber), kept
// with it for the life of the process: what runs on a stack is always the same TSan thread, so a
// stack reused by the next block or launch never looks like a race with its previous user. The
// code that switches and prepares stacks is not instrumented (kNoTsan): a fiber's first frame
// never returns, and an instrumented one would leave an entry on TSan's shadow stack each time.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <vector>

#if defined(__x86_64__)
#define ROBO_POET_EMU_HAVE_FIBERS 1
#else
#define ROBO_POET_EMU_HAVE_FIBERS 0
#endif

#if ROBO_POET_EMU_HAVE_FIBERS && defined(__SANITIZE_ADDRESS__)
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
}
#endif

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
// Keeps ThreadSanitizer's instrumentation (memory accesses, function entry and exit) out of a
// function. GCC does not inline across the attribute, so instrumented callees stay instrumented.
#define ROBO_POET_EMU_NO_TSAN __attribute__((no_sanitize_thread))
#else
#define ROBO_POET_EMU_NO_TSAN
#endif

namespace emu::fiber {

#if ROBO_POET_EMU_HAVE_FIBERS
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save, and
// resumes the context whose stack pointer is `to` (one saved by this function, or made by
// `prepare`). noipa: the compiler must treat it as an opaque call that reads and writes memory.
__attribute__((naked, noinline, noipa)) ROBO_POET_EMU_NO_TSAN inline void switch_stack(void** /*save*/, void* /*to*/) {
    asm("pushq %rbp\n\t"
        "pushq %rbx\n\t"
        "pushq %r12\n\t"
        "pushq %r13\n\t"
        "pushq %r14\n\t"
        "pushq %r15\n\t"
        "movq %rsp, (%rdi)\n\t"
        "movq %rsi, %rsp\n\t"
        "popq %r15\n\t"
        "popq %r14\n\t"
        "popq %r13\n\t"
        "popq %r12\n\t"
        "popq %rbx\n\t"
        "popq %rbp\n\t"
        "ret\n\t");
}
#endif

// Kernels keep a few small local arrays; the emulator's own frames (error messages) are larger.
// AddressSanitizer's redzones make every frame several times bigger.
#if defined(__SANITIZE_ADDRESS__)
constexpr size_t kStackBytes = 1u << 20;
#else
constexpr size_t kStackBytes = 256u << 10;
#endif

// One fiber stack: mmap'd with an inaccessible guard page below it, so an overflow faults at once
// instead of overwriting a neighbour. Pages are committed only when touched.
struct Stack {
    char* base = nullptr;  // lowest usable byte
    size_t size = 0;
    void* tsan = nullptr;  // ThreadSanitizer: the TSan fiber of whatever runs on this stack
    char* top() const { return base + size; }
};

inline Stack map_stack() {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) return {};
    if (mprotect(p, page, PROT_NONE) != 0) {
        munmap(p, kStackBytes + page);
        return {};
    }
    return {static_cast<char*>(p) + page, kStackBytes};
}

// Stacks are kept for the life of the process and reused by every block of every launch.
// Launches are serialised process-wide (launch.h), which also guards this pool.
inline std::vector<Stack>& stack_pool() {
    static std::vector<Stack> pool;
    return pool;
}

// At least n stacks in the pool; false if the system refused memory.
inline bool reserve_stacks(size_t n) {
    auto& pool = stack_pool();
    while (pool.size() < n) {
        Stack s = map_stack();
        if (!s.base) return false;
#if defined(__SANITIZE_THREAD__)
        s.tsan = __tsan_create_fiber(0);
#endif
        pool.push_back(s);
    }
    return true;
}

#if ROBO_POET_EMU_HAVE_FIBERS
// A fresh context on `s` that starts by calling entry(), which must never return. Returns the
// stack pointer to pass to switch_stack. Not instrumented: these stores to the fiber's stack are
// not the launching thread's memory accesses as far as ThreadSanitizer is concerned.
ROBO_POET_EMU_NO_TSAN inline void* prepare(const Stack& s, void (*entry)()) {
#if defined(__SANITIZE_ADDRESS__)
    // The frames a finished fiber never returned from leave their redzones poisoned near the top.
    __asan_unpoison_memory_region(s.top() - (16u << 10), 16u << 10);
#endif
    // switch_stack pops six registers and returns into entry; entry then sees rsp = 8 (mod 16),
    // as after a call, with a null return address that ends every backtrace.
    void** sp = reinterpret_cast<void**>(s.top()) - 8;
    for (int i = 0; i < 8; i++) sp[i] = nullptr;
    sp[6] = reinterpret_cast<void*>(entry);
    return sp;
}
#endif

}  // namespace emu::fiber
