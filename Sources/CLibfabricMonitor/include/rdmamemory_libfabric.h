/*
 * RDMAMemory as libfabric's memory monitor: the C interface.
 *
 * libfabric (1.13 and later) lets a program replace the monitor its registration cache uses
 * to learn that memory under a cached region changed. RDMAMemory's monitor is the process's
 * one userfaultfd monitor and notifier engine: it sees raw munmap system calls, mremap,
 * madvise and free() as events, takes munmap/mmap(MAP_FIXED)/mprotect/shmat/shmdt in the
 * calling thread, refuses shared and file-backed memory (libfabric then does not cache it),
 * and answers libfabric's `valid` from the engine's sequence numbers.
 *
 * Two ways in: call rdmamemory_libfabric_import() before the program's first fi_domain(), or
 * run an unmodified program under scripts/with-rdmamemory (LD_PRELOAD of this library with
 * RDMAMEMORY_LIBFABRIC_IMPORT=1: its constructor imports the monitor and says so on stderr).
 * Link with -lRDMAMemoryLibfabric (the package's dynamic library product).
 */
#ifndef RDMAMEMORY_LIBFABRIC_H
#define RDMAMEMORY_LIBFABRIC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Makes RDMAMemory's monitor libfabric's default memory monitor. Call it before the first
 * fi_domain() of the process (libfabric refuses a new monitor once a cache uses its own).
 * Returns 0 (also when it is imported already) or a negative errno (libfabric's FI_E* codes
 * are errno values): -EBUSY when a domain is open already or another monitor was imported.
 * rdmamemory_libfabric_error() then says what failed, in words. The environment variable
 * FI_MR_CACHE_MONITOR, when set, still overrides any imported monitor (libfabric reads it in
 * fi_getinfo); the import warns about it.
 */
int rdmamemory_libfabric_import(void);

/* The reason the last import failed ("" when none did). */
const char *rdmamemory_libfabric_error(void);

/*
 * Explicit invalidation, for allocators that reuse memory without unmapping it: every cached
 * registration overlapping [addr, addr + len) in this process (libfabric's and RDMAMemory's
 * own caches) is revoked before this returns. Returns 0, or -EINVAL for an empty or
 * wrapping range.
 */
int rdmamemory_invalidate(const void *addr, size_t len);

/* What the monitor did for libfabric, since the process started. */
struct rdmamemory_libfabric_statistics {
    uint64_t subscribed;        /* ranges libfabric may cache (subscribe answered 0) */
    uint64_t refused;           /* ranges refused: shared or file memory, unwatchable, bad */
    uint64_t unsubscribed;      /* unsubscribe calls for a known range */
    uint64_t valid;             /* hits confirmed by valid() */
    uint64_t invalid;           /* hits valid() refused (changed, or a change in flight) */
    uint64_t notified;          /* notify calls made into libfabric */
};

/* Copies the counters (all zero before libfabric started the monitor). */
void rdmamemory_libfabric_get_statistics(struct rdmamemory_libfabric_statistics *out);

#ifdef __cplusplus
}
#endif

#endif
