// C that only tests and benchmarks call: raw system calls no hook sees (to make the changes a
// program's own code would make behind the monitor's back), fork() and what a forked child does
// (async-signal-safe calls only, so C), and glibc's allocator statistics. No product links this
// target; symbols are prefixed ctest_.
#pragma once
#include "memory_changes.h"
#include "process.h"
#include "heap.h"
