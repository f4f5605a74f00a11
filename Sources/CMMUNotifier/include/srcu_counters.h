// Per-thread SRCU reader counters (Linux "classic" SRCU, per-thread instead of per-CPU).
//
// Why C: a `static inline` function with a `_Thread_local` cache is inlined into Swift at -O, so
// the read side is a thread-local lookup plus two stores to this thread's own cache line: no
// shared cache line is written (seed 000: "zero cacheline writes"). The grace-period side pays
// instead: it issues membarrier(PRIVATE_EXPEDITED), which orders every running thread, so the
// reader needs only a compiler barrier after its increment (the liburcu "memb" flavour). Where
// membarrier is unavailable, readers fall back to a full fence.
#pragma once
#include <stdatomic.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/// One thread's counters for one domain. Only the owning thread writes them; the grace-period
/// side sums them over all slots. Cache-line aligned so two threads never share a line.
typedef struct srcu_slot {
    _Atomic unsigned long lock_count[2];
    _Atomic unsigned long unlock_count[2];
    struct srcu_slot *_Atomic domain_next; // push-only list of a domain's slots
    struct srcu_slot *thread_next;         // owner thread's list (global registry lock)
    struct srcu_domain *domain;            // NULL once the domain is gone (registry lock)
    void *owner;                           // non-NULL while a live thread owns it (registry lock)
} __attribute__((aligned(64))) srcu_slot;

typedef struct srcu_domain {
    _Atomic unsigned long flip;            // low bit: index new readers use
    uint64_t id;                           // unique for the process lifetime, never reused
    srcu_slot *_Atomic slots;
    void *gp_mutex;                        // serialises grace periods (pthread_mutex_t *)
    _Atomic unsigned long gp_seq;          // rcu_seq style: odd while a grace period runs
} srcu_domain;

typedef struct srcu_tls_entry {
    uint64_t id;
    srcu_slot *slot;
} srcu_tls_entry;

#define SRCU_TLS_WAYS 8
extern _Thread_local srcu_tls_entry srcu_tls_cache[SRCU_TLS_WAYS]
    __attribute__((tls_model("initial-exec")));
/// 1 when membarrier is unavailable and readers must fence themselves.
extern int srcu_reader_needs_fence;

// Swift cannot import structs with _Atomic fields, so the Swift-facing API passes domains
// and slots as untyped pointers.

/// A new domain, or NULL when out of memory.
void *srcu_domain_create(void);
/// Frees the domain; slots still owned by live threads are freed when those threads exit.
void srcu_domain_destroy(void *domain);
/// Finds or creates the calling thread's slot (the slow path of the thread-local cache).
srcu_slot *srcu_slot_slow(srcu_domain *d);
/// Waits until every reader that entered before the call has left (synchronize_srcu).
void srcu_synchronize(void *domain);
/// Readers of this domain the calling thread is inside (its own lock - unlock counts).
long srcu_thread_nesting(void *domain);
/// Number of slots (threads that ever read the domain), for tests.
long srcu_slot_count(void *domain);

static inline srcu_slot *srcu_this_slot(srcu_domain *d) {
    srcu_tls_entry *e = &srcu_tls_cache[d->id & (SRCU_TLS_WAYS - 1)];
    if (__builtin_expect(e->id == d->id, 1)) return e->slot;
    return srcu_slot_slow(d);
}

/// Enters a read section; returns the index to pass to `srcu_read_unlock_fast`.
static inline unsigned srcu_read_lock_fast(void *domain, void **out_slot) {
    srcu_domain *d = (srcu_domain *)domain;
    srcu_slot *s = srcu_this_slot(d);
    unsigned idx = (unsigned)(atomic_load_explicit(&d->flip, memory_order_relaxed) & 1);
    unsigned long v = atomic_load_explicit(&s->lock_count[idx], memory_order_relaxed);
    atomic_store_explicit(&s->lock_count[idx], v + 1, memory_order_relaxed);
    if (__builtin_expect(srcu_reader_needs_fence, 0))
        atomic_thread_fence(memory_order_seq_cst);
    else
        atomic_signal_fence(memory_order_seq_cst); // membarrier on the writer side pairs with this
    *out_slot = s;
    return idx;
}

/// Leaves a read section. Release ordering: the section's accesses happen before the writer,
/// which reads this counter with acquire, sees the reader gone.
static inline void srcu_read_unlock_fast(void *slot, unsigned idx) {
    srcu_slot *s = (srcu_slot *)slot;
    unsigned long v = atomic_load_explicit(&s->unlock_count[idx & 1], memory_order_relaxed);
    atomic_store_explicit(&s->unlock_count[idx & 1], v + 1, memory_order_release);
}

#ifdef __cplusplus
}
#endif
