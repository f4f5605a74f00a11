/*
 * What the Swift half of the monitor calls in the C half (not for applications: see
 * rdmamemory_libfabric.h).
 */
#ifndef RDMAMEMORY_LIBFABRIC_BRIDGE_H
#define RDMAMEMORY_LIBFABRIC_BRIDGE_H

#include <stddef.h>
#include <stdint.h>
#include "rdmamemory_libfabric.h"

/*
 * libfabric's notify for [addr, addr + len): it takes libfabric's mm_lock and uncaches every
 * overlapping entry. Does nothing before the import. Never call it holding a lock that
 * subscribe, unsubscribe or valid take (they run under mm_lock).
 */
void rdmamemory_lf_notify(uintptr_t addr, size_t len);

#endif
