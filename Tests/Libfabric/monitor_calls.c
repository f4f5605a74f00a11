/*
 * monitor_calls: RDMAMemory's libfabric monitor driven through its C entry points (the ops of
 * its struct fid_mem_monitor) as libfabric 2.x's registration cache calls them, over the
 * process's real engine, userfaultfd monitor and hooks, with real memory changes. No device:
 * the monitor never needs one, so this runs on any host with userfaultfd.
 *
 * What libfabric 2.x does that 1.17 did not (prov/util/src/util_mr_cache.c, 2.1.0):
 *   - unsubscribe for every entry it removes: evicted, found invalid, or uncached by notify,
 *     from inside notify under its mm_lock;
 *   - unsubscribe right after a subscribe that failed (util_mr_uncache_entry_storage), so of
 *     a range that was never subscribed;
 *   - valid on every find; several caches (domains) share one monitor and one mm_lock, so a
 *     range can be subscribed twice, and entries of one cache may overlap.
 *
 *   monitor_calls patterns          each pattern once, with its verdict; exit 1 if one failed
 *   monitor_calls stress SECONDS    two caches' threads find, subscribe, evict and unsubscribe
 *                                   under mm_lock while two threads change the memory (libc,
 *                                   raw system calls, madvise); exit 1 on a stale hit (valid
 *                                   true after a change that began once the subscribe had
 *                                   returned, and has ended), 3 on a deadlock (the watchdog)
 *
 * Link with -lRDMAMemoryLibfabric; scripts/libfabric-tests builds and runs it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_ext.h>

#include "rdmamemory_libfabric.h"

/* libfabric_monitor.c: the monitor object, for this test only. */
extern struct fid_mem_monitor *rdmamemory_lf_monitor_object(void);

#define CACHES 2
#define SLOTS 32
#define SLOT_PAGES 4
#define KINDS 2 /* each slot: the whole slot, and a range overlapping it */

struct entry {
    bool cached;
    uint64_t started_at_subscribe;
};

static struct fid_mem_monitor *monitor;
static pthread_mutex_t mm_lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry entries[CACHES][SLOTS][KINDS];
static char *memory;
static size_t page;
static _Atomic uint64_t started[SLOTS], finished[SLOTS];
static _Atomic long notifies, unsubscribes_in_notify, hits, stale_hits, subscribed, refused;

static uintptr_t slot_start(int slot) { return (uintptr_t)memory + (uintptr_t)slot * SLOT_PAGES * page; }
static uintptr_t entry_start(int slot, int kind) { return slot_start(slot) + (kind ? page : 0); }
static size_t entry_length(int kind) { return (kind ? 2 : SLOT_PAGES) * page; }

static int subscribe(uintptr_t start, size_t length) {
    return monitor->export_ops->subscribe(monitor, (const void *)start, length);
}
static void unsubscribe(uintptr_t start, size_t length) {
    monitor->export_ops->unsubscribe(monitor, (const void *)start, length);
}
static bool valid(uintptr_t start, size_t length) {
    return monitor->export_ops->valid(monitor, (const void *)start, length);
}

/* libfabric's notify: under mm_lock, every overlapping entry of every cache is uncached, and
 * (2.x) unsubscribed there and then. */
static void notify(struct fid_mem_monitor *m, const void *addr, size_t len) {
    (void)m;
    uintptr_t start = (uintptr_t)addr, end = start + len;
    pthread_mutex_lock(&mm_lock);
    atomic_fetch_add(&notifies, 1);
    for (int c = 0; c < CACHES; c++)
        for (int s = 0; s < SLOTS; s++)
            for (int k = 0; k < KINDS; k++) {
                struct entry *e = &entries[c][s][k];
                uintptr_t es = entry_start(s, k), ee = es + entry_length(k);
                if (!e->cached || ee <= start || end <= es) continue;
                e->cached = false;
                unsubscribe(es, entry_length(k));
                atomic_fetch_add(&unsubscribes_in_notify, 1);
            }
    pthread_mutex_unlock(&mm_lock);
}

static struct fi_ops_mem_notify notify_ops = {.size = sizeof notify_ops, .notify = notify};

