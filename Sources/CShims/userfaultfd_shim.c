#define _GNU_SOURCE
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

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#define TRACKED_DESCRIPTORS 32
static int tracked_descriptors[TRACKED_DESCRIPTORS];
static int tracked_count;
static pthread_mutex_t tracked_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t handlers_once = PTHREAD_ONCE_INIT;

static void before_fork(void) { pthread_mutex_lock(&tracked_lock); }
static void parent_after_fork(void) { pthread_mutex_unlock(&tracked_lock); }
static void child_after_fork(void) {
    for (int i = 0; i < tracked_count; i++) close(tracked_descriptors[i]);
    tracked_count = 0;
    pthread_mutex_unlock(&tracked_lock);
}
static void install_handlers(void) { pthread_atfork(before_fork, parent_after_fork, child_after_fork); }

int cshims_userfaultfd_close_in_children(int fd) {
    pthread_once(&handlers_once, install_handlers);
    int result = -1;
    pthread_mutex_lock(&tracked_lock);
    if (tracked_count < TRACKED_DESCRIPTORS) {
        tracked_descriptors[tracked_count++] = fd;
        result = 0;
    }
    pthread_mutex_unlock(&tracked_lock);
    return result;
}

void cshims_userfaultfd_keep_in_children(int fd) {
    pthread_mutex_lock(&tracked_lock);
    for (int i = 0; i < tracked_count; i++) {
        if (tracked_descriptors[i] == fd) {
            tracked_descriptors[i] = tracked_descriptors[--tracked_count];
            break;
        }
    }
    pthread_mutex_unlock(&tracked_lock);
}

int cshims_dup_cloexec(int from, int to) { return dup3(from, to, O_CLOEXEC); }
