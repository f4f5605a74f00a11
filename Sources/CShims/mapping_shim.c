#define _GNU_SOURCE
#include "mapping_shim.h"
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <errno.h>
#include <sys/uio.h>

void *cshims_mremap_maymove(void *address, unsigned long old_length, unsigned long new_length) {
    return mremap(address, old_length, new_length, MREMAP_MAYMOVE);
}

long cshims_raw_munmap(void *address, unsigned long length) {
    return syscall(SYS_munmap, address, length);
}

void *cshims_raw_mmap_anonymous(void *address, unsigned long length) {
    return (void *)syscall(SYS_mmap, address, length, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | 0x100000 /* MAP_FIXED_NOREPLACE */, -1, 0);
}

long cshims_mseal(void *address, unsigned long length) {
#ifndef SYS_mseal
#define SYS_mseal 462
#endif
    return syscall(SYS_mseal, address, length, 0UL);
}

void *cshims_raw_mremap(void *address, unsigned long old_length, unsigned long new_length, int flags, void *target) {
    return (void *)syscall(SYS_mremap, address, old_length, new_length, flags, target);
}

long cshims_raw_madvise(void *address, unsigned long length, int advice) {
    return syscall(SYS_madvise, address, length, advice);
}

long cshims_process_madvise_self(void *address, unsigned long length, int advice) {
    int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (pidfd < 0) return -1;
    struct iovec vector = {.iov_base = address, .iov_len = length};
    long result = process_madvise(pidfd, &vector, 1, advice, 0);
    int error = errno;
    close(pidfd);
    errno = error;
    return result;
}
