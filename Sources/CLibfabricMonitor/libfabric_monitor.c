#define _GNU_SOURCE
/*
 * The C half of RDMAMemory's libfabric memory monitor: the struct fid_mem_monitor libfabric
 * holds, the import, and the constructor that imports it when the library is preloaded.
 *
 * Why C: libfabric's interface is a struct of function pointers at a fixed address, imported
 * through static inline functions of <rdma/fi_ext.h>, and an unmodified program can only be
 * reached by a constructor that runs before its main(). Each operation forwards to the Swift
 * half (RDMAMemoryLibfabric), which owns the state; Swift runs only from the first domain on.
 */
#include "libfabric_bridge.h"
#include "memory_hooks.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_ext.h>

/* The Swift half (@_cdecl in RDMAMemoryLibfabric/EntryPoints.swift). */
extern int rdmamemory_lf_swift_start(void);
extern void rdmamemory_lf_swift_stop(void);
extern int rdmamemory_lf_swift_subscribe(uintptr_t addr, size_t len);
extern void rdmamemory_lf_swift_unsubscribe(uintptr_t addr, size_t len);
extern bool rdmamemory_lf_swift_valid(const void *swift_monitor, uintptr_t addr, size_t len);
extern int rdmamemory_lf_swift_invalidate(uintptr_t addr, size_t len);
extern void rdmamemory_lf_swift_statistics(struct rdmamemory_libfabric_statistics *out);

static int monitor_start(struct fid_mem_monitor *monitor) {
    (void)monitor;
    return rdmamemory_lf_swift_start();
}

static void monitor_stop(struct fid_mem_monitor *monitor) {
    (void)monitor;
    rdmamemory_lf_swift_stop();
}

static int monitor_subscribe(struct fid_mem_monitor *monitor, const void *addr, size_t len) {
    (void)monitor;
    return rdmamemory_lf_swift_subscribe((uintptr_t)addr, len);
}

static void monitor_unsubscribe(struct fid_mem_monitor *monitor, const void *addr, size_t len) {
    (void)monitor;
    rdmamemory_lf_swift_unsubscribe((uintptr_t)addr, len);
}

/*
 * The memo of ranges valid confirmed. A slot says "range R was current at epoch E", under a
 * sequence lock (version odd while it is written). The epoch counts every invalidation of a
 * subscribed range, bumped before that invalidation sets the subscription's sequence, and every
 * range that leaves. So while no monitor window is open (a window covers changes the kernel
 * already let return but the monitor has not delivered yet) and the epoch is still E, nothing
 * can have touched R: libfabric's hit is a few loads here, with no call into Swift, no lock, no
 * hash and no write to a cache line another thread writes.
 */
#define MEMO_SLOTS 64

struct memo_slot {
    _Atomic uint64_t version;
    _Atomic uintptr_t start;
    _Atomic size_t length;
    _Atomic uint64_t epoch;
};

struct memo {
    /* The address space's window sequence: 64 bits, odd while a window is open. */
    const _Atomic uint64_t *window;
    _Atomic uint64_t epoch;
    /* Hits answered here. libfabric calls valid under its mm_lock, one caller at a time: a
     * relaxed load and store, no read-modify-write. */
    _Atomic uint64_t hits;
    struct memo_slot slots[MEMO_SLOTS];
};

size_t rdmamemory_lf_memo_size(void) { return sizeof(struct memo); }

void rdmamemory_lf_memo_init(void *raw, const void *window) {
    struct memo *memo = raw;
    memo->window = window;
    atomic_init(&memo->epoch, 0);
    atomic_init(&memo->hits, 0);
    for (int i = 0; i < MEMO_SLOTS; i++) {
        atomic_init(&memo->slots[i].version, 0);
        atomic_init(&memo->slots[i].start, 0);
        atomic_init(&memo->slots[i].length, 0);
        atomic_init(&memo->slots[i].epoch, UINT64_MAX);  /* never an epoch: confirms nothing */
    }
}

static inline struct memo_slot *memo_slot(struct memo *memo, uintptr_t start) {
    return &memo->slots[((start >> 6) ^ (start >> 16)) & (MEMO_SLOTS - 1)];
}

uint64_t rdmamemory_lf_memo_epoch(void *raw) {
    return atomic_load_explicit(&((struct memo *)raw)->epoch, memory_order_acquire);
}

void rdmamemory_lf_memo_forget_all(void *raw) {
    atomic_fetch_add_explicit(&((struct memo *)raw)->epoch, 1, memory_order_seq_cst);
}

