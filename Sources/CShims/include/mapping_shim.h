#pragma once
// Memory-mapping calls Swift cannot make directly.

/// mremap(old, old_length, new_length, MREMAP_MAYMOVE): glibc declares mremap variadic.
void *cshims_mremap_maymove(void *address, unsigned long old_length, unsigned long new_length);

/// A raw munmap system call, bypassing libc (and any hook a peer library may install in it).
long cshims_raw_munmap(void *address, unsigned long length);

/// mseal(address, length, 0) (Linux 6.10+; ENOSYS before): the range can never be unmapped,
/// remapped or have its protection changed again. Tests use it to make a munmap fail for real.
long cshims_mseal(void *address, unsigned long length);
