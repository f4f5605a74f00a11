/*
 * The peer our registration cache is measured against: UCX's ucs_rcache, with a registration
 * callback that does no device work, so the figures are the cache's own. It prints one JSON
 * object per figure on stdout:
 *   {"peer":"ucx","figure":"hit","size":4096,"ns_per_op":...}
 * One source for two UCX releases (scripts/run-benchmarks builds both and runs them side by side):
 *   Debian's libucx-dev (1.13.1):
 *     gcc -O2 ucx_rcache_peer.c $(pkg-config --cflags --libs ucx) -lpthread -o ucx_rcache_peer_1.13.1
 *   the newest, UCX 1.22.0 from PyPI's libucx-cu12 wheel (libucs/libucm need no CUDA), DIR its libucx/:
 *     gcc -O2 ucx_rcache_peer.c -IDIR/include -LDIR/lib -Wl,-rpath,DIR/lib -lucs -lucm -lpthread \
 *         -o ucx_rcache_peer_1.22.0
 * Run `ucx_rcache_peer_X` for the measured figures, `ucx_rcache_peer_X quick` for a short smoke run.
 * Plain C against UCX's public API (ucs/memory/rcache.h) only.
 */
#define _GNU_SOURCE
#include <ucm/api/ucm.h>
#include <ucs/memory/rcache.h>
#include <ucs/type/status.h>
#include <uct/api/version.h> /* UCT_VERNO_*: the release the headers belong to (ucs has no macro of its own) */

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Where the rcache API changed between the two releases built here. Seen in 1.22.0 and not in
 * 1.13.1; which release in between made each change was not checked, so releases 1.14-1.21 may
 * fail to compile here, which shows what to adjust.
 *  - ucs_rcache_get takes the region's alignment (it left ucs_rcache_params_t: alignment and
 *    max_alignment are gone from it);
 *  - ucs_rcache_ops_t gained `merge` (hence designated initializers for the ops). */
#define PEER_UCX_VERSION (UCT_VERNO_MAJOR * 1000 + UCT_VERNO_MINOR)
#define PEER_RCACHE_ALIGNMENT_PER_GET (PEER_UCX_VERSION >= 1022)

/* A cached region as UCX sees it, plus the keys a real registration would fill in. */
typedef struct {
    ucs_rcache_region_t super;
    uint32_t lkey, rkey;
} null_region_t;

static uint32_t next_key;

/* The null registration: what a device would return, without a device. */
static ucs_status_t null_mem_reg(void *context, ucs_rcache_t *rcache, void *arg,
                                 ucs_rcache_region_t *region, uint16_t flags) {
    null_region_t *r = (null_region_t *)region;
    r->lkey = r->rkey = __atomic_add_fetch(&next_key, 1, __ATOMIC_RELAXED);
    return UCS_OK;
}

static void null_mem_dereg(void *context, ucs_rcache_t *rcache, ucs_rcache_region_t *region) {}

static void null_dump(void *context, ucs_rcache_t *rcache, ucs_rcache_region_t *region,
                      char *buf, size_t max) {
    snprintf(buf, max, "null");
}

static const ucs_rcache_ops_t null_ops = {
    .mem_reg = null_mem_reg,
    .mem_dereg = null_mem_dereg,
    .dump_region = null_dump,
    /* `merge` (newer releases): NULL, nothing to carry over from a merged region. */
};

/* The same alignment for every release: UCX's minimum for the region, at most a page. */
static ucs_status_t rcache_get(ucs_rcache_t *rcache, void *address, size_t length, ucs_rcache_region_t **region) {
#if PEER_RCACHE_ALIGNMENT_PER_GET
    return ucs_rcache_get(rcache, address, length, UCS_RCACHE_MIN_ALIGNMENT, PROT_READ | PROT_WRITE, NULL, region);
#else
    return ucs_rcache_get(rcache, address, length, PROT_READ | PROT_WRITE, NULL, region);
#endif
}

