/*
 * RDMAMemory as UCX's memory event source: the C interface.
 *
 * UCX's registration caches (ucs_rcache, under UCT's IB transports and UCP) learn that memory
 * under a cached region changed from UCM's VM_UNMAPPED events. UCX makes them with hooks of its
 * own (which miss raw system calls); a program can instead declare the event external
 * (ucm_set_external_event) and report unmaps itself (ucm_vm_munmap). This adapter does that
 * from the process's one RDMAMemory engine and monitor:
 * - every munmap, mmap(MAP_FIXED), mremap, page-replacing madvise, shmat(SHM_REMAP), shmdt and
 *   lowered brk made through the C library is reported before the call, in the calling thread
 *   (what UCX's own hooks report, and what ucm_test_external_events checks);
 * - the ranges UCX registers (its ibv_reg_mr calls) are watched with userfaultfd, so raw
 *   system calls and glibc's internal unmaps there are reported too, before UCX's next lookup;
 * - shared and file memory, which userfaultfd cannot watch, is reported as unmapped as soon as
 *   UCX registered it: UCX uses such a region once and registers it again next time.
 *
 * Two ways in: run an unmodified program under scripts/with-rdmamemory (LD_PRELOAD of
 * libRDMAMemoryPreload.so with RDMAMEMORY_UCX_EVENTS=1, which also switches UCX's own memory
 * hooks off through UCX_MEM_* settings), or link libRDMAMemoryPreload.so ahead of UCX's libraries
 * and call rdmamemory_ucx_import() before ucp_init().
 */
#ifndef RDMAMEMORY_UCX_H
#define RDMAMEMORY_UCX_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Makes UCX take its VM_UNMAPPED events from RDMAMemory. Call it before ucp_init() (before UCX
 * creates a registration cache). Returns 0 (also when imported already) or a negative errno:
 * -EBUSY when UCX created a registration cache first (its own hooks, if any, feed that one),
 * -ENOENT when UCX's libucm is not loaded in the process. rdmamemory_ucx_error() says why.
 */
int rdmamemory_ucx_import(void);

/* The reason the last import failed ("" when none did). */
const char *rdmamemory_ucx_error(void);

/* What the adapter did for UCX, since the process started. */
struct rdmamemory_ucx_statistics {
    uint64_t reported;          /* ucm_vm_munmap calls made (hooked calls and invalidations) */
    uint64_t registrations;     /* UCX registrations seen (ibv_reg_mr from UCX's libraries) */
    uint64_t watched;           /* ... of which watched until UCX deregisters them */
    uint64_t uncached;          /* ... reported at once: shared/file memory, or unwatchable */
    uint64_t raced;             /* ... reported at once: memory changed while it was registered */
    uint64_t waits;             /* UCX lookups that waited for a change in flight to be reported */
};

/* Copies the counters. */
void rdmamemory_ucx_get_statistics(struct rdmamemory_ucx_statistics *out);

#ifdef __cplusplus
}
#endif

#endif
