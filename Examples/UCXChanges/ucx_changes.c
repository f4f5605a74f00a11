/*
 * ucx_changes: what UCX's registration cache sends after a program changed the memory under a
 * buffer it sent before (free and malloc again, mmap over, mremap, madvise, raw system calls,
 * a memfd truncated). Two processes over UCP (tag matching, rendezvous for large messages);
 * every byte is checked by the receiver.
 *
 *   ucx_changes [changes]   fork()s a receiver; for each change the sender sends 1 MiB from a
 *                           buffer, changes the memory under it and writes new contents, and
 *                           sends it again (twice). One verdict line per change; exit 1 if a
 *                           row was stale, 2 on an error. First it runs UCM's own check of
 *                           external memory events (ucm_test_external_events) and prints it.
 *   ucx_changes bench       one process: UCX's cached hit (ucp_mem_map + ucp_mem_unmap of the
 *                           same 64 KiB buffer) and the munmap of a 64 KiB buffer UCX cached.
 *   ucx_changes import-before | import-after
 *                           with libRDMAMemoryPreload.so loaded but not armed (LD_PRELOAD without
 *                           scripts/with-rdmamemory): calls rdmamemory_ucx_import() before or
 *                           after ucp_init() and prints what it answered. Before: 0, and UCM's
 *                           check of external events passes; after: -EBUSY, and why.
 *
 * Rendezvous makes UCX register the sender's buffer (its cache: ucs_rcache) and the receiver read
 * it over RDMA. A cache that missed the change hands out the old registration, and the receiver
 * reads the old pages: "STALE". scripts/ucx-tests runs it under UCX's own memory hooks, under
 * RDMAMemory (scripts/with-rdmamemory) and with UCX's cache off (UCX_IB_REG_METHODS=direct).
 */
#include "../MemoryChanges/memory_changes.h"

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#include <ucm/api/ucm.h>
#include <ucp/api/ucp.h>

/* 1 MiB: UCX 1.13 over rc_verbs sends 256 KiB through bounce buffers (no registration of the
 * sender's buffer, so nothing cached to go stale); from about 1 MiB it registers it (zero copy). */
#define MESSAGE (1u << 20)
#define CHANGED_ROUNDS 2

static const char *role = "sender";

static void fail(const char *what) {
    fprintf(stderr, "ucx_changes (%s): %s: %s\n", role, what, strerror(errno));
    exit(2);
}

static void memory_changes_fail(const char *what) { fail(what); }

static void check(ucs_status_t status, const char *what) {
    if (status != UCS_OK) {
        fprintf(stderr, "ucx_changes (%s): %s: %s\n", role, what, ucs_status_string(status));
        exit(2);
    }
}

/* ---------------------------------------------------------------- UCP set-up */

struct node {
    ucp_context_h context;
    ucp_worker_h worker;
    ucp_ep_h peer;
};

static ucp_context_h make_context(void) {
    ucp_params_t params = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_TAG};
    ucp_config_t *config;
    ucp_context_h context;
    check(ucp_config_read(NULL, NULL, &config), "ucp_config_read");
    check(ucp_init(&params, config, &context), "ucp_init");
    ucp_config_release(config);
    return context;
}

static void send_all(int fd, const void *bytes, size_t length) {
    for (size_t done = 0; done < length;) {
        ssize_t n = write(fd, (const char *)bytes + done, length - done);
        if (n <= 0) fail("write to peer");
        done += (size_t)n;
    }
}

static void receive_all(int fd, void *bytes, size_t length) {
    for (size_t done = 0; done < length;) {
        ssize_t n = read(fd, (char *)bytes + done, length - done);
        if (n <= 0) fail("read from peer");
        done += (size_t)n;
    }
}

/* A worker, and an endpoint to the process at the other end of `fd` (worker addresses swapped). */
static struct node connect_node(int fd) {
    struct node node = {.context = make_context()};
    ucp_worker_params_t params = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE, .thread_mode = UCS_THREAD_MODE_SINGLE};
    check(ucp_worker_create(node.context, &params, &node.worker), "ucp_worker_create");
    ucp_address_t *address;
    size_t length;
    check(ucp_worker_get_address(node.worker, &address, &length), "ucp_worker_get_address");
    send_all(fd, &length, sizeof length);
    send_all(fd, address, length);
    size_t peer_length;
    receive_all(fd, &peer_length, sizeof peer_length);
    void *peer_address = malloc(peer_length);
    if (!peer_address) fail("malloc");
    receive_all(fd, peer_address, peer_length);
    ucp_worker_release_address(node.worker, address);
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS, .address = peer_address};
    check(ucp_ep_create(node.worker, &ep, &node.peer), "ucp_ep_create");
    free(peer_address);
    return node;
}

static void wait_for(struct node *node, ucs_status_ptr_t request, const char *what) {
    if (request == NULL) return;
    if (UCS_PTR_IS_ERR(request)) check(UCS_PTR_STATUS(request), what);
    ucs_status_t status;
    while ((status = ucp_request_check_status(request)) == UCS_INPROGRESS) ucp_worker_progress(node->worker);
    ucp_request_free(request);
    check(status, what);
}

