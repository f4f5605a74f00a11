#define _GNU_SOURCE
/*
 * The C half of RDMAMemory's UCX memory event source: UCM's functions found at run time, the
 * symbols it interposes, the import and the preload constructor. rdmamemory_ucx.h says what
 * the adapter does for UCX; this file says how each guarantee holds.
 *
 * Why these symbols:
 * - ucm_set_event_handler: every UCX registration cache asks UCM for VM_UNMAPPED events through
 *   it when it is created (ucs_rcache_create). Preloaded, the import runs on the first such call
 *   (so it is never late, however UCX was loaded), and declares the event external before UCM
 *   sees the handler: UCM then installs no hooks of its own for it.
 * - ibv_reg_mr, ibv_reg_mr_iova, ibv_reg_mr_iova2, ibv_dereg_mr: UCX never says what it caches;
 *   its IB transports (libuct_ib) register every cached region through these (rdma-core's
 *   ibv_reg_mr macro resolves to ibv_reg_mr or ibv_reg_mr_iova2 depending on the access flags).
 *   Calls from UCX's libraries are served, every other caller's go straight through.
 * - ucs_rcache_get: UCX's lookup (UCT's IB cache, and UCP's up to 1.16). A raw munmap returns
 *   once the monitor has read its userfaultfd event, and the monitor opens a window before it
 *   reads; the invalidation that reports the range to UCM runs before the window closes. A
 *   lookup waits while a window is open, so a lookup that starts after the munmap returned, in
 *   any thread, sees the report (UCM queues it, and the lookup applies the queue first).
 *   What remains: UCX 1.17+ UCP looks up its cache inline (ucs_rcache_lookup_unsafe, a header
 *   function), which nothing can interpose; there a region changed by a raw system call is seen
 *   once the monitor has delivered the event (microseconds after the munmap returned), not
 *   before. Changes made through the C library are reported before the call, in any version.
 */
#include "ucx_bridge.h"
#include "memory_hooks.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <infiniband/verbs.h>
/* rdma-core's macros over the functions: the functions themselves are what is defined here */
#undef ibv_reg_mr
#undef ibv_reg_mr_iova

/* UCM's ABI (ucm/api/ucm.h, the same from 1.9 to 1.22): ucs_status_t is a packed enum. */
typedef int8_t ucs_status;
#define UCS_OK_STATUS 0
#define UCS_ERR_UNSUPPORTED_STATUS (-22)
#define UCM_EVENT_VM_UNMAPPED_BIT (1 << 17)
typedef void (*ucm_callback)(int event_type, void *event, void *arg);

/* The Swift half (@_cdecl in RDMAMemoryUCX/EntryPoints.swift). */
extern int rdmamemory_ucx_swift_start(void);
extern int rdmamemory_ucx_swift_watch(uintptr_t start, size_t length);
extern void rdmamemory_ucx_swift_unwatch_later(uintptr_t start, size_t length);
extern void rdmamemory_ucx_swift_registered(const void *mr, uintptr_t start, size_t length);
extern void rdmamemory_ucx_swift_deregistering(const void *mr);
extern void rdmamemory_ucx_swift_wait_window(uint64_t sequence);

/* ---------------------------------------------------------------- UCX's libraries */

/*
 * A loaded library whose file name starts with `prefix` ("libucm.so"), without loading one:
 * by its usual name first, then by walking what is loaded (a wheel's or a private prefix's
 * copy). The handle is kept for good, as UCM itself keeps its library loaded.
 */
struct library_search {
    const char *prefix;
    char path[4096];
};

static int find_loaded(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct library_search *search = data;
    const char *name = info->dlpi_name, *base = name ? strrchr(name, '/') : NULL;
    base = base ? base + 1 : name;
    if (!base || strncmp(base, search->prefix, strlen(search->prefix)) != 0) return 0;
    snprintf(search->path, sizeof search->path, "%s", name);
    return 1;
}

