// munmap(), mmap(MAP_FIXED), mprotect(), pkey_mprotect(), shmat() and shmdt() for the whole process. An
// executable's own definition of a libc function binds every call from the executable (Swift's
// Glibc functions included) and, through the dynamic symbol table, every call a shared library
// makes through its PLT (libibverbs, the Swift runtime, an allocator). glibc's internal calls
// (free() of a large block, thread stacks) and raw syscall() bypass them: userfaultfd still
// reports the unmaps among those, and nothing reports the rest (MemoryHooks.swift says which).
//
// The rule every hook keeps: on a call that touches no memory a monitor registered it takes no
// lock and allocates nothing (one lock-free look at the granule maps), so an allocator that
// calls it while holding its own lock cannot re-enter itself through us.
#define _GNU_SOURCE
#include "memory_hooks.h"
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <unistd.h>

static _Atomic(cmemhooks_handler) installed_handler;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static _Atomic int hooks_disabled;
// Depth of handler calls on this thread: calls made from inside a handler (an invalidation
// callback that unmaps) go straight to the kernel and reach the monitor as events.
static _Thread_local int handler_depth __attribute__((tls_model("initial-exec")));

// ThreadSanitizer intercepts munmap and mprotect with weak definitions, which these replace;
// calling its interceptors keeps TSan's shadow memory right. Absent (NULL) in other builds.
extern int __interceptor_munmap(void *address, size_t length) __attribute__((weak));
extern int __interceptor_mprotect(void *address, size_t length, int prot) __attribute__((weak));
extern void *__interceptor_mmap(void *address, size_t length, int prot, int flags, int fd, off_t offset)
    __attribute__((weak));

static void forget_handler_in_child(void) {
    atomic_store_explicit(&installed_handler, NULL, memory_order_relaxed);
}

static void first_install(void) {
    const char *setting = getenv("RDMAMEMORY_HOOKS");
    if (setting && (strcmp(setting, "off") == 0 || strcmp(setting, "0") == 0)) atomic_store(&hooks_disabled, 1);
    pthread_atfork(NULL, NULL, forget_handler_in_child);
}

int cmemhooks_install(cmemhooks_handler handler) {
    pthread_once(&install_once, first_install);
    if (atomic_load(&hooks_disabled)) return -1;
    atomic_store_explicit(&installed_handler, handler, memory_order_release);
    return 0;
}

int cmemhooks_disabled(void) {
    pthread_once(&install_once, first_install);
    return atomic_load(&hooks_disabled);
}

void cmemhooks_perform(cmemhooks_call *call) {
    if (call->performed) return;
    call->performed = 1;
    long result;
    switch (call->kind) {
    case CMEMHOOKS_MUNMAP:
        result = __interceptor_munmap ? __interceptor_munmap(call->address, call->length)
                                      : syscall(SYS_munmap, call->address, call->length);
        break;
    case CMEMHOOKS_MPROTECT:
        if (call->pkey != -1) {  // -1: no key, mprotect's semantics; anything else is the kernel's to judge
            result = syscall(SYS_pkey_mprotect, call->address, call->length, call->prot, call->pkey);
        } else {
            result = __interceptor_mprotect ? __interceptor_mprotect(call->address, call->length, call->prot)
                                            : syscall(SYS_mprotect, call->address, call->length, call->prot);
        }
        break;
    case CMEMHOOKS_SHMAT:
        result = syscall(SYS_shmat, call->shmid, call->address, call->flags);
        break;
    case CMEMHOOKS_MMAP_FIXED:
        result = __interceptor_mmap
            ? (long)__interceptor_mmap(call->address, call->length, call->prot, call->flags, call->fd, call->offset)
            : syscall(SYS_mmap, call->address, call->length, call->prot, call->flags, call->fd, call->offset);
        break;
    case CMEMHOOKS_SHMDT:
        result = syscall(SYS_shmdt, call->address);
        break;
    default:
        result = -1;
        errno = EINVAL;
    }
    call->result = (intptr_t)result;
    call->error = result == -1 ? errno : 0;
}

