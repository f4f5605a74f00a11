import Synchronization

/// A process address space (the kernel's `mm_struct`, mmu-notifier side): the notifiers and
/// interval subscriptions that mirror it, and the invalidations that reach them.
///
/// Sources of invalidation (monitors, allocators) use one of two forms:
/// - `beginInvalidation()` → `InvalidationWindow.invalidate(_:event:)` (any number) →
///   `end()`: for the userfaultfd monitor, which must make lookups wait *before* it reads the
///   kernel's events and so before it knows the ranges. `beginInvalidation` takes only the
///   engine's short internal lock and allocates nothing.
/// - `invalidateRangeStart(_:event:blockable:)` → `RangeInvalidation.end()`, or
///   `invalidate(_:event:)` for both at once: when the range is known up front.
public final class AddressSpace: Sendable {
    /// The domain whose read sections callbacks run in; `call` frees notifiers through it.
    public let srcu: SRCUDomain

    struct NotifierState {
        var list: [NotifierEntry] = []                          // who gets invalidations
        var members: [ObjectIdentifier: NotifierEntry] = [:]    // registered, by identity
        var shared: [ObjectIdentifier: (entry: NotifierEntry, count: Int)] = [:]  // by kind
        var released = false
    }

    struct IntervalState {
        /// Even when idle, odd while an invalidation that found subscriptions is in flight.
        var sequence: UInt64 = 2
        var activeInvalidations = 0
        var openWindows = 0
        var tree = IntervalTree<IntervalSubscription>()
        /// Inserts and removes that arrived while `sequence` was odd, applied when it is even.
        var deferred: [IntervalSubscription] = []
        var released = false
    }

    let notifiers = Locked(NotifierState())
    let intervals = Locked(IntervalState())
    /// Copy of `IntervalState.sequence` for waiters that test it under the wait queue's lock.
    @usableFromInline let intervalSequence = Atomic<UInt64>(2)
    let intervalEvents = WaitQueue()

    public init(srcu: SRCUDomain = SRCUDomain()) { self.srcu = srcu }

    // MARK: Notifiers

    /// Adds `notifier`; invalidations that start after this returns reach it.
    public func register(_ notifier: any MMUNotifier) throws(NotifierError) {
        try notifiers.withLock { s throws(NotifierError) in
            if s.released { throw .spaceReleased }
            let id = ObjectIdentifier(notifier)
            if s.members[id] != nil { throw .alreadyRegistered }
            let entry = NotifierEntry(notifier)
            s.members[id] = entry
            s.list.append(entry)
        }
    }

    /// Removes `notifier`, calls its `release` unless the space's release already did, and
    /// waits until none of its callbacks runs. Throws `.notRegistered` on a second call and
    /// `.wouldDeadlock` from inside a callback (use `unregisterNoRelease` there).
    public func unregister(_ notifier: any MMUNotifier) throws(NotifierError) {
        if srcu.isInsideReadSection { throw .wouldDeadlock("unregister() inside a callback") }
        let entry = try detach(notifier)
        srcu.withReadLock {
            if entry.claimRelease() { notifier.release(self) }
        }
        try srcu.synchronize()
    }

    /// Removes `notifier` without calling `release` and without waiting (seed 002): callbacks
    /// already running may still be running. Safe inside a callback, including the notifier's
    /// own `release`; free the notifier's resources with `srcu.call(afterGracePeriod:)`.
    public func unregisterNoRelease(_ notifier: any MMUNotifier) throws(NotifierError) {
        let entry = try detach(notifier)
        _ = entry.claimRelease()
    }

    private func detach(_ notifier: any MMUNotifier) throws(NotifierError) -> NotifierEntry {
        try notifiers.withLock { s throws(NotifierError) in
            guard let entry = s.members.removeValue(forKey: ObjectIdentifier(notifier)) else {
                throw .notRegistered
            }
            s.list.removeAll { $0 === entry }
            for (kind, record) in s.shared where record.entry === entry { s.shared[kind] = nil }
            entry.registered.store(false, ordering: .releasing)
            return entry
        }
    }

