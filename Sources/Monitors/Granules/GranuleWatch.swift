#if canImport(Glibc)
import Glibc
#endif
import CMemoryHooks
import NotifierEngine
import Synchronization
import SystemPackage

/// The one owner of the monitor's granule state: the watch table (what is registered with
/// userfaultfd, granule by granule, and what the kernel refused there), the memory known to
/// need no probe or query (`KnownMemory`) and the monitor's slot in the hooks' map. It alone registers,
/// unregisters and probes; the cache's misses (`watch`), the hooks (`unregisterWatched`,
/// `noteNewMapping`, ...) and the worker (`forget`, `fail`) ask it.
///
/// The protocol of a watch, after the miss's `readBegin` (see `UserfaultfdMonitor.watch`):
/// ```
/// validated granule, window closed          -> count, no ioctl
/// a mapping the hooked mmap made, recorded, -> count, no ioctl
///   registered since (whole granule or mark)
/// a mapping the hooked mmap made, recorded  -> count, register out of the lock (one ioctl)
/// otherwise, per granule:  register whole (unless it was refused before)
///                          or register the buffer's pages (padded by a page where allowed)
/// probe: every page of the buffer registered now?  (a hole, or a mapping made after the
///        register, is not: unwatchable)
/// query: what is mapped there?  shared or file memory: unwatchable unless allowed
/// ```
/// Once the probe says the pages are registered, any change to them is an event or a hooked
/// call, which invalidates the miss's subscription: the miss then retries (`readRetry`).
///
/// Lock rule: the table's lock is taken by threads calling `watch`, `unwatch`, `shutDown`, the
/// hooks (before the call they intercept) and the worker (from callbacks, and on failure). A
/// watch registers, probes and queries out of it, so watches and unmaps of unrelated ranges do
/// not wait for each other's ioctls. It is held across an unregister only where the record must
/// go with the kernel's registration in one step (an idle granule beyond `idleLimit`: a watch
/// that found the record and counted it must not see the granule unregistered after its probe),
/// across the hooks' unregisters beyond 16 runs, a re-register after a failed unmap and shutdown;
/// never across anything that waits for the worker. The *reader* thread never takes it while
/// the descriptor is live, so a holder whose ioctl waits for an unread event (EAGAIN) waits only
/// for the reader, which never waits for it.
final class GranuleWatch: Sendable {
    let descriptor: UserfaultfdDescriptor
    let space: AddressSpace
    let granuleSize: UInt
    let pageSize: UInt
    /// The monitor's slot in the hooks' map of registered granules.
    let slot: HookSlot
    let counters = MonitorCounters()
    let known: KnownMemory
    /// Granules kept registered after their last buffer went, at most (see `release`).
    let idleLimit: Int
    private let table = Locked(WatchTable())

    init(descriptor: UserfaultfdDescriptor, space: AddressSpace, granuleSize: UInt, pageSize: UInt, slot: HookSlot,
         idleLimit: Int) {
        self.descriptor = descriptor
        self.space = space
        self.granuleSize = granuleSize
        self.pageSize = pageSize
        self.slot = slot
        self.idleLimit = idleLimit
        known = KnownMemory(granuleSize: granuleSize)
    }

    // MARK: Counts (tests, diagnostics)

    var watchedGranuleCount: Int { table.withLock { $0.records.count } }

    func watchCount(in pages: PageRange) -> Int {
        table.withLock { table in granuleStarts(pages).reduce(0) { $0 + (table.records[$1]?.buffers ?? 0) } }
    }

    /// Why watching stopped (the monitor failed), or nil.
    var failure: MonitorError? { table.withLock { $0.failure } }

    // MARK: Watch

