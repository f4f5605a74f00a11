#pragma once
// Memory-mapping calls Swift cannot make directly.

/// mremap's flags (<linux/mman.h>, not imported by Swift's Glibc).
enum { CSHIMS_MREMAP_MAYMOVE = 1, CSHIMS_MREMAP_FIXED = 2 };

/// mremap(old, old_length, new_length, MREMAP_MAYMOVE): glibc declares mremap variadic.
void *cshims_mremap_maymove(void *address, unsigned long old_length, unsigned long new_length);

/// A raw munmap system call, bypassing libc (and any hook a peer library may install in it).
long cshims_raw_munmap(void *address, unsigned long length);

/// A raw mmap system call of private anonymous memory at `address` (MAP_FIXED_NOREPLACE),
/// bypassing the hooks, as glibc's malloc maps its large blocks. MAP_FAILED with errno.
void *cshims_raw_mmap_anonymous(void *address, unsigned long length);

/// mseal(address, length, 0) (Linux 6.10+; ENOSYS before): the range can never be unmapped,
/// remapped or have its protection changed again. Tests use it to make a munmap fail for real.
long cshims_mseal(void *address, unsigned long length);

/// A raw mremap system call (`target` used with MREMAP_FIXED), bypassing libc's and so the
/// hooks: how a program's mremap reaches the monitor as a userfaultfd REMAP event.
void *cshims_raw_mremap(void *address, unsigned long old_length, unsigned long new_length, int flags, void *target);

/// A raw madvise system call, bypassing the hooks (DONTNEED and REMOVE are then userfaultfd
/// REMOVE events; guard advice is seen by nothing).
long cshims_raw_madvise(void *address, unsigned long length, int advice);

/// process_madvise() of this process over one range, through libc (and so the hooks): a pidfd
/// of our own pid is opened and closed around it. -1 with errno on failure.
long cshims_process_madvise_self(void *address, unsigned long length, int advice);