/* Closes the endpoint without the flush handshake (both sides close at once, with nothing in
 * flight: the receiver had every message), then the worker and the context. A flushing close
 * (ucp_ep_destroy) waits for the peer, which is closing too, and on rxe now and then did not
 * return (seen in CI, with UCX's cache off as well as under RDMAMemory). */
static void disconnect(struct node *node) {
    ucp_request_param_t param = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS, .flags = UCP_EP_CLOSE_FLAG_FORCE};
    ucs_status_ptr_t request = ucp_ep_close_nbx(node->peer, &param);
    if (request != NULL && !UCS_PTR_IS_ERR(request)) {
        while (ucp_request_check_status(request) == UCS_INPROGRESS) ucp_worker_progress(node->worker);
        ucp_request_free(request);
    }
    ucp_worker_destroy(node->worker);
    ucp_cleanup(node->context);
}

static void send_message(struct node *node, const void *bytes, size_t length, ucp_tag_t tag) {
    ucp_request_param_t param = {.op_attr_mask = 0};
    wait_for(node, ucp_tag_send_nbx(node->peer, bytes, length, tag, &param), "ucp_tag_send_nbx");
}

static void receive_message(struct node *node, void *bytes, size_t length, ucp_tag_t tag) {
    ucp_request_param_t param = {.op_attr_mask = 0};
    wait_for(node, ucp_tag_recv_nbx(node->worker, bytes, length, tag, (ucp_tag_t)-1, &param), "ucp_tag_recv_nbx");
}

/* ---------------------------------------------------------------- the changes */

static int sender(struct node *node) {
    for (int change = 0; change < CHANGES; change++) {
        struct change_buffer b = change_make(change, MESSAGE);
        int same = 1;
        for (int round = 0; round <= CHANGED_ROUNDS; round++) {
            if (round > 0) same &= change_replace(&b, change);
            change_fill(b.bytes, MESSAGE, round, change, 0);
            send_message(node, b.bytes, MESSAGE, (ucp_tag_t)(change * 16 + round));
        }
        send_message(node, &same, sizeof same, (ucp_tag_t)(change * 16 + 15));
        change_release(&b, change);
    }
    return 0;
}

static int receiver(struct node *node) {
    unsigned char *inbox = malloc(MESSAGE);
    if (!inbox) fail("malloc");
    int stale_rows = 0;
    for (int change = 0; change < CHANGES; change++) {
        size_t newest = MESSAGE; /* the fewest new bytes of any changed round */
        for (int round = 0; round <= CHANGED_ROUNDS; round++) {
            memset(inbox, 0, MESSAGE);
            receive_message(node, inbox, MESSAGE, (ucp_tag_t)(change * 16 + round));
            size_t matching = change_matching(inbox, MESSAGE, round, change, 0);
            if (round == 0 && matching != MESSAGE) {
                fprintf(stderr, "ucx_changes: first send of %s: %zu of %u bytes right\n", change_names[change], matching,
                        MESSAGE);
                exit(2);
            }
            if (round > 0 && matching < newest) newest = matching;
        }
        int same = 0;
        receive_message(node, &same, sizeof same, (ucp_tag_t)(change * 16 + 15));
        int fresh = newest == MESSAGE;
        stale_rows += !fresh;
        printf("change %-32s %-5s %7zu/%u bytes new (%s address)\n", change_names[change], fresh ? "fresh" : "STALE",
               newest, MESSAGE, same ? "same" : "new");
        fflush(stdout);
    }
    printf("summary: %d of %d rows stale\n", stale_rows, CHANGES);
    free(inbox);
    return stale_rows ? 1 : 0;
}

/* What RDMAMemory's adapter did, when it is in the process (preloaded). */
static void print_adapter_statistics(void) {
    struct statistics {
        uint64_t reported, registrations, watched, uncached, raced, waits;
    } s;
    void (*get)(struct statistics *) = (void (*)(struct statistics *))dlsym(RTLD_DEFAULT, "rdmamemory_ucx_get_statistics");
    if (!get) return;
    get(&s);
    printf("rdmamemory adapter: %" PRIu64 " reports to UCM, %" PRIu64 " UCX registrations (%" PRIu64 " watched, %" PRIu64
           " uncached, %" PRIu64 " raced), %" PRIu64 " lookups waited\n",
           s.reported, s.registrations, s.watched, s.uncached, s.raced, s.waits);
    fflush(stdout);
}