uint64_t rdmamemory_lf_memo_hits(void *raw) {
    return atomic_load_explicit(&((struct memo *)raw)->hits, memory_order_relaxed);
}

static inline bool memo_confirms(struct memo *memo, uintptr_t start, size_t length) {
    if (atomic_load_explicit(memo->window, memory_order_acquire) & 1) return false;
    uint64_t epoch = atomic_load_explicit(&memo->epoch, memory_order_acquire);
    struct memo_slot *slot = memo_slot(memo, start);
    uint64_t before = atomic_load_explicit(&slot->version, memory_order_acquire);
    if (before & 1) return false;
    uintptr_t s = atomic_load_explicit(&slot->start, memory_order_relaxed);
    size_t l = atomic_load_explicit(&slot->length, memory_order_relaxed);
    uint64_t e = atomic_load_explicit(&slot->epoch, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&slot->version, memory_order_relaxed) == before && s == start && l == length &&
           e == epoch;
}

bool rdmamemory_lf_memo_confirms(void *raw, uintptr_t start, size_t length) { return memo_confirms(raw, start, length); }

void rdmamemory_lf_memo_record(void *raw, uintptr_t start, size_t length, uint64_t epoch) {
    struct memo_slot *slot = memo_slot(raw, start);
    uint64_t version = atomic_load_explicit(&slot->version, memory_order_relaxed);
    atomic_store_explicit(&slot->version, version + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&slot->start, start, memory_order_relaxed);
    atomic_store_explicit(&slot->length, length, memory_order_relaxed);
    atomic_store_explicit(&slot->epoch, epoch, memory_order_relaxed);
    atomic_store_explicit(&slot->version, version + 2, memory_order_release);
}

/*
 * The Swift monitor object and its memo, set by start (before libfabric subscribes anything, so
 * before any valid). Only a range the memo cannot vouch for goes to Swift, which checks the
 * record under its lock and refills the slot. Nothing subscribed means nothing to vouch for:
 * false.
 */
static _Atomic(const void *) swift_monitor;
static _Atomic(struct memo *) swift_memo;

void rdmamemory_lf_set_monitor(const void *monitor, void *memo) {
    atomic_store_explicit(&swift_memo, memo, memory_order_release);
    atomic_store_explicit(&swift_monitor, monitor, memory_order_release);
}

static bool monitor_valid(struct fid_mem_monitor *monitor, const void *addr, size_t len) {
    (void)monitor;
    const void *swift = atomic_load_explicit(&swift_monitor, memory_order_acquire);
    if (swift == NULL) return false;
    struct memo *memo = atomic_load_explicit(&swift_memo, memory_order_relaxed);
    if (memo_confirms(memo, (uintptr_t)addr, len)) {
        atomic_store_explicit(&memo->hits, atomic_load_explicit(&memo->hits, memory_order_relaxed) + 1,
                              memory_order_relaxed);
        return true;
    }
    return rdmamemory_lf_swift_valid(swift, (uintptr_t)addr, len);
}

static struct fi_ops_mem_monitor export_ops = {
    .size = sizeof(struct fi_ops_mem_monitor),
    .start = monitor_start,
    .stop = monitor_stop,
    .subscribe = monitor_subscribe,
    .unsubscribe = monitor_unsubscribe,
    .valid = monitor_valid,
};

/* libfabric fills fid.context, fid.ops and import_ops when it imports the monitor. */
static struct fid_mem_monitor monitor = {
    .fid = { .fclass = FI_CLASS_MEM_MONITOR },
    .export_ops = &export_ops,
};

/*
 * The monitor object itself, for Tests/Libfabric/monitor_calls.c, which plays libfabric: it fills
 * import_ops with a notify of its own and calls start and the export ops in libfabric 2.x's
 * patterns, over the process's real engine and monitor. Not in any header: nothing else may
 * call the ops behind libfabric's back.
 */
struct fid_mem_monitor *rdmamemory_lf_monitor_object(void) { return &monitor; }

static pthread_mutex_t import_lock = PTHREAD_MUTEX_INITIALIZER;
static bool imported;
static char import_error[512];

/*
 * Process exit: libfabric is a dependency of this library, so its destructors (which tear its
 * caches and monitors down) run after ours. Ours closes the door to notify and waits, bounded,
 * for the notifies in flight (the worker's, or a hooked munmap's in a thread still running
 * while exit() runs): none reaches libfabric's notify once it may be gone. A notify that comes
 * later is dropped: the process is ending, nobody will use its cache again.
 */
