// munmap(), mmap(MAP_FIXED), mremap(), madvise(), process_madvise(), mprotect(), pkey_mprotect(),
// shmat(), shmdt(), brk() and sbrk() for the whole process. An
// executable's own definition of a libc function binds every call from the executable (Swift's
// Glibc functions included) and, through the dynamic symbol table, every call a shared library
// makes through its PLT (libibverbs, the Swift runtime, an allocator). glibc's internal calls
// (free() of a large block, thread stacks) and raw syscall() bypass them: userfaultfd still
// reports the unmaps among those, and nothing reports the rest (MemoryHooks.swift says which).
//
// An unmap observer (cmemhooks_set_unmap_observer: UCX's event source) is told of every range a
// call takes away, watched or not, before the call: one load when there is none.
//
// The rule every hook keeps: on a call that touches no memory a monitor registered it takes no
// lock and allocates nothing (one lock-free look at the granule maps), so an allocator that
// calls it while holding its own lock cannot re-enter itself through us. On a call that does,
// nothing is allocated before the real call either (MemoryHooks.swift): under
// mallopt(M_MMAP_THRESHOLD, 1) every malloc is a fresh mapping, which the kernel may place in the
// hole an mmap(MAP_FIXED) is about to fill (libfabric's fi_mr_cache_evict test did exactly that).
#define _GNU_SOURCE
#include "memory_hooks.h"
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <unistd.h>

static _Atomic(cmemhooks_handler) installed_handler;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static _Atomic int hooks_disabled;
static _Atomic int hooks_shadowed;
// This copy's own munmap, whatever the process's symbol lookup binds `munmap` to.
extern int cmemhooks_own_munmap(void *address, size_t length) __attribute__((alias("munmap"), visibility("hidden")));
// Depth of handler calls on this thread: calls made from inside a handler (an invalidation
// callback that unmaps) go straight to the kernel and reach the monitor as events.
static _Thread_local int handler_depth __attribute__((tls_model("initial-exec")));

// The unmap observer (cmemhooks_set_unmap_observer): told of every page range a hooked call is
// about to take away, whether or not a monitor watches it, before the real call. Calls made
// from inside the observer (its own frees) are not told again.
static _Atomic(cmemhooks_unmap_observer) unmap_observer;
static _Thread_local int observer_depth __attribute__((tls_model("initial-exec")));

// ThreadSanitizer intercepts munmap and mprotect with weak definitions, which these replace;
// calling its interceptors keeps TSan's shadow memory right. Absent (NULL) in other builds.
extern int __interceptor_munmap(void *address, size_t length) __attribute__((weak));
extern int __interceptor_mprotect(void *address, size_t length, int prot) __attribute__((weak));
extern void *__interceptor_mmap(void *address, size_t length, int prot, int flags, int fd, off_t offset)
    __attribute__((weak));

static void forget_handler_in_child(void) {
    atomic_store_explicit(&installed_handler, NULL, memory_order_relaxed);
    cmemhooks_known_mappings_reset_in_child();
}

static void first_install(void) {
    // secure_getenv: in a setuid program the caller's environment must not switch off the
    // revocation of regions a protection change takes write access from.
    const char *setting = secure_getenv("RDMAMEMORY_HOOKS");
    if (setting && (strcmp(setting, "off") == 0 || strcmp(setting, "0") == 0)) atomic_store(&hooks_disabled, 1);
    // The first definition in lookup order binds every call: if it is not ours, another copy's is.
    void *bound = dlsym(RTLD_DEFAULT, "munmap");
    if (bound && bound != (void *)cmemhooks_own_munmap) atomic_store(&hooks_shadowed, 1);
    pthread_atfork(NULL, NULL, forget_handler_in_child);
}

int cmemhooks_install(cmemhooks_handler handler) {
    pthread_once(&install_once, first_install);
    if (atomic_load(&hooks_disabled) || atomic_load(&hooks_shadowed)) return -1;
    atomic_store_explicit(&installed_handler, handler, memory_order_release);
    return 0;
}

int cmemhooks_shadowed(void) {
    pthread_once(&install_once, first_install);
    return atomic_load(&hooks_shadowed);
}

int cmemhooks_disabled(void) {
    pthread_once(&install_once, first_install);
    return atomic_load(&hooks_disabled);
}

int cmemhooks_hooks_bound(void) {
    return atomic_load_explicit(&installed_handler, memory_order_acquire) != NULL;
}

