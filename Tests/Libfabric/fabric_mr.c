/*
 * fabric_mr: what libfabric's registration cache hands out after the memory under a cached
 * region changed, on a real verbs device (rxe), whatever monitor libfabric uses.
 *
 *   fabric_mr cases            for each memory change: fi_mr_reg 64 KiB (cached), change the
 *                              memory, fi_mr_reg the same address again, RDMA WRITE through
 *                              the second key over an RC endpoint, count the bytes that
 *                              reached the new memory. One line per case; exit 1 if any
 *                              was stale.
 *   fabric_mr stress SECONDS   threads map, register (cached), unmap (libc and raw
 *                              syscalls) and register again, for SECONDS; exit 3 if they
 *                              do not finish in time (a deadlock).
 *   fabric_mr bench            a cached fi_mr_reg + fi_close on a hit, and a watched 64 KiB
 *                              munmap: medians.
 *   fabric_mr late-import      (the -DRDMAMEMORY_CALL build) the import after a domain opened:
 *                              exit 0 if it failed with -FI_EBUSY and said why.
 *
 * The monitor is libfabric's (FI_MR_CACHE_MONITOR=memhooks|userfaultfd), or RDMAMemory's:
 * preloaded (scripts/with-rdmamemory), or, built with -DRDMAMEMORY_CALL, imported by
 * rdmamemory_libfabric_import() at the start of main. The program is otherwise the same.
 *
 * Environment: RDMAMEMORY_LF_ADDR (default 192.168.77.1, an address on the rxe netdev),
 * RDMAMEMORY_LF_PORT (default 7471).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#ifdef RDMAMEMORY_CALL
#include "rdmamemory_libfabric.h"
#endif

#define LEN (64 * 1024)
#define TIMEOUT_MS 10000

static struct fid_fabric *fabric;
static struct fid_domain *domain;
static struct fid_ep *client, *server;
static struct fid_cq *client_cq;

#define CHECK(call)                                                                       \
    do {                                                                                  \
        int ret_ = (int)(call);                                                           \
        if (ret_ < 0) {                                                                   \
            fprintf(stderr, "fabric_mr: %s: %s (%d)\n", #call, fi_strerror(-ret_), ret_); \
            exit(2);                                                                      \
        }                                                                                 \
    } while (0)

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static struct fi_info *hints(void) {
    struct fi_info *h = fi_allocinfo();
    h->ep_attr->type = FI_EP_MSG;
    h->caps = FI_MSG | FI_RMA;
    h->mode = FI_CONTEXT;
    h->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
    h->fabric_attr->prov_name = strdup("verbs");
    return h;
}

/* The connection's event queues. The verbs provider drives address and route resolution
 * from its event queue reads, so every queue is read (without blocking) until `want` arrives
 * on `eq`; other events are not expected before it (a CONNECTED for the other end is kept). */
static struct fid_eq *event_queues[3];
static bool connected[3];

static void wait_event(struct fid_eq *eq, uint32_t want, struct fi_eq_cm_entry *entry) {
    double deadline = now_ns() + TIMEOUT_MS * 1e6;
    for (;;) {
        for (int q = 0; q < 3; q++) {
            if (want == FI_CONNECTED && event_queues[q] == eq && connected[q]) return;
            uint32_t event;
            struct fi_eq_cm_entry got;
            ssize_t n = fi_eq_read(event_queues[q], &event, &got, sizeof got, 0);
            if (n == -FI_EAGAIN) continue;
            if (n < 0) {
                struct fi_eq_err_entry err = {0};
                if (n == -FI_EAVAIL && fi_eq_readerr(event_queues[q], &err, 0) > 0)
                    fprintf(stderr, "fabric_mr: connection: %s (%s)\n", fi_strerror(err.err),
                            fi_eq_strerror(event_queues[q], err.prov_errno, err.err_data, NULL, 0));
                else
                    fprintf(stderr, "fabric_mr: reading connection events: %s\n", fi_strerror((int)-n));
                exit(2);
            }
            if (event == FI_CONNECTED) connected[q] = true;
            if (event_queues[q] == eq && event == want) {
                *entry = got;
                return;
            }
            if (event != FI_CONNECTED) {
                fprintf(stderr, "fabric_mr: unexpected connection event %u\n", event);
                exit(2);
            }
        }
        if (now_ns() > deadline) {
            fprintf(stderr, "fabric_mr: no %s within %d ms\n", want == FI_CONNREQ ? "connection request" : "connection",
                    TIMEOUT_MS);
            exit(2);
        }
    }
}

