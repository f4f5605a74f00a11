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

#include <errno.h>
#include <pthread.h>
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
extern bool rdmamemory_lf_swift_valid(uintptr_t addr, size_t len);
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

static bool monitor_valid(struct fid_mem_monitor *monitor, const void *addr, size_t len) {
    (void)monitor;
    return rdmamemory_lf_swift_valid((uintptr_t)addr, len);
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

static pthread_mutex_t import_lock = PTHREAD_MUTEX_INITIALIZER;
static bool imported;
static char import_error[512];

void rdmamemory_lf_notify(uintptr_t addr, size_t len) {
    /* Written by libfabric during the import, which happens before it starts the monitor,
     * and so before any subscription this could be notifying about. */
    struct fi_ops_mem_notify *ops = __atomic_load_n(&monitor.import_ops, __ATOMIC_ACQUIRE);
    if (ops && ops->notify) ops->notify(&monitor, (const void *)addr, len);
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
    const char *wanted = getenv("RDMAMEMORY_LIBFABRIC_IMPORT");
    if (!wanted || strcmp(wanted, "1") != 0) return;
    int ret = rdmamemory_libfabric_import();
    const char *override = getenv("FI_MR_CACHE_MONITOR");
    if (ret == 0)
        fprintf(stderr, "rdmamemory: libfabric's memory monitor is RDMAMemory's (pid %d)%s%s%s\n", (int)getpid(),
                override ? "; but FI_MR_CACHE_MONITOR=" : "", override ? override : "",
                override ? " is set and overrides it" : "");
    else
        fprintf(stderr, "rdmamemory: libfabric's memory monitor not replaced (pid %d): %s\n", (int)getpid(),
                import_error);
}
