// The C half of RDMAMemory's UCX memory event source, as Swift sees it.
//
// Why C: UCX is reached through symbols an unmodified program already calls (UCM's
// ucm_set_event_handler, verbs' ibv_reg_mr and ibv_dereg_mr, ucs_rcache_get), which only C
// definitions in a preloaded library can interpose, and through libucm's functions, found at run
// time (UCX is often loaded late, by dlopen, and this library must not depend on it).
// ucx_monitor.c holds all of it; Swift (RDMAMemoryUCX) owns the state.
//   rdmamemory_ucx.h  what C programs call (the import, counters)
//   ucx_bridge.h      what the Swift half calls in the C half
#pragma once
#include "rdmamemory_ucx.h"
#include "ucx_bridge.h"
