// The private anonymous mappings the hooked mmap made, newest first out: what the process told
// the kernel it wanted, kept so that a cache miss on a buffer inside one knows its class without
// asking the kernel (a UFFDIO_WRITEPROTECT probe and a PROCMAP_QUERY, or a read of
// /proc/self/maps on 6.1: together more than the UFFDIO_REGISTER itself, measured on rxe in
// the VM). See GranuleWatch.watchKnownMemory for how a watch uses it.
//
// A record lives until a call that may change what is mapped under it forgets it: the hooked
// munmap, mmap(MAP_FIXED), mremap, shmat and shmdt (cmemhooks_perform, before the real call),
// and the monitor's worker for every unmap or remap event (a raw system call on registered
// memory). What no hook or event reports (a raw munmap + mmap over memory not yet registered)
// leaves a record that is no longer true: the blind spot the hooks document.
//
// Each record carries a stamp from a clock that ticks once per record: a granule registered
// whole at clock value c registered every recorded mapping with a smaller stamp that still
// exists, so a later buffer there needs no ioctl at all. And the slots (monitors) that
// registered the whole mapping since it was recorded, so that the same holds in a granule
// registered in pieces; a monitor that unregisters memory takes its mark off the records there.
//
// Allocation-free and short: the hooked mmap records, and an allocator may call it holding its
// own lock. The lock is made anew in a forked child (a thread of the parent may have held it), by
// the fork handler the hooks register when they are first installed: records are made only
// while a handler is installed, and registering a fork handler from inside an allocator's mmap
// would allocate.
#include "memory_hooks.h"

#include <pthread.h>
#include <stdatomic.h>

#define KNOWN_CAPACITY 256

typedef struct {
    uintptr_t start, end;  // start == end: empty
    uint64_t stamp;
    uint32_t registered_slots;
} known_record;

static known_record records[KNOWN_CAPACITY];
static unsigned next_slot;
static unsigned record_count;
static _Atomic uint64_t clock_now = 1;
static pthread_mutex_t known_lock = PTHREAD_MUTEX_INITIALIZER;
// Set by the first record: until then (no monitor ever ran) a hooked call takes no lock here.
static _Atomic int recorded_any;

void cmemhooks_known_mappings_reset_in_child(void) {
    pthread_mutex_init(&known_lock, NULL);
    for (unsigned index = 0; index < KNOWN_CAPACITY; index++) records[index].start = records[index].end = 0;
    record_count = 0;
}

uint64_t cmemhooks_known_mappings_clock(void) {
    return atomic_load_explicit(&clock_now, memory_order_acquire);
}

// The record `back` places before the newest (1: the newest). Walks go newest first and stop
// once they met every live record: a process has few live records at a time (the churn figure
// one or two), and a walk of all KNOWN_CAPACITY slots, five per map-register-unmap cycle, was a
// tenth of the cycle's user time (perf, CacheBenchmark --only churn). Lock held.
static known_record *record_back(unsigned back) {
    return &records[(next_slot + KNOWN_CAPACITY - back) % KNOWN_CAPACITY];
}

static int is_live(const known_record *record) { return record->start != record->end; }

// Called with the lock held.
static void forget_locked(uintptr_t start, uintptr_t end) {
    unsigned live_left = record_count;
    for (unsigned back = 1; back <= KNOWN_CAPACITY && live_left > 0; back++) {
        known_record *record = record_back(back);
        if (!is_live(record)) continue;
        live_left--;
        if (record->start < end && start < record->end) {
            record->start = record->end = 0;
            record_count--;
        }
    }
}

void cmemhooks_known_mapping_add(uintptr_t start, uintptr_t end) {
    if (end <= start) return;
    atomic_store_explicit(&recorded_any, 1, memory_order_relaxed);
    pthread_mutex_lock(&known_lock);
    forget_locked(start, end);  // a record over the same pages is older and no longer true
    known_record *record = &records[next_slot];
    if (record->start == record->end) record_count++;
    record->start = start;
    record->end = end;
    record->registered_slots = 0;
    // The stamp is taken after the kernel made the mapping: a register that read the clock
    // after this tick ran after the mapping existed.
    record->stamp = atomic_fetch_add_explicit(&clock_now, 1, memory_order_acq_rel);
    next_slot = (next_slot + 1) % KNOWN_CAPACITY;
    pthread_mutex_unlock(&known_lock);
}

void cmemhooks_known_mappings_forget(uintptr_t start, uintptr_t end) {
    if (end <= start || !atomic_load_explicit(&recorded_any, memory_order_relaxed)) return;
    pthread_mutex_lock(&known_lock);
    forget_locked(start, end);
    pthread_mutex_unlock(&known_lock);
}

int cmemhooks_known_mapping_find(uintptr_t start, uintptr_t end, cmemhooks_known_mapping *out) {
    int found = 0;
    if (!atomic_load_explicit(&recorded_any, memory_order_relaxed)) return 0;
    pthread_mutex_lock(&known_lock);
    // Newest first: a buffer is registered soon after its memory is mapped.
    unsigned live_left = record_count;
    for (unsigned back = 1; back <= KNOWN_CAPACITY && live_left > 0; back++) {
        const known_record *record = record_back(back);
        if (!is_live(record)) continue;
        live_left--;
        if (record->start <= start && end <= record->end) {
            out->start = record->start;
            out->end = record->end;
            out->stamp = record->stamp;
            out->registered_slots = record->registered_slots;
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&known_lock);
    return found;
}

// Only the record the watch found (its stamp): marking every record in the range also marked a
// mapping made there after the register ran (an unmap, its event, a hooked mmap over the hole),
// which nobody registered; a later watch trusted the mark and cached memory whose unmap no one
// would report.
void cmemhooks_known_mappings_mark_registered(uintptr_t start, uintptr_t end, uint64_t stamp, int slot) {
    if (slot < 0 || slot >= CMEMHOOKS_SLOTS) return;
    pthread_mutex_lock(&known_lock);
    unsigned live_left = record_count;
    for (unsigned back = 1; back <= KNOWN_CAPACITY && live_left > 0; back++) {
        known_record *record = record_back(back);
        if (!is_live(record)) continue;
        live_left--;
        if (record->stamp == stamp) {  // stamps are unique: this is the one
            if (start <= record->start && record->end <= end) record->registered_slots |= 1u << slot;
            break;
        }
    }
    pthread_mutex_unlock(&known_lock);
}

void cmemhooks_known_mappings_unmark(uintptr_t start, uintptr_t end, int slot) {
    if (slot < 0 || slot >= CMEMHOOKS_SLOTS) return;
    pthread_mutex_lock(&known_lock);
    unsigned live_left = record_count;
    for (unsigned back = 1; back <= KNOWN_CAPACITY && live_left > 0; back++) {
        known_record *record = record_back(back);
        if (!is_live(record)) continue;
        live_left--;
        if (record->start < end && start < record->end) record->registered_slots &= ~(1u << slot);
    }
    pthread_mutex_unlock(&known_lock);
}
