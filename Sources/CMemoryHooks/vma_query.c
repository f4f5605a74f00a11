// What is mapped at an address: the monitor asks it once per watched mapping or granule (is this
// private anonymous memory, or shared memory whose pages can change without an event?), and the
// shmdt hook asks it for the extent of the segment it detaches. Allocation-free, so a hook may
// call it: PROCMAP_QUERY (Linux 6.11+: one ioctl on /proc/self/maps per mapping), else a scan of
// /proc/self/maps through a buffer on the stack.
#define _GNU_SOURCE
#include "memory_hooks.h"
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

static int open_maps(void) { return open("/proc/self/maps", O_RDONLY | O_CLOEXEC); }

// The shared descriptor (opened on first use), or -1 with errno set.
static int shared_maps(void) {
    int fd = atomic_load(&shared_maps_fd);
    if (fd >= 0) return fd;
    pthread_once(&fork_once, register_fork_handler);
    fd = open_maps();
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
static int parse_line(const char *p, const char *end, cmemhooks_vma *out) {
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
            if (!skipping && parse_line(p, newline, out) == 0 && out->end > address) return 0;
            skipping = 0;
            p = newline < end ? newline + 1 : end;
            if (p >= end) break;
        }
        if (n == 0) return ENOENT;
        have = (size_t)(end - p);
        if (have == sizeof buffer) {  // one line fills the buffer: keep its start, skip the rest
            if (parse_line(buffer, buffer + have, out) == 0 && out->end > address) return 0;
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
        int fd = open_maps();
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

// Private anonymous memory, as the monitor needs it: not shared, and no file behind it but
// /dev/zero or hugetlb's anonymous file (no descriptor reaches their pages).
static int is_private_anonymous(const cmemhooks_vma *vma) {
    if (vma->flags & CMEMHOOKS_VMA_SHARED) return 0;
    return vma->inode == 0 || strcmp(vma->name, "/dev/zero") == 0 ||
           strncmp(vma->name, "/anon_hugepage", strlen("/anon_hugepage")) == 0;
}

// One mapping of the walk over [*cursor, end): a hole before it, a mapping that is not private
// anonymous memory (in *out), or the cursor moved past it. 1: keep going, else the answer.
static int classify_step(const cmemhooks_vma *vma, uintptr_t *cursor, uintptr_t end, cmemhooks_vma *out) {
    if (vma->start > *cursor) return CMEMHOOKS_RANGE_HOLE;
    if (!is_private_anonymous(vma)) {
        *out = *vma;
        return CMEMHOOKS_RANGE_OTHER;
    }
    *cursor = vma->end;
    return *cursor >= end ? CMEMHOOKS_RANGE_PRIVATE_ANONYMOUS : 1;
}

// ---------------------------------------------------------------------------------------------
// The last scan of /proc/self/maps, for kernels without PROCMAP_QUERY (Linux 6.1): which
// mappings there were and whether each is private anonymous. Reused while no mapping has changed
// since, as far as the hooks see (their munmap, mmap, mremap, shmat and shmdt bump
// `mapping_generation`, and so does the monitor for every unmap or remap event): in the TCG VM a
// scan costs about 300 us, and a cache's first misses in a granule asked for two each.
//
// What it cannot see: a raw system call or glibc's own mmap/munmap (malloc's) change mappings
// without a bump. glibc maps only private anonymous memory; a raw mmap of shared memory over a
// range the snapshot calls private anonymous is the same blind spot as GranuleWatch's mappings
// the hooked mmap made. A file mapping put there is still refused by UFFDIO_REGISTER, and a hole
// is still found (the caller asks mincore first). Used only while this copy's hooks are the
// process's (cmemhooks_hooks_bound): otherwise nothing bumps the generation.

static _Atomic unsigned long mapping_generation;

void cmemhooks_mappings_changed(void) {
    atomic_fetch_add_explicit(&mapping_generation, 1, memory_order_acq_rel);
}

#define SNAPSHOT_CAPACITY 4096
typedef struct {
    uintptr_t start, end;
    int private_anonymous;
} snapshot_entry;
static snapshot_entry snapshot[SNAPSHOT_CAPACITY];
static size_t snapshot_count;
static unsigned long snapshot_generation;
static int snapshot_valid;
static pthread_mutex_t snapshot_lock = PTHREAD_MUTEX_INITIALIZER;

// The answer for [start, end) from the snapshot: private anonymous, a hole, or -1 (some mapping
// there is not private anonymous).
static int classify_from_snapshot(uintptr_t start, uintptr_t end) {
    size_t low = 0, high = snapshot_count;
    while (low < high) {  // the first entry that ends above start
        size_t middle = (low + high) / 2;
        if (snapshot[middle].end > start) high = middle; else low = middle + 1;
    }
    uintptr_t cursor = start;
    for (size_t i = low; i < snapshot_count && cursor < end; i++) {
        if (snapshot[i].start > cursor) return CMEMHOOKS_RANGE_HOLE;
        if (!snapshot[i].private_anonymous) return -1;
        cursor = snapshot[i].end;
    }
    return cursor >= end ? CMEMHOOKS_RANGE_PRIVATE_ANONYMOUS : CMEMHOOKS_RANGE_HOLE;
}

// One classifying scan of /proc/self/maps: where the range's walk is, its answer once known.
typedef struct {
    uintptr_t cursor, end;
    int answer, answered, overflowed;
    cmemhooks_vma *out;
} classify_scan;

// One mapping of the scan: kept in the snapshot, and the range's answer taken from it.
static void take_line(classify_scan *scan, const cmemhooks_vma *vma) {
    if (snapshot_count < SNAPSHOT_CAPACITY) {
        snapshot[snapshot_count++] = (snapshot_entry){vma->start, vma->end, is_private_anonymous(vma)};
    } else {
        scan->overflowed = 1;
    }
    if (!scan->answered && vma->end > scan->cursor) {
        int step = classify_step(vma, &scan->cursor, scan->end, scan->out);
        if (step != 1) {
            scan->answer = step;
            scan->answered = 1;
        }
    }
}

int cmemhooks_vma_classify(uintptr_t start, uintptr_t end, cmemhooks_vma *out) {
    uintptr_t cursor = start;
    if (cmemhooks_vma_query_is_fast()) {  // one ioctl per mapping
        cmemhooks_vma vma;
        while (cursor < end) {
            int failure = cmemhooks_vma_at_or_after(cursor, end, &vma);
            if (failure == ENOENT) return CMEMHOOKS_RANGE_HOLE;
            if (failure != 0) return -failure;
            int step = classify_step(&vma, &cursor, end, out);
            if (step != 1) return step;
        }
        return CMEMHOOKS_RANGE_PRIVATE_ANONYMOUS;
    }
    int bound = cmemhooks_hooks_bound();
    pthread_mutex_lock(&snapshot_lock);
    unsigned long generation = atomic_load_explicit(&mapping_generation, memory_order_acquire);
    if (bound && snapshot_valid && snapshot_generation == generation &&
        classify_from_snapshot(start, end) == CMEMHOOKS_RANGE_PRIVATE_ANONYMOUS) {
        // Only this answer is taken from the snapshot: a hole in it may be a mapping glibc made
        // since (malloc maps with its own mmap, which no hook sees), and a mapping of another
        // kind must be named from a fresh scan.
        pthread_mutex_unlock(&snapshot_lock);
        return CMEMHOOKS_RANGE_PRIVATE_ANONYMOUS;
    }
    // One read of /proc/self/maps for the whole range (a scan per mapping read it again for each),
    // every line kept in the snapshot.
    snapshot_count = 0;
    classify_scan scan = {.cursor = start, .end = end, .answer = CMEMHOOKS_RANGE_HOLE, .out = out};
    int fd = open_maps();
    if (fd < 0) {
        int failure = errno;
        snapshot_valid = 0;
        pthread_mutex_unlock(&snapshot_lock);
        return -failure;
    }
    cmemhooks_vma vma;
    char buffer[8192];
    size_t have = 0;
    int skipping = 0;
    for (;;) {
        ssize_t n = read(fd, buffer + have, sizeof buffer - have);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            if (!scan.answered) scan.answer = -errno;
            scan.overflowed = 1;
            break;
        }
        have += (size_t)n;
        const char *p = buffer, *limit = buffer + have;
        for (;;) {
            const char *newline = memchr(p, '\n', (size_t)(limit - p));
            if (!newline) {
                if (n == 0) newline = limit;
                else break;
            }
            if (!skipping && newline > p && parse_line(p, newline, &vma) == 0) take_line(&scan, &vma);
            skipping = 0;
            p = newline < limit ? newline + 1 : limit;
            if (p >= limit) break;
        }
        if (n == 0) break;
        have = (size_t)(limit - p);
        if (have == sizeof buffer) {  // one line fills the buffer: keep its start, skip the rest
            if (parse_line(buffer, buffer + have, &vma) == 0) take_line(&scan, &vma);
            have = 0;
            skipping = 1;
        } else {
            memmove(buffer, p, have);
        }
    }
    close(fd);
    if (!scan.answered && scan.cursor >= end) scan.answer = CMEMHOOKS_RANGE_PRIVATE_ANONYMOUS;
    // Kept only if nothing the hooks see changed while it was read.
    snapshot_valid = !scan.overflowed && atomic_load_explicit(&mapping_generation, memory_order_acquire) == generation;
    snapshot_generation = generation;
    pthread_mutex_unlock(&snapshot_lock);
    return scan.answer;
}

int cmemhooks_vma_query_is_fast(void) {
    if (atomic_load_explicit(&query_state, memory_order_relaxed) == 0) {
        cmemhooks_vma probe;
        (void)cmemhooks_vma_at_or_after(0, 1, &probe);
    }
    return atomic_load_explicit(&query_state, memory_order_relaxed) == 1;
}
