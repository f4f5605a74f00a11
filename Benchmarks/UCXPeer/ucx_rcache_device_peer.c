/*
 * UCX's ucs_rcache on a real device: the peer of CacheBenchmark's device figures
 * (Benchmarks/CacheBenchmark/DeviceFigures.swift). Its registration callback calls ibv_reg_mr on
 * the region and its deregistration ibv_dereg_mr, so the figures are what UCX's cache costs and
 * saves with real registrations, next to plain verbs measured the same way in the same process
 * (plain and cached rounds in turn, as ours are). It prints one JSON object per figure:
 *   {"peer":"ucx-rxe","figure":"cycle_cached","size":65536,"ns_per_op":...}
 * with the figure names and parameters of DeviceFigures.pairs, so CacheBenchmark
 * (--ucx-device-peer) pairs them with ours by name.
 * Built by scripts/run-benchmarks against both UCX releases, as ucx_rcache_peer.c is (same
 * commands plus -libverbs). Run: `ucx_rcache_device_peer_X DEVICE [quick]` (quick: 20 operations
 * a round, as CacheBenchmark --quick). Plain C against public APIs only: ucs/memory/rcache.h and
 * libibverbs.
 */
#define _GNU_SOURCE
#include <infiniband/verbs.h>
#include <ucm/api/ucm.h>
#include <ucs/memory/rcache.h>
#include <ucs/type/status.h>
#include <uct/api/version.h> /* UCT_VERNO_*: the release the headers belong to (ucs has no macro of its own) */

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* The same version switch as ucx_rcache_peer.c (see there): 1.22.0 passes the alignment to
 * ucs_rcache_get, 1.13.1 sets it in ucs_rcache_params_t. */
#define PEER_UCX_VERSION (UCT_VERNO_MAJOR * 1000 + UCT_VERNO_MINOR)
#define PEER_RCACHE_ALIGNMENT_PER_GET (PEER_UCX_VERSION >= 1022)

/* What DeviceFigures measures: 64 KiB buffers, medians of 5 rounds, at most 16 regions for the
 * evicting misses. */
enum { buffer_size = 64 * 1024, rounds = 5, evicting_limit = 16 };
static const int access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;

static struct ibv_pd *pd;
static long operations = 200; /* a round; 20 with `quick` */
static long scale = 1;

/* The callbacks' calls, to check that every get the figures mean as a miss was one (a munmap
 * hook that never fired would turn the cycle's misses into hits on stale registrations). */
static long registrations, deregistrations;

/* A cached region: UCX's bookkeeping and the device's memory region. */
typedef struct {
    ucs_rcache_region_t super;
    struct ibv_mr *mr;
} device_region_t;

static ucs_status_t device_mem_reg(void *context, ucs_rcache_t *rcache, void *arg,
                                   ucs_rcache_region_t *region, uint16_t flags) {
    device_region_t *r = (device_region_t *)region;
    void *start = (void *)region->super.start;
    size_t length = region->super.end - region->super.start;
    r->mr = ibv_reg_mr(pd, start, length, access_flags);
    if (r->mr == NULL) {
        fprintf(stderr, "ibv_reg_mr(%p, %zu) in mem_reg: %s\n", start, length, strerror(errno));
        return UCS_ERR_IO_ERROR;
    }
    registrations++;
    return UCS_OK;
}

static void device_mem_dereg(void *context, ucs_rcache_t *rcache, ucs_rcache_region_t *region) {
    device_region_t *r = (device_region_t *)region;
    if (r->mr != NULL && ibv_dereg_mr(r->mr) != 0) perror("ibv_dereg_mr in mem_dereg");
    r->mr = NULL;
    deregistrations++;
}

static void device_dump(void *context, ucs_rcache_t *rcache, ucs_rcache_region_t *region,
                        char *buf, size_t max) {
    device_region_t *r = (device_region_t *)region;
    snprintf(buf, max, "lkey 0x%x", r->mr ? r->mr->lkey : 0);
}

