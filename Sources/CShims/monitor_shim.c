#define _GNU_SOURCE
#include "monitor_shim.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void *cshims_sbrk(intptr_t increment) { return sbrk(increment); }

void cshims_name_thread(const char *name) { pthread_setname_np(pthread_self(), name); }

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

int cshims_shm_create(unsigned long size) { return shmget(IPC_PRIVATE, size, IPC_CREAT | 0600); }

int cshims_shm_remove(int id) { return shmctl(id, IPC_RMID, NULL); }

void *cshims_shmat(int id, void *address, int flags) { return shmat(id, address, flags); }

void *cshims_raw_shmat(int id, void *address, int flags) { return (void *)syscall(SYS_shmat, id, address, flags); }

int cshims_raw_shmdt(void *address) { return (int)syscall(SYS_shmdt, address); }

const int CSHIMS_SHM_REMAP = SHM_REMAP;

int cshims_memfd(const char *name, unsigned long size) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int cshims_raw_mprotect(void *address, unsigned long length, int prot) {
    return (int)syscall(SYS_mprotect, address, length, prot);
}

int cshims_pkey_mprotect(void *address, unsigned long length, int prot, int pkey) {
    return pkey_mprotect(address, length, prot, pkey);
}

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

#include <grp.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>
#include <sys/syscall.h>

int cshims_probe_unprivileged_userfaultfd(unsigned long long features) {
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

int cshims_pkey_alloc(unsigned int rights) { return pkey_alloc(0, rights); }
int cshims_pkey_free(int key) { return pkey_free(key); }
