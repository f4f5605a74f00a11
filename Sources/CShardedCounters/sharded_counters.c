// Slow paths of the sharded statistics counters (see CShardedCounters.h).
#include "CShardedCounters.h"
#include <stdlib.h>

_Thread_local int csharded_thread_shard __attribute__((tls_model("initial-exec"))) = -1;
static _Atomic int next_shard;

int csharded_assign_shard(void) {
    int n = atomic_fetch_add_explicit(&next_shard, 1, memory_order_relaxed);
    // Owned shards for the first threads; past them, shared ones (bumped atomically).
    csharded_thread_shard = n < CSHARDED_OWNED ? n : CSHARDED_OWNED + n % CSHARDED_OWNED;
    return csharded_thread_shard;
}

void *csharded_create(void) {
    void *set = NULL;
    if (posix_memalign(&set, 64, sizeof(csharded_line) * 2 * CSHARDED_OWNED) != 0) return NULL;
    csharded_line *lines = set;
    for (int shard = 0; shard < 2 * CSHARDED_OWNED; shard++)
        for (int index = 0; index < CSHARDED_COUNTERS; index++) atomic_init(&lines[shard].value[index], 0);
    return set;
}

void csharded_destroy(void *set) { free(set); }

long csharded_sum(const void *set, int index) {
    const csharded_line *lines = set;
    long total = 0;
    for (int shard = 0; shard < 2 * CSHARDED_OWNED; shard++)
        total += atomic_load_explicit((_Atomic long *)&lines[shard].value[index], memory_order_relaxed);
    return total;
}