    /// The notifier of kind `N` shared by all users of this space, made on first use
    /// (`mmu_notifier_get`). Each `getShared` needs one `putShared`.
    public func getShared<N: SharedMMUNotifier>(_ kind: N.Type = N.self) throws(NotifierError) -> N {
        let key = ObjectIdentifier(kind)
        func existing(_ s: inout NotifierState) throws(NotifierError) -> N? {
            if s.released { throw .spaceReleased }
            guard var record = s.shared[key], let found = record.entry.notifier as? N else { return nil }
            record.count += 1
            s.shared[key] = record
            return found
        }
        if let found = try notifiers.withLock({ s throws(NotifierError) in try existing(&s) }) {
            return found
        }
        let made = N.make(for: self)  // outside the lock: user code
        return try notifiers.withLock { s throws(NotifierError) -> N in
            if let found = try existing(&s) { return found }  // another thread won: drop ours
            let id = ObjectIdentifier(made)
            if s.members[id] != nil { throw .alreadyRegistered }
            let entry = NotifierEntry(made)
            s.members[id] = entry
            s.list.append(entry)
            s.shared[key] = (entry, 1)
            return made
        }
    }

    /// Drops one reference from `getShared`. The last one unregisters the notifier without
    /// `release` and calls its `free()` after a grace period (`mmu_notifier_put`).
    public func putShared<N: SharedMMUNotifier>(_ notifier: N) throws(NotifierError) {
        let key = ObjectIdentifier(N.self)
        let last = try notifiers.withLock { s throws(NotifierError) -> Bool in
            guard var record = s.shared[key], record.entry.notifier === notifier else {
                throw .notRegistered
            }
            record.count -= 1
            if record.count > 0 {
                s.shared[key] = record
                return false
            }
            s.shared[key] = nil
            s.members[ObjectIdentifier(notifier)] = nil
            s.list.removeAll { $0 === record.entry }
            record.entry.registered.store(false, ordering: .releasing)
            _ = record.entry.claimRelease()
            return true
        }
        if last { srcu.call { notifier.free() } }
    }

    /// Number of registered notifiers.
    public var notifierCount: Int { notifiers.withLock { $0.members.count } }

    /// Tears the space down (`__mmu_notifier_release`): interval subscribers get one
    /// invalidation of everything with event `.release`, every notifier's `release` runs
    /// exactly once, and once this returns no invalidation reaches any of them. Idempotent.
    public func release() throws(NotifierError) {
        if srcu.isInsideReadSection { throw .wouldDeadlock("release() inside a callback") }
        guard let entries = notifiers.withLock({ s -> [NotifierEntry]? in
            if s.released { return nil }
            s.released = true
            return s.list
        }) else { return }
        intervals.withLock { $0.released = true }
        try? itreeStart(InvalidationRange(range: .everything, event: .release))
        itreeEnd(closingWindow: false)
        srcu.withReadLock {
            for entry in entries where entry.claimRelease() { entry.notifier.release(self) }
        }
        notifiers.withLock { s in
            for entry in s.list { entry.registered.store(false, ordering: .releasing) }
            s.list = []
        }
        try srcu.synchronize()
    }

    public var isReleased: Bool { notifiers.withLock { $0.released } }

    // MARK: Aging

    /// Asks every notifier whether `range` was used since the last call, clearing the mark
    /// (`mmu_notifier_clear_young`); true if any said so.
    public func clearYoung(_ range: AddressRange) -> Bool {
        srcu.withReadLock {
            var young = false
            for entry in notifiers.withLock({ $0.list }) where entry.isLive {
                if entry.notifier.clearYoung(range, in: self) { young = true }
            }
            return young
        }
    }

    /// True if some notifier reports `range` used (`mmu_notifier_test_young`); stops at the first.
    public func testYoung(_ range: AddressRange) -> Bool {
        srcu.withReadLock {
            for entry in notifiers.withLock({ $0.list }) where entry.isLive {
                if entry.notifier.testYoung(range, in: self) { return true }
            }
            return false
        }
    }

    // MARK: Invalidation

    /// The space's invalidate sequence as a lock-free reader sees it: odd while an invalidation
    /// that covers a subscription, or a monitor's window of still unknown ranges, is in flight.
    /// A lookup that reads no subscription's sequence (an RCU index of cached translations)
    /// loads this first: if it is odd, something that may concern the lookup has not finished,
    /// so it calls `waitWhileInvalidating(_:)` and loads again. A read-only load: a hit path
    /// that does it still writes no shared cache line.
    @inlinable
    public var invalidationSequence: UInt64 { intervalSequence.load(ordering: .acquiring) }