static void *loaded_library(const char *soname, const char *prefix) {
    void *handle = dlopen(soname, RTLD_NOW | RTLD_NOLOAD);
    if (handle) return handle;
    struct library_search search = {.prefix = prefix};
    if (dl_iterate_phdr(find_loaded, &search) == 1) return dlopen(search.path, RTLD_NOW | RTLD_NOLOAD);
    return NULL;
}

struct ucm_functions {
    ucs_status (*set_event_handler)(int events, int priority, ucm_callback callback, void *arg);
    void (*set_external_event)(int events);
    void (*vm_munmap)(void *address, size_t length);
};

static pthread_mutex_t resolve_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ucm_functions ucm;
static _Atomic bool ucm_resolved;

/* Fills `ucm` from the loaded libucm; false when there is none (or it lacks a function). */
static bool resolve_ucm(void) {
    if (atomic_load_explicit(&ucm_resolved, memory_order_acquire)) return true;
    pthread_mutex_lock(&resolve_lock);
    if (!atomic_load_explicit(&ucm_resolved, memory_order_relaxed)) {
        void *library = loaded_library("libucm.so.0", "libucm.so");
        if (library) {
            ucm.set_event_handler = (ucs_status(*)(int, int, ucm_callback, void *))dlsym(library, "ucm_set_event_handler");
            ucm.set_external_event = (void (*)(int))dlsym(library, "ucm_set_external_event");
            ucm.vm_munmap = (void (*)(void *, size_t))dlsym(library, "ucm_vm_munmap");
            if (ucm.set_event_handler && ucm.set_external_event && ucm.vm_munmap)
                atomic_store_explicit(&ucm_resolved, true, memory_order_release);
        }
    }
    pthread_mutex_unlock(&resolve_lock);
    return atomic_load_explicit(&ucm_resolved, memory_order_acquire);
}

/* ---------------------------------------------------------------- reports to UCM */

static _Atomic uint64_t reported, registrations, watched, uncached, raced, waits;
/* Engine invalidations so far: a registration that saw it move may have pinned old pages. */
static _Atomic uint64_t invalidations;
/* Imported: UCX's VM_UNMAPPED events are ours to make. */
static _Atomic bool serving;

/*
 * Process exit: libucm may be unloaded by then (a library dlopened after this one is finalized
 * before it), so the reports close at exit() (an atexit handler, registered at the import, runs
 * before any library's destructor) and wait, bounded, for the reports in flight. A report after
 * that is dropped: the process is ending, nobody will look anything up again.
 */
static _Atomic bool exiting;
static _Atomic int reports_in_flight;

static void close_reports_at_exit(void) {
    atomic_store_explicit(&exiting, true, memory_order_seq_cst);
    for (int spins = 0; atomic_load_explicit(&reports_in_flight, memory_order_seq_cst) != 0 && spins < 100000; spins++)
        sched_yield();
}

/* Tells UCM that [start, start + length) is unmapped: its caches drop what overlaps. */
static void report(uintptr_t start, size_t length) {
    if (length == 0) return;
    atomic_fetch_add_explicit(&reports_in_flight, 1, memory_order_seq_cst);
    if (!atomic_load_explicit(&exiting, memory_order_seq_cst)) {
        ucm.vm_munmap((void *)start, length);
        atomic_fetch_add_explicit(&reported, 1, memory_order_relaxed);
    }
    atomic_fetch_sub_explicit(&reports_in_flight, 1, memory_order_seq_cst);
}

/* The hooks' unmap observer: a C-library call is about to take [start, start + length) away. */
static void report_unmap(uintptr_t start, size_t length) {
    if (atomic_load_explicit(&serving, memory_order_acquire)) report(start, length);
}

void rdmamemory_ucx_invalidated(uintptr_t start, size_t length) {
    atomic_fetch_add_explicit(&invalidations, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&serving, memory_order_acquire)) report(start, length);
}

static _Atomic(const _Atomic uint64_t *) window;

void rdmamemory_ucx_set_window(const void *sequence) {
    atomic_store_explicit(&window, (const _Atomic uint64_t *)sequence, memory_order_release);
}

/* The engine's window sequence now (0 before the engine started: no window). */
static inline uint64_t window_sequence(void) {
    const _Atomic uint64_t *sequence = atomic_load_explicit(&window, memory_order_acquire);
    return sequence ? atomic_load_explicit(sequence, memory_order_seq_cst) : 0;
}