static int changes(void) {
    int sockets[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sockets) != 0) fail("socketpair");
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) fail("fork");
    if (child == 0) {
        role = "receiver";
        close(sockets[0]);
        struct node node = connect_node(sockets[1]);
        int status = receiver(&node);
        int done = 1;
        send_all(sockets[1], &done, sizeof done);
        disconnect(&node);
        exit(status);
    }
    close(sockets[1]);
    struct node node = connect_node(sockets[0]);
    /* UCM's own check that external events arrive: the libc calls it makes inside libucm (mmap,
     * mremap, munmap, shmat, shmdt, madvise) must each be reported before they return. It tests
     * only events declared external, so without an adapter it has nothing to test (OK). */
    ucs_status_t external = ucm_test_external_events(UCM_EVENT_VM_UNMAPPED);
    printf("ucm_test_external_events(UCM_EVENT_VM_UNMAPPED): %s\n", ucs_status_string(external));
    fflush(stdout);
    sender(&node);
    int done = 0;
    receive_all(sockets[0], &done, sizeof done);  /* the receiver has every message */
    print_adapter_statistics();
    disconnect(&node);
    int status = 0;
    if (waitpid(child, &status, 0) != child) fail("waitpid");
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    fprintf(stderr, "ucx_changes: the receiver died (status %d)\n", status);
    return 2;
}

/* ---------------------------------------------------------------- figures */

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static ucp_mem_h map(ucp_context_h context, void *address, size_t length) {
    ucp_mem_map_params_t params = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH,
        .address = address, .length = length,
    };
    ucp_mem_h memh;
    check(ucp_mem_map(context, &params, &memh), "ucp_mem_map");
    return memh;
}

static int bench(void) {
    ucp_context_h context = make_context();
    const size_t length = 64u << 10;
    enum { ROUNDS = 21, HITS = 2000, UNMAPS = 41 };
    unsigned char *buffer = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffer == MAP_FAILED) fail("mmap");
    memset(buffer, 1, length);
    check(ucp_mem_unmap(context, map(context, buffer, length)), "ucp_mem_unmap");  /* cached from now on */
    double hit_ns[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        double start = now_ns();
        for (int i = 0; i < HITS; i++) check(ucp_mem_unmap(context, map(context, buffer, length)), "ucp_mem_unmap");
        hit_ns[r] = (now_ns() - start) / HITS;
    }
    qsort(hit_ns, ROUNDS, sizeof hit_ns[0], compare_doubles);
    printf("bench cached hit (ucp_mem_map + ucp_mem_unmap, 64 KiB): %.0f ns (median of %d rounds of %d)\n",
           hit_ns[ROUNDS / 2], ROUNDS, HITS);
    munmap(buffer, length);
    double unmap_us[UNMAPS];
    for (int i = 0; i < UNMAPS; i++) {
        unsigned char *b = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (b == MAP_FAILED) fail("mmap");
        memset(b, i, length);
        check(ucp_mem_unmap(context, map(context, b, length)), "ucp_mem_unmap");  /* cached, not in use */
        double before = now_ns();
        munmap(b, length);
        unmap_us[i] = (now_ns() - before) / 1e3;
    }
    qsort(unmap_us, UNMAPS, sizeof unmap_us[0], compare_doubles);
    printf("bench munmap of a cached 64 KiB buffer: %.1f us (median of %d)\n", unmap_us[UNMAPS / 2], UNMAPS);
    print_adapter_statistics();
    ucp_cleanup(context);
    return 0;
}

/* rdmamemory_ucx_import() before or after UCX made its cache (found at run time: the library
 * is preloaded, not linked). */
static int import_order(int before) {
    int (*import)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rdmamemory_ucx_import");
    const char *(*error)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "rdmamemory_ucx_error");
    if (!import || !error) {
        fprintf(stderr, "ucx_changes: rdmamemory_ucx_import not found: preload libRDMAMemoryPreload.so\n");
        return 2;
    }
    int answer = 0;
    if (before) answer = import();
    ucp_context_h context = make_context();
    if (!before) answer = import();
    printf("rdmamemory_ucx_import() %s ucp_init(): %d (%s)%s%s\n", before ? "before" : "after", answer,
           answer ? strerror(-answer) : "imported", answer ? ": " : "", answer ? error() : "");
    ucs_status_t external = ucm_test_external_events(UCM_EVENT_VM_UNMAPPED);
    printf("ucm_test_external_events(UCM_EVENT_VM_UNMAPPED): %s\n", ucs_status_string(external));
    ucp_cleanup(context);
    return 0;
}

int main(int argc, char **argv) {
    /* A fixed threshold, as programs that tune glibc set it: each message-sized malloc is a
     * mapping of its own and free() unmaps it, so malloc after free gets the same address back. */
    mallopt(M_MMAP_THRESHOLD, 128 << 10);
    const char *mode = argc > 1 ? argv[1] : "changes";
    if (strcmp(mode, "changes") == 0) return changes();
    if (strcmp(mode, "bench") == 0) return bench();
    if (strcmp(mode, "import-before") == 0) return import_order(1);
    if (strcmp(mode, "import-after") == 0) return import_order(0);
    fprintf(stderr, "usage: ucx_changes [changes | bench | import-before | import-after]\n");
    return 2;
}