    /// Waits until the invalidate sequence is no longer `sequence` (returns at once for an even
    /// one). Never call it holding a lock that an invalidate callback takes.
    public func waitWhileInvalidating(_ sequence: UInt64) {
        guard sequence & 1 == 1 else { return }
        intervalEvents.wait { intervalSequence.load(ordering: .acquiring) != sequence }
    }

    /// Opens an invalidation whose ranges are not known yet. Until `end()`, every
    /// `readBegin` of this space waits and every sequence a subscriber holds is suspect.
    /// Allocation-free; takes only the engine's internal lock (monitor path, DESIGN.md).
    public func beginInvalidation() -> InvalidationWindow {
        intervals.withLock { s in
            s.activeInvalidations += 1
            s.openWindows += 1
            s.sequence |= 1
            intervalSequence.store(s.sequence, ordering: .releasing)
        }
        return InvalidationWindow(space: self)
    }

    /// Starts invalidating `range` (`mmu_notifier_invalidate_range_start`): interval
    /// subscribers first, then notifiers. Non-blockable starts may fail with `.wouldBlock`, in
    /// which case nothing stays started. End it with `RangeInvalidation.end()`.
    public func invalidateRangeStart(_ range: AddressRange, event: InvalidationEvent,
                                     blockable: Bool = true) throws(NotifierError) -> RangeInvalidation {
        let r = InvalidationRange(range: range, event: event, blockable: blockable)
        try itreeStart(r)
        if range.isEmpty { return RangeInvalidation(space: self, range: r, entries: []) }
        guard let entries = notifiersStart(r) else {
            itreeEnd(closingWindow: false)
            throw .wouldBlock
        }
        return RangeInvalidation(space: self, range: r, entries: entries)
    }

    /// Start and end at once, blockable: for a change that already happened. An empty range
    /// reaches nobody.
    public func invalidate(_ range: AddressRange, event: InvalidationEvent) {
        if range.isEmpty { return }
        let r = InvalidationRange(range: range, event: event)
        try? itreeStart(r)  // blockable: cannot fail
        let entries = notifiersStart(r) ?? []
        notifiersEnd(r, entries)
        itreeEnd(closingWindow: false)
    }

    /// The interval half of a start: count it active, make the sequence odd if it covers a
    /// subscription, and call those subscriptions. The tree cannot change while the sequence
    /// is odd (changes are deferred), so the list taken under the lock stays exact.
    func itreeStart(_ r: InvalidationRange) throws(NotifierError) {
        let (subs, seq) = intervals.withLock { s -> ([IntervalSubscription], UInt64) in
            s.activeInvalidations += 1
            let subs = r.range.isEmpty ? [] : s.tree.overlaps(start: r.range.start, last: r.range.last)
            if !subs.isEmpty {
                s.sequence |= 1
                intervalSequence.store(s.sequence, ordering: .releasing)
            }
            return (subs, s.sequence)
        }
        if subs.isEmpty { return }
        let refused = srcu.withReadLock {
            for sub in subs where !sub.ops.invalidate(sub, range: r, currentSequence: seq) {
                if !r.blockable { return true }
            }
            return false
        }
        if refused {
            itreeEnd(closingWindow: false)
            throw .wouldBlock
        }
    }

    /// Calls the interval subscriptions overlapping `r` within an open window (sequence odd).
    func itreeInvalidateInWindow(_ r: InvalidationRange) {
        let (subs, seq) = intervals.withLock { s -> ([IntervalSubscription], UInt64) in
            (r.range.isEmpty ? [] : s.tree.overlaps(start: r.range.start, last: r.range.last), s.sequence)
        }
        if subs.isEmpty { return }
        srcu.withReadLock {
            for sub in subs { _ = sub.ops.invalidate(sub, range: r, currentSequence: seq) }
        }
    }