    /// Registers and counts `pages` (the buffer `range`, rounded to pages); see the type's
    /// comment. Throws `.unwatchable` (nothing stays counted) for memory that cannot be watched.
    ///
    /// The usual path in three steps, the ioctls out of the lock: count the buffer and plan each
    /// granule's register under the lock (`plan`), register, probe and query with no lock held
    /// (`perform`), then write what the kernel did into the records under the lock (`apply`).
    /// Why it is safe: the counts keep any unwatch from unregistering the granules meanwhile, so
    /// once the probe says the pages are registered only an unmap or a remap can unregister them,
    /// and that is an event or a hooked call, either of which invalidates the miss's subscription
    /// (its `readBegin` came first). A record is written a moment after the kernel acted: until
    /// then a hooked unmap there unregisters by the older record, and whatever stays registered
    /// is reported by an event instead (slower for that unmap, never missed). Two watches in one
    /// granule may both register it: the kernel skips what is registered already.
    func watch(_ pages: PageRange, range: AddressRange, allowingSharedMemory: Bool) throws(MonitorError) {
        if try watchKnownMemory(pages) { return }
        let plan = try table.withLock { table throws(MonitorError) in try self.plan(pages, in: &table) }
        var outcomes: [GranuleOutcome] = []
        outcomes.reserveCapacity(plan.granules.count)
        let before = known.stamp(in: space)  // for the pages' validation: see `KnownMemory.Stamp`
        let privateAnonymous: Bool
        do throws(MonitorError) {
            privateAnonymous = try perform(plan, pages: pages, range: range, allowingSharedMemory: allowingSharedMemory,
                                           outcomes: &outcomes)
        } catch {
            table.withLock { table in
                apply(outcomes, of: plan, in: &table)
                for attempt in plan.granules { release(attempt.start, in: &table, keepingIdle: false) }
            }
            throw error
        }
        let candidates = table.withLock { table in
            apply(outcomes, of: plan, in: &table)
            return validationCandidates(plan, in: &table)
        }
        // The buffer's own pages passed the probe and the query: the next watch of them (a new
        // cache, a buffer back after an eviction) needs neither, in a granule not validated whole.
        if privateAnonymous { known.insert(pages, checkedAfter: before, in: space) }
        for start in candidates { validate(start) }
    }

    /// What a watch on the usual path registers, decided and counted under the lock.
    private struct WatchPlan {
        /// The buffer spans several granules, all registered whole before: one register of
        /// them all first (`span`), then, if it fails, granule by granule.
        var span: PageRange?
        var granules: [GranuleAttempt] = []
    }

    /// One granule's register on the usual path.
    private struct GranuleAttempt {
        let start: UInt
        /// The buffer's pages in the granule.
        let piece: PageRange
        /// Register the whole granule first (its record is whole, and the kernel did not
        /// refuse that lately).
        let tryWhole: Bool
        /// The record was registered whole before: a refused whole register adds the exact piece
        /// and the record stays whole (its other mappings stay registered).
        let keepsWhole: Bool
        /// Try the piece padded by a page (`paddedPiece`) first.
        let tryPadding: Bool
    }

    /// What the kernel did for one granule.
    private enum GranuleOutcome {
        /// Registered whole, after the mapping clock read `since`.
        case whole(since: UInt64)
        /// Registered the `piece` only; what the kernel refused on the way.
        case piece(PageRange, wholeRefused: Bool, paddingRefused: Bool)
    }

    /// Counts the buffer in each granule (a new record for a granule without one, counted in the
    /// hooks' map before the kernel registers anything) and plans the registers.
    private func plan(_ pages: PageRange, in table: inout WatchTable) throws(MonitorError) -> WatchPlan {
        if let failure = table.failure { throw failure }
        if table.shutDown { throw .shutDown }
        let starts = granuleStarts(pages)
        var plan = WatchPlan()
        let first = pages.start & ~(granuleSize - 1)
        let span = (pages.end &- first &+ granuleSize &- 1) & ~(granuleSize - 1)
        if span > granuleSize && table.allWhole(starts) { plan.span = PageRange(start: first, end: first &+ span) }
        for start in starts {
            let existing = table.records[start]
            if existing != nil {
                table.countBuffer(at: start)
            } else {
                guard slot.adjust(granule: start, size: granuleSize, registered: 1) else {
                    for attempt in plan.granules { release(attempt.start, in: &table, keepingIdle: false) }
                    throw .systemCall(call: "cmemhooks_slot_adjust", argument: describe(start, granuleSize), errno: .noMemory)
                }
                table.records[start] = GranuleRecord(buffers: 1, pieces: nil)
            }
            let whole = existing?.isWhole ?? true
            let refusal = plan.span == nil ? table.refusal(at: start) : table.refusals[start] ?? GranuleRefusal()
            plan.granules.append(GranuleAttempt(
                start: start, piece: pages.clipped(toGranule: start, granuleSize: granuleSize),
                tryWhole: whole && !refusal.whole, keepsWhole: whole && existing?.confirmedWhole == true,
                tryPadding: !refusal.padding))
        }
        return plan
    }