/* An RC connection from `client` to `server`, both in one domain of this process. */
static void connect_loopback(void) {
    const char *addr = getenv("RDMAMEMORY_LF_ADDR") ? getenv("RDMAMEMORY_LF_ADDR") : "192.168.77.1";
    const char *port = getenv("RDMAMEMORY_LF_PORT") ? getenv("RDMAMEMORY_LF_PORT") : "7471";
    struct fi_info *h = hints(), *listen_info, *connect_info;
    CHECK(fi_getinfo(FI_VERSION(1, 13), addr, port, FI_SOURCE, h, &listen_info));
    CHECK(fi_fabric(listen_info->fabric_attr, &fabric, NULL));
    struct fi_eq_attr eq_attr = {.wait_obj = FI_WAIT_UNSPEC};
    struct fid_eq *listen_eq, *server_eq, *client_eq;
    CHECK(fi_eq_open(fabric, &eq_attr, &listen_eq, NULL));
    CHECK(fi_eq_open(fabric, &eq_attr, &server_eq, NULL));
    CHECK(fi_eq_open(fabric, &eq_attr, &client_eq, NULL));
    event_queues[0] = listen_eq;
    event_queues[1] = server_eq;
    event_queues[2] = client_eq;
    struct fid_pep *pep;
    CHECK(fi_passive_ep(fabric, listen_info, &pep, NULL));
    CHECK(fi_pep_bind(pep, &listen_eq->fid, 0));
    CHECK(fi_listen(pep));
    CHECK(fi_domain(fabric, listen_info, &domain, NULL));

    CHECK(fi_getinfo(FI_VERSION(1, 13), addr, port, 0, h, &connect_info));
    struct fi_cq_attr cq_attr = {.format = FI_CQ_FORMAT_CONTEXT, .wait_obj = FI_WAIT_NONE};  /* provider-sized: it reserves room per endpoint */
    struct fid_cq *server_cq;
    CHECK(fi_cq_open(domain, &cq_attr, &client_cq, NULL));
    CHECK(fi_cq_open(domain, &cq_attr, &server_cq, NULL));
    CHECK(fi_endpoint(domain, connect_info, &client, NULL));
    CHECK(fi_ep_bind(client, &client_eq->fid, 0));
    CHECK(fi_ep_bind(client, &client_cq->fid, FI_TRANSMIT | FI_RECV));
    CHECK(fi_enable(client));
    CHECK(fi_connect(client, connect_info->dest_addr, NULL, 0));

    struct fi_eq_cm_entry entry;
    wait_event(listen_eq, FI_CONNREQ, &entry);
    CHECK(fi_endpoint(domain, entry.info, &server, NULL));
    CHECK(fi_ep_bind(server, &server_eq->fid, 0));
    CHECK(fi_ep_bind(server, &server_cq->fid, FI_TRANSMIT | FI_RECV));
    CHECK(fi_enable(server));
    CHECK(fi_accept(server, NULL, 0));
    wait_event(server_eq, FI_CONNECTED, &entry);
    wait_event(client_eq, FI_CONNECTED, &entry);
    fi_freeinfo(h);
}

/* RDMA WRITE of `src` into [dest, dest + LEN) through `key`; 0, or the completion's error. */
static int rdma_write(void *src, void *src_desc, void *dest, uint64_t key) {
    struct fi_context context;
    ssize_t ret;
    do {
        ret = fi_write(client, src, LEN, src_desc, 0, (uint64_t)(uintptr_t)dest, key, &context);
    } while (ret == -FI_EAGAIN);
    if (ret) return (int)ret;
    double deadline = now_ns() + TIMEOUT_MS * 1e6;
    struct fi_cq_entry completion;
    for (;;) {
        ssize_t n = fi_cq_read(client_cq, &completion, 1);
        if (n == 1) return 0;
        if (n == -FI_EAVAIL) {
            struct fi_cq_err_entry err = {0};
            fi_cq_readerr(client_cq, &err, 0);
            return -(int)err.err;
        }
        if (n != -FI_EAGAIN) return (int)n;
        if (now_ns() > deadline) return -FI_ETIMEDOUT;
    }
}

