/*
 * What the Swift half of the monitor calls in the C half (not for applications: see
 * rdmamemory_libfabric.h).
 */
#ifndef RDMAMEMORY_LIBFABRIC_BRIDGE_H
#define RDMAMEMORY_LIBFABRIC_BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "rdmamemory_libfabric.h"

/*
 * libfabric's notify for [addr, addr + len): it takes libfabric's mm_lock and uncaches every
 * overlapping entry. Does nothing before the import. Never call it holding a lock that
 * subscribe, unsubscribe or valid take (they run under mm_lock).
 */
void rdmamemory_lf_notify(uintptr_t addr, size_t len);

/*
 * The memo of ranges valid confirmed (libfabric_monitor.c says how it works): libfabric's hit
 * path reads it in C, the Swift half fills it under its records lock. Opaque here, so Swift
 * sees plain functions.
 */
size_t rdmamemory_lf_memo_size(void);
/* Makes the rdmamemory_lf_memo_size() bytes at `memo` a memo over the window sequence at
 * `window` (NotifierEngine's AddressSpace.windowSequenceAddress) that confirms no range yet. */
void rdmamemory_lf_memo_init(void *memo, const void *window);
uint64_t rdmamemory_lf_memo_epoch(void *memo);
/* True when no window is open and [start, start + length) was confirmed at the current epoch. */
bool rdmamemory_lf_memo_confirms(void *memo, uintptr_t start, size_t length);
/* Records that the range was current at `epoch` (one writer at a time). */
void rdmamemory_lf_memo_record(void *memo, uintptr_t start, size_t length, uint64_t epoch);
/* Every confirmed range is suspect from now on (an invalidation starts, a range leaves). */
void rdmamemory_lf_memo_forget_all(void *memo);
/* Hits the memo answered on libfabric's hit path. */
uint64_t rdmamemory_lf_memo_hits(void *memo);

/*
 * Hands the C half the Swift monitor object and its memo, which libfabric's valid is to ask
 * (start does, once).
 */
void rdmamemory_lf_set_monitor(const void *monitor, void *memo);

#endif