    /// The registers, then the probe and the query, with no lock held; each granule's outcome is
    /// appended to `outcomes` as soon as the kernel acted, so that a failure later still records it.
    /// Returns whether the pages are private anonymous memory.
    private func perform(_ plan: WatchPlan, pages: PageRange, range: AddressRange, allowingSharedMemory: Bool,
                         outcomes: inout [GranuleOutcome]) throws(MonitorError) -> Bool {
        // Registering again is what checks ownership (EBUSY if another userfaultfd took a mapping
        // here since) and registers mappings made since the last watch; the kernel skips VMAs
        // registered already, so nothing splits. A buffer over many granules that were all
        // registered whole takes one ioctl for all of them.
        let clock = cmemhooks_known_mappings_clock()  // before the register: see `wholeSince`
        if let span = plan.span, descriptor.register(start: span.start, length: span.length) == nil {
            for _ in plan.granules { outcomes.append(.whole(since: clock)) }
        } else {
            for attempt in plan.granules { outcomes.append(try register(attempt, range: range)) }
        }
        // Registration succeeds over holes: ask whether the buffer's pages are registered now
        // (a hole, or a mapping made after the register, is not).
        var covered = try probe(pages)
        if !covered { covered = try probeInHalves(pages) }
        if covered {
            switch UnwatchableClassifier.inspect(start: pages.start, end: pages.end, pageSize: pageSize) {
            case .hole:
                break
            case .shared(let reason) where !allowingSharedMemory:
                throw .unwatchable(range: range, reason: reason)
            case .shared:
                return false
            case .privateAnonymous:
                return true
            }
        }
        throw .unwatchable(range: range, reason: UnwatchableClassifier.reason(
            start: pages.start, end: pages.end, errno: .noSuchFileOrDirectory))
    }

    /// Writes what the kernel did into the records (lock held), for the granules it acted on.
    private func apply(_ outcomes: [GranuleOutcome], of plan: WatchPlan, in table: inout WatchTable) {
        for (attempt, outcome) in zip(plan.granules, outcomes) {
            switch outcome {
            case .whole(let since):
                // Whole now, even if a watch beside this one found the granule refused meanwhile
                // and took it to pieces: this register took every mapping there.
                table.records.update(attempt.start) { record in
                    record.pieces = nil
                    record.confirmedWhole = true
                    record.wholeSince = max(record.wholeSince, since)
                }
            case let .piece(piece, wholeRefused, paddingRefused):
                table.records.update(attempt.start) { record in
                    if record.isWhole && !record.confirmedWhole { record.pieces = RegisteredPieces() }
                    record.pieces?.insert(piece)
                }
                if wholeRefused || paddingRefused {
                    var refusal = table.refusals[attempt.start] ?? GranuleRefusal()
                    if wholeRefused { refusal.whole = true }
                    if paddingRefused { refusal.padding = true }
                    table.refusals[attempt.start] = refusal
                }
            }
        }
    }