static void *map_at(void *at) {
    void *p = mmap(at, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | (at ? MAP_FIXED : 0), -1, 0);
    if (p == MAP_FAILED) {
        perror("fabric_mr: mmap");
        exit(2);
    }
    return p;
}

/* ------------------------------------------------------------------ the memory changes */

struct change {
    const char *name;
    void *(*prepare)(void);              /* the buffer, touched */
    void *(*change)(void *buf);          /* changes the memory; returns the buffer to write */
    void (*cleanup)(void *buf);
};

static void unmap_buffer(void *buf) { munmap(buf, LEN); }

static void *plain_buffer(void) { return map_at(NULL); }

static void *munmap_then_mmap(void *buf) {
    munmap(buf, LEN);
    return map_at(buf);
}

static void *raw_munmap_then_mmap(void *buf) {
    syscall(SYS_munmap, buf, LEN);
    return map_at(buf);
}

/* Neither call through the C library: what no symbol hook can see. */
static void *raw_munmap_then_raw_mmap(void *buf) {
    syscall(SYS_munmap, buf, LEN);
    void *p = (void *)syscall(SYS_mmap, buf, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p != buf) {
        perror("fabric_mr: syscall(SYS_mmap)");
        exit(2);
    }
    return p;
}

/* mremap moves the pages elsewhere; new memory is mapped where they were. */
static void *moved_to;
static void *mremap_away(void *buf) {
    moved_to = mmap(NULL, LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (moved_to == MAP_FAILED || mremap(buf, LEN, LEN, MREMAP_MAYMOVE | MREMAP_FIXED, moved_to) == MAP_FAILED) {
        perror("fabric_mr: mremap");
        exit(2);
    }
    return map_at(buf);
}
static void mremap_cleanup(void *buf) {
    munmap(buf, LEN);
    munmap(moved_to, LEN);
}

static void *discard_pages(void *buf) {
    if (madvise(buf, LEN, MADV_DONTNEED)) {
        perror("fabric_mr: madvise");
        exit(2);
    }
    return buf;
}

/* A block above the mmap threshold: malloc maps it, free unmaps it (inside glibc, not
 * through the munmap symbol), and the next malloc of that size maps it again. */
#define BLOCK (4 * 1024 * 1024)
static void *malloc_block(void) {
    mallopt(M_MMAP_THRESHOLD, 1024 * 1024);  /* fixed: free() must not raise it */
    return malloc(BLOCK);
}
static void *free_then_malloc(void *buf) {
    uintptr_t was = (uintptr_t)buf;
    free(buf);
    void *again = malloc(BLOCK);
    if ((uintptr_t)again != was) {
        fprintf(stderr, "fabric_mr: malloc after free returned %p, not %#lx: case not meaningful\n", again, (unsigned long)was);
        free(again);
        return NULL;
    }
    return again;
}
static void free_block(void *buf) { free(buf); }

static int memfd;
static void *memfd_buffer(void) {
    memfd = memfd_create("fabric_mr", 0);
    if (memfd < 0 || ftruncate(memfd, LEN)) {
        perror("fabric_mr: memfd");
        exit(2);
    }
    void *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (p == MAP_FAILED) {
        perror("fabric_mr: mmap memfd");
        exit(2);
    }
    return p;
}
static void *truncate_and_regrow(void *buf) {
    if (ftruncate(memfd, 0) || ftruncate(memfd, LEN)) {
        perror("fabric_mr: ftruncate");
        exit(2);
    }
    return buf;
}
static void memfd_cleanup(void *buf) {
    munmap(buf, LEN);
    close(memfd);
}

static const struct change changes[] = {
    {"munmap+mmap(MAP_FIXED)", plain_buffer, munmap_then_mmap, unmap_buffer},
    {"syscall(SYS_munmap)+mmap", plain_buffer, raw_munmap_then_mmap, unmap_buffer},
    {"syscall(SYS_munmap)+syscall(SYS_mmap)", plain_buffer, raw_munmap_then_raw_mmap, unmap_buffer},
    {"mremap+mmap", plain_buffer, mremap_away, mremap_cleanup},
    {"madvise(MADV_DONTNEED)", plain_buffer, discard_pages, unmap_buffer},
    {"free()+malloc() 4 MiB", malloc_block, free_then_malloc, free_block},
    {"memfd ftruncate shrink+regrow", memfd_buffer, truncate_and_regrow, memfd_cleanup},
};

/* What RDMAMemory's monitor counted (the build that links it only). */
static void print_statistics(void) {
#ifdef RDMAMEMORY_CALL
    struct rdmamemory_libfabric_statistics s;
    rdmamemory_libfabric_get_statistics(&s);
    printf("rdmamemory: subscribed %" PRIu64 ", refused %" PRIu64 ", valid %" PRIu64 ", invalid %" PRIu64
           ", notified %" PRIu64 "\n", s.subscribed, s.refused, s.valid, s.invalid, s.notified);
#endif
}

static int run_cases(void) {
    connect_loopback();
    char *src = malloc(LEN);
    struct fid_mr *src_mr;
    CHECK(fi_mr_reg(domain, src, LEN, FI_WRITE, 0, 0, 0, &src_mr, NULL));
    int stale = 0, errors = 0;
    for (size_t i = 0; i < sizeof changes / sizeof changes[0]; i++) {
        const struct change *c = &changes[i];
        char *buf = c->prepare();
        memset(buf, 1, LEN);
        struct fid_mr *first, *second;
        CHECK(fi_mr_reg(domain, buf, LEN, FI_REMOTE_WRITE, 0, 0, 0, &first, NULL));
        uint64_t first_key = fi_mr_key(first);
        fi_close(&first->fid);  /* stays in libfabric's cache */

        char *now = c->change(buf);
        if (!now) {
            printf("case %-38s error    (the address was not reused)\n", c->name);
            errors++;
            continue;
        }
        memset(now, 0, LEN);
        CHECK(fi_mr_reg(domain, now, LEN, FI_REMOTE_WRITE, 0, 0, 0, &second, NULL));
        bool hit = fi_mr_key(second) == first_key;
        unsigned char pattern = (unsigned char)(0xA0 + i);
        memset(src, pattern, LEN);
        int ret = rdma_write(src, fi_mr_desc(src_mr), now, fi_mr_key(second));
        size_t landed = 0;
        for (size_t b = 0; b < LEN; b++) landed += (unsigned char)now[b] == pattern;
        const char *verdict = ret ? "error" : landed == LEN ? "fresh" : "STALE";
        printf("case %-38s %-8s landed %6zu/%d  second key %s%s%s\n", c->name, verdict, landed, LEN,
               hit ? "= first (cache hit)" : "new", ret ? "; write: " : "", ret ? fi_strerror(-ret) : "");
        stale += landed != LEN && !ret;
        errors += ret != 0;
        fi_close(&second->fid);
        c->cleanup(now);
    }
    print_statistics();
    printf("summary: %d stale, %d errors\n", stale, errors);
    fflush(stdout);
    return stale ? 1 : errors ? 2 : 0;
}

/* ------------------------------------------------------------------ stress */

static atomic_long operations;
static double stress_until;

static void *stress_thread(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg;
    while (now_ns() < stress_until) {
        char *buf = map_at(NULL);
        memset(buf, 2, LEN);
        for (int round = 0; round < 3; round++) {
            struct fid_mr *mr;
            CHECK(fi_mr_reg(domain, buf, LEN, FI_REMOTE_WRITE, 0, 0, 0, &mr, NULL));
            fi_close(&mr->fid);
            if (rand_r(&seed) % 4 == 0) madvise(buf, LEN / 2, MADV_DONTNEED);  /* an event */
        }
        if (rand_r(&seed) % 2) munmap(buf, LEN);  /* the hook, or memhooks */
        else syscall(SYS_munmap, buf, LEN);       /* an event */
        atomic_fetch_add(&operations, 1);
    }
    return NULL;
}

static void deadlock(int signal) {
    (void)signal;
    static const char message[] = "fabric_mr: stress did not finish in time: deadlock\n";
    ssize_t ignored = write(2, message, sizeof message - 1);
    (void)ignored;
    _exit(3);
}

static int run_stress(double seconds, int threads) {
    connect_loopback();
    signal(SIGALRM, deadlock);
    alarm((unsigned)seconds + 60);
    stress_until = now_ns() + seconds * 1e9;
    pthread_t t[64];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, stress_thread, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    alarm(0);
    printf("stress: %d threads, %.0f s, %ld map/register/unmap rounds, no deadlock\n", threads, seconds,
           atomic_load(&operations));
    return 0;
}

/* exit() while threads still map, register and unmap (libc and raw): the monitor's worker and
 * hooked munmaps may still call libfabric's notify while its destructors run. Must neither crash
 * nor hang (alarm). */
static int run_exit_race(void) {
    connect_loopback();
    signal(SIGALRM, deadlock);
    alarm(60);
    stress_until = now_ns() + 3600e9;
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, stress_thread, (void *)(uintptr_t)(i + 1));
    while (atomic_load(&operations) < 200) sched_yield();
    printf("exit-race: exit() with 4 threads mid-stress after %ld rounds\n", atomic_load(&operations));
    fflush(stdout);
    exit(0);
}