static _Atomic bool exiting;
static _Atomic int notifies_in_flight;

__attribute__((destructor)) static void close_notify_at_exit(void) {
    atomic_store_explicit(&exiting, true, memory_order_seq_cst);
    for (int spins = 0; atomic_load_explicit(&notifies_in_flight, memory_order_seq_cst) != 0 && spins < 100000; spins++)
        sched_yield();
}

void rdmamemory_lf_notify(uintptr_t addr, size_t len) {
    atomic_fetch_add_explicit(&notifies_in_flight, 1, memory_order_seq_cst);
    if (!atomic_load_explicit(&exiting, memory_order_seq_cst)) {
        /* Written by libfabric during the import, which happens before it starts the monitor,
         * and so before any subscription this could be notifying about. */
        struct fi_ops_mem_notify *ops = __atomic_load_n(&monitor.import_ops, __ATOMIC_ACQUIRE);
        if (ops && ops->notify) ops->notify(&monitor, (const void *)addr, len);
    }
    atomic_fetch_sub_explicit(&notifies_in_flight, 1, memory_order_seq_cst);
}

int rdmamemory_libfabric_import(void) {
    pthread_mutex_lock(&import_lock);
    int ret = 0;
    if (imported) goto out;
    import_error[0] = '\0';
    struct fid *cache_fid = NULL;
    ret = fi_open(FI_VERSION(1, 13), "mr_cache", NULL, 0, 0, &cache_fid, NULL);
    if (ret) {
        snprintf(import_error, sizeof import_error,
                 "fi_open(FI_VERSION(1, 13), \"mr_cache\"): %s (libfabric %u.%u has no monitor import; 1.13 or later does)",
                 fi_strerror(-ret), FI_MAJOR(fi_version()), FI_MINOR(fi_version()));
        goto out;
    }
    ret = fi_import_fid(cache_fid, &monitor.fid, 0);
    fi_close(cache_fid);
    if (ret) {
        snprintf(import_error, sizeof import_error, "fi_import_fid(mr_cache, monitor): %s%s", fi_strerror(-ret),
                 ret == -FI_EBUSY ? ": a domain already uses libfabric's own monitor, or another monitor was "
                                    "imported; import before the first fi_domain()" : "");
        goto out;
    }
    imported = true;
out:
    pthread_mutex_unlock(&import_lock);
    return ret < 0 ? ret : -ret;
}

const char *rdmamemory_libfabric_error(void) { return import_error; }

int rdmamemory_invalidate(const void *addr, size_t len) {
    return rdmamemory_lf_swift_invalidate((uintptr_t)addr, len);
}

void rdmamemory_libfabric_get_statistics(struct rdmamemory_libfabric_statistics *out) {
    if (out) rdmamemory_lf_swift_statistics(out);
}

/*
 * Preloaded (scripts/with-rdmamemory sets RDMAMEMORY_LIBFABRIC_IMPORT=1 and LD_PRELOAD): import
 * before main(), so before any domain, and say so once on stderr. Linked normally, the
 * library does nothing until the program calls rdmamemory_libfabric_import().
 */
__attribute__((constructor)) static void import_when_preloaded(void) {
    // secure_getenv: a setuid program's caller must not be able to swap its monitor.
    const char *wanted = secure_getenv("RDMAMEMORY_LIBFABRIC_IMPORT");
    if (!wanted || strcmp(wanted, "1") != 0) return;
    if (cmemhooks_shadowed()) {
        // The program carries RDMAMemory itself: a second engine and monitor here would refuse
        // the first one's memory (EBUSY) and cache nothing, silently. Refuse loudly instead.
        fprintf(stderr, "rdmamemory: libfabric's memory monitor not replaced (pid %d): the program links RDMAMemory "
                        "itself, and a second copy (this preloaded library) would run a second monitor; call "
                        "rdmamemory_libfabric_import() from the program instead of preloading\n", (int)getpid());
        return;
    }
    int ret = rdmamemory_libfabric_import();
    const char *override = secure_getenv("FI_MR_CACHE_MONITOR");
    if (ret == 0)
        fprintf(stderr, "rdmamemory: libfabric's memory monitor is RDMAMemory's (pid %d)%s%s%s\n", (int)getpid(),
                override ? "; but FI_MR_CACHE_MONITOR=" : "", override ? override : "",
                override ? " is set and overrides it" : "");
    else
        fprintf(stderr, "rdmamemory: libfabric's memory monitor not replaced (pid %d): %s\n", (int)getpid(),
                import_error);
}
