#define _GNU_SOURCE
#include "mapping_shim.h"
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

void *cshims_mremap_maymove(void *address, unsigned long old_length, unsigned long new_length) {
    return mremap(address, old_length, new_length, MREMAP_MAYMOVE);
}

long cshims_raw_munmap(void *address, unsigned long length) {
    return syscall(SYS_munmap, address, length);
}

long cshims_mseal(void *address, unsigned long length) {
#ifndef SYS_mseal
#define SYS_mseal 462
#endif
    return syscall(SYS_mseal, address, length, 0UL);
}
