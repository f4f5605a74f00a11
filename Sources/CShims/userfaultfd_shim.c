#include "userfaultfd_shim.h"
#include <sys/syscall.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

int cshims_userfaultfd(int flags) { return (int)syscall(SYS_userfaultfd, flags); }

const unsigned long CSHIMS_UFFDIO_API = UFFDIO_API;
const unsigned long CSHIMS_UFFDIO_REGISTER = UFFDIO_REGISTER;
const unsigned long CSHIMS_UFFDIO_UNREGISTER = UFFDIO_UNREGISTER;
const unsigned long CSHIMS_UFFDIO_WAKE = UFFDIO_WAKE;
const unsigned long CSHIMS_UFFDIO_WRITEPROTECT = UFFDIO_WRITEPROTECT;
const unsigned long CSHIMS_USERFAULTFD_IOC_NEW = USERFAULTFD_IOC_NEW;

int cshims_ioctl_pointer(int fd, unsigned long request, void *argument) {
    return ioctl(fd, request, argument);
}
