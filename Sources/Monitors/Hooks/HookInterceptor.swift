import NotifierEngine

/// One monitor's share of the process's hooks (`MemoryHooks`): the address space its hooked
/// calls invalidate, and the granule state (`GranuleWatch`) they ask whether the call touches
/// memory the monitor registered, take that memory out of userfaultfd just before an unmap (so
/// the kernel queues no event and the unmapping thread never sleeps waiting for the reader),
/// and tell of mappings made or changed with no event.
///
/// Why an intercepted unmap is safe: the hook starts a range invalidation (lookups overlapping
/// it wait) before it calls `unregisterWatched`, and ends it only after the real unmap returned,
/// so the promise is the same as the event path's (no lookup that starts after `munmap`
/// returned sees the old pages). A watch racing with the hook either registers the range again
/// before the unmap (then the kernel reports the unmap as an event, as before) or runs after it
/// (then the mapping is gone or new). What is known of the range (`KnownMemory`) is forgotten
/// under the granule lock, before the unregister.
///
/// It holds what it needs, not the monitor, so the process-wide table never keeps a monitor
/// alive; `UserfaultfdMonitor.shutdown()` takes it out, and a hook still holding it finds the
/// granule state shut down and leaves the call to the kernel.
final class HookInterceptor: Sendable {
    let space: AddressSpace
    /// Whether `munmap` is handled here (false: unmaps stay userfaultfd events).
    let interceptsMunmap: Bool
    let granules: GranuleWatch

    var slot: HookSlot { granules.slot }

    init(space: AddressSpace, interceptsMunmap: Bool, granules: GranuleWatch) {
        self.space = space
        self.interceptsMunmap = interceptsMunmap
        self.granules = granules
    }
}
