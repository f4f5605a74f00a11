#define _GNU_SOURCE
#include "memory_change_shim.h"
#include <errno.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <unistd.h>

void *cshims_mremap_maymove(void *address, unsigned long old_length, unsigned long new_length) {
    return mremap(address, old_length, new_length, MREMAP_MAYMOVE);
}

long cshims_raw_munmap(void *address, unsigned long length) { return syscall(SYS_munmap, address, length); }

void *cshims_sbrk(intptr_t increment) { return sbrk(increment); }

int cshims_shm_create(unsigned long size) { return shmget(IPC_PRIVATE, size, IPC_CREAT | 0600); }

int cshims_shm_remove(int id) { return shmctl(id, IPC_RMID, NULL); }

void *cshims_shmat(int id, void *address, int flags) { return shmat(id, address, flags); }

int cshims_shmdt(void *address) { return shmdt(address); }

const int CSHIMS_SHM_REMAP = SHM_REMAP;

int cshims_memfd(const char *name, unsigned long size) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}
