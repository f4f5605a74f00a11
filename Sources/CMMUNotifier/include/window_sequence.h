// An address space's window sequence (NotifierEngine's AddressSpace: odd while a monitor's window
// is open) in memory C can read.
//
// Why C: a fast path written in C (libfabric's `valid`, called on every libfabric cache hit)
// must see an open window with one load, without a call into Swift; a Swift `Atomic` has no
// address C may use. Swift reads and bumps it through these inline functions, which compile to
// the same single instructions its own atomics would.
#pragma once
#include <stdatomic.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cmmu_window_sequence {
    _Atomic uint64_t value;
} cmmu_window_sequence;

static inline void cmmu_window_sequence_init(cmmu_window_sequence *sequence, uint64_t value) {
    atomic_init(&sequence->value, value);
}

static inline uint64_t cmmu_window_sequence_load(const cmmu_window_sequence *sequence) {
    return atomic_load_explicit(&sequence->value, memory_order_acquire);
}

/// One step: the first window to open makes it odd, the last to close even (under the
/// address space's interval lock: one writer at a time).
static inline void cmmu_window_sequence_bump(cmmu_window_sequence *sequence) {
    atomic_fetch_add_explicit(&sequence->value, 1, memory_order_release);
}

/// Tracks `sequence` for fork(): in a child every tracked sequence is made odd for good (a
/// window that can never close), so a lookup there leaves its fast path at once and asks
/// `cmmu_in_forked_child` instead of trusting a cache whose monitor and device state are the
/// parent's. 0, or -1 when too many are tracked (then a child's lookups are not stopped).
int cmmu_window_sequence_track(cmmu_window_sequence *sequence);
void cmmu_window_sequence_untrack(cmmu_window_sequence *sequence);

/// 1 in a process forked (without exec) from one that tracked a sequence.
int cmmu_in_forked_child(void);

#ifdef __cplusplus
}
#endif
