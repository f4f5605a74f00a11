#if canImport(Glibc)
import Glibc
#endif
import CMemoryHooks
import NotifierEngine
import Synchronization

/// The process's `munmap`, `mmap`, `mremap`, `madvise`, `process_madvise`, `mprotect`,
/// `pkey_mprotect`, `shmat`, `shmdt`, `brk` and `sbrk` (defined in C by `CMemoryHooks`), for
/// the changes userfaultfd reports late or never.
///
/// Why each is hooked:
/// - `munmap`: the kernel holds a thread in `munmap` of registered memory until the monitor's
///   reader has read the UNMAP event: a sleep and a wake-up (measured on a VM: a watched 4 KiB
///   munmap 10x an unwatched one). Handled here: start an invalidation of the range on the
///   monitor's address space (callbacks run in this thread, as the kernel's mmu notifiers do),
///   take the range out of userfaultfd, unmap, end the invalidation. No event, no sleep. `mmap(MAP_FIXED)`
///   over watched memory unmaps it the same way, and is handled the same way (any other `mmap`
///   goes straight to the kernel after one flag test).
/// - `brk` / `sbrk` lowering the program break: the heap's pages above the new break are
///   unmapped, handled as `munmap` (an event would reach the monitor only after the call
///   returned: a program that registers the same address again at once, as libfabric's
///   `fi_mr_cache_evict` does, found its subscription refused while the event's invalidation was
///   still in flight). glibc's own trims go through its internal `__brk` and stay events.
/// - `mremap`: the old range (and a `MREMAP_FIXED` target) handled as `munmap`. Taking the
///   watched parts out of userfaultfd also merges the mapping back into one VMA, which mremap
///   needs (a watch splits its mapping; the kernel answers EFAULT for a range over several).
/// - `madvise` / `process_madvise` (of this process) with advice that may replace pages
///   (`cmemhooks_advice_replaces_pages`: DONTNEED, FREE, REMOVE, GUARD_INSTALL, ... and any
///   value it does not know): invalidated as `.remove` around the call, and once more after it
///   for a watch that raced. MADV_GUARD_INSTALL zaps pages with no userfaultfd event at all.
/// - `mprotect` / `pkey_mprotect` taking write (or all) access away, or `pkey_mprotect` with a
///   key other than 0 (its rights may deny writes): userfaultfd has no event for it, yet a region
///   registered for write would let a peer keep writing memory the application made read-only.
///   Invalidated as `.writeProtect` (or `.protectionChange` when nothing stays readable) around
///   the call, and once more after it for a watch that raced.
/// - `shmat(SHM_REMAP)` over memory: the kernel replaces the mapping with no UNMAP event.
///   Invalidated as an unmap around the call (and after it, for a racing watch); validated
///   granules there are forgotten.
/// - `mmap` making new memory (not `MAP_FIXED`) inside registered granules: after the call, a
///   private anonymous mapping is remembered (`GranuleWatch.noteNewMapping`), so the miss that
///   registers a buffer there only registers it, with no probe and no query: its class is known
///   from this call.
/// - `shmdt`: System V memory is never watched, but detaching a segment that a raw `shmat` put
///   inside a validated granule leaves a hole there; the granule is forgotten first.
///
/// What no hook sees: raw system calls (`syscall(SYS_munmap)`, `syscall(SYS_mmap)` with
/// MAP_FIXED, `syscall(SYS_mremap)`, `syscall(SYS_madvise)` with DONTNEED or REMOVE, and
/// `syscall(SYS_brk)` or glibc's internal `__brk`
/// are userfaultfd events; `syscall(SYS_shmat)` over memory, `syscall(SYS_mprotect)`,
/// `syscall(SYS_madvise)` with guard advice and changes of protection keys through PKRU are
/// not seen at all), and glibc's internal calls (its `free()` unmaps and `realloc()` remaps,
/// which are events). A raw `shmat(SHM_REMAP)` over cached memory leaves that region stale until
/// its next invalidation, and when it lands in a validated granule, later buffers there are
/// cached on trust too (a watch there issues no ioctl) until an unmap or remap event there
/// forgets the granule.
///
/// On a call that touches no registered memory the C side allocates nothing and takes no lock
/// but its own short leaf lock over the record of mappings the hooked `mmap` made (the granule
/// maps are read lock-free), so an allocator that calls these while holding its own lock cannot
/// re-enter itself; on one that does, nothing is allocated before the real
/// call (`handle`). Calls made from inside a handler (a callback that unmaps) go straight to the
/// kernel. `RDMAMEMORY_HOOKS=off` in the environment (read once with `secure_getenv`, when the
/// first monitor starts) switches all of them off: unmaps are then events only, and the modes
/// say so. A copy of these hooks that the process does not bind (another copy's `munmap` comes
/// first) reports itself shadowed and is not used. Not async-signal-safe when a monitor is
/// running (locks are taken, for watched memory and for the record of mappings): a signal
/// handler must not map or unmap memory, nor reprotect watched memory.
enum MemoryHooks {
    /// The interceptor of each granule-map slot.
    private static let interceptors = Locked<[HookInterceptor?]>(Array(repeating: nil, count: Int(CMEMHOOKS_SLOTS)))

