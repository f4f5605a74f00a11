// The C half of RDMAMemory's libfabric memory monitor, as Swift sees it.
//
// Why C: libfabric's interface is a struct of function pointers at a fixed address
// (struct fid_mem_monitor), imported through static inline functions of <rdma/fi_ext.h>, and an
// unmodified program is reached only by a constructor that runs before its main(). Its hit path
// (valid) answers from a memo in a few loads without calling Swift. libfabric_monitor.c holds all
// of it; Swift (RDMAMemoryLibfabric) owns the state.
//   rdmamemory_libfabric.h  what C programs call (the import, explicit invalidation, counters)
//   libfabric_bridge.h      what the Swift half calls in the C half (notify, the memo)
#pragma once
#include "rdmamemory_libfabric.h"
#include "libfabric_bridge.h"
