#pragma once
// <sys/ioctl.h> must come before <linux/userfaultfd.h>: the UFFDIO_* macros use _IOWR.
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>

/// syscall(SYS_userfaultfd, flags): -1 with errno set on failure.
int cshims_userfaultfd(int flags);

/// The ioctl request numbers; the macros expand to expressions Swift does not import.
extern const unsigned long CSHIMS_UFFDIO_API;
extern const unsigned long CSHIMS_UFFDIO_REGISTER;
extern const unsigned long CSHIMS_UFFDIO_UNREGISTER;
extern const unsigned long CSHIMS_UFFDIO_WAKE;
extern const unsigned long CSHIMS_UFFDIO_WRITEPROTECT;
/// ioctl(USERFAULTFD_IOC_NEW) on /dev/userfaultfd: the root-only route when the syscall is
/// refused (vm.unprivileged_userfaultfd = 0).
extern const unsigned long CSHIMS_USERFAULTFD_IOC_NEW;

/// ioctl(fd, request, arg) with a pointer argument (ioctl is variadic in C).
int cshims_ioctl_pointer(int fd, unsigned long request, void *argument);

/// Closes `fd` in every fork() child (an atfork handler), so that only this process holds the
/// userfaultfd: a context that a child still held would survive the monitor's release of it
/// (`dup3` over the number), and every registered range would keep making munmap wait for a
/// reader that is gone. 0, or -1 when too many are tracked.
int cshims_userfaultfd_close_in_children(int fd);
/// Stops closing `fd` in children (the monitor closed it).
void cshims_userfaultfd_keep_in_children(int fd);

/// dup3(from, to, O_CLOEXEC): dup2 would clear close-on-exec on `to`.
int cshims_dup_cloexec(int from, int to);