    /// The watch of a buffer in known memory, which asks the kernel nothing or registers once;
    /// false when it does not apply (the usual watch follows, with nothing left counted):
    /// - validated granules (`KnownMemory`), no window open: counted, no ioctl;
    /// - a buffer inside a private anonymous mapping the hooked mmap made
    ///   (`cmemhooks_known_mapping_find`), in granules with records (in the hooks' map):
    ///   - registered already, no window open: counted, no ioctl. Registered means each granule
    ///     registered whole after the mapping was made (`wholeSince` above its stamp), or the
    ///     whole mapping registered by this monitor's earlier watch (its mark on the record,
    ///     taken off when the monitor unregisters there). Any change to it since was a hooked
    ///     call or an event, both of which forgot the record first;
    ///   - otherwise counted, then registered out of the lock: the whole granules again (which
    ///     also takes the mappings made there since, so later buffers need no ioctl), else the
    ///     mapping's part. No probe and no query: the class is known from the hooked mmap.
    ///
    /// Races: the mapping generation (bumped after every hooked call that changes mappings)
    /// is read before the record is found and again once the buffer is counted; a change in
    /// between sends the watch the usual way. Once counted, the granules are in the hooks' map,
    /// so a hooked unmap there invalidates the miss's subscription, and a raw one is an event:
    /// the miss retries either way (its `readBegin` came first). The register runs out of the
    /// lock so that two threads watching buffers in one granule do not wait for each other's
    /// ioctl (the churn loop on 2 threads spent most of its time in futex calls); the count
    /// keeps any unwatch from unregistering the granule meanwhile.
    private func watchKnownMemory(_ pages: PageRange) throws(MonitorError) -> Bool {
        enum Found { case validated, registered, register(span: PageRange, mapping: PageRange, stamp: UInt64, whole: Bool), neither }
        let generation = cmemhooks_mappings_generation()
        let found = try table.withLock { table throws(MonitorError) -> Found in
            if let failure = table.failure { throw failure }
            if table.shutDown { throw .shutDown }
            let starts = granuleStarts(pages)
            // No window open (sequence even): the worker has forgotten everything that an unmap
            // which already returned touched, whether or not the caller did readBegin.
            let windowClosed = space.openWindowSequence & 1 == 0
            if windowClosed, table.allWhole(starts), known.validated(pages) {
                for start in starts { table.countBuffer(at: start) }
                return .validated
            }
            // The hooks' record (its lock comes after this one: the hooks never hold this one
            // when they take it), only when the validated granules did not answer.
            var record = cmemhooks_known_mapping()
            guard slot.isActive, table.allRecorded(starts),
                  cmemhooks_known_mapping_find(pages.start, pages.end, &record) != 0 else { return .neither }
            let mapping = PageRange(start: record.start, end: record.end)
            let whole = table.allWhole(starts)
            let first = pages.start & ~(granuleSize - 1)
            let span = PageRange(start: first, end: (pages.end &+ granuleSize &- 1) & ~(granuleSize - 1))
            let part = mapping.intersection(span) ?? pages
            let registered = windowClosed
                && (record.registered_slots & (1 << UInt32(slot.index)) != 0
                    || whole && starts.allSatisfy { (table.records[$0]?.wholeSince ?? 0) > record.stamp })
            for start in starts {
                table.countBuffer(at: start, piece: registered ? nil : part.clipped(toGranule: start, granuleSize: granuleSize))
            }
            if cmemhooks_mappings_generation() != generation {  // a mapping changed meanwhile
                for start in starts { release(start, in: &table, keepingIdle: false) }
                return .neither
            }
            return registered ? .registered : .register(span: span, mapping: part, stamp: record.stamp, whole: whole)
        }
        switch found {
        case .neither:
            return false
        case .validated:
            counters.watchesWithoutIoctl.add(1, ordering: .relaxed)
            return true
        case .registered:
            counters.watchesWithoutIoctl.add(1, ordering: .relaxed)
            counters.watchesOfKnownMappings.add(1, ordering: .relaxed)
            return true
        case .register(let span, let part, let stamp, let whole):
            let clock = cmemhooks_known_mappings_clock()  // before the register: see `wholeSince`
            if whole && descriptor.register(start: span.start, length: span.length) == nil {
                table.withLock { table in
                    for start in granuleStarts(span) {
                        table.records.update(start) { record in
                            guard record.isWhole else { return }
                            record.confirmedWhole = true
                            record.wholeSince = max(record.wholeSince, clock)
                        }
                    }
                }
                counters.watchesOfKnownMappings.add(1, ordering: .relaxed)
                return true
            }
            if descriptor.register(start: part.start, length: part.length) == nil {
                // The count keeps the granules registered until the mark is on: an unregister
                // there (which takes it off) waits for the last buffer.
                cmemhooks_known_mappings_mark_registered(part.start, part.end, stamp, slot.index)
                counters.watchesOfKnownMappings.add(1, ordering: .relaxed)
                return true
            }
            cmemhooks_known_mappings_forget(part.start, part.end)  // not what it seemed: ask the kernel
            table.withLock { table in
                for start in granuleStarts(pages) { release(start, in: &table, keepingIdle: false) }
            }
            return false
        }
    }