/* ------------------------------------------------------------------ bench */

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int run_bench(void) {
    connect_loopback();
    enum { ROUNDS = 7, HITS = 20000, UNMAPS = 200 };
    double hit[ROUNDS], unmap[ROUNDS];
    char *buf = map_at(NULL);
    memset(buf, 3, LEN);
    for (int r = 0; r < ROUNDS; r++) {
        struct fid_mr *mr;
        double t0 = now_ns();
        for (int i = 0; i < HITS; i++) {
            CHECK(fi_mr_reg(domain, buf, LEN, FI_REMOTE_WRITE, 0, 0, 0, &mr, NULL));
            fi_close(&mr->fid);
        }
        hit[r] = (now_ns() - t0) / HITS;
        double total = 0;
        for (int i = 0; i < UNMAPS; i++) {
            char *b = map_at(NULL);
            memset(b, 4, LEN);
            CHECK(fi_mr_reg(domain, b, LEN, FI_REMOTE_WRITE, 0, 0, 0, &mr, NULL));
            fi_close(&mr->fid);
            double u0 = now_ns();
            munmap(b, LEN);
            total += now_ns() - u0;
        }
        unmap[r] = total / UNMAPS / 1000;
    }
    qsort(hit, ROUNDS, sizeof hit[0], compare);
    qsort(unmap, ROUNDS, sizeof unmap[0], compare);
    printf("bench: cached fi_mr_reg+fi_close hit %.0f ns, watched 64 KiB munmap %.1f us (medians of %d)\n",
           hit[ROUNDS / 2], unmap[ROUNDS / 2], ROUNDS);
    print_statistics();
    return 0;
}