static const ucs_rcache_ops_t device_ops = {
    .mem_reg = device_mem_reg,
    .mem_dereg = device_mem_dereg,
    .dump_region = device_dump,
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

/* UCX's own memory events (UCM_EVENT_VM_UNMAPPED) invalidate, as in ucx_rcache_peer.c. */
static ucs_rcache_t *make_cache(unsigned long max_regions) {
    ucs_rcache_params_t params;
    memset(&params, 0, sizeof(params));
    params.region_struct_size = sizeof(device_region_t);
#if !PEER_RCACHE_ALIGNMENT_PER_GET
    params.alignment = UCS_RCACHE_MIN_ALIGNMENT;
    params.max_alignment = (size_t)sysconf(_SC_PAGESIZE);
#endif
    params.ucm_events = UCM_EVENT_VM_UNMAPPED;
    params.ucm_event_priority = 1000;
    params.ops = &device_ops;
    params.context = NULL;
    params.flags = 0;
    params.max_regions = max_regions;
    params.max_size = SIZE_MAX;
    params.max_unreleased = SIZE_MAX;
    ucs_rcache_t *rcache;
    ucs_status_t status = ucs_rcache_create(&params, "device-peer", NULL, &rcache);
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

/* A fresh anonymous mapping with every page written once (not populated by mmap: the touch is
 * part of what an application does before it registers), as DeviceFigures' touchedMapping. */
static char *touched_mapping(size_t size) {
    char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    long page = sysconf(_SC_PAGESIZE);
    for (size_t offset = 0; offset < size; offset += (size_t)page) p[offset] = 1;
    return p;
}

static struct ibv_mr *reg(void *address, size_t length) {
    struct ibv_mr *mr = ibv_reg_mr(pd, address, length, access_flags);
    if (mr == NULL) {
        fprintf(stderr, "ibv_reg_mr(%p, %zu): %s\n", address, length, strerror(errno));
        exit(1);
    }
    return mr;
}

static void dereg(struct ibv_mr *mr) {
    if (ibv_dereg_mr(mr) != 0) {
        perror("ibv_dereg_mr");
        exit(1);
    }
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

static void expect(int condition, const char *message, long got) {
    if (!condition) {
        fprintf(stderr, "%s (got %ld)\n", message, got);
        exit(1);
    }
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of `count` values (the mean of the middle two for an even count, as ours). */
static double median(double *values, int count) {
    qsort(values, (size_t)count, sizeof(double), compare_doubles);
    return count % 2 ? values[count / 2] : (values[count / 2 - 1] + values[count / 2]) / 2;
}

static void print_figure(const char *figure, size_t size, long limit, double ns) {
    if (limit > 0)
        printf("{\"peer\":\"ucx-rxe\",\"figure\":\"%s\",\"size\":%zu,\"limit\":%ld,\"ns_per_op\":%.1f}\n", figure,
               size, limit, ns);
    else
        printf("{\"peer\":\"ucx-rxe\",\"figure\":\"%s\",\"size\":%zu,\"ns_per_op\":%.1f}\n", figure, size, ns);
    fflush(stdout);
}

/* ---- cycle: mmap, touch, register, deregister, munmap ---- */

static double cycle_plain_round(void) {
    double start = now_ns();
    for (long i = 0; i < operations; i++) {
        char *p = touched_mapping(buffer_size);
        dereg(reg(p, buffer_size));
        munmap(p, buffer_size);
    }
    return (now_ns() - start) / (double)operations;
}

/* Every get a miss: the munmap's event invalidates the region. UCX deregisters an invalidated
 * region in the next get (its invalidation queue), inside the timed loop; the round's last one
 * is deregistered by the next round's first get (its other rounds' cost, 1 of `operations`). */
static double cycle_cached_round(ucs_rcache_t *rcache) {
    long before = registrations;
    double start = now_ns();
    for (long i = 0; i < operations; i++) {
        char *p = touched_mapping(buffer_size);
        get_put(rcache, p, buffer_size);
        munmap(p, buffer_size);
    }
    double ns = (now_ns() - start) / (double)operations;
    expect(registrations - before == operations, "cycle: not every get was a miss", registrations - before);
    return ns;
}

static void figure_cycle(void) {
    ucs_rcache_t *rcache = make_cache(ULONG_MAX);
    double plain[rounds], cached[rounds];
    for (int r = 0; r < rounds; r++) {
        plain[r] = cycle_plain_round();
        cached[r] = cycle_cached_round(rcache);
    }
    print_figure("cycle_plain", buffer_size, 0, median(plain, rounds));
    print_figure("cycle_cached", buffer_size, 0, median(cached, rounds));
    ucs_rcache_destroy(rcache);
}

/* ---- miss, miss_evicting: distinct mapped, touched buffers, each registered once ---- */

static char **touched_buffers(void) {
    char **buffers = malloc((size_t)operations * sizeof(char *));
    for (long i = 0; i < operations; i++) buffers[i] = touched_mapping(buffer_size);
    return buffers;
}

static void unmap_buffers(char **buffers) {
    for (long i = 0; i < operations; i++) munmap(buffers[i], buffer_size);
    free(buffers);
}

/* ibv_reg_mr alone, timed; the deregistrations after the timed part. */
static double miss_plain_round(void) {
    char **buffers = touched_buffers();
    struct ibv_mr **mrs = malloc((size_t)operations * sizeof(struct ibv_mr *));
    double start = now_ns();
    for (long i = 0; i < operations; i++) mrs[i] = reg(buffers[i], buffer_size);
    double ns = (now_ns() - start) / (double)operations;
    for (long i = 0; i < operations; i++) dereg(mrs[i]);
    free(mrs);
    unmap_buffers(buffers);
    return ns;
}

/* get + put of each buffer in a fresh rcache; with a limit UCX evicts (and deregisters) inside
 * the get that goes over it, so the evictions are in the timed part as ours are. The rcache is
 * destroyed (deregistering what it holds) before the buffers are unmapped, untimed. */
static double miss_cached_round(unsigned long limit) {
    char **buffers = touched_buffers();
    ucs_rcache_t *rcache = make_cache(limit);
    long registered = registrations, deregistered = deregistrations;
    double start = now_ns();
    for (long i = 0; i < operations; i++) get_put(rcache, buffers[i], buffer_size);
    double ns = (now_ns() - start) / (double)operations;
    expect(registrations - registered == operations, "miss: not every get was a miss", registrations - registered);
    if (limit == ULONG_MAX)
        expect(deregistrations == deregistered, "miss: evictions without a limit", deregistrations - deregistered);
    else
        expect(deregistrations > deregistered, "miss_evicting: no eviction", 0);
    ucs_rcache_destroy(rcache);
    unmap_buffers(buffers);
    return ns;
}

static void figure_miss(unsigned long limit) {
    double plain[rounds], cached[rounds];
    for (int r = 0; r < rounds; r++) {
        plain[r] = miss_plain_round();
        cached[r] = miss_cached_round(limit);
    }
    int evicting = limit != ULONG_MAX;
    print_figure(evicting ? "miss_evicting_plain" : "miss_plain", buffer_size, evicting ? (long)limit : 0,
                 median(plain, rounds));
    print_figure(evicting ? "miss_evicting_cached" : "miss_cached", buffer_size, evicting ? (long)limit : 0,
                 median(cached, rounds));
}

/* ---- hit: a registered buffer, get + put against ibv_reg_mr + ibv_dereg_mr every time ---- */

static void figure_hit(size_t size) {
    char *buffer = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (buffer == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    long iterations = (size >= (1 << 20) ? 200 : 2000) / scale;
    if (iterations < 20) iterations = 20;
    double start = now_ns();
    for (long i = 0; i < iterations; i++) dereg(reg(buffer, size));
    double uncached = (now_ns() - start) / (double)iterations;
    ucs_rcache_t *rcache = make_cache(ULONG_MAX);
    get_put(rcache, buffer, size);
    start = now_ns();
    for (long i = 0; i < iterations * 100; i++) get_put(rcache, buffer, size);
    double cached = (now_ns() - start) / (double)(iterations * 100);
    print_figure("uncached_reg_dereg", size, 0, uncached);
    print_figure("cached_register_release", size, 0, cached);
    ucs_rcache_destroy(rcache);
    munmap(buffer, size);
}

static struct ibv_context *open_device(const char *name) {
    int count = 0;
    struct ibv_device **devices = ibv_get_device_list(&count);
    if (devices == NULL) {
        perror("ibv_get_device_list");
        exit(1);
    }
    struct ibv_context *context = NULL;
    for (int i = 0; i < count && context == NULL; i++) {
        if (strcmp(ibv_get_device_name(devices[i]), name) == 0) context = ibv_open_device(devices[i]);
    }
    ibv_free_device_list(devices);
    if (context == NULL) {
        fprintf(stderr, "no device %s (or it did not open)\n", name);
        exit(1);
    }
    return context;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DEVICE [quick]\n", argv[0]);
        return 2;
    }
    if (argc > 2 && strcmp(argv[2], "quick") == 0) scale = 10;
    operations = 200 / scale < 20 ? 20 : 200 / scale;
    struct ibv_context *context = open_device(argv[1]);
    pd = ibv_alloc_pd(context);
    if (pd == NULL) {
        perror("ibv_alloc_pd");
        return 1;
    }
    /* The order of DeviceFigures.all. */
    figure_cycle();
    figure_miss(ULONG_MAX);
    figure_miss(evicting_limit);
    figure_hit(4096);
    figure_hit(65536);
    figure_hit(1 << 20);
    ibv_dealloc_pd(pd);
    ibv_close_device(context);
    return 0;
}
