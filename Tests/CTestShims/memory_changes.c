#define _GNU_SOURCE
#include "memory_changes.h"
#include <errno.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

void *ctest_raw_mmap_anonymous(void *address, unsigned long length) {
    return (void *)syscall(SYS_mmap, address, length, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | 0x100000 /* MAP_FIXED_NOREPLACE */, -1, 0);
}

long ctest_mseal(void *address, unsigned long length) {
#ifndef SYS_mseal
#define SYS_mseal 462
#endif
    return syscall(SYS_mseal, address, length, 0UL);
}

void *ctest_raw_mremap(void *address, unsigned long old_length, unsigned long new_length, int flags, void *target) {
    return (void *)syscall(SYS_mremap, address, old_length, new_length, flags, target);
}

void *ctest_mremap_in_place(void *address, unsigned long old_length, unsigned long new_length) {
    return mremap(address, old_length, new_length, 0);
}

void *ctest_mremap_to(void *address, unsigned long old_length, unsigned long new_length, void *target) {
    return mremap(address, old_length, new_length, MREMAP_MAYMOVE | MREMAP_FIXED, target);
}

long ctest_raw_madvise(void *address, unsigned long length, int advice) {
    return syscall(SYS_madvise, address, length, advice);
}

long ctest_process_madvise_self(void *address, unsigned long length, int advice) {
    int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (pidfd < 0) return -1;
    struct iovec vector = {.iov_base = address, .iov_len = length};
    long result = process_madvise(pidfd, &vector, 1, advice, 0);
    int error = errno;
    close(pidfd);
    errno = error;
    return result;
}

int ctest_raw_mprotect(void *address, unsigned long length, int prot) {
    return (int)syscall(SYS_mprotect, address, length, prot);
}

int ctest_pkey_mprotect(void *address, unsigned long length, int prot, int pkey) {
    return pkey_mprotect(address, length, prot, pkey);
}

int ctest_pkey_alloc(unsigned int rights) { return pkey_alloc(0, rights); }
int ctest_pkey_free(int key) { return pkey_free(key); }

void *ctest_shm_attach_private(unsigned long size) {
    int id = shmget(IPC_PRIVATE, size, IPC_CREAT | 0600);
    if (id < 0) return NULL;
    void *address = shmat(id, NULL, 0);
    int saved = errno;
    shmctl(id, IPC_RMID, NULL);
    if (address == (void *)-1) {
        errno = saved;
        return NULL;
    }
    return address;
}

void *ctest_raw_shmat(int id, void *address, int flags) { return (void *)syscall(SYS_shmat, id, address, flags); }

int ctest_raw_shmdt(void *address) { return (int)syscall(SYS_shmdt, address); }

void *ctest_raw_brk(void *address) { return (void *)syscall(SYS_brk, address); }