/* ---------------------------------------------------------------- the import */

static pthread_mutex_t import_lock = PTHREAD_MUTEX_INITIALIZER;
static bool imported;
static char import_error[512];
/* Handlers UCX asked UCM for VM_UNMAPPED before the import: each is a cache fed otherwise. */
static _Atomic int handlers_before_import;
/* Preloaded with RDMAMEMORY_UCX_EVENTS=1: import at the first sign of UCX. */
static _Atomic bool armed;

int rdmamemory_ucx_import(void) {
    pthread_mutex_lock(&import_lock);
    int ret = 0;
    if (imported) goto out;
    import_error[0] = '\0';
    if (!resolve_ucm()) {
        snprintf(import_error, sizeof import_error,
                 "UCX's libucm is not loaded in this process (or lacks ucm_set_external_event/ucm_vm_munmap)");
        ret = -ENOENT;
        goto out;
    }
    int before = atomic_load_explicit(&handlers_before_import, memory_order_acquire);
    if (before > 0) {
        snprintf(import_error, sizeof import_error,
                 "too late: UCX created %d registration cache%s before the import (ucp_init ran first), and UCM "
                 "feeds %s from its own hooks; import before ucp_init(), or run the program under "
                 "scripts/with-rdmamemory", before, before == 1 ? "" : "s", before == 1 ? "it" : "them");
        ret = -EBUSY;
        goto out;
    }
    ucm.set_external_event(UCM_EVENT_VM_UNMAPPED_BIT);
    atexit(close_reports_at_exit);
    atomic_store_explicit(&serving, true, memory_order_release);
    cmemhooks_set_unmap_observer(report_unmap);
    imported = true;
out:
    pthread_mutex_unlock(&import_lock);
    return ret;
}

const char *rdmamemory_ucx_error(void) { return import_error; }

/* The preloaded import, said once on stderr (each rank of an MPI job says it once). */
static void import_preloaded(void) {
    static _Atomic bool said;
    int ret = rdmamemory_ucx_import();
    if (atomic_exchange_explicit(&said, true, memory_order_relaxed)) return;
    if (ret == 0)
        fprintf(stderr, "rdmamemory: UCX's memory events come from RDMAMemory (pid %d)\n", (int)getpid());
    else
        fprintf(stderr, "rdmamemory: UCX's memory events NOT from RDMAMemory (pid %d): %s\n", (int)getpid(),
                import_error);
}

/*
 * Preloaded (scripts/with-rdmamemory sets RDMAMEMORY_UCX_EVENTS=1 and LD_PRELOAD): armed before
 * main(). A program linked with UCX has libucm loaded already and is imported at once; one that
 * loads UCX later (Open MPI's pml ucx, by dlopen) is imported when UCX creates its first cache.
 */
__attribute__((constructor)) static void arm_when_preloaded(void) {
    const char *wanted = secure_getenv("RDMAMEMORY_UCX_EVENTS");
    if (!wanted || strcmp(wanted, "1") != 0) return;
    if (cmemhooks_shadowed()) {
        fprintf(stderr, "rdmamemory: UCX's memory events not taken over (pid %d): the program links RDMAMemory "
                        "itself, and a second copy (this preloaded library) would run a second monitor; call "
                        "rdmamemory_ucx_import() from the program instead of preloading\n", (int)getpid());
        return;
    }
    atomic_store_explicit(&armed, true, memory_order_release);
    if (resolve_ucm()) import_preloaded();
}

/* ---------------------------------------------------------------- interposed: UCM */

ucs_status ucm_set_event_handler(int events, int priority, ucm_callback callback, void *arg) {
    if (events & UCM_EVENT_VM_UNMAPPED_BIT) {
        if (atomic_load_explicit(&armed, memory_order_acquire)) import_preloaded();
        else if (!atomic_load_explicit(&serving, memory_order_acquire))
            atomic_fetch_add_explicit(&handlers_before_import, 1, memory_order_acq_rel);
    }
    if (!resolve_ucm()) return UCS_ERR_UNSUPPORTED_STATUS;
    return ucm.set_event_handler(events, priority, callback, arg);
}

