#pragma once
// fork() for tests of what a forked child may do (cshims_wait_child in monitor_shim.h waits for
// it with a deadline).

/// fork(): Swift's Glibc marks it unavailable.
int cshims_fork(void);

/// Forks a child that closes `write_fd`, blocks reading `read_fd` until every writer closed it,
/// then _exit(0)s (async-signal-safe calls only): a child that holds the parent's descriptors
/// for as long as the parent wants. Returns its pid or -1.
int cshims_fork_holding_until_closed(int read_fd, int write_fd);