static uintptr_t page_mask(void) {
    static _Atomic uintptr_t mask;
    uintptr_t m = atomic_load_explicit(&mask, memory_order_relaxed);
    if (!m) {
        m = (uintptr_t)sysconf(_SC_PAGESIZE) - 1;
        atomic_store_explicit(&mask, m, memory_order_relaxed);
    }
    return m;
}

// The page range [*start, *end) of (address, length); 0 for what the kernel refuses with EINVAL
// (unaligned, empty, wrapping), which then goes to it untouched.
static int page_range(const void *address, size_t length, uintptr_t *start, uintptr_t *end) {
    uintptr_t mask = page_mask(), s = (uintptr_t)address;
    if (length == 0 || (s & mask) != 0) return 0;
    uintptr_t e;
    if (__builtin_add_overflow(s, length, &e) || __builtin_add_overflow(e, mask, &e)) return 0;
    *start = s;
    *end = e & ~mask;
    return 1;
}

// Runs `call` through the handler and returns the real call's result, errno set.
static intptr_t through_handler(cmemhooks_handler handler, cmemhooks_call *call) {
    int saved = errno;  // Swift code in the handler may change it; a success must not
    handler_depth++;
    handler(call);
    handler_depth--;
    cmemhooks_perform(call);  // a handler that chose not to: the call must still happen
    errno = call->result == -1 ? call->error : saved;
    return call->result;
}

int munmap(void *address, size_t length) {
    cmemhooks_handler handler = atomic_load_explicit(&installed_handler, memory_order_acquire);
    cmemhooks_call call = {.kind = CMEMHOOKS_MUNMAP, .address = address, .length = length, .pkey = -1};
    if (handler && handler_depth == 0 && page_range(address, length, &call.start, &call.end) &&
        (call.slots = cmemhooks_touching(call.start, call.end)) != 0) {
        return (int)through_handler(handler, &call);
    }
    cmemhooks_perform(&call);
    if (call.result == -1) errno = call.error;
    return (int)call.result;
}

// mmap(MAP_FIXED) over watched memory unmaps it first: handled like munmap (invalidated and taken
// out of userfaultfd in this thread, so the kernel queues no UNMAP event and the caller does not
// sleep until the monitor reads one). Every other mmap goes straight to the kernel after one
// flag test: it makes new memory, which nobody has watched yet.
static void *map(void *address, size_t length, int prot, int flags, int fd, off_t offset) {
    cmemhooks_handler handler = atomic_load_explicit(&installed_handler, memory_order_acquire);
    cmemhooks_call call = {.kind = CMEMHOOKS_MMAP_FIXED, .address = address, .length = length, .prot = prot,
                           .flags = flags, .fd = fd, .offset = (long)offset, .pkey = -1};
    if ((flags & MAP_FIXED) && handler && handler_depth == 0 &&
        page_range(address, length, &call.start, &call.end) &&
        (call.slots = cmemhooks_touching(call.start, call.end)) != 0) {
        return (void *)through_handler(handler, &call);
    }
    cmemhooks_perform(&call);
    if (call.result == -1) errno = call.error;
    return (void *)call.result;
}

void *mmap(void *address, size_t length, int prot, int flags, int fd, off_t offset) {
    return map(address, length, prot, flags, fd, offset);
}

void *mmap64(void *address, size_t length, int prot, int flags, int fd, off_t offset) {
    return map(address, length, prot, flags, fd, offset);
}

