#pragma once
// Calls the memory monitor and its tests make that Swift cannot make directly (variadic or
// deprecated in glibc's headers), or that must run in C because a forked child of a
// multithreaded process may only call async-signal-safe functions.
#include <stdint.h>
#include <sys/types.h>

/// sbrk(increment): the program break before the call, or (void *)-1 with errno set.
void *cshims_sbrk(intptr_t increment);

/// mremap(old, old_length, new_length, 0): shrink or grow in place, never move.
void *cshims_mremap_in_place(void *address, unsigned long old_length, unsigned long new_length);

/// mremap(old, old_length, new_length, MREMAP_MAYMOVE | MREMAP_FIXED, target).
void *cshims_mremap_to(void *address, unsigned long old_length, unsigned long new_length, void *target);

/// shmget(IPC_PRIVATE, size) + shmat: the attached address, or NULL with errno set. The
/// segment is marked for removal at once, so it goes away with its last detach.
void *cshims_shm_attach_private(unsigned long size);

/// shmdt(address): 0, or -1 with errno set.
int cshims_shmdt(void *address);

/// shmget(IPC_PRIVATE, size, 0600): the segment id, or -1 with errno set.
int cshims_shm_create(unsigned long size);

/// shmctl(id, IPC_RMID): the segment goes away with its last detach.
int cshims_shm_remove(int id);

/// shmat(id, address, flags) through the C library (and so through any hook of it): the
/// attached address, or (void *)-1 with errno set.
void *cshims_shmat(int id, void *address, int flags);

/// The same as a raw system call: no hook sees it.
void *cshims_raw_shmat(int id, void *address, int flags);

/// shmdt as a raw system call: no hook sees it.
int cshims_raw_shmdt(void *address);

/// SHM_REMAP (Linux) for shmat's flags.
extern const int CSHIMS_SHM_REMAP;

/// memfd_create(name, MFD_CLOEXEC) and ftruncate(fd, size): the descriptor, or -1 with errno set.
int cshims_memfd(const char *name, unsigned long size);

/// mprotect as a raw system call: no hook sees it.
int cshims_raw_mprotect(void *address, unsigned long length, int prot);

/// The C library's pkey_mprotect (what the process's hook defines; Swift's Glibc does not
/// declare it).
int cshims_pkey_mprotect(void *address, unsigned long length, int prot, int pkey);

/// Names the calling thread (pthread_setname_np, at most 15 characters): what `ps -T`, gdb
/// and /proc/self/task/*/comm show.
void cshims_name_thread(const char *name);

/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK): the monitor thread's stop signal.
int cshims_eventfd(void);

/// fork(); the child writes one byte to every page of [address, address + length), unmaps
/// it, and _exit(0)s, using only async-signal-safe calls. Returns the child's pid or -1.
int cshims_fork_touch_unmap_exit(void *address, unsigned long length, unsigned long page_size);

/// waitpid(pid) with a timeout in milliseconds: the exit status (>= 0), -2 on timeout (the
/// child is then killed), -1 with errno set on failure.
int cshims_wait_child(int pid, int timeout_ms);

/// Forks a child that drops to uid/gid 65534 (nobody) and tries userfaultfd as an unprivileged
/// user. Returns the child's exit status (bits: 1 plain userfaultfd opened, 2 opened with
/// UFFD_USER_MODE_ONLY, 4 its UFFDIO_API with `features` succeeded, 8 a write-protect
/// UFFDIO_REGISTER of an anonymous page succeeded; 64 when dropping privileges failed), or -1.
int cshims_probe_unprivileged_userfaultfd(unsigned long long features);

/// pkey_alloc(0, rights): a protection key, or -1 with errno (ENOSPC, or EINVAL/ENOSYS where the
/// CPU or kernel has no protection keys). pkey_free(key) gives it back.
int cshims_pkey_alloc(unsigned int rights);
int cshims_pkey_free(int key);