static ucs_rcache_t *make_cache(unsigned long max_regions) {
    ucs_rcache_params_t params;
    memset(&params, 0, sizeof(params));
    params.region_struct_size = sizeof(null_region_t);
#if !PEER_RCACHE_ALIGNMENT_PER_GET
    params.alignment = UCS_RCACHE_MIN_ALIGNMENT;
    params.max_alignment = (size_t)sysconf(_SC_PAGESIZE);
#endif
    params.ucm_events = UCM_EVENT_VM_UNMAPPED;
    params.ucm_event_priority = 1000;
    params.ops = &null_ops;
    params.context = NULL;
    params.flags = 0;
    params.max_regions = max_regions;
    params.max_size = SIZE_MAX;
    params.max_unreleased = SIZE_MAX;
    ucs_rcache_t *rcache;
    ucs_status_t status = ucs_rcache_create(&params, "peer", NULL, &rcache);
    if (status != UCS_OK) {
        fprintf(stderr, "ucs_rcache_create: %s\n", ucs_status_string(status));
        exit(1);
    }
    return rcache;
}

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static void *map_bytes(size_t length) {
    void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

static void get_put(ucs_rcache_t *rcache, void *address, size_t length) {
    ucs_rcache_region_t *region;
    ucs_status_t status = rcache_get(rcache, address, length, &region);
    if (status != UCS_OK) {
        fprintf(stderr, "ucs_rcache_get(%p, %zu): %s\n", address, length, ucs_status_string(status));
        exit(1);
    }
    ucs_rcache_region_put(rcache, region);
}

/* A cheap xorshift so the random figures do not measure rand(). */
static inline uint64_t next_random(uint64_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

/* Hit on one buffer, registered once. */
static void figure_hit(size_t size, long iterations) {
    ucs_rcache_t *rcache = make_cache(ULONG_MAX);
    void *buffer = map_bytes(size);
    get_put(rcache, buffer, size);
    double start = now_ns();
    for (long i = 0; i < iterations; i++) get_put(rcache, buffer, size);
    double ns = (now_ns() - start) / (double)iterations;
    printf("{\"peer\":\"ucx\",\"figure\":\"hit\",\"size\":%zu,\"ns_per_op\":%.1f}\n", size, ns);
    ucs_rcache_destroy(rcache);
    munmap(buffer, size);
}

/* Regions of 4 KiB with a 4 KiB gap between them, so UCX cannot merge neighbours. */
enum { region_size = 4096, region_stride = 8192 };

static void figure_random_hits(long regions, long iterations) {
    ucs_rcache_t *rcache = make_cache(ULONG_MAX);
    char *base = map_bytes((size_t)regions * region_stride);
    for (long i = 0; i < regions; i++) get_put(rcache, base + i * region_stride, region_size);
    uint64_t state = 88172645463325252ull;
    double start = now_ns();
    for (long i = 0; i < iterations; i++) {
        long index = (long)(next_random(&state) % (uint64_t)regions);
        get_put(rcache, base + index * region_stride, region_size);
    }
    double ns = (now_ns() - start) / (double)iterations;
    printf("{\"peer\":\"ucx\",\"figure\":\"random_hit\",\"regions\":%ld,\"ns_per_op\":%.1f}\n", regions, ns);
    ucs_rcache_destroy(rcache);
    munmap(base, (size_t)regions * region_stride);
}

/* Bytes the heap has handed out (malloc'd and malloc's own mmaps): unlike RSS, it is not
 * fooled by memory an earlier figure freed and this one reuses. Ours is measured the same way. */
static double heap_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return (double)info.uordblks + (double)info.hblkhd;
}

/* Misses (insert + null registration) growing to `regions`, and the memory each costs. */
static void figure_miss(long regions, unsigned long limit) {
    ucs_rcache_t *rcache = make_cache(limit);
    char *base = map_bytes((size_t)regions * region_stride);
    double before = heap_in_use();
    double start = now_ns();
    for (long i = 0; i < regions; i++) get_put(rcache, base + i * region_stride, region_size);
    double ns = (now_ns() - start) / (double)regions;
    double after = heap_in_use();
    if (limit == ULONG_MAX) {
        printf("{\"peer\":\"ucx\",\"figure\":\"miss\",\"regions\":%ld,\"ns_per_op\":%.1f}\n", regions, ns);
        printf("{\"peer\":\"ucx\",\"figure\":\"bytes_per_region\",\"regions\":%ld,\"bytes\":%.1f}\n", regions,
               (after - before) / (double)regions);
    } else {
        printf("{\"peer\":\"ucx\",\"figure\":\"miss_evicting\",\"limit\":%lu,\"regions\":%ld,\"ns_per_op\":%.1f}\n",
               limit, regions, ns);
    }
    ucs_rcache_destroy(rcache);
    munmap(base, (size_t)regions * region_stride);
}

/* munmap of a cached 64 KiB region vs an uncached one; UCX invalidates inside the munmap hook,
 * so "revoked" is reached when munmap returns. */
static void figure_invalidation(long iterations) {
    const size_t size = 64 * 1024;
    ucs_rcache_t *rcache = make_cache(ULONG_MAX);
    double cached = 0, uncached = 0;
    for (long i = 0; i < iterations; i++) {
        void *a = map_bytes(size);
        get_put(rcache, a, size);
        double t0 = now_ns();
        munmap(a, size);
        cached += now_ns() - t0;
        void *b = map_bytes(size);
        t0 = now_ns();
        munmap(b, size);
        uncached += now_ns() - t0;
    }
    printf("{\"peer\":\"ucx\",\"figure\":\"munmap_cached_64k\",\"ns_per_op\":%.1f}\n", cached / (double)iterations);
    printf("{\"peer\":\"ucx\",\"figure\":\"munmap_uncached_64k\",\"ns_per_op\":%.1f}\n", uncached / (double)iterations);
    ucs_rcache_destroy(rcache);
}

struct worker {
    ucs_rcache_t *rcache;
    char *base;
    long regions; /* 1: the hot region */
    double seconds;
    long operations;
    uint64_t seed;
};

static void *run_worker(void *argument) {
    struct worker *w = argument;
    double end = now_ns() + w->seconds * 1e9;
    long done = 0;
    while (now_ns() < end) {
        for (int i = 0; i < 256; i++) {
            long index = w->regions == 1 ? 0 : (long)(next_random(&w->seed) % (uint64_t)w->regions);
            get_put(w->rcache, w->base + index * region_stride, region_size);
        }
        done += 256;
    }
    w->operations = done;
    return NULL;
}

/* Throughput (ops/s) of 1 and 2 threads on a shared set of regions or one hot region. */
static void figure_threads(long regions, int threads, double seconds) {
    ucs_rcache_t *rcache = make_cache(ULONG_MAX);
    char *base = map_bytes((size_t)regions * region_stride);
    for (long i = 0; i < regions; i++) get_put(rcache, base + i * region_stride, region_size);
    pthread_t ids[threads];
    struct worker workers[threads];
    for (int t = 0; t < threads; t++) {
        workers[t] = (struct worker){rcache, base, regions, seconds, 0, 0x9E3779B97F4A7C15ull * (uint64_t)(t + 1)};
        pthread_create(&ids[t], NULL, run_worker, &workers[t]);
    }
    long total = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
        total += workers[t].operations;
    }
    printf("{\"peer\":\"ucx\",\"figure\":\"%s\",\"threads\":%d,\"ops_per_s\":%.0f}\n",
           regions == 1 ? "hot_region_throughput" : "shared_set_throughput", threads, (double)total / seconds);
    ucs_rcache_destroy(rcache);
    munmap(base, (size_t)regions * region_stride);
}

