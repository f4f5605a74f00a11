#pragma once
// The process's munmap(), mmap(MAP_FIXED), mremap(), madvise(), process_madvise(), mprotect(),
// pkey_mprotect(), shmat() and shmdt(), defined here so that a memory monitor sees the changes
// userfaultfd reports late (munmap, mremap, madvise(DONTNEED): the caller sleeps until the monitor
// reads the event) or never (guard pages, mprotect, shmat over memory, shmdt), in the calling thread.
// See Sources/Monitors/Hooks/MemoryHooks.swift for why, and what is still unseen.
//
// Three parts, each in its own file:
// - memory_hooks.c: the definitions. On a call that touches no memory a monitor registered they
//   allocate nothing and take no lock but one short leaf lock of their own (the record of
//   mappings, known_mappings.c, while a monitor runs; the granule maps are read lock-free), so
//   an allocator that calls them while holding its own lock cannot re-enter itself. On a call that
//   does, the handler allocates nothing before the real call either: a block malloc maps then
//   could land in the very range an mmap(MAP_FIXED) is about to replace.
// - granule_map.c: per monitor, which 2 MiB chunks hold registered and validated granules;
//   written under the monitor's lock, read lock-free by the hooks. Immortal once made.
// - vma_query.c: what is mapped at an address (PROCMAP_QUERY where the kernel has it, else
//   /proc/self/maps), allocation-free.
// - known_mappings.c: the private anonymous mappings the hooked mmap made, so that a watch
//   there knows their class without asking the kernel.
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// Hooks

enum cmemhooks_kind {
    CMEMHOOKS_MUNMAP = 1,
    CMEMHOOKS_MPROTECT = 2,
    CMEMHOOKS_SHMAT = 3,
    CMEMHOOKS_SHMDT = 4,
    CMEMHOOKS_MMAP_FIXED = 5,
    CMEMHOOKS_MREMAP = 6,
    CMEMHOOKS_MADVISE = 7,          // madvise() or process_madvise() of this process, replacing pages
    CMEMHOOKS_MMAP_NEW = 8,         // an mmap() (not MAP_FIXED) that made memory in registered granules
                                    // (every private anonymous one is recorded: known_mappings.c)
    CMEMHOOKS_BRK = 9,              // brk() or sbrk() lowering the program break: [start, end) unmapped
                                    // (told after the call: performed is 1, result the address)
};

/// Told of every page range a hooked munmap, mmap(MAP_FIXED), mremap, page-replacing madvise,
/// shmat(SHM_REMAP), shmdt or lowered brk is about to take away, before the real call, in the
/// calling thread, whether or not a monitor watches it (UCX's memory events, which report every
/// unmap: Sources/CUCXMonitor). Not told of calls it makes itself.
typedef void (*cmemhooks_unmap_observer)(uintptr_t start, size_t length);
/// Sets the observer (NULL: none). One per process: the last set wins.
void cmemhooks_set_unmap_observer(cmemhooks_unmap_observer observer);

/// What a protection change takes away (the hooks call the handler only when it takes some).
enum cmemhooks_protection_loss {
    CMEMHOOKS_LOSES_WRITE = 1,   // readable, not writable any more
    CMEMHOOKS_LOSES_ALL = 2,     // neither readable nor writable
};

/// One intercepted call, as the handler sees it.
typedef struct cmemhooks_call {
    int kind;                  // enum cmemhooks_kind
    uintptr_t start, end;      // the page range the call changes
    uint32_t slots;            // the granule-map slots (monitors) whose memory it touches
    int protection_loss;       // CMEMHOOKS_MPROTECT: enum cmemhooks_protection_loss
    int performed;             // set once the real call ran (cmemhooks_perform)
    // The arguments of the real call.
    void *address;
    size_t length;
    int prot;
    int pkey;                  // -1: plain mprotect
    int shmid;
    int flags;                 // shmat's or mmap's flags
    int fd;                    // mmap's
    long offset;               // mmap's
    // mremap's: its new size, and the range MREMAP_FIXED replaces (new_start == new_end: none).
    size_t new_length;
    uintptr_t new_start, new_end;
    int advice;                // madvise's
    int pidfd;                 // process_madvise's (-1: madvise)
    const void *iovec;         // process_madvise's (struct iovec *), with its count
    size_t iovec_count;
    // Its outcome: munmap/mprotect/shmdt 0 or -1, shmat/mmap the address or -1; errno when -1.
    intptr_t result;
    int error;
} cmemhooks_call;

