// C that Swift cannot call directly, for the monitor, MemoryMapping and `rdmamemory check`:
// variadic syscall() and ioctl(), the ioctl request numbers built from _IOWR() (userfaultfd's
// ABI), and the few libc calls Swift's Glibc does not declare. One-line wrappers, each prefixed
// cshims_; nothing here keeps state but the fork handler's list of userfaultfd descriptors.
// It can shrink as Swift's Glibc imports more (mremap, eventfd, pthread_setname_np).
// Not here: the engine's read side (CMMUNotifier), the cache's counters (CShardedCounters), the
// process's memory hooks (CMemoryHooks) and what only tests call (Tests/CTestShims).
#pragma once
#include "userfaultfd_shim.h"
#include "thread_shim.h"
#include "memory_change_shim.h"