/* One find of libfabric's cache (mm_lock held): a hit asks valid; an invalid entry is dropped
 * and unsubscribed; a miss subscribes, and a refused subscribe is unsubscribed at once. */
static void find(int cache, int slot, int kind, bool evict) {
    struct entry *e = &entries[cache][slot][kind];
    uintptr_t start = entry_start(slot, kind);
    size_t length = entry_length(kind);
    if (e->cached) {
        uint64_t finished_now = atomic_load(&finished[slot]);
        if (valid(start, length)) {
            atomic_fetch_add(&hits, 1);
            if (finished_now > e->started_at_subscribe) atomic_fetch_add(&stale_hits, 1);
        } else {
            e->cached = false;
            unsubscribe(start, length);
        }
        if (evict && e->cached) {
            e->cached = false;
            unsubscribe(start, length);
        }
        return;
    }
    if (subscribe(start, length) == 0) {
        /* Changes that begin from here on must reach the entry. One that ended between
         * libfabric's registration and its subscribe is seen by no monitor (the registration
         * comes first in libfabric): not counted against it. */
        e->started_at_subscribe = atomic_load(&started[slot]);
        e->cached = true;
        atomic_fetch_add(&subscribed, 1);
    } else {
        atomic_fetch_add(&refused, 1);
        unsubscribe(start, length);
    }
}

static void locked_find(int cache, int slot, int kind) {
    pthread_mutex_lock(&mm_lock);
    find(cache, slot, kind, false);
    pthread_mutex_unlock(&mm_lock);
}

static bool cached(int cache, int slot, int kind) {
    pthread_mutex_lock(&mm_lock);
    bool answer = entries[cache][slot][kind].cached;
    pthread_mutex_unlock(&mm_lock);
    return answer;
}

/* The memory changes, each counted started and finished for the stress invariant. */
enum change { LIBC_REMAP, RAW_REMAP, MAP_OVER, LIBC_DONTNEED, RAW_DONTNEED, CHANGES };
static const char *change_name[CHANGES] = {"munmap+mmap (libc)", "munmap+mmap (raw syscalls)",
                                           "mmap(MAP_FIXED) over it", "madvise(DONTNEED) (libc)",
                                           "madvise(DONTNEED) (raw syscall)"};

static int change_memory(int slot, enum change kind) {
    void *at = (void *)slot_start(slot);
    size_t length = SLOT_PAGES * page;
    int prot = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    atomic_fetch_add(&started[slot], 1);
    int ok = 1;
    switch (kind) {
    case LIBC_REMAP:
        ok = munmap(at, length) == 0 && mmap(at, length, prot, flags, -1, 0) == at;
        break;
    case RAW_REMAP:
        ok = syscall(SYS_munmap, at, length) == 0 && (void *)syscall(SYS_mmap, at, length, prot, flags, -1, 0) == at;
        break;
    case MAP_OVER:
        ok = mmap(at, length, prot, flags, -1, 0) == at;
        break;
    case LIBC_DONTNEED:
        ok = madvise(at, length, MADV_DONTNEED) == 0;
        break;
    case RAW_DONTNEED:
        ok = syscall(SYS_madvise, at, length, MADV_DONTNEED) == 0;
        break;
    default:
        break;
    }
    memset(at, 0x5a, length); /* the new pages exist, as a program's would */
    atomic_fetch_add(&finished[slot], 1);
    return ok;
}

/* ---------------------------------------------------------------- patterns */

static int failures;
static void verdict(const char *name, bool passed, const char *detail) {
    printf("pattern %-64s %s%s%s\n", name, passed ? "ok" : "FAILED", detail[0] ? "  " : "", detail);
    if (!passed) failures++;
}

/* A change that returned has reached libfabric: through notify (the entry is gone), or, for an
 * event whose notify is still on its way, through valid (false on the next find, which drops it). */
static bool reached(int cache, int slot, int kind) {
    pthread_mutex_lock(&mm_lock);
    struct entry *e = &entries[cache][slot][kind];
    bool gone = !e->cached;
    if (!gone && !valid(entry_start(slot, kind), entry_length(kind))) {
        e->cached = false;
        unsubscribe(entry_start(slot, kind), entry_length(kind));
        gone = true;
    }
    pthread_mutex_unlock(&mm_lock);
    return gone;
}

