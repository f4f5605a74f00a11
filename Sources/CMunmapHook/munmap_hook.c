// munmap() for the whole process. An executable's own definition of a libc function binds
// every call from the executable (Swift's Glibc.munmap included) and, through the dynamic
// symbol table, every call a shared library makes through its PLT (libibverbs, the Swift
// runtime). glibc's internal unmaps (free() of a large block, thread stacks) and raw
// syscall(SYS_munmap) bypass it: userfaultfd still reports those.
#define _GNU_SOURCE
#include "munmap_hook.h"
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

static _Atomic(cmunmaphook_handler) installed_handler;
static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;

// ThreadSanitizer intercepts munmap with a weak definition, which this one replaces; calling
// its interceptor keeps TSan's shadow memory right. Absent (NULL) in other builds.
extern int __interceptor_munmap(void *address, size_t length) __attribute__((weak));

static void forget_handler_in_child(void) {
    atomic_store_explicit(&installed_handler, NULL, memory_order_relaxed);
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, forget_handler_in_child); }

void cmunmaphook_install(cmunmaphook_handler handler) {
    pthread_once(&fork_handler_once, register_fork_handler);
    atomic_store_explicit(&installed_handler, handler, memory_order_release);
}

int cmunmaphook_unmap(void *address, size_t length) {
    long result = __interceptor_munmap ? __interceptor_munmap(address, length)
                                       : syscall(SYS_munmap, address, length);
    return result == 0 ? 0 : errno;
}

int munmap(void *address, size_t length) {
    cmunmaphook_handler handler = atomic_load_explicit(&installed_handler, memory_order_acquire);
    int failure = handler ? handler(address, length) : cmunmaphook_unmap(address, length);
    if (failure == 0) return 0;
    errno = failure;
    return -1;
}
