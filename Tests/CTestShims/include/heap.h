#pragma once
// glibc's <malloc.h> is not part of Swift's Glibc module.

/// Bytes the heap has handed out (mallinfo2: in-use chunks plus malloc's own mmaps). Unlike
/// RSS it does not miss memory that an earlier free() left for reuse.
unsigned long long ctest_heap_in_use(void);

/// mallopt(M_MMAP_THRESHOLD, bytes): 1 makes every malloc a fresh mapping (tests of the hooks).
/// 1 on success, 0 where the allocator is not glibc's (a preloaded one ignores it).
int ctest_set_mmap_threshold(int bytes);