/* ---------------------------------------------------------------- interposed: verbs */

struct verbs_functions {
    struct ibv_mr *(*reg_mr)(struct ibv_pd *, void *, size_t, int);
    struct ibv_mr *(*reg_mr_iova)(struct ibv_pd *, void *, size_t, uint64_t, int);
    struct ibv_mr *(*reg_mr_iova2)(struct ibv_pd *, void *, size_t, uint64_t, unsigned int);
    int (*dereg_mr)(struct ibv_mr *);
};

static struct verbs_functions verbs;
static pthread_once_t verbs_once = PTHREAD_ONCE_INIT;

/* libibverbs is this library's own dependency: the next definition in lookup order is it. */
static void resolve_verbs(void) {
    verbs.reg_mr = (struct ibv_mr * (*)(struct ibv_pd *, void *, size_t, int)) dlsym(RTLD_NEXT, "ibv_reg_mr");
    verbs.reg_mr_iova = (struct ibv_mr * (*)(struct ibv_pd *, void *, size_t, uint64_t, int))
        dlsym(RTLD_NEXT, "ibv_reg_mr_iova");
    verbs.reg_mr_iova2 = (struct ibv_mr * (*)(struct ibv_pd *, void *, size_t, uint64_t, unsigned int))
        dlsym(RTLD_NEXT, "ibv_reg_mr_iova2");
    verbs.dereg_mr = (int (*)(struct ibv_mr *))dlsym(RTLD_NEXT, "ibv_dereg_mr");
}

static const struct verbs_functions *real_verbs(void) {
    pthread_once(&verbs_once, resolve_verbs);
    return &verbs;
}

/* Whether the call came from one of UCX's transport libraries (libuct*.so). */
static bool called_by_ucx(const void *caller) {
    Dl_info info;
    if (!atomic_load_explicit(&serving, memory_order_acquire) || !dladdr(caller, &info) || !info.dli_fname)
        return false;
    const char *base = strrchr(info.dli_fname, '/');
    base = base ? base + 1 : info.dli_fname;
    return strncmp(base, "libuct", 6) == 0;
}

/*
 * A UCX registration, in the order the cache's miss uses (DESIGN.md): note the invalidation
 * count, watch the range, register, then look again. A change between the watch and the
 * registration may have left the registration on old pages, or the range unwatched (an unmap
 * takes the watch with it): any invalidation since, or a window still open, reports the range at
 * once, so UCX uses the region for this one operation and registers again at its next lookup.
 * A range that cannot be watched (shared or file memory, no userfaultfd) is reported at once
 * for the same reason.
 */
struct ticket {
    uint64_t invalidations;
    bool watched;
};

/* The engine and monitor start with UCX's first registration (not in a constructor). */
static void start_engine(void) { (void)rdmamemory_ucx_swift_start(); }

static struct ticket before_registration(void *address, size_t length) {
    static pthread_once_t started = PTHREAD_ONCE_INIT;
    pthread_once(&started, start_engine);
    struct ticket ticket = {.invalidations = atomic_load_explicit(&invalidations, memory_order_seq_cst)};
    ticket.watched = rdmamemory_ucx_swift_watch((uintptr_t)address, length) == 1;
    return ticket;
}

static void after_registration(struct ibv_mr *mr, void *address, size_t length, struct ticket ticket) {
    if (!mr) {
        if (ticket.watched) rdmamemory_ucx_swift_unwatch_later((uintptr_t)address, length);
        return;
    }
    atomic_fetch_add_explicit(&registrations, 1, memory_order_relaxed);
    if (!ticket.watched) {
        atomic_fetch_add_explicit(&uncached, 1, memory_order_relaxed);
        report((uintptr_t)address, length);
        return;
    }
    rdmamemory_ucx_swift_registered(mr, (uintptr_t)address, length);
    atomic_fetch_add_explicit(&watched, 1, memory_order_relaxed);
    if (atomic_load_explicit(&invalidations, memory_order_seq_cst) != ticket.invalidations || (window_sequence() & 1)) {
        atomic_fetch_add_explicit(&raced, 1, memory_order_relaxed);
        report((uintptr_t)address, length);
    }
}

struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *address, size_t length, int access) {
    const struct verbs_functions *real = real_verbs();
    if (!called_by_ucx(__builtin_return_address(0))) return real->reg_mr(pd, address, length, access);
    struct ticket ticket = before_registration(address, length);
    struct ibv_mr *mr = real->reg_mr(pd, address, length, access);
    after_registration(mr, address, length, ticket);
    return mr;
}

struct ibv_mr *ibv_reg_mr_iova(struct ibv_pd *pd, void *address, size_t length, uint64_t iova, int access) {
    const struct verbs_functions *real = real_verbs();
    if (!called_by_ucx(__builtin_return_address(0))) return real->reg_mr_iova(pd, address, length, iova, access);
    struct ticket ticket = before_registration(address, length);
    struct ibv_mr *mr = real->reg_mr_iova(pd, address, length, iova, access);
    after_registration(mr, address, length, ticket);
    return mr;
}

struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *address, size_t length, uint64_t iova, unsigned int access) {
    const struct verbs_functions *real = real_verbs();
    if (!called_by_ucx(__builtin_return_address(0))) return real->reg_mr_iova2(pd, address, length, iova, access);
    struct ticket ticket = before_registration(address, length);
    struct ibv_mr *mr = real->reg_mr_iova2(pd, address, length, iova, access);
    after_registration(mr, address, length, ticket);
    return mr;
}

int ibv_dereg_mr(struct ibv_mr *mr) {
    const struct verbs_functions *real = real_verbs();
    if (mr && called_by_ucx(__builtin_return_address(0))) rdmamemory_ucx_swift_deregistering(mr);
    return real->dereg_mr(mr);
}

/* ---------------------------------------------------------------- interposed: UCX's lookup */

/*
 * ucs_rcache_get(rcache, address, length, [alignment,] prot, arg, region_p): 1.17 added the
 * alignment, so the definition here takes the longer list and passes all of it on. For a
 * 6-argument caller (1.13-1.16) the seventh is whatever the caller's stack holds there
 * (x86-64: the slot above the return address, always mapped; aarch64: a register), and the
 * 6-argument callee never reads it: the call is the same at the machine level.
 */
typedef ucs_status (*rcache_get_function)(void *, void *, size_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t);
static _Atomic(rcache_get_function) rcache_get;

ucs_status ucs_rcache_get(void *rcache, void *address, size_t length, uintptr_t a4, uintptr_t a5, uintptr_t a6,
                          uintptr_t a7) {
    rcache_get_function real = atomic_load_explicit(&rcache_get, memory_order_acquire);
    if (!real) {
        void *library = loaded_library("libucs.so.0", "libucs.so");
        real = library ? (rcache_get_function)dlsym(library, "ucs_rcache_get") : NULL;
        if (!real) return UCS_ERR_UNSUPPORTED_STATUS;
        atomic_store_explicit(&rcache_get, real, memory_order_release);
    }
    uint64_t sequence = window_sequence();
    if ((sequence & 1) && atomic_load_explicit(&serving, memory_order_acquire)) {
        atomic_fetch_add_explicit(&waits, 1, memory_order_relaxed);
        rdmamemory_ucx_swift_wait_window(sequence);
    }
    return real(rcache, address, length, a4, a5, a6, a7);
}

/* ---------------------------------------------------------------- counters */

void rdmamemory_ucx_get_statistics(struct rdmamemory_ucx_statistics *out) {
    if (!out) return;
    out->reported = atomic_load_explicit(&reported, memory_order_relaxed);
    out->registrations = atomic_load_explicit(&registrations, memory_order_relaxed);
    out->watched = atomic_load_explicit(&watched, memory_order_relaxed);
    out->uncached = atomic_load_explicit(&uncached, memory_order_relaxed);
    out->raced = atomic_load_explicit(&raced, memory_order_relaxed);
    out->waits = atomic_load_explicit(&waits, memory_order_relaxed);
}
