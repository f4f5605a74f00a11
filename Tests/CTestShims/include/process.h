#pragma once
// fork() for tests of what a forked child may do. In a child of a multithreaded process only
// async-signal-safe calls are allowed, so what the child does is written here, in C.

/// fork(): Swift's Glibc marks it unavailable.
int ctest_fork(void);

/// Forks a child that closes `write_fd`, blocks reading `read_fd` until every writer closed it,
/// then _exit(0)s: a child that holds the parent's descriptors for as long as the parent wants.
/// Returns its pid or -1.
int ctest_fork_holding_until_closed(int read_fd, int write_fd);

/// fork(); the child writes one byte to every page of [address, address + length), unmaps
/// it, and _exit(0)s. Returns the child's pid or -1.
int ctest_fork_touch_unmap_exit(void *address, unsigned long length, unsigned long page_size);

/// waitpid(pid) with a timeout in milliseconds: the exit status (>= 0), -2 on timeout (the
/// child is then killed), -1 with errno set on failure.
int ctest_wait_child(int pid, int timeout_ms);

/// Forks a child that drops to uid/gid 65534 (nobody) and tries userfaultfd as an unprivileged
/// user. Returns the child's exit status (bits: 1 plain userfaultfd opened, 2 opened with
/// UFFD_USER_MODE_ONLY, 4 its UFFDIO_API with `features` succeeded, 8 a write-protect
/// UFFDIO_REGISTER of an anonymous page succeeded; 64 when dropping privileges failed), or -1.
int ctest_probe_unprivileged_userfaultfd(unsigned long long features);
