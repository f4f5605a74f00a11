// C that Swift cannot call directly: variadic syscall(), ioctl request macros built from
// _IOWR(), and the userfaultfd ABI. Nothing here knows about verbs.
#pragma once
#include "userfaultfd_shim.h"
#include "srcu_counters.h"
#include "mapping_shim.h"
#include "monitor_shim.h"
#include "heap_shim.h"
#include "sharded_counters.h"
#include "window_sequence.h"
#include "callback_depth.h"
#include "process_shim.h"
