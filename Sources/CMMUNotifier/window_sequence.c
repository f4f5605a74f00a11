// fork() and the address spaces' window sequences (window_sequence.h says why).
#include "window_sequence.h"
#include <pthread.h>

#define TRACKED_MAX 64
static cmmu_window_sequence *tracked[TRACKED_MAX];
static pthread_mutex_t tracked_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t handlers_once = PTHREAD_ONCE_INIT;
static _Atomic int forked_child;

static void before_fork(void) { pthread_mutex_lock(&tracked_lock); }
static void parent_after_fork(void) { pthread_mutex_unlock(&tracked_lock); }

// In the child only the forking thread exists: the monitor's threads, the reclaim thread and
// any lock holder are gone, and the userfaultfd context watches the parent's memory.
static void child_after_fork(void) {
    for (int i = 0; i < TRACKED_MAX; i++) {
        if (tracked[i]) atomic_fetch_or_explicit(&tracked[i]->value, 1, memory_order_release);
    }
    atomic_store_explicit(&forked_child, 1, memory_order_release);
    pthread_mutex_unlock(&tracked_lock);
}

static void install_handlers(void) { pthread_atfork(before_fork, parent_after_fork, child_after_fork); }

int cmmu_window_sequence_track(cmmu_window_sequence *sequence) {
    pthread_once(&handlers_once, install_handlers);
    int result = -1;
    pthread_mutex_lock(&tracked_lock);
    for (int i = 0; i < TRACKED_MAX; i++) {
        if (!tracked[i]) {
            tracked[i] = sequence;
            result = 0;
            break;
        }
    }
    pthread_mutex_unlock(&tracked_lock);
    return result;
}

void cmmu_window_sequence_untrack(cmmu_window_sequence *sequence) {
    pthread_mutex_lock(&tracked_lock);
    for (int i = 0; i < TRACKED_MAX; i++) {
        if (tracked[i] == sequence) tracked[i] = NULL;
    }
    pthread_mutex_unlock(&tracked_lock);
}

int cmmu_in_forked_child(void) { return atomic_load_explicit(&forked_child, memory_order_acquire); }
