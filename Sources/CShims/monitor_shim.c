#define _GNU_SOURCE
#include "monitor_shim.h"
#include <errno.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void *cshims_sbrk(intptr_t increment) { return sbrk(increment); }

void *cshims_mremap_in_place(void *address, unsigned long old_length, unsigned long new_length) {
    return mremap(address, old_length, new_length, 0);
}

void *cshims_mremap_to(void *address, unsigned long old_length, unsigned long new_length, void *target) {
    return mremap(address, old_length, new_length, MREMAP_MAYMOVE | MREMAP_FIXED, target);
}

void *cshims_shm_attach_private(unsigned long size) {
    int id = shmget(IPC_PRIVATE, size, IPC_CREAT | 0600);
    if (id < 0) return NULL;
    void *address = shmat(id, NULL, 0);
    int saved = errno;
    shmctl(id, IPC_RMID, NULL);
    if (address == (void *)-1) {
        errno = saved;
        return NULL;
    }
    return address;
}

int cshims_shmdt(void *address) { return shmdt(address); }

int cshims_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

int cshims_fork_touch_unmap_exit(void *address, unsigned long length, unsigned long page_size) {
    pid_t pid = fork();
    if (pid != 0) return (int)pid;
    volatile char *bytes = (volatile char *)address;
    for (unsigned long offset = 0; offset < length; offset += page_size) bytes[offset] = 1;
    if (munmap(address, length) != 0) _exit(2);
    _exit(0);
}

int cshims_wait_child(int pid, int timeout_ms) {
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