    /// True when `RDMAMEMORY_HOOKS=off` switched the hooks off.
    static var disabledByEnvironment: Bool { cmemhooks_disabled() != 0 }

    /// True when another copy of the hooks binds the process's calls (see `Hooks.shadowed`).
    static var shadowed: Bool { cmemhooks_shadowed() != 0 }

    /// A slot in the hooks' granule map for a new monitor: `.none` when the hooks are off or all
    /// slots are taken (the monitor then relies on events alone).
    static func acquireSlot() -> HookSlot {
        if disabledByEnvironment || shadowed { return .none }
        let index = cmemhooks_slot_acquire()
        return index >= 0 ? HookSlot(index: index) : .none
    }

    static func add(_ interceptor: HookInterceptor) {
        guard interceptor.slot.isActive else { return }
        interceptors.withLock { $0[Int(interceptor.slot.index)] = interceptor }
        _ = cmemhooks_install(hookEntry)
    }

    /// Takes the interceptor out and frees its slot (every count in it must be zero by now).
    static func remove(_ interceptor: HookInterceptor) {
        guard interceptor.slot.isActive else { return }
        interceptors.withLock { list in
            if list[Int(interceptor.slot.index)] === interceptor { list[Int(interceptor.slot.index)] = nil }
        }
        cmemhooks_slot_release(interceptor.slot.index)
    }

    /// Handles one intercepted call: the interceptors of the slots it touches, then the call.
    ///
    /// Allocates nothing before the real call (no array, no closure context, no object): the
    /// interceptors are taken one by one from the slot bits, each invalidation lives on this
    /// stack (one recursion per interceptor), and every table walk is in place. Whatever a
    /// hook allocated before an `mmap(MAP_FIXED)` could be placed by malloc in the very hole
    /// the call replaces (a fresh mapping under `M_MMAP_THRESHOLD` 1), and be zeroed under it.
    /// Invalidation callbacks may allocate; the cache's revoke a region and leave its teardown
    /// to the reclaim thread.
    static func handle(_ call: UnsafeMutablePointer<cmemhooks_call>) {
        let pages = PageRange(start: call.pointee.start, end: call.pointee.end)
        guard let range = try? AddressRange(start: pages.start, length: pages.length) else {
            cmemhooks_perform(call)
            return
        }
        handle(call, pages, range, slots: call.pointee.slots)
    }

    /// The interceptor in slot `index`, if one is installed (a retain, nothing allocated).
    private static func interceptor(at index: Int) -> HookInterceptor? {
        interceptors.withLock { $0[index] }
    }

