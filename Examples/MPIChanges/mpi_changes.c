/*
 * mpi_changes: what an MPI stack's registration cache sends after a program changed the memory
 * under a buffer it sent before, as real programs do (free and malloc again, mmap over, raw
 * system calls, a memfd truncated). Two ranks; every byte is checked by the receiver.
 *
 *   mpirun -np 2 ... mpi_changes [changes]   for each change, each rank in turn sends 256 KiB
 *                                            from a buffer, changes the memory under it and
 *                                            writes new contents, and sends it again (twice).
 *                                            The receiver counts the bytes that are new: one
 *                                            verdict line per change and sender. Exit 1 if a
 *                                            row was stale, 2 on an error.
 *   mpirun -np 2 ... mpi_changes bench       osu_latency / osu_bw-shaped loops over 4 KiB -
 *                                            4 MiB with the same buffers reused, and the cost
 *                                            of munmap of a buffer the stack registered.
 *
 * Large messages are sent by rendezvous: the stack registers the sender's buffer and the
 * receiver reads it over RDMA, through the stack's registration cache. A cache that missed the
 * change hands out the old registration, and the receiver reads the old pages: "STALE".
 * scripts/mpi-tests runs it under Open MPI's own memory monitor and under RDMAMemory's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Large enough for the rendezvous protocol (ofi_rxm's eager limit is 16 KiB), small enough that
 * 6.1's rxe over a veth needs no transport retry: at 1 MiB each message waited one out (2.5 s).
 * UCX 1.13 sends 256 KiB through bounce buffers: scripts/mpi-tests builds it with 1 MiB for UCX. */
#ifndef MESSAGE
#define MESSAGE (256u << 10)
#endif
#define CHANGED_ROUNDS 2

#include "../MemoryChanges/memory_changes.h"

/* The changes this program makes (memory_changes.h has two more, which UCX's test adds). */
static const enum change tested[] = {FREE_MALLOC, MUNMAP_MMAP, MMAP_OVER, RAW_MUNMAP_MMAP, RAW_MADVISE, MEMFD_TRUNCATE};
#define TESTED ((int)(sizeof tested / sizeof tested[0]))

static int rank;

static void fail(const char *what) {
    fprintf(stderr, "mpi_changes (rank %d): %s: %s\n", rank, what, strerror(errno));
    MPI_Abort(MPI_COMM_WORLD, 2);
}

static void memory_changes_fail(const char *what) { fail(what); }

