// What is mapped at an address: the shmdt hook asks it for the extent of the segment it detaches,
// and vma_classifier.c for each mapping of a range it classifies. Allocation-free, so a hook may
// call it: PROCMAP_QUERY (Linux 6.11+: one ioctl on /proc/self/maps per mapping), else a scan of
// /proc/self/maps through a buffer on the stack.
#define _GNU_SOURCE
#include "memory_hooks.h"
#include "vma_query_internal.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

// From include/uapi/linux/fs.h (Linux 6.11); Debian 12's headers predate it.
struct cmemhooks_procmap_query {
    uint64_t size;
    uint64_t query_flags;
    uint64_t query_addr;
    uint64_t vma_start;
    uint64_t vma_end;
    uint64_t vma_flags;
    uint64_t vma_page_size;
    uint64_t vma_offset;
    uint64_t inode;
    uint32_t dev_major;
    uint32_t dev_minor;
    uint32_t vma_name_size;
    uint32_t build_id_size;
    uint64_t vma_name_addr;
    uint64_t build_id_addr;
};
#define CMEMHOOKS_PROCMAP_QUERY 0xC0686611ul  // _IOWR('f', 17, struct procmap_query)
#define QUERY_COVERING_OR_NEXT_VMA 0x10
#define QUERY_READ 0x01
#define QUERY_WRITE 0x02
#define QUERY_EXEC 0x04
#define QUERY_SHARED 0x08

// 1: PROCMAP_QUERY works, 0: not tried yet, -1: the kernel lacks it.
static _Atomic int query_state;
// Where PROCMAP_QUERY works, one /proc/self/maps descriptor serves every query (the ioctl keeps
// no state between calls): a query is then one system call. A forked child must not use its
// parent's, which names the parent's mappings: it forgets it.
static _Atomic int shared_maps_fd = -1;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void forget_in_child(void) {
    int fd = atomic_exchange(&shared_maps_fd, -1);
    if (fd >= 0) close(fd);
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, forget_in_child); }

int cmemhooks_open_maps(void) { return open("/proc/self/maps", O_RDONLY | O_CLOEXEC); }

// The shared descriptor (opened on first use), or -1 with errno set.
static int shared_maps(void) {
    int fd = atomic_load(&shared_maps_fd);
    if (fd >= 0) return fd;
    pthread_once(&fork_once, register_fork_handler);
    fd = cmemhooks_open_maps();
    if (fd < 0) return -1;
    int expected = -1;
    if (!atomic_compare_exchange_strong(&shared_maps_fd, &expected, fd)) {
        close(fd);
        return expected;
    }
    return fd;
}