#ifdef RDMAMEMORY_CALL
/* The import after a domain is open: libfabric refuses it; the call must say so, not crash. */
static int run_late_import(void) {
    connect_loopback();
    int ret = rdmamemory_libfabric_import();
    printf("late import: %d (%s): %s\n", ret, ret ? fi_strerror(-ret) : "success", rdmamemory_libfabric_error());
    return ret == -FI_EBUSY && strstr(rdmamemory_libfabric_error(), "before the first fi_domain") ? 0 : 1;
}
#endif

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
#ifdef RDMAMEMORY_CALL
    if (argc > 1 && !strcmp(argv[1], "late-import")) return run_late_import();
    if (rdmamemory_libfabric_import() != 0) {
        fprintf(stderr, "fabric_mr: rdmamemory_libfabric_import: %s\n", rdmamemory_libfabric_error());
        return 2;
    }
#endif
    const char *mode = argc > 1 ? argv[1] : "cases";
    if (!strcmp(mode, "cases")) return run_cases();
    if (!strcmp(mode, "stress")) return run_stress(argc > 2 ? atof(argv[2]) : 10, argc > 3 ? atoi(argv[3]) : 4);
    if (!strcmp(mode, "bench")) return run_bench();
    if (!strcmp(mode, "exit-race")) return run_exit_race();
    fprintf(stderr, "usage: fabric_mr cases | stress [SECONDS [THREADS]] | bench | exit-race\n");
    return 2;
}