    /// Drops one count of `pages` (a range a successful `watch` counted); the last buffer of a
    /// granule unregisters it.
    func unwatch(_ pages: PageRange, range: AddressRange) throws(MonitorError) {
        try table.withLock { table throws(MonitorError) in
            if table.shutDown || table.failure != nil { return }
            let starts = granuleStarts(pages)
            // `contains`: no copy of the record (a lookup copied its pieces out and back).
            for start in starts where !table.records.contains(start) { throw .notWatched(range: range) }
            for start in starts { release(start, in: &table) }
        }
    }

    // MARK: The hooks' side

    /// True when `pages` touches a granule this monitor registered (the exact answer, under the
    /// lock; the hooks' lock-free map said "maybe").
    func touchesWatched(_ pages: PageRange) -> Bool {
        table.withLock { table in
            if table.shutDown || table.failure != nil || table.records.isEmpty { return false }
            return !forEachRecord(overlapping: pages, in: &table) { _, _ in false }
        }
    }

    /// Unregisters the part of `pages` inside registered granules (the caller is about to unmap
    /// it, inside a range invalidation that already revoked it). Errors are left to the kernel:
    /// whatever stayed registered is reported by an event when it is unmapped. Returns whether
    /// a granule registered in pieces was touched (for `finishChange`).
    ///
    /// The ioctls run after the lock (up to 16 runs; more, rarer, under it), so that two threads
    /// unmapping in one granule do not wait for each other's. Safe because the caller's range
    /// invalidation is open: a watch of an overlapping buffer either began its miss before it
    /// (the invalidation makes that miss retry) or waits in `readBegin` until the unmap is done;
    /// a whole-granule register by a watch elsewhere in the granule that re-registers these
    /// pages meanwhile is undone by the unregister, which is what the unmap needs.
    func unregisterWatched(_ pages: PageRange) -> Bool {
        withUnsafeTemporaryAllocation(of: PageRange.self, capacity: 16) { runs in  // on the stack
            var touchedPieces = false
            var collected = 0
            var underLock = 0
            let touched = table.withLock { table -> Bool in
                if table.shutDown || table.failure != nil { return false }
                known.forget(start: pages.start, end: pages.end)  // before the unregister makes it untrue
                return forEachWatchedPiece(of: pages, in: &table, touchedPieces: &touchedPieces) { piece in
                    if collected < runs.count {
                        runs.initializeElement(at: collected, to: piece)
                        collected += 1
                    } else {
                        _ = descriptor.unregister(start: piece.start, length: piece.length)
                        underLock += 1
                    }
                }
            }
            for index in 0..<collected {
                _ = descriptor.unregister(start: runs[index].start, length: runs[index].length)
            }
            if touched {
                counters.interceptedUnmaps.wrappingAdd(1, ordering: .relaxed)
                counters.interceptedUnregisters.wrappingAdd(collected + underLock, ordering: .relaxed)
            }
            return touchedPieces
        }
    }

    /// Registers again what `unregisterWatched(pages)` took: the unmap failed, so the pages are
    /// still mapped and must stay watched.
    func reregisterWatched(_ pages: PageRange) {
        table.withLock { table in
            if table.shutDown || table.failure != nil { return }
            var touchedPieces = false
            _ = forEachWatchedPiece(of: pages, in: &table, touchedPieces: &touchedPieces) { piece in
                _ = descriptor.register(start: piece.start, length: piece.length)
            }
        }
    }

    /// After a hooked call that unmapped or replaced `pages` returned: forgets them again (a
    /// watch that probed the old mapping may have validated them after the first forget:
    /// `KnownMemory.Stamp`), and, where `inPieces` (`unregisterWatched`), takes them out of the
    /// pieces of the granules they touch: they are registered no more, and a later unmap there
    /// must not unregister them again.
    func finishChange(_ pages: PageRange, inPieces: Bool) {
        known.forget(start: pages.start, end: pages.end)
        guard inPieces else { return }
        table.withLock { table in
            if table.shutDown || table.failure != nil { return }
            forEachRecord(overlapping: pages, in: &table) { start, record in
                record.pieces?.remove(pages.clipped(toGranule: start, granuleSize: granuleSize))
                return true
            }
        }
    }

    /// Forgets what is known about `pages`: a shmat or shmdt there changes mappings without
    /// telling userfaultfd, so the next watch there must register and probe again.
    func forgetUnseenChange(_ pages: PageRange) {
        table.withLock { _ in known.forget(start: pages.start, end: pages.end) }
        counters.interceptedChanges.wrappingAdd(1, ordering: .relaxed)
    }

