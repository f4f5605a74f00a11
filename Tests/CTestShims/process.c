#define _GNU_SOURCE
#include "process.h"
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int ctest_fork(void) { return fork(); }

int ctest_fork_holding_until_closed(int read_fd, int write_fd) {
    int pid = fork();
    if (pid != 0) return pid;
    close(write_fd);
    char byte;
    while (read(read_fd, &byte, 1) > 0) {}
    _exit(0);
}

int ctest_fork_touch_unmap_exit(void *address, unsigned long length, unsigned long page_size) {
    pid_t pid = fork();
    if (pid != 0) return (int)pid;
    volatile char *bytes = (volatile char *)address;
    for (unsigned long offset = 0; offset < length; offset += page_size) bytes[offset] = 1;
    if (munmap(address, length) != 0) _exit(2);
    _exit(0);
}

int ctest_wait_child(int pid, int timeout_ms) {
    for (int waited = 0;; waited++) {
        int status = 0;
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (done < 0) return -1;
        if (waited >= timeout_ms) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -2;
        }
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

int ctest_probe_unprivileged_userfaultfd(unsigned long long features) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(64);
        int result = 0;
        long plain = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
        if (plain >= 0) { result |= 1; close((int)plain); }
        long fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
        if (fd >= 0) {
            result |= 2;
            struct uffdio_api api = {.api = UFFD_API, .features = features};
            if (ioctl((int)fd, UFFDIO_API, &api) == 0) result |= 4;
            void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            struct uffdio_register reg = {.range = {(unsigned long)page, 4096}, .mode = UFFDIO_REGISTER_MODE_WP};
            if (page != MAP_FAILED && ioctl((int)fd, UFFDIO_REGISTER, &reg) == 0) result |= 8;
        }
        _exit(result);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
