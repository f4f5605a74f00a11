#include "heap.h"
#include <malloc.h>

unsigned long long ctest_heap_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return (unsigned long long)info.uordblks + (unsigned long long)info.hblkhd;
}

int ctest_set_mmap_threshold(int bytes) { return mallopt(M_MMAP_THRESHOLD, bytes); }
