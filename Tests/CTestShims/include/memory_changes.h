#pragma once
// Memory changes only tests and benchmarks make: raw system calls that no hook sees (how a
// program's change reaches the monitor as a userfaultfd event, or not at all), and calls
// Swift's Glibc does not declare.

/// mremap's flags (<linux/mman.h>, not imported by Swift's Glibc).
enum { CTEST_MREMAP_MAYMOVE = 1, CTEST_MREMAP_FIXED = 2 };

/// A raw mmap system call of private anonymous memory at `address` (MAP_FIXED_NOREPLACE),
/// bypassing the hooks, as glibc's malloc maps its large blocks. MAP_FAILED with errno.
void *ctest_raw_mmap_anonymous(void *address, unsigned long length);

/// mseal(address, length, 0) (Linux 6.10+; ENOSYS before): the range can never be unmapped,
/// remapped or have its protection changed again. Tests use it to make a munmap fail for real.
long ctest_mseal(void *address, unsigned long length);

/// A raw mremap system call (`target` used with MREMAP_FIXED), bypassing libc's and so the
/// hooks: how a program's mremap reaches the monitor as a userfaultfd REMAP event.
void *ctest_raw_mremap(void *address, unsigned long old_length, unsigned long new_length, int flags, void *target);

/// mremap(old, old_length, new_length, 0) through libc: shrink or grow in place, never move.
void *ctest_mremap_in_place(void *address, unsigned long old_length, unsigned long new_length);

/// mremap(old, old_length, new_length, MREMAP_MAYMOVE | MREMAP_FIXED, target) through libc.
void *ctest_mremap_to(void *address, unsigned long old_length, unsigned long new_length, void *target);

/// A raw madvise system call, bypassing the hooks (DONTNEED and REMOVE are then userfaultfd
/// REMOVE events; guard advice is seen by nothing).
long ctest_raw_madvise(void *address, unsigned long length, int advice);

/// process_madvise() of this process over one range, through libc (and so the hooks): a pidfd
/// of our own pid is opened and closed around it. -1 with errno on failure.
long ctest_process_madvise_self(void *address, unsigned long length, int advice);

/// mprotect as a raw system call: no hook sees it.
int ctest_raw_mprotect(void *address, unsigned long length, int prot);

/// The C library's pkey_mprotect (what the process's hook defines; Swift's Glibc does not
/// declare it).
int ctest_pkey_mprotect(void *address, unsigned long length, int prot, int pkey);

/// pkey_alloc(0, rights): a protection key, or -1 with errno (ENOSPC, or EINVAL/ENOSYS where the
/// CPU or kernel has no protection keys). pkey_free(key) gives it back.
int ctest_pkey_alloc(unsigned int rights);
int ctest_pkey_free(int key);

/// shmget(IPC_PRIVATE, size) + shmat: the attached address, or NULL with errno set. The
/// segment is marked for removal at once, so it goes away with its last detach.
void *ctest_shm_attach_private(unsigned long size);

/// shmat as a raw system call: no hook sees it. (void *)-1 with errno set on failure.
void *ctest_raw_shmat(int id, void *address, int flags);

/// shmdt as a raw system call: no hook sees it.
int ctest_raw_shmdt(void *address);

/// brk as a raw system call: no hook sees it, and glibc's cached break is not updated (the
/// caller puts the break back where glibc thinks it is). The break after the call.
void *ctest_raw_brk(void *address);