    /// A mapping the hooked `mmap` just made (not `MAP_FIXED`: that one is an unmap first) in
    /// registered granules: what was validated of the range goes (it was a hole a moment ago).
    /// The hooks themselves record every private anonymous mapping they make, in or out of
    /// registered granules (`cmemhooks_known_mapping_add`), so that the miss that registers a
    /// buffer there asks the kernel no probe and no query: its class is known from that call.
    /// Allocation-free: it runs inside the application's `mmap`, which an allocator may call
    /// holding its own lock. Nothing is registered here: memory nobody asked to watch stays free
    /// for another userfaultfd.
    ///
    /// What the record cannot see: a raw `syscall(SYS_mmap)` or `syscall(SYS_munmap)` over the
    /// new mapping before its first watch (no hook runs, and nothing is registered there to
    /// report it). A file mapping put there that way is still refused by the register; shared
    /// memory would be taken for the private memory it replaced.
    func noteNewMapping(_ pages: PageRange, privateAnonymous: Bool) {
        known.forget(start: pages.start, end: pages.end)
        if privateAnonymous { counters.mappingsSeenMade.wrappingAdd(1, ordering: .relaxed) }
    }

    // MARK: The worker's side, shutdown

    /// Forgets what is known about `[start, end)` (an unmap or remap event there, before its
    /// window closes), and tells the mapping classifier's snapshot that mappings changed. Takes
    /// only `known`'s lock.
    func forget(start: UInt, end: UInt) {
        cmemhooks_known_mappings_forget(start, end)
        cmemhooks_mappings_changed()
        known.forget(start: start, end: end)
    }

    /// The monitor failed: watches are refused with `error`, every record is dropped (the
    /// descriptor is going, and its registrations with it).
    func fail(_ error: MonitorError) {
        table.withLock { table in
            if table.failure == nil { table.failure = error }
            table.removeAllRecords(slot: slot, granuleSize: granuleSize)
            known.removeAll()  // the descriptor is going: nothing to unregister
            cmemhooks_known_mappings_unmark(0, .max, slot.index)
        }
    }

    /// Unregisters everything and refuses later watches (`UserfaultfdMonitor.shutdown`).
    func shutDown() {
        table.withLock { table in
            table.shutDown = true
            known.removeAll()
            cmemhooks_known_mappings_unmark(0, .max, slot.index)
            table.removeAllRecords(slot: slot, granuleSize: granuleSize) { start, record in unregister(start, record) }
        }
    }

    // MARK: Internals (each says whether the table lock is held)

    /// Registers the granule whole, or else the buffer's piece of it (no lock held). A granule
    /// refused whole before goes straight to pieces, and a padding refused before is not tried
    /// (`GranuleRefusal`): no ioctl fails as a matter of course.
    private func register(_ attempt: GranuleAttempt, range: AddressRange) throws(MonitorError) -> GranuleOutcome {
        var wholeRefused = false
        if attempt.tryWhole {
            let clock = cmemhooks_known_mappings_clock()  // before the register: see `wholeSince`
            guard let failure = descriptor.register(start: attempt.start, length: granuleSize) else { return .whole(since: clock) }
            if failure != .invalidArgument && failure != .resourceBusy {
                throw .systemCall(call: "ioctl(UFFDIO_REGISTER)", argument: describe(attempt.start, granuleSize), errno: failure)
            }
            wholeRefused = true  // a neighbour in the granule cannot be registered: the buffer's pages only
        }
        let piece = attempt.piece
        let padded = attempt.keepsWhole ? piece : paddedPiece(piece, granule: attempt.start)
        if padded != piece && attempt.tryPadding && descriptor.register(start: padded.start, length: padded.length) == nil {
            return .piece(padded, wholeRefused: wholeRefused, paddingRefused: false)
        }
        if let failure = descriptor.register(start: piece.start, length: piece.length) {
            throw .unwatchable(range: range, reason: UnwatchableClassifier.reason(start: piece.start, end: piece.end, errno: failure))
        }
        return .piece(piece, wholeRefused: wholeRefused, paddingRefused: padded != piece && attempt.tryPadding)
    }