// glibc's cached program break, which its own sbrk() and malloc (through its internal __sbrk)
// read: a brk() of ours must keep it current, as glibc's __brk does. Weak: absent from other C
// libraries, where nothing caches the break.
extern void *__curbrk __attribute__((weak));

// The kernel's brk(address), as glibc's __brk makes it: the break now (unchanged when refused;
// the current one for NULL), remembered where glibc looks for it.
static void *set_break(void *address) {
    void *now = (void *)syscall(SYS_brk, address);
    if (&__curbrk) __curbrk = now;
    return now;
}

static int covering_pages(const void *address, size_t length, uintptr_t *start, uintptr_t *end);

// Before a call that may change what is mapped: the records of mappings the hooked mmap made
// there are no longer sure (known_mappings.c). shmat and shmdt say their range only after the
// call: every record goes (both are rare).
static void forget_known_mappings(const cmemhooks_call *call) {
    uintptr_t start, end;
    switch (call->kind) {
    case CMEMHOOKS_MUNMAP:
    case CMEMHOOKS_MMAP_FIXED:
        if (covering_pages(call->address, call->length, &start, &end)) cmemhooks_known_mappings_forget(start, end);
        break;
    case CMEMHOOKS_MREMAP:
        if (covering_pages(call->address, call->length, &start, &end)) cmemhooks_known_mappings_forget(start, end);
        if (call->new_end > call->new_start) cmemhooks_known_mappings_forget(call->new_start, call->new_end);
        break;
    case CMEMHOOKS_SHMAT:
    case CMEMHOOKS_SHMDT:
        cmemhooks_known_mappings_forget(0, UINTPTR_MAX);
        break;
    default:  // brk: the heap is never a recorded mapping
        break;
    }
}

void cmemhooks_perform(cmemhooks_call *call) {
    if (call->performed) return;
    call->performed = 1;
    // Mappings change (or may have: a failed call changes nothing, and costs one bump).
    int maps = call->kind == CMEMHOOKS_MUNMAP || call->kind == CMEMHOOKS_MMAP_FIXED || call->kind == CMEMHOOKS_SHMAT ||
               call->kind == CMEMHOOKS_SHMDT || call->kind == CMEMHOOKS_MREMAP || call->kind == CMEMHOOKS_BRK;
    if (maps) forget_known_mappings(call);
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
    case CMEMHOOKS_MREMAP:
        result = syscall(SYS_mremap, call->address, call->length, call->new_length, call->flags,
                         (void *)call->new_start);
        break;
    case CMEMHOOKS_BRK:
        result = set_break(call->address) < call->address ? -1 : 0;  // glibc's __brk: lower means refused
        if (result == -1) errno = ENOMEM;
        break;
    case CMEMHOOKS_MADVISE:
        result = call->pidfd == -1
            ? syscall(SYS_madvise, call->address, call->length, call->advice)
            : syscall(SYS_process_madvise, call->pidfd, call->iovec, call->iovec_count, call->advice,
                      (unsigned)call->flags);
        break;
    default:
        result = -1;
        errno = EINVAL;
    }
    call->result = (intptr_t)result;
    call->error = result == -1 ? errno : 0;
    if (maps) cmemhooks_mappings_changed();
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

// The pages [*start, *end) that (address, length) touches, rounded outwards; 0 when it wraps.
static int covering_pages(const void *address, size_t length, uintptr_t *start, uintptr_t *end) {
    uintptr_t mask = page_mask(), s = (uintptr_t)address, e;
    if (length == 0 || __builtin_add_overflow(s, length, &e) || __builtin_add_overflow(e, mask, &e)) return 0;
    *start = s & ~mask;
    *end = e & ~mask;
    return 1;
}

void cmemhooks_set_unmap_observer(cmemhooks_unmap_observer observer) {
    atomic_store_explicit(&unmap_observer, observer, memory_order_release);
}

// Tells the observer that [start, end) is about to go (errno kept: the call has not run yet).
static void observe(uintptr_t start, uintptr_t end) {
    cmemhooks_unmap_observer observer = atomic_load_explicit(&unmap_observer, memory_order_acquire);
    if (!observer || observer_depth != 0 || start >= end) return;
    int saved = errno;
    observer_depth++;
    observer(start, end - start);
    observer_depth--;
    errno = saved;
}

