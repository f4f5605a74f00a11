// Is a range private anonymous memory (the monitor may watch and cache it), a hole, or some
// other mapping (shared memory whose pages can change without an event)? The monitor asks once
// per watched mapping or granule. Its own file because on kernels without PROCMAP_QUERY it keeps
// a snapshot of /proc/self/maps, with its own lock and its own blind spot (below); the query of
// one mapping (vma_query.c) keeps no state.
#define _GNU_SOURCE
#include "memory_hooks.h"
#include "vma_query_internal.h"
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

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

unsigned long cmemhooks_mappings_generation(void) {
    return atomic_load_explicit(&mapping_generation, memory_order_acquire);
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

// Whether a mapping with a file behind it overlaps [start, end), from the names in
// /proc/self/map_files ("start-end" in hex, one per such mapping): 0 none, 1 some, -errno when
// the directory cannot be listed. Every kind of memory that is not private anonymous has a file
// (the kernel's vm_file): files, and all shared memory (memfd, tmpfs, /dev/shm, MAP_SHARED |
// MAP_ANONYMOUS, SysV); so do private /dev/zero and hugetlb memory, which the full scan then
// names. Listing costs a fraction of reading /proc/self/maps (measured in the TCG VM on 6.1: 193
// against 807 us with 600 anonymous mappings, 428 against 2305 us with 2000), since the kernel
// formats only the mappings with a file, and only their addresses. Allocation-free.
static int file_mapping_overlaps(uintptr_t start, uintptr_t end) {
    int fd = open("/proc/self/map_files", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    _Alignas(8) char entries[8192];
    int found = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, entries, sizeof entries);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            found = -errno;
            break;
        }
        if (n == 0) break;
        for (long offset = 0; offset < n && !found;) {
            // struct linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name.
            unsigned short length;
            memcpy(&length, entries + offset + 16, sizeof length);
            const char *name = entries + offset + 19;
            char *dash;
            uintptr_t first = (uintptr_t)strtoull(name, &dash, 16);
            if (dash != name && *dash == '-') {
                uintptr_t last = (uintptr_t)strtoull(dash + 1, NULL, 16);
                if (first < end && start < last) found = 1;
            }
            offset += length;
        }
        if (found) break;
    }
    close(fd);
    return found;
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
    // No mapping with a file there: private anonymous memory, or holes, which the caller rules
    // out first (mincore) on these kernels. Only a file mapping needs the full scan, to be named.
    if (file_mapping_overlaps(start, end) == 0) {
        pthread_mutex_unlock(&snapshot_lock);
        return CMEMHOOKS_RANGE_PRIVATE_ANONYMOUS;
    }
    // One read of /proc/self/maps for the whole range (a scan per mapping read it again for each),
    // every line kept in the snapshot.
    snapshot_count = 0;
    classify_scan scan = {.cursor = start, .end = end, .answer = CMEMHOOKS_RANGE_HOLE, .out = out};
    int fd = cmemhooks_open_maps();
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
            if (!skipping && newline > p && cmemhooks_parse_maps_line(p, newline, &vma) == 0) take_line(&scan, &vma);
            skipping = 0;
            p = newline < limit ? newline + 1 : limit;
            if (p >= limit) break;
        }
        if (n == 0) break;
        have = (size_t)(limit - p);
        if (have == sizeof buffer) {  // one line fills the buffer: keep its start, skip the rest
            if (cmemhooks_parse_maps_line(buffer, buffer + have, &vma) == 0) take_line(&scan, &vma);
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
