#pragma once
// The process's munmap(), defined here so that a memory monitor can handle an unmap of watched
// memory in the calling thread (see MemoryMonitor's MunmapHook.swift for why).
#include <stddef.h>

/// Handles munmap(address, length) and performs it (by cmunmaphook_unmap). Returns 0 or the
/// errno value to report; the hook sets errno itself, after the handler has returned.
typedef int (*cmunmaphook_handler)(void *address, size_t length);

/// Routes every later munmap() of this process through `handler` (NULL: straight to the
/// kernel). A forked child goes back to NULL: the parent's monitors are not the child's.
void cmunmaphook_install(cmunmaphook_handler handler);

/// The unmap itself, as munmap() did before the hook: 0, or the errno value.
int cmunmaphook_unmap(void *address, size_t length);