// observe() over the pages of [address, address + length), when they are a valid range.
static void observe_pages(const void *address, size_t length) {
    uintptr_t start, end;
    if (atomic_load_explicit(&unmap_observer, memory_order_relaxed) && page_range(address, length, &start, &end))
        observe(start, end);
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
    observe_pages(address, length);
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
// sleep until the monitor reads one). Every other mmap goes to the kernel after one flag test;
// when it made memory inside registered granules, the handler hears of it afterwards
// (CMEMHOOKS_MMAP_NEW) and remembers the mapping's class from this call, so that the cache miss
// that registers a buffer there need not ask the kernel what is mapped.
static void *map(void *address, size_t length, int prot, int flags, int fd, off_t offset) {
    if ((flags & MAP_FIXED) && !(flags & MAP_FIXED_NOREPLACE)) observe_pages(address, length);
    cmemhooks_handler handler = atomic_load_explicit(&installed_handler, memory_order_acquire);
    cmemhooks_call call = {.kind = CMEMHOOKS_MMAP_FIXED, .address = address, .length = length, .prot = prot,
                           .flags = flags, .fd = fd, .offset = (long)offset, .pkey = -1};
    if ((flags & MAP_FIXED) && handler && handler_depth == 0 &&
        page_range(address, length, &call.start, &call.end) &&
        (call.slots = cmemhooks_touching(call.start, call.end)) != 0) {
        return (void *)through_handler(handler, &call);
    }
    cmemhooks_perform(&call);
    if (call.result == -1) {
        errno = call.error;
        return MAP_FAILED;
    }
    // While a monitor runs, the memory it made is recorded when private anonymous (MAP_FIXED too:
    // the old mapping there is gone), whether or not it lies in registered granules; any other
    // kind takes away the records of what was there (a raw munmap nobody saw left them).
    if (handler && page_range((void *)call.result, length, &call.start, &call.end)) {
        if ((flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_PRIVATE && !(flags & MAP_HUGETLB)) {
            cmemhooks_known_mapping_add(call.start, call.end);
        } else {
            cmemhooks_known_mappings_forget(call.start, call.end);
        }
    }
    if (!(flags & MAP_FIXED) && handler && handler_depth == 0 &&
        page_range((void *)call.result, length, &call.start, &call.end) &&
        (call.slots = cmemhooks_touching(call.start, call.end)) != 0) {
        call.kind = CMEMHOOKS_MMAP_NEW;
        through_handler(handler, &call);  // performed already: the handler only takes note
    }
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
    // A protection key other than the default one may deny writes (or all access) in any
    // thread, now or after a later PKRU change no hook sees: taken as a loss of write access, or
    // of all access when this thread's rights for the key deny it.
    if (pkey > 0 && loss == 0) {
        int rights = pkey_get(pkey);
        loss = rights != -1 && (rights & PKEY_DISABLE_ACCESS) ? CMEMHOOKS_LOSES_ALL : CMEMHOOKS_LOSES_WRITE;
    }
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
    if (at && (flags & SHM_REMAP) && atomic_load_explicit(&unmap_observer, memory_order_relaxed) &&
        syscall(SYS_shmctl, shmid, IPC_STAT, &segment) == 0)
        observe_pages((void *)at, segment.shm_segsz);
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
    int observed = atomic_load_explicit(&unmap_observer, memory_order_relaxed) != NULL && observer_depth == 0;
    if (((handler && handler_depth == 0 && cmemhooks_active_slots() != 0) || observed) &&
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
        observe(call.start, call.end);
        if (handler && handler_depth == 0 && (call.slots = cmemhooks_touching(call.start, call.end)) != 0) {
            return (int)through_handler(handler, &call);
        }
    }
    cmemhooks_perform(&call);
    errno = call.result == -1 ? call.error : saved;
    return (int)call.result;
}

// mremap: the old range moves away (or shrinks), and with MREMAP_FIXED the new range replaces
// whatever was mapped there. Both are handled like munmap: invalidated, taken out of userfaultfd
// in this thread (so the kernel queues no REMAP event and the caller never sleeps for the
// monitor) and the pieces forgotten. Taking the watched parts out also merges the mapping back
// into one VMA: userfaultfd registration splits a mapping, and mremap refuses a range over more
// than one VMA (EFAULT), so a program's mremap of a partly watched mapping behaves as unwatched.
void *mremap(void *old_address, size_t old_size, size_t new_size, int flags, ...) {
    void *new_address = NULL;
    if (flags & MREMAP_FIXED) {
        va_list arguments;
        va_start(arguments, flags);
        new_address = va_arg(arguments, void *);
        va_end(arguments);
    }
    // What goes away: the old range when it moves, its tail when it shrinks, and a fixed target.
    if (atomic_load_explicit(&unmap_observer, memory_order_relaxed)) {
        if ((flags & (MREMAP_MAYMOVE | MREMAP_FIXED)) || new_size < old_size) observe_pages(old_address, old_size);
        if (flags & MREMAP_FIXED) observe_pages(new_address, new_size);
    }
    cmemhooks_handler handler = atomic_load_explicit(&installed_handler, memory_order_acquire);
    cmemhooks_call call = {.kind = CMEMHOOKS_MREMAP, .address = old_address, .length = old_size,
                           .new_length = new_size, .flags = flags, .new_start = (uintptr_t)new_address,
                           .pkey = -1, .pidfd = -1};
    if (handler && handler_depth == 0 && cmemhooks_active_slots() != 0) {
        uintptr_t start = 0, end = 0, new_start = 0, new_end = 0;
        if (page_range(old_address, old_size, &start, &end)) {
            call.start = start;
            call.end = end;
            call.slots = cmemhooks_touching(start, end);
        }
        if ((flags & MREMAP_FIXED) && page_range(new_address, new_size, &new_start, &new_end)) {
            uint32_t replaced = cmemhooks_touching(new_start, new_end);
            if (replaced) {
                call.slots |= replaced;
                if (call.start == call.end) {  // a duplicated shared mapping: only the target matters
                    call.start = new_start;
                    call.end = new_end;
                }
            }
        }
        call.new_start = (uintptr_t)new_address;
        call.new_end = (flags & MREMAP_FIXED) ? new_end : call.new_start;
        if (call.slots != 0 && call.start < call.end) return (void *)through_handler(handler, &call);
    }
    cmemhooks_perform(&call);
    if (call.result == -1) errno = call.error;
    return (void *)call.result;
}

// brk() and sbrk() that lower the program break unmap the heap's pages above the new break: a
// shrink of watched memory is handled like munmap (invalidated and taken out of userfaultfd in
// this thread), so that once it returns the change has reached every cache, as libfabric's
// memhooks make it (fi_mr_cache_evict's sbrk and brk tests register again at once, and time it).
// Growing the break makes new memory only. glibc's malloc moves the break through its internal
// __brk, which no hook sees: its trims are userfaultfd events.
int brk(void *address) {
    cmemhooks_handler handler = atomic_load_explicit(&installed_handler, memory_order_acquire);
    cmemhooks_call call = {.kind = CMEMHOOKS_BRK, .address = address, .pkey = -1, .pidfd = -1};
    if (atomic_load_explicit(&unmap_observer, memory_order_relaxed)) {
        uintptr_t mask = page_mask(), now = (uintptr_t)(&__curbrk && __curbrk ? __curbrk : set_break(NULL));
        if ((uintptr_t)address < now) observe(((uintptr_t)address + mask) & ~mask, (now + mask) & ~mask);
    }
    if (handler && handler_depth == 0 && cmemhooks_active_slots() != 0) {
        uintptr_t mask = page_mask(), now = (uintptr_t)(&__curbrk && __curbrk ? __curbrk : set_break(NULL));
        uintptr_t start = ((uintptr_t)address + mask) & ~mask, end = (now + mask) & ~mask;
        if ((uintptr_t)address < now && start < end && (call.slots = cmemhooks_touching(start, end)) != 0) {
            call.start = start;
            call.end = end;
            return (int)through_handler(handler, &call);
        }
    }
    cmemhooks_perform(&call);
    if (call.result == -1) errno = call.error;
    return (int)call.result;
}

// glibc's sbrk over the brk above: the old break, or (void *)-1 with errno set.
void *sbrk(intptr_t increment) {
    void *old = &__curbrk && __curbrk ? __curbrk : set_break(NULL);
    if (increment == 0) return old;
    uintptr_t target;
    if (increment > 0 ? __builtin_add_overflow((uintptr_t)old, (uintptr_t)increment, &target)
                      : (uintptr_t)old < (uintptr_t)-increment) {
        errno = ENOMEM;
        return (void *)-1;
    }
    if (increment < 0) target = (uintptr_t)old - (uintptr_t)-increment;
    if (brk((void *)target) != 0) return (void *)-1;
    return old;
}

int cmemhooks_advice_replaces_pages(int advice) {
    switch (advice) {
    case MADV_NORMAL: case MADV_RANDOM: case MADV_SEQUENTIAL: case MADV_WILLNEED:
    case MADV_DONTFORK: case MADV_DOFORK:           // what a child inherits
    case MADV_MERGEABLE: case MADV_UNMERGEABLE:     // KSM never merges a pinned page
    case MADV_HUGEPAGE: case MADV_NOHUGEPAGE:
    case MADV_DONTDUMP: case MADV_DODUMP:
    case 18: case 19:                               // MADV_WIPEONFORK, MADV_KEEPONFORK: the child's
    case 20: case 21:                               // MADV_COLD, MADV_PAGEOUT: reclaim skips pinned pages
    case 22: case 23:                               // MADV_POPULATE_READ/WRITE: fault in what is missing
    case 25:                                        // MADV_COLLAPSE: skips pinned pages
    case 103:                                       // MADV_GUARD_REMOVE: the install zapped already
        return 0;
    default:  // DONTNEED(_LOCKED), FREE, REMOVE, GUARD_INSTALL, HWPOISON, SOFT_OFFLINE, unknown
        return 1;
    }
}

// madvise and process_madvise of this process with advice that may replace pages. DONTNEED and
// REMOVE are userfaultfd events, but the caller then sleeps until the monitor reads them;
// MADV_GUARD_INSTALL (Linux 6.13) zaps the pages with no event at all, and the next touch maps
// new zero pages under a cached region. Invalidated around the call, and once more after it for
// a watch that raced the first check (as mprotect).
static long advise(cmemhooks_call *call) {
    if (atomic_load_explicit(&unmap_observer, memory_order_relaxed) && cmemhooks_advice_replaces_pages(call->advice))
        observe(call->start, call->end);
    cmemhooks_handler handler = atomic_load_explicit(&installed_handler, memory_order_acquire);
    if (!handler || handler_depth != 0 || call->start >= call->end ||
        !cmemhooks_advice_replaces_pages(call->advice) || cmemhooks_active_slots() == 0) {
        cmemhooks_perform(call);
    } else if ((call->slots = cmemhooks_touching(call->start, call->end)) != 0) {
        return (long)through_handler(handler, call);
    } else {
        cmemhooks_perform(call);
        if (call->result != -1 && (call->slots = cmemhooks_touching(call->start, call->end)) != 0) {
            return (long)through_handler(handler, call);
        }
    }
    if (call->result == -1) errno = call->error;
    return (long)call->result;
}

int madvise(void *address, size_t length, int advice) {
    cmemhooks_call call = {.kind = CMEMHOOKS_MADVISE, .address = address, .length = length, .advice = advice,
                           .pkey = -1, .pidfd = -1};
    if (!covering_pages(address, length, &call.start, &call.end)) call.start = call.end = 0;
    return (int)advise(&call);
}

// 1 when `pidfd` refers to this process (its /proc fdinfo names our pid). Allocation-free.
static int pidfd_is_self(int pidfd) {
    char path[64] = "/proc/self/fdinfo/";
    char digits[16];
    int n = 0;
    unsigned value = (unsigned)pidfd;
    do { digits[n++] = (char)('0' + value % 10); value /= 10; } while (value && n < 15);
    size_t at = strlen(path);
    while (n > 0) path[at++] = digits[--n];
    path[at] = 0;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 1;  // cannot tell: assume it is us (an extra invalidation is harmless)
    char text[1024];
    ssize_t got = syscall(SYS_read, fd, text, sizeof text - 1);
    syscall(SYS_close, fd);
    if (got <= 0) return 1;
    text[got] = 0;
    const char *line = strstr(text, "\nPid:");
    if (!line) return 1;
    long pid = strtol(line + 5, NULL, 10);
    return pid == (long)getpid();
}

ssize_t process_madvise(int pidfd, const struct iovec *iovec, size_t count, int advice, unsigned int flags) {
    cmemhooks_call call = {.kind = CMEMHOOKS_MADVISE, .advice = advice, .pkey = -1, .pidfd = pidfd,
                           .iovec = iovec, .iovec_count = count, .flags = (int)flags};
    // The range handed to the handler covers every vector (an over-wide invalidation is safe).
    uintptr_t low = UINTPTR_MAX, high = 0;
    if (((atomic_load_explicit(&installed_handler, memory_order_acquire) && cmemhooks_active_slots() != 0) ||
         atomic_load_explicit(&unmap_observer, memory_order_relaxed)) &&
        cmemhooks_advice_replaces_pages(advice) && iovec && count <= 1024 && pidfd_is_self(pidfd)) {
        for (size_t i = 0; i < count; i++) {
            uintptr_t s, e;
            if (!covering_pages(iovec[i].iov_base, iovec[i].iov_len, &s, &e)) continue;
            if (s < low) low = s;
            if (e > high) high = e;
        }
    }
    if (low < high) {
        call.start = low;
        call.end = high;
    }
    return (ssize_t)advise(&call);
}
