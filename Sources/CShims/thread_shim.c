#define _GNU_SOURCE
#include "thread_shim.h"
#include <pthread.h>
#include <sys/eventfd.h>

void cshims_name_thread(const char *name) { pthread_setname_np(pthread_self(), name); }

int cshims_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