// mprotect and pkey_mprotect: only a call that takes access away can matter. Unseen by
// userfaultfd altogether, so the check runs twice: before (a registered range: invalidate, with
// lookups held off, before the protection changes) and after (a watch that raced the first
// check registered with the old access: invalidate before returning).
static int protect(void *address, size_t length, int prot, int pkey) {
    cmemhooks_handler handler = atomic_load_explicit(&installed_handler, memory_order_acquire);
    cmemhooks_call call = {.kind = CMEMHOOKS_MPROTECT, .address = address, .length = length,
                           .prot = prot, .pkey = pkey};
    int loss = !(prot & (PROT_READ | PROT_WRITE)) ? CMEMHOOKS_LOSES_ALL
             : !(prot & PROT_WRITE)               ? CMEMHOOKS_LOSES_WRITE : 0;
    call.protection_loss = loss;
    if (!handler || handler_depth != 0 || loss == 0 || !page_range(address, length, &call.start, &call.end)) {
        cmemhooks_perform(&call);
    } else if ((call.slots = cmemhooks_touching(call.start, call.end)) != 0) {
        return (int)through_handler(handler, &call);
    } else {
        cmemhooks_perform(&call);
        if (call.result == 0 && (call.slots = cmemhooks_touching(call.start, call.end)) != 0) {
            return (int)through_handler(handler, &call);
        }
    }
    if (call.result == -1) errno = call.error;
    return (int)call.result;
}

int mprotect(void *address, size_t length, int prot) { return protect(address, length, prot, -1); }

int pkey_mprotect(void *address, size_t length, int prot, int pkey) { return protect(address, length, prot, pkey); }

// shmat over existing memory (SHM_REMAP) replaces it with no userfaultfd event at all: checked
// before (invalidate, forget validated granules, lookups held off across the attach) and after
// (a watch that raced the first check).
void *shmat(int shmid, const void *address, int flags) {
    cmemhooks_handler handler = atomic_load_explicit(&installed_handler, memory_order_acquire);
    cmemhooks_call call = {.kind = CMEMHOOKS_SHMAT, .address = (void *)address, .shmid = shmid,
                           .flags = flags, .pkey = -1};
    struct shmid_ds segment;
    uintptr_t at = (uintptr_t)address;
    if (at && (flags & SHM_RND)) at &= ~(uintptr_t)(SHMLBA - 1);
    if (!handler || handler_depth != 0 || !at || !(flags & SHM_REMAP) || cmemhooks_active_slots() == 0 ||
        syscall(SYS_shmctl, shmid, IPC_STAT, &segment) != 0 ||
        !page_range((void *)at, segment.shm_segsz, &call.start, &call.end)) {
        cmemhooks_perform(&call);
    } else if ((call.slots = cmemhooks_touching(call.start, call.end)) != 0) {
        return (void *)through_handler(handler, &call);
    } else {
        cmemhooks_perform(&call);
        if (call.result != -1 && (call.slots = cmemhooks_touching(call.start, call.end)) != 0) {
            return (void *)through_handler(handler, &call);
        }
    }
    if (call.result == -1) errno = call.error;
    return (void *)call.result;
}

// shmdt: System V memory is never watched (userfaultfd refuses it), but a segment attached over
// a validated granule by a raw shmat leaves a hole there when detached: the granule must be
// forgotten before anything can be mapped into it. The extent comes from what is mapped at
// `address` (the segment's consecutive mappings), looked up only while some monitor runs.
int shmdt(const void *address) {
    cmemhooks_handler handler = atomic_load_explicit(&installed_handler, memory_order_acquire);
    cmemhooks_call call = {.kind = CMEMHOOKS_SHMDT, .address = (void *)address, .pkey = -1};
    cmemhooks_vma vma;
    int saved = errno;
    if (handler && handler_depth == 0 && cmemhooks_active_slots() != 0 &&
        cmemhooks_vma_at_or_after((uintptr_t)address, (uintptr_t)address + 1, &vma) == 0 &&
        vma.start == (uintptr_t)address) {
        call.start = vma.start;
        call.end = vma.end;
        uint64_t inode = vma.inode;
        uint32_t major = vma.dev_major, minor = vma.dev_minor;
        while (cmemhooks_vma_at_or_after(call.end, call.end + 1, &vma) == 0 && vma.start == call.end &&
               vma.inode == inode && vma.dev_major == major && vma.dev_minor == minor) {
            call.end = vma.end;
        }
        if ((call.slots = cmemhooks_touching(call.start, call.end)) != 0) {
            return (int)through_handler(handler, &call);
        }
    }
    cmemhooks_perform(&call);
    errno = call.result == -1 ? call.error : saved;
    return (int)call.result;
}
