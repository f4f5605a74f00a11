/*
 * What the Swift half of the UCX adapter calls in the C half (not for applications: see
 * rdmamemory_ucx.h).
 */
#ifndef RDMAMEMORY_UCX_BRIDGE_H
#define RDMAMEMORY_UCX_BRIDGE_H

#include <stddef.h>
#include <stdint.h>
#include "rdmamemory_ucx.h"

/*
 * An invalidation of [start, start + length) in the engine: counted (a registration that
 * overlapped it in time is reported again), then reported to UCM. Called inside the engine's
 * callbacks, from an unmapping thread, the monitor's worker or an explicit caller.
 */
void rdmamemory_ucx_invalidated(uintptr_t start, size_t length);

/* The engine's window sequence (AddressSpace.windowSequenceAddress), which UCX's lookups test. */
void rdmamemory_ucx_set_window(const void *window);

#endif