static int patterns(void) {
    char detail[160];
    struct rdmamemory_libfabric_statistics before, after;

    rdmamemory_libfabric_get_statistics(&before);
    unsubscribe(slot_start(0), SLOT_PAGES * page);
    unsubscribe(slot_start(0) + page, page);
    rdmamemory_libfabric_get_statistics(&after);
    verdict("unsubscribe of a range never subscribed is ignored", after.unsubscribed == before.unsubscribed, "");

    locked_find(0, 1, 0);
    unsubscribe(entry_start(1, 0) + page, page); /* overlaps it, never subscribed */
    change_memory(1, LIBC_REMAP);
    verdict("an overlapping never-subscribed unsubscribe leaves the subscription", !cached(0, 1, 0), "");

    for (enum change kind = 0; kind < CHANGES; kind++) {
        int slot = 2 + (int)kind;
        locked_find(0, slot, 0);
        locked_find(1, slot, 0); /* a second cache: the same range subscribed twice */
        pthread_mutex_lock(&mm_lock);
        bool both = entries[0][slot][0].cached && entries[1][slot][0].cached;
        entries[1][slot][0].cached = false; /* cache 1 evicts it */
        unsubscribe(entry_start(slot, 0), entry_length(0));
        pthread_mutex_unlock(&mm_lock);
        change_memory(slot, kind);
        snprintf(detail, sizeof detail, "%s", both ? "" : "(not both subscribed)");
        char name[128];
        snprintf(name, sizeof name, "subscribed twice, unsubscribed once, then %s: reached", change_name[kind]);
        verdict(name, both && reached(0, slot, 0), detail);
    }

    int slot = 2 + CHANGES;
    locked_find(0, slot, 0);
    locked_find(0, slot, 1);
    change_memory(slot, LIBC_DONTNEED); /* covers both */
    verdict("overlapping ranges both reached, unsubscribed inside notify under mm_lock",
            reached(0, slot, 0) && reached(0, slot, 1), "");

    /* Shared memory is refused (its pages can change without an event); 2.x unsubscribes it at
     * once. Once private memory is mapped there, the same range subscribes. */
    slot++;
    void *at = (void *)slot_start(slot);
    bool shared = mmap(at, SLOT_PAGES * page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == at;
    locked_find(0, slot, 0);
    bool refused_shared = !cached(0, slot, 0);
    change_memory(slot, LIBC_REMAP);
    locked_find(0, slot, 0);
    snprintf(detail, sizeof detail, "%s", shared ? "" : "(mmap of shared memory failed)");
    verdict("refused (shared memory), unsubscribed at once; private memory there subscribes",
            shared && refused_shared && cached(0, slot, 0), detail);
    change_memory(slot, LIBC_REMAP);
    reached(0, slot, 0);

    /* Subscribed while unrelated memory changes in another thread, over and over: never
     * refused for that (only an invalidation in flight that overlaps may refuse). */
    slot++;
    long refused_before = atomic_load(&refused);
    for (int round = 0; round < 200; round++) {
        locked_find(0, slot, 0);
        change_memory(slot + 1, RAW_DONTNEED); /* an event for the monitor, elsewhere */
        pthread_mutex_lock(&mm_lock);
        find(0, slot, 0, true); /* a hit, then evicted */
        pthread_mutex_unlock(&mm_lock);
    }
    long refused_here = atomic_load(&refused) - refused_before;
    snprintf(detail, sizeof detail, "%ld of 200 refused", refused_here);
    verdict("changes of unrelated memory in flight refuse no subscription", refused_here == 0, detail);

    rdmamemory_libfabric_get_statistics(&after);
    printf("statistics: subscribed %" PRIu64 ", refused %" PRIu64 ", unsubscribed %" PRIu64 ", notified %" PRIu64
           "; notify unsubscribed %ld\n",
           after.subscribed, after.refused, after.unsubscribed, after.notified, atomic_load(&unsubscribes_in_notify));
    return failures ? 1 : 0;
}

/* ---------------------------------------------------------------- stress */

static _Atomic bool stop;
/* Which changes the stress makes (bit per enum change): MONITOR_CALLS_CHANGES, default all. */
static unsigned change_mask = (1u << CHANGES) - 1;

static uint64_t next_random(uint64_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

static void *cache_thread(void *arg) {
    int cache = (int)(intptr_t)arg;
    uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)(cache + 1);
    while (!atomic_load(&stop)) {
        uint64_t r = next_random(&rng);
        int slot = (int)(r % SLOTS), kind = (int)((r >> 8) % KINDS);
        pthread_mutex_lock(&mm_lock);
        find(cache, slot, kind, (r >> 16) % 8 == 0);
        if ((r >> 24) % 16 == 0) unsubscribe(slot_start(slot) + 3 * page, page); /* never subscribed */
        pthread_mutex_unlock(&mm_lock);
    }
    return NULL;
}

static void *change_thread(void *arg) {
    int half = (int)(intptr_t)arg;
    uint64_t rng = 0xD1B54A32D192ED03ull * (uint64_t)(half + 1);
    while (!atomic_load(&stop)) {
        uint64_t r = next_random(&rng);
        int slot = (int)(r % (SLOTS / 2)) * 2 + half; /* each slot changes in one thread only */
        enum change kind = (enum change)((r >> 8) % CHANGES);
        if (!(change_mask & (1u << kind))) continue;
        change_memory(slot, kind);
    }
    return NULL;
}

static void watchdog(int signal) {
    (void)signal;
    static const char message[] = "monitor_calls: the threads did not finish in time (deadlock)\n";
    (void)!write(STDERR_FILENO, message, sizeof message - 1);
    _exit(3);
}

static int stress(int seconds) {
    const char *mask = getenv("MONITOR_CALLS_CHANGES");
    if (mask) change_mask = (unsigned)strtoul(mask, NULL, 0);
    signal(SIGALRM, watchdog);
    alarm((unsigned)seconds + 60);
    pthread_t threads[4];
    for (int i = 0; i < 2; i++) pthread_create(&threads[i], NULL, cache_thread, (void *)(intptr_t)i);
    for (int i = 0; i < 2; i++) pthread_create(&threads[2 + i], NULL, change_thread, (void *)(intptr_t)i);
    struct timespec duration = {.tv_sec = seconds};
    nanosleep(&duration, NULL); /* how long the stress runs, not a synchronization */
    atomic_store(&stop, true);
    for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);
    alarm(0);
    struct rdmamemory_libfabric_statistics s;
    rdmamemory_libfabric_get_statistics(&s);
    long changes = 0;
    for (int i = 0; i < SLOTS; i++) changes += (long)atomic_load(&finished[i]);
    printf("stress: %d s, %ld memory changes, %ld subscribes kept, %ld refused, %ld hits, %ld stale; monitor: "
           "notified %" PRIu64 ", unsubscribed %" PRIu64 "\n",
           seconds, changes, atomic_load(&subscribed), atomic_load(&refused), atomic_load(&hits),
           atomic_load(&stale_hits), s.notified, s.unsubscribed);
    if (atomic_load(&stale_hits) != 0) return 1;
    if (atomic_load(&hits) == 0 || s.notified == 0 || changes == 0) {
        printf("stress: nothing was exercised\n");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2 || (strcmp(argv[1], "patterns") != 0 && strcmp(argv[1], "stress") != 0)) {
        fprintf(stderr, "usage: monitor_calls patterns | stress SECONDS\n");
        return 2;
    }
    page = (size_t)sysconf(_SC_PAGESIZE);
    memory = mmap(NULL, SLOTS * SLOT_PAGES * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    memset(memory, 1, SLOTS * SLOT_PAGES * page);
    /* What libfabric's import does: it fills import_ops, then starts the monitor. */
    monitor = rdmamemory_lf_monitor_object();
    monitor->import_ops = &notify_ops;
    int ret = monitor->export_ops->start(monitor);
    if (ret != 0) {
        fprintf(stderr, "monitor_calls: start: %d\n", ret);
        return 2;
    }
    int status = strcmp(argv[1], "patterns") == 0 ? patterns() : stress(argc > 2 ? atoi(argv[2]) : 5);
    monitor->export_ops->stop(monitor);
    return status;
}