static int query_ioctl(int fd, uintptr_t address, cmemhooks_vma *out) {
    struct cmemhooks_procmap_query q;
    memset(&q, 0, sizeof q);
    q.size = sizeof q;
    q.query_flags = QUERY_COVERING_OR_NEXT_VMA;
    q.query_addr = address;
    q.vma_name_addr = (uint64_t)(uintptr_t)out->name;
    q.vma_name_size = sizeof out->name;
    if (ioctl(fd, CMEMHOOKS_PROCMAP_QUERY, &q) != 0) {
        // A name longer than the buffer: ask again without it.
        if (errno != ENAMETOOLONG) return errno;
        q.vma_name_addr = 0;
        q.vma_name_size = 0;
        out->name[0] = 0;
        if (ioctl(fd, CMEMHOOKS_PROCMAP_QUERY, &q) != 0) return errno;
    }
    out->start = (uintptr_t)q.vma_start;
    out->end = (uintptr_t)q.vma_end;
    out->offset = q.vma_offset;
    out->inode = q.inode;
    out->dev_major = q.dev_major;
    out->dev_minor = q.dev_minor;
    out->flags = ((q.vma_flags & QUERY_READ) ? CMEMHOOKS_VMA_READ : 0) |
                 ((q.vma_flags & QUERY_WRITE) ? CMEMHOOKS_VMA_WRITE : 0) |
                 ((q.vma_flags & QUERY_EXEC) ? CMEMHOOKS_VMA_EXEC : 0) |
                 ((q.vma_flags & QUERY_SHARED) ? CMEMHOOKS_VMA_SHARED : 0);
    if (q.vma_name_size == 0) out->name[0] = 0;
    return 0;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static const char *parse_hex(const char *p, const char *end, uint64_t *value) {
    uint64_t v = 0;
    int d;
    while (p < end && (d = hex_digit(*p)) >= 0) { v = v * 16 + (uint64_t)d; p++; }
    *value = v;
    return p;
}

static const char *skip_spaces(const char *p, const char *end) {
    while (p < end && *p == ' ') p++;
    return p;
}

// One line of /proc/self/maps: "start-end perms offset major:minor inode   name".
int cmemhooks_parse_maps_line(const char *p, const char *end, cmemhooks_vma *out) {
    uint64_t start, stop, offset, major, minor, inode = 0;
    p = parse_hex(p, end, &start);
    if (p >= end || *p++ != '-') return -1;
    p = parse_hex(p, end, &stop);
    p = skip_spaces(p, end);
    if (end - p < 4) return -1;
    out->flags = (p[0] == 'r' ? CMEMHOOKS_VMA_READ : 0) | (p[1] == 'w' ? CMEMHOOKS_VMA_WRITE : 0) |
                 (p[2] == 'x' ? CMEMHOOKS_VMA_EXEC : 0) | (p[3] == 's' ? CMEMHOOKS_VMA_SHARED : 0);
    p = skip_spaces(p + 4, end);
    p = parse_hex(p, end, &offset);
    p = skip_spaces(p, end);
    p = parse_hex(p, end, &major);
    if (p < end && *p == ':') p++;
    p = parse_hex(p, end, &minor);
    p = skip_spaces(p, end);
    while (p < end && *p >= '0' && *p <= '9') inode = inode * 10 + (uint64_t)(*p++ - '0');
    p = skip_spaces(p, end);
    size_t n = (size_t)(end - p);
    if (n >= sizeof out->name) n = sizeof out->name - 1;
    memcpy(out->name, p, n);
    out->name[n] = 0;
    out->start = (uintptr_t)start;
    out->end = (uintptr_t)stop;
    out->offset = offset;
    out->inode = inode;
    out->dev_major = (uint32_t)major;
    out->dev_minor = (uint32_t)minor;
    return 0;
}

// Scans /proc/self/maps for the first line whose mapping ends above `address`.
static int scan_maps(int fd, uintptr_t address, cmemhooks_vma *out) {
    char buffer[8192];
    size_t have = 0;
    int skipping = 0;  // inside a line longer than the buffer: drop it up to its newline
    for (;;) {
        ssize_t n = read(fd, buffer + have, sizeof buffer - have);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno;
        if (n == 0 && have == 0) return ENOENT;
        have += (size_t)n;
        const char *p = buffer, *end = buffer + have;
        for (;;) {
            const char *newline = memchr(p, '\n', (size_t)(end - p));
            if (!newline) {
                if (n == 0) newline = end;  // last line without a newline
                else break;
            }
            if (!skipping && cmemhooks_parse_maps_line(p, newline, out) == 0 && out->end > address) return 0;
            skipping = 0;
            p = newline < end ? newline + 1 : end;
            if (p >= end) break;
        }
        if (n == 0) return ENOENT;
        have = (size_t)(end - p);
        if (have == sizeof buffer) {  // one line fills the buffer: keep its start, skip the rest
            if (cmemhooks_parse_maps_line(buffer, buffer + have, out) == 0 && out->end > address) return 0;
            have = 0;
            skipping = 1;
        } else {
            memmove(buffer, p, have);
        }
    }
}

int cmemhooks_vma_at_or_after(uintptr_t address, uintptr_t limit, cmemhooks_vma *out) {
    int state = atomic_load_explicit(&query_state, memory_order_relaxed);
    int failure;
    if (state == 1) {
        int fd = shared_maps();
        if (fd < 0) return errno;
        failure = query_ioctl(fd, address, out);
    } else {
        int fd = cmemhooks_open_maps();
        if (fd < 0) return errno;
        if (state == 0) {
            failure = query_ioctl(fd, address, out);
            // ENOTTY/EINVAL: no PROCMAP_QUERY here; ENOENT: it worked, nothing above `address`.
            int works = failure == 0 || failure == ENOENT;
            atomic_store_explicit(&query_state, works ? 1 : -1, memory_order_relaxed);
            if (!works) failure = scan_maps(fd, address, out);
        } else {
            failure = scan_maps(fd, address, out);
        }
        close(fd);
    }
    if (failure == 0 && out->start >= limit) return ENOENT;
    return failure;
}

int cmemhooks_vma_query_is_fast(void) {
    if (atomic_load_explicit(&query_state, memory_order_relaxed) == 0) {
        cmemhooks_vma probe;
        (void)cmemhooks_vma_at_or_after(0, 1, &probe);
    }
    return atomic_load_explicit(&query_state, memory_order_relaxed) == 1;
}