/// Handles an intercepted call. When `call->performed` is 0 the handler invalidates what it
/// must and calls cmemhooks_perform(call) exactly once; when it is 1 the call already ran
/// (a change the pre-check did not see as watched: a racing watch) and the handler only
/// invalidates. errno is set by the hook after the handler returns.
typedef void (*cmemhooks_handler)(cmemhooks_call *call);

/// Routes later intercepted calls through `handler` (NULL: straight to the kernel). A forked
/// child goes back to NULL: the parent's monitors are not the child's. Returns 0, or -1 when
/// the hooks are switched off by RDMAMEMORY_HOOKS=off (read once, at the first install).
int cmemhooks_install(cmemhooks_handler handler);

/// 1 when RDMAMEMORY_HOOKS=off switched the hooks off (read once, with secure_getenv: a setuid
/// program's caller cannot switch them off).
int cmemhooks_disabled(void);

/// 1 when another copy of these hooks binds the process's calls (the program links RDMAMemory
/// and a library that carries its own copy is preloaded, or the reverse): this copy's hooks then
/// see nothing, and its monitor must not count on them. Read once, at the first install.
int cmemhooks_shadowed(void);

/// 1 when `advice` may replace the pages of the range it is given (DONTNEED, FREE, REMOVE,
/// GUARD_INSTALL, ... and every value this build does not know); 0 for advice that only hints
/// or changes what a child inherits.
int cmemhooks_advice_replaces_pages(int advice);

/// Runs the real call of `call` (once) and records its outcome.
void cmemhooks_perform(cmemhooks_call *call);


// ---------------------------------------------------------------------------------------------
// Granule maps

/// Slots (monitors) at most.
#define CMEMHOOKS_SLOTS 32

/// Takes a free slot for a monitor: its index, or -1 (all taken, or out of memory).
int cmemhooks_slot_acquire(void);

/// Gives a slot back; every count in it must be zero again.
void cmemhooks_slot_release(int slot);

/// Adds `delta` (registered granules: -1 or +1) to every 2 MiB chunk that [start, end)
/// overlaps. Thread-safe. Add before the kernel registers, subtract after it unregistered: a
/// hook that reads zero then knows the memory is not registered at that instant. 0, or ENOMEM
/// (nothing changed).
int cmemhooks_slot_adjust(int slot, uintptr_t start, uintptr_t end, int delta);

/// The slots in use (bit per slot).
uint32_t cmemhooks_active_slots(void);

/// The slots (bit per slot) with a registered granule in [start, end). Lock-free,
/// allocation-free.
uint32_t cmemhooks_touching(uintptr_t start, uintptr_t end);

// ---------------------------------------------------------------------------------------------
// What is mapped

enum cmemhooks_vma_flags {
    CMEMHOOKS_VMA_READ = 1,
    CMEMHOOKS_VMA_WRITE = 2,
    CMEMHOOKS_VMA_EXEC = 4,
    CMEMHOOKS_VMA_SHARED = 8,
};

typedef struct cmemhooks_vma {
    uintptr_t start, end;
    uint64_t offset;
    uint64_t inode;            // 0: anonymous memory
    uint32_t dev_major, dev_minor;
    uint32_t flags;            // enum cmemhooks_vma_flags
    char name[256];            // path, [heap], [stack], ... or "" (truncated)
} cmemhooks_vma;

