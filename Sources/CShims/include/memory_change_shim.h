#pragma once
// Memory changes that Swift cannot make directly (variadic or deprecated in glibc's headers, or
// a raw system call): what MemoryMapping does on purpose and what `rdmamemory check` makes
// happen to registered memory.
#include <stdint.h>

/// mremap(old, old_length, new_length, MREMAP_MAYMOVE): glibc declares mremap variadic.
void *cshims_mremap_maymove(void *address, unsigned long old_length, unsigned long new_length);

/// A raw munmap system call, bypassing libc (and any hook a peer library may install in it).
long cshims_raw_munmap(void *address, unsigned long length);

/// sbrk(increment): the program break before the call, or (void *)-1 with errno set.
void *cshims_sbrk(intptr_t increment);

/// shmget(IPC_PRIVATE, size, 0600): the segment id, or -1 with errno set.
int cshims_shm_create(unsigned long size);

/// shmctl(id, IPC_RMID): the segment goes away with its last detach.
int cshims_shm_remove(int id);

/// shmat(id, address, flags) through the C library (and so through any hook of it): the
/// attached address, or (void *)-1 with errno set.
void *cshims_shmat(int id, void *address, int flags);

/// shmdt(address): 0, or -1 with errno set.
int cshims_shmdt(void *address);

/// SHM_REMAP (Linux) for shmat's flags.
extern const int CSHIMS_SHM_REMAP;

/// memfd_create(name, MFD_CLOEXEC) and ftruncate(fd, size): the descriptor, or -1 with errno set.
int cshims_memfd(const char *name, unsigned long size);