    /// `piece` with one page more on each side, inside its granule. Registered, the padding
    /// keeps the piece's neighbours registered after an intercepted munmap unregisters the
    /// piece: otherwise the kernel merges the unregistered piece back into an unregistered
    /// neighbour (anonymous memory beside it) and the munmap must split it again, a third more
    /// time (measured: 1.47x an unwatched 4 KiB munmap, against 1.09x in a whole granule).
    /// When a neighbour page cannot be registered (a file mapping) the exact piece is used.
    private func paddedPiece(_ piece: PageRange, granule: UInt) -> PageRange {
        // No wrapping below the first granule: a piece at address 0's page has no page before it.
        PageRange(start: piece.start >= granule + pageSize ? piece.start - pageSize : granule,
                  end: min(granule + granuleSize, piece.end + pageSize))
    }

    /// True when every page of `pages` is registered now. EAGAIN (an event is pending and not
    /// yet read) waits for the monitor's reader, which never waits for the table lock.
    private func probe(_ pages: PageRange) throws(MonitorError) -> Bool {
        for attempt in 0... {
            guard let failure = descriptor.isRegistered(start: pages.start, length: pages.length) else { return true }
            if failure == .noSuchFileOrDirectory { return false }
            if failure == .resourceTemporarilyUnavailable && attempt < 1_000_000 {
                sched_yield()
                continue
            }
            throw .systemCall(call: "ioctl(UFFDIO_WRITEPROTECT)", argument: describe(pages.start, pages.length) + ", mode: 0",
                              errno: failure)
        }
        return false
    }

    /// Linux 6.1 answers the probe only for a range inside one VMA: a buffer (or a granule being
    /// validated) across VMAs is checked in halves, each half again until it lies in one VMA, so that a buffer over two
    /// VMAs (a heap grown by `brk` past its registered part) costs a few probes, not one per page
    /// (64 for a 256 KiB buffer: 2 ms of a miss in the VM). A hole stops it at the first half
    /// that has one.
    private func probeInHalves(_ pages: PageRange) throws(MonitorError) -> Bool {
        if pages.length == pageSize { return false }
        let middle = pages.start + (pages.length / pageSize / 2) * pageSize
        for half in [PageRange(start: pages.start, end: middle), PageRange(start: middle, end: pages.end)] {
            if try probe(half) { continue }
            if !(try probeInHalves(half)) { return false }
        }
        return true
    }

    /// Drops one buffer of the granule at `start`. The last one leaves the granule idle, kept
    /// registered as it is (validated, its mappings registered), while at most `idleLimit` are:
    /// then the oldest idle granule is unregistered.
    ///
    /// Why keep them: buffers come and go at the same addresses (a freed message buffer
    /// allocated again, a pool mapped anew, a cache shut down and made again). Unregistered at
    /// once, the next buffer there paid the granule's register, probe and validation again, and
    /// between two buffers the granule flipped: on the device in the VM, half the cycles of
    /// map, register, release, unmap took that path. The price: an idle granule's mappings stay
    /// registered, so an unmap there that no hook sees (glibc's `free()` of a large block) is an
    /// event its thread waits for; `idleLimit` bounds how much address space that concerns.
    /// `keepingIdle` false: a watch that failed gives back what it registered at once.
    private func release(_ start: UInt, in table: inout WatchTable, keepingIdle: Bool = true) {
        var buffersLeft = 0
        // In place: a copy out and back retained and released the record's pieces each time.
        guard table.records.update(start, { record in
            record.buffers -= 1
            buffersLeft = record.buffers
        }) else { return }
        if buffersLeft > 0 { return }
        table.idleCount += 1
        if keepingIdle && idleLimit > 0 && !table.shutDown {
            table.idle.append(start)
            unregisterIdle(beyond: idleLimit, in: &table)
            return
        }
        unregisterRecord(start, in: &table)
    }

    /// Unregisters the oldest idle granules until at most `limit` are left.
    private func unregisterIdle(beyond limit: Int, in table: inout WatchTable) {
        while table.idleCount > limit && table.idleHead < table.idle.count {
            let start = table.idle[table.idleHead]
            table.idleHead += 1
            if let record = table.records[start], record.buffers == 0 { unregisterRecord(start, in: &table) }
        }
        if table.idleHead > 64 && table.idleHead * 2 > table.idle.count {
            table.idle.removeFirst(table.idleHead)
            table.idleHead = 0
        }
    }