    /// The interval half of an end: the last active invalidation makes the sequence even,
    /// applies deferred inserts/removes and wakes `readBegin` and `remove` waiters.
    func itreeEnd(closingWindow: Bool) {
        // What the lock replaced is released after it is dropped (see `IntervalTree`).
        let (wake, _, _) = intervals.withLock {
            s -> (Bool, IntervalTree<IntervalSubscription>.Retired, [IntervalSubscription]) in
            var retired = IntervalTree<IntervalSubscription>.Retired()
            s.activeInvalidations -= 1
            if closingWindow { s.openWindows -= 1 }
            if s.activeInvalidations > 0 || s.sequence & 1 == 0 { return (false, retired, []) }
            s.sequence += 1
            let pending = s.deferred  // keeps every deferred subscription alive past the lock
            for sub in pending {
                switch sub.membership {
                case .pendingInsert:
                    let handle = s.tree.insert(start: sub.range.start, last: sub.range.last,
                                               value: sub, retired: &retired)
                    sub.treeHandle.store(handle, ordering: .relaxed)
                    sub.membership = .inTree
                case .pendingRemove:
                    s.tree.remove(handle: sub.treeHandle.load(ordering: .relaxed))
                    sub.membership = .removed
                case .inTree, .removed:
                    break
                }
            }
            if !pending.isEmpty { s.deferred.removeAll(keepingCapacity: true) }  // copies: `pending` shares it
            intervalSequence.store(s.sequence, ordering: .releasing)
            return (true, retired, pending)
        }
        if wake { intervalEvents.wakeAll() }
    }

    /// Notifier starts inside one read section; nil if a non-blockable start was refused
    /// (the ones already started get their end, as the kernel does).
    func notifiersStart(_ r: InvalidationRange) -> [NotifierEntry]? {
        srcu.withReadLock {
            let entries = notifiers.withLock { $0.list }
            for (i, entry) in entries.enumerated() where entry.isLive {
                if !entry.notifier.invalidateRangeStart(r, in: self) && !r.blockable {
                    for earlier in entries[..<i] where earlier.isLive {
                        earlier.notifier.invalidateRangeEnd(r, in: self)
                    }
                    return nil
                }
            }
            return entries
        }
    }

    /// Ends for the notifiers that got the start, skipping any unregistered since.
    func notifiersEnd(_ r: InvalidationRange, _ entries: [NotifierEntry]) {
        if entries.isEmpty { return }
        srcu.withReadLock {
            for entry in entries where entry.isLive { entry.notifier.invalidateRangeEnd(r, in: self) }
        }
    }

    // MARK: Interval subscriptions

    /// Subscribes `ops` to invalidations of `range` (`mmu_interval_notifier_insert`). During an
    /// invalidation the insert is deferred to its end, and `readBegin` waits for that end.
    public func insertInterval(_ range: AddressRange, ops: any IntervalNotifierOps)
        throws(NotifierError) -> IntervalSubscription
    {
        if range.isEmpty { throw .emptyRange }
        let sub = IntervalSubscription(space: self, range: range, ops: ops)
        _ = try intervals.withLock {
            s throws(NotifierError) -> (IntervalTree<IntervalSubscription>.Retired, [IntervalSubscription]?) in
            var retired = IntervalTree<IntervalSubscription>.Retired()
            var retiredDeferred: [IntervalSubscription]? = nil
            if s.released { throw .spaceReleased }
            if s.activeInvalidations > 0 {
                if s.sequence & 1 == 1 {
                    if s.deferred.count == s.deferred.capacity { retiredDeferred = s.deferred }  // grow without freeing
                    s.deferred.append(sub)
                    sub.membership = .pendingInsert
                } else {
                    s.sequence |= 1
                    intervalSequence.store(s.sequence, ordering: .releasing)
                    sub.treeHandle.store(s.tree.insert(start: range.start, last: range.last, value: sub,
                                                       retired: &retired), ordering: .relaxed)
                    sub.membership = .inTree
                }
                sub.sequence.store(s.sequence, ordering: .releasing)
            } else {
                sub.sequence.store(s.sequence - 1, ordering: .releasing)
                sub.treeHandle.store(s.tree.insert(start: range.start, last: range.last, value: sub,
                                                   retired: &retired), ordering: .relaxed)
                sub.membership = .inTree
            }
            return (retired, retiredDeferred)
        }
        return sub
    }

