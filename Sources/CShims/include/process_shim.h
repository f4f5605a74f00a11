#pragma once
// fork() for tests of what a forked child may do (cshims_wait_child in monitor_shim.h waits for
// it with a deadline).

/// fork(): Swift's Glibc marks it unavailable.
int cshims_fork(void);
