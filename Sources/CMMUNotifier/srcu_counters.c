// Slow paths of the per-thread SRCU counters: slot registry, thread exit, grace periods.
// The algorithm is Linux's classic SRCU (lock/unlock counts per index, flip, wait for the old
// index to drain), with threads instead of CPUs and membarrier() instead of reader fences.
#define _GNU_SOURCE
#include "srcu_counters.h"
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Thread_local srcu_tls_entry srcu_tls_cache[SRCU_TLS_WAYS] __attribute__((tls_model("initial-exec")));
int srcu_reader_needs_fence = 1;

/// Registry lock: slot ownership, thread lists, domain teardown. Slow paths only.
static pthread_mutex_t registry = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key;
static _Atomic uint64_t next_domain_id = 1;
static _Thread_local srcu_slot *thread_slots;  // this thread's slots (registry lock)
static _Thread_local char thread_owner_token;  // its address identifies the live thread

// Slots come from a static pool first (the registry lock guards it): a thread's first read
// section may be inside a hooked mmap(MAP_FIXED), and a slot malloc placed in the hole that call
// fills would be zeroed under its counters. Beyond the pool, from the heap.
#define SRCU_POOLED_SLOTS 512
static srcu_slot slot_pool[SRCU_POOLED_SLOTS];
static size_t slot_pool_used;
static srcu_slot *slot_pool_free;  // through thread_next

static srcu_slot *slot_alloc(void) {
    srcu_slot *s = slot_pool_free;
    if (s) slot_pool_free = s->thread_next;
    else if (slot_pool_used < SRCU_POOLED_SLOTS) s = &slot_pool[slot_pool_used++];
    else s = aligned_alloc(64, sizeof(srcu_slot));
    if (s) memset(s, 0, sizeof *s);
    return s;
}

static void slot_free(srcu_slot *s) {
    if (s >= slot_pool && s < slot_pool + SRCU_POOLED_SLOTS) {
        s->thread_next = slot_pool_free;
        slot_pool_free = s;
    } else {
        free(s);
    }
}

static int membarrier_cmd(int cmd) { return (int)syscall(__NR_membarrier, cmd, 0, 0); }

static void thread_exit(void *unused) {
    (void)unused;
    pthread_mutex_lock(&registry);
    srcu_slot *s = thread_slots;
    while (s) {
        srcu_slot *next = s->thread_next;
        s->thread_next = NULL;
        if (s->domain == NULL) slot_free(s);  // its domain is gone: nobody else knows it
        else s->owner = NULL;            // the domain may hand it to another thread
        s = next;
    }
    thread_slots = NULL;
    memset(srcu_tls_cache, 0, sizeof srcu_tls_cache);
    pthread_mutex_unlock(&registry);
}