static int changes(void) {
    unsigned char *inbox = malloc(MESSAGE);
    if (!inbox) fail("malloc");
    int stale_rows = 0;
    for (int t = 0; t < TESTED; t++) {
        enum change change = tested[t];
        for (int sender = 0; sender < 2; sender++) {
            int receiver = 1 - sender;
            if (rank == sender) {
                struct change_buffer b = change_make(change, MESSAGE);
                int same = 1;
                for (int round = 0; round <= CHANGED_ROUNDS; round++) {
                    if (round > 0) same &= change_replace(&b, change);
                    change_fill(b.bytes, MESSAGE, round, change, sender);
                    MPI_Send(b.bytes, MESSAGE, MPI_BYTE, receiver, round, MPI_COMM_WORLD);
                }
                MPI_Send(&same, 1, MPI_INT, receiver, 99, MPI_COMM_WORLD);
                change_release(&b, change);
            } else {
                size_t newest = MESSAGE; /* the fewest new bytes of any changed round */
                for (int round = 0; round <= CHANGED_ROUNDS; round++) {
                    memset(inbox, 0, MESSAGE);
                    MPI_Recv(inbox, MESSAGE, MPI_BYTE, sender, round, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                    size_t matching = change_matching(inbox, MESSAGE, round, change, sender);
                    if (round == 0 && matching != MESSAGE) {
                        fprintf(stderr, "mpi_changes: first send of %s from rank %d: %zu of %u bytes right\n",
                                change_names[change], sender, matching, MESSAGE);
                        MPI_Abort(MPI_COMM_WORLD, 2);
                    }
                    if (round > 0 && matching < newest) newest = matching;
                }
                int same = 0;
                MPI_Recv(&same, 1, MPI_INT, sender, 99, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                int fresh = newest == MESSAGE;
                stale_rows += !fresh;
                printf("change %-32s from rank %d: %-5s %7zu/%u bytes new (%s address)\n", change_names[change], sender,
                       fresh ? "fresh" : "STALE", newest, MESSAGE, same ? "same" : "new");
                fflush(stdout);
            }
            MPI_Barrier(MPI_COMM_WORLD);
        }
    }
    int total = 0;
    MPI_Allreduce(&stale_rows, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("summary: %d of %d rows stale\n", total, 2 * TESTED);
    free(inbox);
    return total ? 1 : 0;
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One osu_latency and one osu_bw measurement of `size` bytes from `send` into `recv`. */
static void measure(unsigned char *send, unsigned char *recv, size_t size, double *latency, double *bandwidth) {
    const int window = 4;
    int peer = 1 - rank;
    int iterations = (int)((8u << 20) / size);
    if (iterations > 200) iterations = 200;
    if (iterations < 5) iterations = 5;
    double start = 0;
    for (int i = -5; i < iterations; i++) {  /* 5 rounds of warm-up */
        if (i == 0) start = MPI_Wtime();
        if (rank == 0) {
            MPI_Send(send, (int)size, MPI_BYTE, peer, 1, MPI_COMM_WORLD);
            MPI_Recv(recv, (int)size, MPI_BYTE, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(recv, (int)size, MPI_BYTE, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(send, (int)size, MPI_BYTE, peer, 1, MPI_COMM_WORLD);
        }
    }
    *latency = (MPI_Wtime() - start) * 1e6 / (2.0 * iterations);
    int rounds = (int)((32u << 20) / (size * window));
    if (rounds > 100) rounds = 100;
    if (rounds < 2) rounds = 2;
    MPI_Request requests[8];
    MPI_Status statuses[8]; /* not MPI_STATUSES_IGNORE: GCC 12 takes MPICH's for an empty array */
    int ack = 0;
    for (int i = -1; i < rounds; i++) {  /* one round of warm-up */
        if (i == 0) {
            MPI_Barrier(MPI_COMM_WORLD);
            start = MPI_Wtime();
        }
        for (int w = 0; w < window; w++) {
            if (rank == 0) MPI_Isend(send, (int)size, MPI_BYTE, peer, 2, MPI_COMM_WORLD, &requests[w]);
            else MPI_Irecv(recv, (int)size, MPI_BYTE, peer, 2, MPI_COMM_WORLD, &requests[w]);
        }
        MPI_Waitall(window, requests, statuses);
        if (rank == 0) MPI_Recv(&ack, 1, MPI_INT, peer, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        else MPI_Send(&ack, 1, MPI_INT, peer, 3, MPI_COMM_WORLD);
    }
    *bandwidth = (double)size * window * rounds / ((MPI_Wtime() - start) * 1e6);
}

/* osu_latency and osu_bw shapes, the same buffers reused (the cache's best case), then munmap
 * of a freshly registered 64 KiB buffer (what a watched unmap costs the program).
 *
 * Each size is measured MPI_BENCH_REPEATS times (default 5), the sizes interleaved, and the best
 * of them printed: the VM shares two host cores with everything else, and a measurement that a
 * host process preempted says nothing about the monitor. The best one is what the two ranks,
 * the stack and the monitor cost when nothing else ran. */
static int bench(void) {
    enum { SIZES = 6 };
    int peer = 1 - rank;
    const char *repeats_text = getenv("MPI_BENCH_REPEATS");
    int repeats = repeats_text ? atoi(repeats_text) : 5;
    if (repeats < 1) repeats = 1;
    unsigned char *send[SIZES], *recv[SIZES];
    double best_latency[SIZES], best_bandwidth[SIZES];
    for (int s = 0; s < SIZES; s++) {
        size_t size = (size_t)4096 << (2 * s);
        send[s] = aligned_alloc(4096, size);
        recv[s] = aligned_alloc(4096, size);
        if (!send[s] || !recv[s]) fail("aligned_alloc");
        memset(send[s], rank + 1, size);
        memset(recv[s], 0, size);
        best_latency[s] = 1e300;
        best_bandwidth[s] = 0;
    }
    for (int r = 0; r < repeats; r++) {
        for (int s = 0; s < SIZES; s++) {
            double latency, bandwidth;
            measure(send[s], recv[s], (size_t)4096 << (2 * s), &latency, &bandwidth);
            if (latency < best_latency[s]) best_latency[s] = latency;
            if (bandwidth > best_bandwidth[s]) best_bandwidth[s] = bandwidth;
        }
    }
    for (int s = 0; s < SIZES; s++) {
        if (rank == 0)
            printf("bench size %7zu: latency %9.1f us, bandwidth %8.2f MB/s (best of %d)\n", (size_t)4096 << (2 * s),
                   best_latency[s], best_bandwidth[s], repeats);
        free(send[s]);
        free(recv[s]);
    }
    enum { UNMAPS = 41 };
    double unmap_us[UNMAPS];
    const size_t length = 64u << 10;
    for (int i = 0; i < UNMAPS; i++) {
        unsigned char *buffer = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (buffer == MAP_FAILED) fail("mmap");
        memset(buffer, i, length);
        if (rank == 0) MPI_Send(buffer, (int)length, MPI_BYTE, peer, 4, MPI_COMM_WORLD);
        else MPI_Recv(buffer, (int)length, MPI_BYTE, peer, 4, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Barrier(MPI_COMM_WORLD);
        double before = now_us();
        munmap(buffer, length);
        unmap_us[i] = now_us() - before;
    }
    qsort(unmap_us, UNMAPS, sizeof unmap_us[0], compare_doubles);
    if (rank == 0) printf("bench munmap of a registered 64 KiB buffer: %.1f us (median of %d)\n", unmap_us[UNMAPS / 2], UNMAPS);
    return 0;
}

int main(int argc, char **argv) {
    /* A fixed threshold, as programs that tune glibc set it: each message-sized malloc is a
     * mapping of its own and free() unmaps it, so malloc after free gets the same address back
     * (with the default dynamic threshold, glibc moves large blocks to the heap after a free). */
    mallopt(M_MMAP_THRESHOLD, 128 << 10);
    MPI_Init(&argc, &argv);
    int size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2) {
        if (rank == 0) fprintf(stderr, "mpi_changes: run with exactly 2 ranks (mpirun -np 2)\n");
        MPI_Finalize();
        return 2;
    }
    const char *mode = argc > 1 ? argv[1] : "changes";
    int status;
    if (strcmp(mode, "changes") == 0) {
        status = changes();
    } else if (strcmp(mode, "bench") == 0) {
        status = bench();
    } else {
        if (rank == 0) fprintf(stderr, "usage: mpi_changes [changes | bench]\n");
        status = 2;
    }
    MPI_Finalize();
    return status;
}