    /// Starts an invalidation of the range for each interceptor the call concerns (recursively,
    /// so each lives on this stack until the call returned), then performs it.
    private static func handle(_ call: UnsafeMutablePointer<cmemhooks_call>, _ pages: PageRange, _ range: AddressRange,
                               slots: UInt32) {
        guard slots != 0 else {
            cmemhooks_perform(call)
            return
        }
        let rest = slots & (slots &- 1)
        guard let interceptor = interceptor(at: slots.trailingZeroBitCount) else {
            return handle(call, pages, range, slots: rest)
        }
        let kind = call.pointee.kind
        let performed = call.pointee.performed != 0
        // A range invalidation, not a window: the range is known before the call, so only
        // subscriptions overlapping it wait (`readBegin`), and lookups elsewhere do not.
        switch Int(kind) {
        case Int(CMEMHOOKS_MMAP_NEW.rawValue):
            let flags = call.pointee.flags
            interceptor.granules.noteNewMapping(pages, privateAnonymous: flags & MAP_ANONYMOUS != 0
                                                    && flags & MAP_TYPE == MAP_PRIVATE && flags & MAP_HUGETLB == 0)
            return handle(call, pages, range, slots: rest)
        case Int(CMEMHOOKS_MUNMAP.rawValue), Int(CMEMHOOKS_MMAP_FIXED.rawValue), Int(CMEMHOOKS_MREMAP.rawValue),
             Int(CMEMHOOKS_BRK.rawValue):
            // mremap also replaces what its MREMAP_FIXED target held: a second range.
            let target = kind == Int32(CMEMHOOKS_MREMAP.rawValue) && call.pointee.new_end > call.pointee.new_start
                ? PageRange(start: call.pointee.new_start, end: call.pointee.new_end) : nil
            let touchesTarget = target.map { interceptor.granules.touchesWatched($0) } ?? false
            guard interceptor.interceptsMunmap, interceptor.granules.touchesWatched(pages) || touchesTarget else {
                return handle(call, pages, range, slots: rest)
            }
            let event: InvalidationEvent = kind == Int32(CMEMHOOKS_MREMAP.rawValue) ? .remap : .unmap
            let invalidation = try? interceptor.space.invalidateRangeStart(range, event: event)
            let targetInvalidation = touchesTarget ? target.flatMap { pages in
                (try? AddressRange(start: pages.start, length: pages.length)).flatMap { range in
                    try? interceptor.space.invalidateRangeStart(range, event: .unmap)
                }
            } : nil
            let inPieces = interceptor.granules.unregisterWatched(pages)
            let targetInPieces = touchesTarget ? target.map { interceptor.granules.unregisterWatched($0) } ?? false : false
            handle(call, pages, range, slots: rest)
            if call.pointee.result == -1 {
                interceptor.granules.reregisterWatched(pages)
                if touchesTarget, let target { interceptor.granules.reregisterWatched(target) }
            } else {
                interceptor.granules.finishChange(pages, inPieces: inPieces)
                if touchesTarget, let target { interceptor.granules.finishChange(target, inPieces: targetInPieces) }
            }
            targetInvalidation?.end()
            invalidation?.end()
        case Int(CMEMHOOKS_MPROTECT.rawValue), Int(CMEMHOOKS_MADVISE.rawValue):
            let event: InvalidationEvent = kind == Int32(CMEMHOOKS_MADVISE.rawValue) ? .remove
                : call.pointee.protection_loss == Int32(CMEMHOOKS_LOSES_WRITE.rawValue) ? .writeProtect
                : .protectionChange
            interceptor.granules.counters.interceptedChanges.wrappingAdd(1, ordering: .relaxed)
            if performed {
                interceptor.space.invalidate(range, event: event)
                return handle(call, pages, range, slots: rest)
            }
            let invalidation = try? interceptor.space.invalidateRangeStart(range, event: event)
            handle(call, pages, range, slots: rest)
            invalidation?.end()
        default:  // shmat over memory, shmdt: mappings change with no event
            interceptor.granules.forgetUnseenChange(pages)
            if performed {
                interceptor.space.invalidate(range, event: .unmap)
                return handle(call, pages, range, slots: rest)
            }
            let invalidation = try? interceptor.space.invalidateRangeStart(range, event: .unmap)
            handle(call, pages, range, slots: rest)
            interceptor.granules.finishChange(pages, inPieces: false)
            invalidation?.end()
        }
    }
}

/// The C hooks' entry (a nonisolated function: hooks run on any thread).
private func hookEntry(_ call: UnsafeMutablePointer<cmemhooks_call>?) {
    guard let call else { return }
    MemoryHooks.handle(call)
}