    /// Forgets and unregisters an idle granule's record.
    private func unregisterRecord(_ start: UInt, in table: inout WatchTable) {
        guard let record = table.records[start] else { return }
        table.records[start] = nil
        table.idleCount -= 1
        known.remove(granule: start)  // before the unregister makes it untrue
        cmemhooks_known_mappings_unmark(start, start &+ granuleSize, slot.index)
        unregister(start, record)
        _ = slot.adjust(granule: start, size: granuleSize, registered: -1)  // after: see `HookSlot`
    }

    /// Unregisters every idle granule now (`UserfaultfdMonitor.releaseIdleGranules`).
    func releaseIdleGranules() {
        table.withLock { table in
            if table.shutDown || table.failure != nil { return }
            unregisterIdle(beyond: 0, in: &table)
            table.idle.removeAll()
            table.idleHead = 0
        }
    }

    /// Granules kept registered with no buffer.
    var idleGranuleCount: Int { table.withLock { $0.idleCount } }

    /// The granules of a watch that just succeeded to validate now (lock held): registered whole,
    /// no attempt failed lately (a granule that failed, at the edge of a mapping or beside one of
    /// another kind, is asked again only every `revalidateEvery` watches), no window open.
    private func validationCandidates(_ plan: WatchPlan, in table: inout WatchTable) -> [UInt] {
        var candidates: [UInt] = []
        for attempt in plan.granules {
            table.records.update(attempt.start) { record in
                guard record.isWhole && record.confirmedWhole else { return }
                if record.validationCountdown > 0 {
                    record.validationCountdown -= 1
                } else {
                    candidates.append(attempt.start)
                }
            }
        }
        return candidates
    }

    /// Marks a granule registered whole as validated when registered mappings now cover all of
    /// it: every mapping registered (the probe) and all of it private anonymous memory, with no
    /// hole. No lock held while the kernel is asked: the caller's count keeps the granule
    /// registered. A granule that fails waits `revalidateEvery` watches for the next try.
    ///
    /// An unmap racing with the checks is caught either way: its window opens before its event
    /// is read and the worker forgets the granule only after that, so either the sequence moved
    /// since `before` (the insert is refused) or the worker's forget comes after the insert
    /// (and removes it): `KnownMemory.insert`.
    private func validate(_ start: UInt) {
        let before = known.stamp(in: space)
        guard before.window & 1 == 0 else { return }  // an invalidation is running: ask next time
        let whole = PageRange(start: start, end: start &+ granuleSize)
        // Only private anonymous memory may skip later checks: a watch in a validated granule
        // does not look at what is mapped there.
        guard (try? probe(whole)) == true || (try? probeInHalves(whole)) == true,
              UnwatchableClassifier.inspect(start: whole.start, end: whole.end, pageSize: pageSize) == .privateAnonymous else {
            table.withLock { table in
                _ = table.records.update(start) { $0.validationCountdown = GranuleRecord.revalidateEvery }
            }
            return
        }
        known.insert(whole, checkedAfter: before, in: space)
    }

    /// Errors are ignored: the range may be unmapped already, which unregistered it.
    private func unregister(_ start: UInt, _ record: GranuleRecord) {
        if let pieces = record.pieces {
            for piece in pieces { _ = descriptor.unregister(start: piece.start, length: piece.length) }
        } else {
            _ = descriptor.unregister(start: start, length: granuleSize)
        }
    }

    /// Calls `body` with each registered piece of `pages`: the part inside a whole granule, or
    /// the overlap with a granule's registered pieces. Consecutive whole granules make one
    /// piece (one ioctl). Returns whether any granule was touched.
    private func forEachWatchedPiece(of pages: PageRange, in table: inout WatchTable, touchedPieces: inout Bool,
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
    private func forEachRecord(overlapping pages: PageRange, in table: inout WatchTable,
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
                pages.intersection(PageRange(start: start, end: start &+ granuleSize)) == nil || body(start, &record)
            }
        } else {
            for start in granuleStarts(pages) where !visit(start) { return false }
        }
        return true
    }

    private func granuleStarts(_ pages: PageRange) -> StrideTo<UInt> { pages.granuleStarts(granuleSize: granuleSize) }

    private func describe(_ start: UInt, _ length: UInt) -> String {
        "start: 0x\(String(start, radix: 16)), length: \(length)"
    }
}
