// Statistics counters that a hit path can bump without writing a cache line another thread
// writes: one 64-byte line of counters per shard, a shard per thread.
//
// Why C: like the SRCU read side, a `static inline` function with a `_Thread_local` shard index
// is inlined into Swift at -O, so a bump is a thread-local load and a store to this thread's own
// line. The first CSHARDED_OWNED threads each own a shard and bump it with a plain relaxed store
// (no lock prefix: only the owner writes it); later threads share another CSHARDED_OWNED shards
// by index and use an atomic add there, so no count is ever lost. Reading sums every shard (the
// slow side pays).
#pragma once
#include <stdatomic.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Shards per counter set; the first this many threads of the process own one each.
#define CSHARDED_OWNED 64
/// Counters per set (one shard line holds all of them).
#define CSHARDED_COUNTERS 8

typedef struct csharded_line {
    _Atomic long value[CSHARDED_COUNTERS];
} __attribute__((aligned(64))) csharded_line;

/// This thread's shard: index < CSHARDED_OWNED when owned, else one of the shared ones after them.
extern _Thread_local int csharded_thread_shard __attribute__((tls_model("initial-exec")));

/// Assigns the calling thread its shard (the slow path of the first bump).
int csharded_assign_shard(void);

/// A zeroed set of 2 * CSHARDED_OWNED shard lines (owned, then shared), or NULL when out of memory.
void *csharded_create(void);
void csharded_destroy(void *set);

/// The sum of counter `index` over all shards (racy by nature: a snapshot).
long csharded_sum(const void *set, int index);

/// Adds `delta` to counter `index` of this thread's shard.
static inline void csharded_add(void *set, int index, long delta) {
    int shard = csharded_thread_shard;
    if (__builtin_expect(shard < 0, 0)) shard = csharded_assign_shard();
    csharded_line *lines = (csharded_line *)set;
    if (__builtin_expect(shard < CSHARDED_OWNED, 1)) {
        _Atomic long *slot = &lines[shard].value[index];
        atomic_store_explicit(slot, atomic_load_explicit(slot, memory_order_relaxed) + delta, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&lines[shard].value[index], delta, memory_order_relaxed);
    }
}

#ifdef __cplusplus
}
#endif