/// The mapping covering `address`, or else the first one above it, if it starts below `limit`.
/// 0 (found), ENOENT (none), or the errno of reading /proc/self/maps. Allocation-free.
int cmemhooks_vma_at_or_after(uintptr_t address, uintptr_t limit, cmemhooks_vma *out);

enum cmemhooks_range_kind {
    CMEMHOOKS_RANGE_PRIVATE_ANONYMOUS = 0,  // every page mapped, all private anonymous memory
    CMEMHOOKS_RANGE_HOLE = 2,               // some page is not mapped
    CMEMHOOKS_RANGE_OTHER = 3,              // a mapping that is shared or of a file: in *out
};

/// What is mapped over [start, end): an enum cmemhooks_range_kind, or -errno when
/// /proc/self/maps could not be read. One ioctl per mapping where the kernel has PROCMAP_QUERY.
/// Where it lacks it, the caller must have found no hole first (mincore): then one listing of
/// /proc/self/map_files answers when no mapping with a file is there, else one read of
/// /proc/self/maps for the whole range. Allocation-free.
int cmemhooks_vma_classify(uintptr_t start, uintptr_t end, cmemhooks_vma *out);

/// Tells the classification's snapshot of /proc/self/maps that mappings changed (the monitor
/// calls it for every unmap or remap event; the hooks for every call that maps or unmaps).
void cmemhooks_mappings_changed(void);

/// 1 when this copy's hooks are installed and bind the process's calls (a monitor runs, the
/// hooks are not off, no other copy comes first).
int cmemhooks_hooks_bound(void);

/// How many times mappings changed as far as the hooks and the monitor saw (the count
/// cmemhooks_mappings_changed bumps, after the call that changed them).
unsigned long cmemhooks_mappings_generation(void);

// ---------------------------------------------------------------------------------------------
// Mappings the hooked mmap made (known_mappings.c)

/// A private anonymous mapping the hooked mmap made, and its stamp (the mapping clock when it
/// was recorded).
typedef struct cmemhooks_known_mapping {
    uintptr_t start, end;
    uint64_t stamp;
    uint32_t registered_slots;  // the slots (monitors) that registered all of it since
} cmemhooks_known_mapping;
/// Records [start, end) as private anonymous memory just made by the hooked mmap (the newest
/// 256 are kept). Allocation-free.
void cmemhooks_known_mapping_add(uintptr_t start, uintptr_t end);
/// Forgets every record overlapping [start, end): its mappings may change.
void cmemhooks_known_mappings_forget(uintptr_t start, uintptr_t end);
/// 1 with *out filled when [start, end) lies inside one recorded mapping, else 0.
int cmemhooks_known_mapping_find(uintptr_t start, uintptr_t end, cmemhooks_known_mapping *out);
/// In a forked child (the hooks' fork handler): no records, and a lock no parent thread holds.
void cmemhooks_known_mappings_reset_in_child(void);
/// The mapping clock: every recorded mapping has a smaller stamp than a value read later.
uint64_t cmemhooks_known_mappings_clock(void);
/// Marks the record stamped `stamp`, if it is still kept and lies inside [start, end), as
/// registered by `slot` (its register just took that mapping). Only that record: a newer one
/// there is a mapping made since, which the register may have run before.
void cmemhooks_known_mappings_mark_registered(uintptr_t start, uintptr_t end, uint64_t stamp, int slot);
/// Takes `slot`'s mark off every record overlapping [start, end) (it unregisters memory there).
void cmemhooks_known_mappings_unmark(uintptr_t start, uintptr_t end, int slot);

/// 1 when the kernel answers PROCMAP_QUERY (Linux 6.11+): one ioctl per mapping instead of a
/// read of /proc/self/maps.
int cmemhooks_vma_query_is_fast(void);

#ifdef __cplusplus
}
#endif