    /// Closure form of `insertInterval(_:ops:)`.
    public func insertInterval(
        _ range: AddressRange,
        invalidate: @escaping ClosureIntervalOps.Callback
    ) throws(NotifierError) -> IntervalSubscription {
        try insertInterval(range, ops: ClosureIntervalOps(invalidate))
    }

    /// Unsubscribes (`mmu_interval_notifier_remove`). If an invalidation that still sees the
    /// subscription is running, waits for it to end: after this returns the ops are never
    /// called again. A second remove throws `.alreadyRemoved`; a remove that would wait from
    /// inside a callback of this space throws `.wouldDeadlock`.
    public func removeInterval(_ sub: IntervalSubscription) throws(NotifierError) {
        guard sub.space === self else { throw .foreignSubscription }
        let insideCallback = srcu.isInsideReadSection
        // `sub` is held by the caller, so dropping it from the tree or list frees nothing here.
        let (waitFor, _) = try intervals.withLock {
            s throws(NotifierError) -> (UInt64?, [IntervalSubscription]?) in
            switch sub.membership {
            case .removed, .pendingRemove:
                throw .alreadyRemoved
            case .pendingInsert:
                s.deferred.removeAll { $0 === sub }
                sub.membership = .removed
                return (nil, nil)
            case .inTree:
                if s.sequence & 1 == 1 {
                    if insideCallback { throw .wouldDeadlock("removeInterval() inside a callback") }
                    let retired = s.deferred.count == s.deferred.capacity ? s.deferred : nil
                    s.deferred.append(sub)
                    sub.membership = .pendingRemove
                    return (s.sequence, retired)
                }
                s.tree.remove(handle: sub.treeHandle.load(ordering: .relaxed))
                sub.membership = .removed
                return (nil, nil)
            }
        }
        if let waitFor {
            intervalEvents.wait { intervalSequence.load(ordering: .acquiring) != waitFor }
        }
    }

    /// The space's invalidate sequence: even when idle, odd while an invalidation runs.
    public var invalidateSequence: UInt64 { intervals.withLock { $0.sequence } }

    /// Interval subscriptions in the index (deferred inserts not yet applied are not counted).
    public var intervalCount: Int { intervals.withLock { $0.tree.count } }

    /// Subscriptions overlapping `range` (a query of the index, for tests and diagnostics).
    public func intervals(overlapping range: AddressRange) -> [IntervalSubscription] {
        if range.isEmpty { return [] }
        return intervals.withLock { $0.tree.overlaps(start: range.start, last: range.last) }
    }

    /// Number of subscriptions overlapping `range`, without building a list (benchmarks).
    public func countIntervals(overlapping range: AddressRange) -> Int {
        if range.isEmpty { return 0 }
        return intervals.withLock { s in
            var n = 0
            s.tree.forEachOverlap(start: range.start, last: range.last) { _ in n += 1 }
            return n
        }
    }
}

/// A monitor's open invalidation (see `AddressSpace.beginInvalidation()`). Not copyable: it is
/// ended exactly once, by `end()` or, if dropped, by its deinit.
public struct InvalidationWindow: ~Copyable, Sendable {
    let space: AddressSpace

    /// Invalidates `range`: interval subscribers overlapping it and every notifier (start
    /// then end: the change already happened). Blockable. Callbacks may allocate and block,
    /// so a monitor calls this only after it has read the kernel's events.
    public func invalidate(_ range: AddressRange, event: InvalidationEvent) {
        if range.isEmpty { return }
        let r = InvalidationRange(range: range, event: event)
        space.itreeInvalidateInWindow(r)
        let entries = space.notifiersStart(r) ?? []
        space.notifiersEnd(r, entries)
    }

    /// Closes the window: the sequence turns even once no other invalidation runs.
    public consuming func end() {}

    deinit { space.itreeEnd(closingWindow: true) }
}

/// A started range invalidation (see `AddressSpace.invalidateRangeStart`). Ended exactly once,
/// by `end()` or by its deinit; the end reaches exactly the notifiers the start reached.
public struct RangeInvalidation: ~Copyable, Sendable {
    let space: AddressSpace
    public let range: InvalidationRange
    let entries: [NotifierEntry]

    public consuming func end() {}

    deinit {
        space.notifiersEnd(range, entries)
        space.itreeEnd(closingWindow: false)
    }
}