struct churner {
    ucs_rcache_t *rcache;
    double seconds;
    long operations;
    uint64_t seed;
};

/* Buffers that come and go: map 4-128 KiB, get (a miss), get again (a hit), get + put (the
 * scoped use), put both, then unmap it or map new pages over it first (UCX's munmap and mmap
 * hooks invalidate). The same loop as ours. */
static void *run_churner(void *argument) {
    struct churner *c = argument;
    long page = sysconf(_SC_PAGESIZE);
    double end = now_ns() + c->seconds * 1e9;
    long done = 0;
    while (now_ns() < end) {
        for (int i = 0; i < 256; i++) {
            size_t length = (size_t)(1 + next_random(&c->seed) % 32) * (size_t)page;
            void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) continue;
            ucs_rcache_region_t *first, *second;
            if (rcache_get(c->rcache, p, length, &first) == UCS_OK) {
                if (rcache_get(c->rcache, p, length, &second) == UCS_OK) {
                    get_put(c->rcache, p, length);
                    ucs_rcache_region_put(c->rcache, second);
                }
                ucs_rcache_region_put(c->rcache, first);
            }
            if (next_random(&c->seed) % 2 == 0) {
                mmap(p, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            }
            munmap(p, length);
        }
        done += 256;
    }
    c->operations = done;
    return NULL;
}

static void figure_churn(int threads, double seconds) {
    ucs_rcache_t *rcache = make_cache(ULONG_MAX);
    pthread_t ids[threads];
    struct churner churners[threads];
    for (int t = 0; t < threads; t++) {
        churners[t] = (struct churner){rcache, seconds, 0, 0x9E3779B97F4A7C15ull * (uint64_t)(t + 1)};
        pthread_create(&ids[t], NULL, run_churner, &churners[t]);
    }
    long total = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
        total += churners[t].operations;
    }
    printf("{\"peer\":\"ucx\",\"figure\":\"churn_throughput\",\"threads\":%d,\"ops_per_s\":%.0f}\n", threads,
           (double)total / seconds);
    ucs_rcache_destroy(rcache);
}

int main(int argc, char **argv) {
    /* "quick" shortens every figure (a smoke run); the default is the measured run. */
    int quick = argc > 1 && strcmp(argv[1], "quick") == 0;
    long scale = quick ? 10 : 1;
    figure_hit(4096, 2000000 / scale);
    figure_hit(65536, 2000000 / scale);
    figure_hit(1 << 20, 2000000 / scale);
    figure_random_hits(1000, 2000000 / scale);
    figure_random_hits(100000, 2000000 / scale);
    figure_miss(200000 / scale, ULONG_MAX);
    figure_miss(200000 / scale, 1000);
    figure_invalidation(20000 / scale);
    for (int threads = 1; threads <= 2; threads++) {
        figure_threads(1000, threads, quick ? 0.2 : 1.0);
        figure_threads(1, threads, quick ? 0.2 : 1.0);
    }
    for (int threads = 1; threads <= 2; threads++) figure_churn(threads, quick ? 0.2 : 1.0);
    return 0;
}
