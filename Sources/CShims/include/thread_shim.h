#pragma once
// Calls the monitor's threads make that Swift's Glibc does not declare.

/// Names the calling thread (pthread_setname_np, at most 15 characters): what `ps -T`, gdb
/// and /proc/self/task/*/comm show.
void cshims_name_thread(const char *name);

/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK): the monitor thread's stop signal.
int cshims_eventfd(void);
