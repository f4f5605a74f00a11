// Per monitor, the 2 MiB chunks of the address space that hold granules it registered with
// userfaultfd, so that every munmap/mprotect/shmat/shmdt of the process can tell without a lock
// whether it touches watched memory.
//
// Two levels: a top array of leaf pointers (one per 8 GiB) and leaves of 4096 counters (one per
// 2 MiB chunk: registered granules there), with a count of the leaf's non-zero counters so that
// a query skips empty leaves whole. Leaves are made by
// writers (under the monitor's granule lock, which may allocate) and never freed; a slot's map
// outlives its monitor and serves the next one, so a hook that read a slot's pointer can never
// see freed memory. Addresses at or above 2^47 (five-level paging) are counted in one overflow
// counter that makes every query there positive. Adjusting is thread-safe (a leaf is published
// by compare-and-swap), whoever calls it.
#define _GNU_SOURCE
#include "memory_hooks.h"
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define CHUNK_SHIFT 21
#define LEAF_SHIFT 12
#define LEAF_CHUNKS (1u << LEAF_SHIFT)
#define ADDRESS_BITS 47
#define TOP_ENTRIES (1u << (ADDRESS_BITS - CHUNK_SHIFT - LEAF_SHIFT))

typedef struct leaf {
    _Atomic uint32_t live;                 // counters that are not zero
    _Atomic uint32_t counts[LEAF_CHUNKS];
} leaf;

typedef struct granule_map {
    _Atomic(leaf *) top[TOP_ENTRIES];
    _Atomic uint32_t high;                 // registrations at or above 2^ADDRESS_BITS
} granule_map;

static granule_map *_Atomic maps[CMEMHOOKS_SLOTS];
static _Atomic uint32_t slots_in_use;
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;

int cmemhooks_slot_acquire(void) {
    pthread_mutex_lock(&slot_lock);
    int found = -1;
    uint32_t used = atomic_load(&slots_in_use);
    for (int slot = 0; slot < CMEMHOOKS_SLOTS; slot++) {
        if (used & (1u << slot)) continue;
        if (!atomic_load(&maps[slot])) {
            granule_map *map = calloc(1, sizeof(granule_map));
            if (!map) break;
            atomic_store(&maps[slot], map);
        }
        atomic_fetch_or(&slots_in_use, 1u << slot);
        found = slot;
        break;
    }
    pthread_mutex_unlock(&slot_lock);
    return found;
}

void cmemhooks_slot_release(int slot) {
    if (slot < 0 || slot >= CMEMHOOKS_SLOTS) return;
    pthread_mutex_lock(&slot_lock);
    atomic_fetch_and(&slots_in_use, ~(1u << slot));
    pthread_mutex_unlock(&slot_lock);
}

static void add_to_chunk(leaf *l, uint32_t index, int32_t delta) {
    uint32_t before = atomic_fetch_add(&l->counts[index], (uint32_t)delta);
    uint32_t after = before + (uint32_t)delta;
    if (before == 0 && after != 0) atomic_fetch_add(&l->live, 1);
    if (before != 0 && after == 0) atomic_fetch_sub(&l->live, 1);
}

int cmemhooks_slot_adjust(int slot, uintptr_t start, uintptr_t end, int delta) {
    if (slot < 0 || slot >= CMEMHOOKS_SLOTS || end <= start) return 0;
    granule_map *map = atomic_load(&maps[slot]);
    if (!map) return 0;
    uintptr_t first = start >> CHUNK_SHIFT, last = (end - 1) >> CHUNK_SHIFT;
    uintptr_t limit = (uintptr_t)1 << (ADDRESS_BITS - CHUNK_SHIFT);
    // Make every leaf first, so that ENOMEM leaves nothing half counted.
    for (uintptr_t chunk = first; chunk <= last && chunk < limit; chunk = (chunk | (LEAF_CHUNKS - 1)) + 1) {
        _Atomic(leaf *) *entry = &map->top[chunk >> LEAF_SHIFT];
        if (atomic_load(entry)) continue;
        leaf *made = calloc(1, sizeof(leaf));
        if (!made) return ENOMEM;
        leaf *expected = NULL;
        if (!atomic_compare_exchange_strong(entry, &expected, made)) free(made);
    }
    for (uintptr_t chunk = first; chunk <= last; chunk++) {
        if (chunk >= limit) {
            atomic_fetch_add(&map->high, (uint32_t)delta);
            break;
        }
        add_to_chunk(atomic_load(&map->top[chunk >> LEAF_SHIFT]), (uint32_t)(chunk & (LEAF_CHUNKS - 1)), delta);
    }
    return 0;
}

static int map_touches(granule_map *map, uintptr_t start, uintptr_t end) {
    uintptr_t first = start >> CHUNK_SHIFT, last = (end - 1) >> CHUNK_SHIFT;
    uintptr_t limit = (uintptr_t)1 << (ADDRESS_BITS - CHUNK_SHIFT);
    if (last >= limit && atomic_load(&map->high) != 0) return 1;
    for (uintptr_t chunk = first; chunk <= last && chunk < limit;) {
        leaf *l = atomic_load(&map->top[chunk >> LEAF_SHIFT]);
        uintptr_t leaf_end = (chunk | (LEAF_CHUNKS - 1)) + 1;
        if (l && atomic_load(&l->live) != 0) {
            uintptr_t stop = leaf_end <= last ? leaf_end : last + 1;
            for (uintptr_t c = chunk; c < stop; c++) {
                if (atomic_load(&l->counts[c & (LEAF_CHUNKS - 1)]) != 0) return 1;
            }
        }
        chunk = leaf_end;
    }
    return 0;
}

uint32_t cmemhooks_active_slots(void) { return atomic_load(&slots_in_use); }

uint32_t cmemhooks_touching(uintptr_t start, uintptr_t end) {
    uint32_t used = atomic_load(&slots_in_use);
    if (!used || end <= start) return 0;
    uint32_t touched = 0;
    for (int slot = 0; slot < CMEMHOOKS_SLOTS; slot++) {
        if (!(used & (1u << slot))) continue;
        granule_map *map = atomic_load(&maps[slot]);
        if (map && map_touches(map, start, end)) touched |= 1u << slot;
    }
    return touched;
}