static void global_init(void) {
    pthread_key_create(&exit_key, thread_exit);
    int cmds = membarrier_cmd(MEMBARRIER_CMD_QUERY);
    if (cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
        membarrier_cmd(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0)
        srcu_reader_needs_fence = 0;
}

/// Orders every running thread of the process with the caller (or, without membarrier, only
/// the caller: readers then fence themselves).
static void global_barrier(void) {
    if (srcu_reader_needs_fence || membarrier_cmd(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0)
        atomic_thread_fence(memory_order_seq_cst);
}

void *srcu_domain_create(void) {
    pthread_once(&init_once, global_init);
    srcu_domain *d = calloc(1, sizeof *d);
    pthread_mutex_t *m = malloc(sizeof *m);
    if (!d || !m) { free(d); free(m); return NULL; }
    pthread_mutex_init(m, NULL);
    d->gp_mutex = m;
    d->id = atomic_fetch_add(&next_domain_id, 1);
    return d;
}

void srcu_domain_destroy(void *domain) {
    srcu_domain *d = domain;
    pthread_mutex_lock(&registry);
    srcu_slot *s = atomic_load_explicit(&d->slots, memory_order_acquire);
    while (s) {
        srcu_slot *next = atomic_load_explicit(&s->domain_next, memory_order_relaxed);
        s->domain = NULL;
        if (s->owner == NULL) slot_free(s);  // else its thread frees it on exit or next slow path
        s = next;
    }
    pthread_mutex_unlock(&registry);
    pthread_mutex_destroy((pthread_mutex_t *)d->gp_mutex);
    free(d->gp_mutex);
    free(d);
}

srcu_slot *srcu_slot_slow(srcu_domain *d) {
    pthread_once(&init_once, global_init);
    pthread_mutex_lock(&registry);
    srcu_slot *found = NULL;
    // This thread's own list: a cache collision, or orphans of dead domains to free.
    srcu_slot **link = &thread_slots;
    while (*link) {
        srcu_slot *s = *link;
        if (s->domain == NULL) { *link = s->thread_next; slot_free(s); continue; }
        if (s->domain == d) found = s;
        link = &s->thread_next;
    }
    if (!found) {
        // Reuse a slot a dead thread left behind: sums stay right, only the owner changes.
        for (srcu_slot *s = atomic_load_explicit(&d->slots, memory_order_acquire); s;
             s = atomic_load_explicit(&s->domain_next, memory_order_acquire)) {
            if (s->owner == NULL) { found = s; break; }
        }
        if (!found) {
            found = slot_alloc();
            if (!found) abort();  // out of memory on a first read: nothing sensible to return
            found->domain = d;
            srcu_slot *head = atomic_load_explicit(&d->slots, memory_order_relaxed);
            do {
                atomic_store_explicit(&found->domain_next, head, memory_order_relaxed);
            } while (!atomic_compare_exchange_weak_explicit(&d->slots, &head, found,
                         memory_order_release, memory_order_relaxed));
        }
        found->owner = &thread_owner_token;
        found->thread_next = thread_slots;
        thread_slots = found;
        pthread_setspecific(exit_key, (void *)1);  // run thread_exit when this thread ends
    }
    srcu_tls_entry *e = &srcu_tls_cache[d->id & (SRCU_TLS_WAYS - 1)];
    e->id = d->id;
    e->slot = found;
    pthread_mutex_unlock(&registry);
    return found;
}

/// True when no reader is inside a section on index `idx`. Unlocks are summed first, then
/// locks: a reader counted as unlocked is also counted as locked, so equal sums mean none left.
static bool readers_gone(srcu_domain *d, unsigned idx) {
    unsigned long unlocks = 0, locks = 0;
    for (srcu_slot *s = atomic_load_explicit(&d->slots, memory_order_acquire); s;
         s = atomic_load_explicit(&s->domain_next, memory_order_acquire))
        unlocks += atomic_load_explicit(&s->unlock_count[idx], memory_order_acquire);
    atomic_thread_fence(memory_order_seq_cst);
    for (srcu_slot *s = atomic_load_explicit(&d->slots, memory_order_acquire); s;
         s = atomic_load_explicit(&s->domain_next, memory_order_acquire))
        locks += atomic_load_explicit(&s->lock_count[idx], memory_order_relaxed);
    return locks == unlocks;
}

/// Spin briefly (readers are usually short), then yield, then sleep with a growing period
/// (readers may block for a long time in a callback).
static void backoff(unsigned n) {
    if (n < 64) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ volatile("yield");
#endif
        return;
    }
    if (n < 96) { sched_yield(); return; }
    unsigned shift = n - 96 > 10 ? 10 : n - 96;
    struct timespec ts = {0, 1000L << shift};  // 1 µs .. ~1 ms
    nanosleep(&ts, NULL);
}

static void wait_for_readers(srcu_domain *d, unsigned idx) {
    for (unsigned n = 0; !readers_gone(d, idx); n++) backoff(n);
}

void srcu_synchronize(void *domain) {
    srcu_domain *d = domain;
    // The grace-period number a full grace period that starts after this point ends at (the
    // kernel's rcu_seq_snap). Concurrent callers share one: whoever finds it reached returns.
    atomic_thread_fence(memory_order_seq_cst);  // our earlier updates before the snapshot
    unsigned long snap = (atomic_load_explicit(&d->gp_seq, memory_order_acquire) + 3) & ~1UL;
    pthread_mutex_lock((pthread_mutex_t *)d->gp_mutex);
    if ((long)(atomic_load_explicit(&d->gp_seq, memory_order_acquire) - snap) >= 0) {
        pthread_mutex_unlock((pthread_mutex_t *)d->gp_mutex);
        return;
    }
    atomic_store_explicit(&d->gp_seq, atomic_load_explicit(&d->gp_seq, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    // After this, a reader either made its lock increment visible or sees our prior updates.
    global_barrier();
    unsigned long cur = atomic_load_explicit(&d->flip, memory_order_relaxed);
    // Readers that fetched the index before the last flip may still sit on the other index.
    wait_for_readers(d, (unsigned)((cur + 1) & 1));
    atomic_store_explicit(&d->flip, cur + 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    wait_for_readers(d, (unsigned)(cur & 1));
    atomic_thread_fence(memory_order_seq_cst);  // what follows happens after the readers left
    atomic_store_explicit(&d->gp_seq, atomic_load_explicit(&d->gp_seq, memory_order_relaxed) + 1,
                          memory_order_release);
    pthread_mutex_unlock((pthread_mutex_t *)d->gp_mutex);
}

long srcu_thread_nesting(void *domain) {
    srcu_domain *d = domain;
    srcu_slot *s = srcu_this_slot(d);
    unsigned long locks = atomic_load_explicit(&s->lock_count[0], memory_order_relaxed) +
                          atomic_load_explicit(&s->lock_count[1], memory_order_relaxed);
    unsigned long unlocks = atomic_load_explicit(&s->unlock_count[0], memory_order_relaxed) +
                            atomic_load_explicit(&s->unlock_count[1], memory_order_relaxed);
    return (long)(locks - unlocks);
}

long srcu_slot_count(void *domain) {
    srcu_domain *d = domain;
    long n = 0;
    for (srcu_slot *s = atomic_load_explicit(&d->slots, memory_order_acquire); s;
         s = atomic_load_explicit(&s->domain_next, memory_order_acquire))
        n++;
    return n;
}
