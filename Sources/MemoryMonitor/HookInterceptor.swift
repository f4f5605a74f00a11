import MMUNotifier

/// One monitor's share of the process's hooks (`MemoryHooks`): whether a hooked call touches
/// memory the monitor registered, taking that memory out of userfaultfd just before an unmap
/// (so the kernel queues no event and the unmapping thread never sleeps waiting for the
/// reader), and forgetting validated granules where a shmat or shmdt changes the mappings.
///
/// Why an intercepted unmap is safe: the hook starts a range invalidation (lookups overlapping
/// it wait) before it calls `unregisterWatched`, and ends it only after the real unmap returned, so the promise
/// is the same as the event path's (no lookup that starts after `munmap` returned sees the old
/// pages). A watch racing with the hook either registers the range again before the unmap
/// (then the kernel reports the unmap as an event, as before) or runs after it (then the
/// mapping is gone or new). Granules it touches are forgotten as validated under the granule
/// lock, before the unregister, as `ValidatedGranules` requires.
///
/// It holds what it needs, not the monitor, so the process-wide table never keeps a monitor
/// alive; `UserfaultfdMonitor.shutdown()` takes it out, and a hook still holding it finds the
/// table shut down and leaves the call to the kernel.
final class HookInterceptor: Sendable {
    let space: AddressSpace
    /// Whether `munmap` is handled here (false: unmaps stay userfaultfd events).
    let interceptsMunmap: Bool
    let slot: HookSlot
    private let descriptor: UserfaultfdDescriptor
    private let granules: Locked<GranuleTable>
    private let validated: ValidatedGranules
    private let counters: MonitorCounters
    private let granuleSize: UInt

    init(space: AddressSpace, interceptsMunmap: Bool, slot: HookSlot, descriptor: UserfaultfdDescriptor,
         granules: Locked<GranuleTable>, validated: ValidatedGranules, counters: MonitorCounters,
         granuleSize: UInt) {
        self.space = space
        self.interceptsMunmap = interceptsMunmap
        self.slot = slot
        self.descriptor = descriptor
        self.granules = granules
        self.validated = validated
        self.counters = counters
        self.granuleSize = granuleSize
    }

    /// True when `pages` touches a granule this monitor registered (the exact answer, under the
    /// granule lock; the hooks' lock-free map said "maybe").
    func touchesWatched(_ pages: PageRange) -> Bool {
        granules.withLock { table in
            if table.shutDown || table.failure != nil || table.records.isEmpty { return false }
            return !forEachRecord(overlapping: pages, in: &table) { _, _ in false }
        }
    }

    /// Unregisters the part of `pages` inside registered granules (the caller is about to unmap
    /// it, inside a range invalidation that already revoked it). Errors are left to the kernel:
    /// whatever stayed registered is reported by an event when it is unmapped. Returns whether
    /// a granule registered in pieces was touched (then `forgetUnmapped` must follow a
    /// successful unmap).
    func unregisterWatched(_ pages: PageRange) -> Bool {
        var touchedPieces = false
        let touched = granules.withLock { table -> Bool in
            if table.shutDown || table.failure != nil { return false }
            validated.forget(start: pages.start, end: pages.end)  // before the unregister makes it untrue
            return forEachWatchedPiece(of: pages, in: &table, touchedPieces: &touchedPieces) { piece in
                _ = descriptor.unregister(start: piece.start, length: piece.length)
                counters.interceptedUnregisters.wrappingAdd(1, ordering: .relaxed)
            }
        }
        if touched { counters.interceptedUnmaps.wrappingAdd(1, ordering: .relaxed) }
        return touchedPieces
    }

    /// Registers again what `unregisterWatched(pages)` took: the unmap failed, so the pages are
    /// still mapped and must stay watched.
    func reregisterWatched(_ pages: PageRange) {
        granules.withLock { table in
            if table.shutDown || table.failure != nil { return }
            var touchedPieces = false
            _ = forEachWatchedPiece(of: pages, in: &table, touchedPieces: &touchedPieces) { piece in
                _ = descriptor.register(start: piece.start, length: piece.length)
            }
        }
    }

    /// Takes `pages` out of the pieces of the granules it touches: the unmap succeeded, so
    /// those pages are registered no more, and a later unmap there must not unregister them again.
    func forgetUnmapped(_ pages: PageRange) {
        granules.withLock { table in
            if table.shutDown || table.failure != nil { return }
            forEachRecord(overlapping: pages, in: &table) { start, record in
                record.pieces?.remove(pages.clipped(toGranule: start, granuleSize: granuleSize))
                return true
            }
        }
    }

    /// Forgets the validated granules `pages` touches: a shmat or shmdt there changes mappings
    /// without telling userfaultfd, so the next watch there must register and probe again.
    func forgetValidated(_ pages: PageRange) {
        granules.withLock { _ in validated.forget(start: pages.start, end: pages.end) }
        counters.interceptedChanges.wrappingAdd(1, ordering: .relaxed)
    }

    /// Counts a hooked protection change (an invalidation without any event).
    func countProtectionChange() { counters.interceptedChanges.wrappingAdd(1, ordering: .relaxed) }

    /// Calls `body` with each registered piece of `pages`: the part inside a whole granule, or
    /// the overlap with a granule's registered pieces. Consecutive whole granules make one
    /// piece (one ioctl). Returns whether any granule was touched.
    private func forEachWatchedPiece(of pages: PageRange, in table: inout GranuleTable, touchedPieces: inout Bool,
                                     _ body: (PageRange) -> Void) -> Bool {
        var touched = false
        var run: PageRange?
        func visit(_ start: UInt, _ record: GranuleRecord) {
            touched = true
            let part = pages.clipped(toGranule: start, granuleSize: granuleSize)
            guard let pieces = record.pieces else {
                if let current = run, current.end == part.start {
                    run = PageRange(start: current.start, end: part.end)
                } else {
                    if let current = run { body(current) }
                    run = part
                }
                return
            }
            touchedPieces = true
            pieces.forEachOverlap(with: part, body)
        }
        forEachRecord(overlapping: pages, in: &table) { start, record in
            visit(start, record)
            return true
        }
        if let current = run { body(current) }
        return touched
    }

    /// Calls `body` with each granule record overlapping `pages`, in place (a copy would share
    /// the pieces' buffer, and changing them would copy it), until it returns false; returns
    /// false when stopped. A range over more granules than the table holds is checked record by
    /// record (an unmap of a large reservation must not walk every granule it spans).
    @discardableResult
    private func forEachRecord(overlapping pages: PageRange, in table: inout GranuleTable,
                               _ body: (_ start: UInt, _ record: inout GranuleRecord) -> Bool) -> Bool {
        func visit(_ start: UInt) -> Bool {
            var going = true
            table.records.update(start) { going = body(start, &$0) }
            return going
        }
        let spanned = (pages.end - (pages.start & ~(granuleSize - 1))) / granuleSize
        if spanned > UInt(table.records.count) {
            // Every record in place: no array of entries (nothing allocated before the
            // intercepted call).
            return table.records.updateEach { start, record in
                pages.intersection(granule(start)) == nil || body(start, &record)
            }
        } else {
            for start in pages.granuleStarts(granuleSize: granuleSize) where !visit(start) { return false }
        }
        return true
    }

    private func granule(_ start: UInt) -> PageRange { PageRange(start: start, end: start &+ granuleSize) }
}
