/*
 * memory_changes.h: the ways real programs change the memory under a buffer they sent before
 * (free and malloc again, mmap over, mremap, madvise, raw system calls, a memfd truncated), for
 * the example programs that check what an RDMA stack's registration cache sends afterwards
 * (Examples/MPIChanges, Examples/UCXChanges). Header-only: each program includes it once.
 *
 * The program defines memory_changes_fail(what), which reports errno and ends the run.
 */
#ifndef MEMORY_CHANGES_H
#define MEMORY_CHANGES_H

#define _GNU_SOURCE
#include <stddef.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

enum change {
    FREE_MALLOC, MUNMAP_MMAP, MMAP_OVER, MREMAP_AWAY, MADVISE_DONTNEED, RAW_MUNMAP_MMAP, RAW_MADVISE,
    MEMFD_TRUNCATE, CHANGES
};

static const char *const change_names[CHANGES] = {
    "free + malloc", "munmap + mmap(MAP_FIXED)", "mmap(MAP_FIXED) over it", "mremap away + mmap back",
    "madvise(MADV_DONTNEED)", "raw SYS_munmap + SYS_mmap", "raw SYS_madvise(MADV_DONTNEED)",
    "memfd ftruncate(0) + regrow",
};

static void memory_changes_fail(const char *what);

static unsigned char change_pattern(int round, int change, int sender, size_t i) {
    return (unsigned char)(round * 31 + change * 7 + sender * 13 + (int)(i % 251));
}

static void change_fill(unsigned char *buffer, size_t length, int round, int change, int sender) {
    for (size_t i = 0; i < length; i++) buffer[i] = change_pattern(round, change, sender, i);
}

/* The bytes of `buffer` that hold round `round`'s pattern. */
static size_t change_matching(const unsigned char *buffer, size_t length, int round, int change, int sender) {
    size_t matching = 0;
    for (size_t i = 0; i < length; i++) matching += buffer[i] == change_pattern(round, change, sender, i);
    return matching;
}

/* The buffer a change starts from, and how the change replaces what is under it. */
struct change_buffer {
    unsigned char *bytes;
    size_t length;
    int memfd;
};

static struct change_buffer change_make(enum change change, size_t length) {
    struct change_buffer b = {NULL, length, -1};
    switch (change) {
    case FREE_MALLOC:
        b.bytes = malloc(length);
        if (!b.bytes) memory_changes_fail("malloc");
        return b;
    case MEMFD_TRUNCATE:
        b.memfd = (int)syscall(SYS_memfd_create, "memory_changes", 0);
        if (b.memfd < 0 || ftruncate(b.memfd, (off_t)length) != 0) memory_changes_fail("memfd");
        b.bytes = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, b.memfd, 0);
        break;
    default:
        b.bytes = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        break;
    }
    if (b.bytes == MAP_FAILED) memory_changes_fail("mmap");
    return b;
}

/* Changes the memory under `b` (new pages, at the same address where the change keeps it);
 * says whether the address stayed. */
static int change_replace(struct change_buffer *b, enum change change) {
    void *at = b->bytes;
    size_t length = b->length;
    const int prot = PROT_READ | PROT_WRITE, fixed = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    switch (change) {
    case FREE_MALLOC:
        free(b->bytes);
        b->bytes = malloc(length);
        if (!b->bytes) memory_changes_fail("malloc");
        break;
    case MUNMAP_MMAP:
        if (munmap(at, length) != 0 || mmap(at, length, prot, fixed, -1, 0) != at) memory_changes_fail("munmap + mmap");
        break;
    case MMAP_OVER:
        if (mmap(at, length, prot, fixed, -1, 0) != at) memory_changes_fail("mmap over");
        break;
    case MREMAP_AWAY: {
        /* The pages move to a new place, then new memory is mapped where they were. */
        void *away = mremap(at, length, length, MREMAP_MAYMOVE | MREMAP_FIXED,
                            mmap(NULL, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        if (away == MAP_FAILED || mmap(at, length, prot, fixed, -1, 0) != at) memory_changes_fail("mremap");
        munmap(away, length);
        break;
    }
    case MADVISE_DONTNEED:
        if (madvise(at, length, MADV_DONTNEED) != 0) memory_changes_fail("madvise");
        break;
    case RAW_MUNMAP_MMAP:
        if (syscall(SYS_munmap, at, length) != 0 || (void *)syscall(SYS_mmap, at, length, prot, fixed, -1, 0) != at)
            memory_changes_fail("raw munmap + mmap");
        break;
    case RAW_MADVISE:
        if (syscall(SYS_madvise, at, length, MADV_DONTNEED) != 0) memory_changes_fail("raw madvise");
        break;
    case MEMFD_TRUNCATE:
        if (ftruncate(b->memfd, 0) != 0 || ftruncate(b->memfd, (off_t)length) != 0) memory_changes_fail("ftruncate");
        break;
    default:
        break;
    }
    return b->bytes == at;
}

static void change_release(struct change_buffer *b, enum change change) {
    if (change == FREE_MALLOC) {
        free(b->bytes);
        return;
    }
    munmap(b->bytes, b->length);
    if (b->memfd >= 0) close(b->memfd);
}

#endif
