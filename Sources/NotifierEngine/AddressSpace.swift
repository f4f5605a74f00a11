import CMMUNotifier
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
        var tree = IntervalTree()
        /// Inserts and removes that arrived while `sequence` was odd, applied when it is even:
        /// a list through `IntervalSubscription.nextDeferred` (intrusive: nothing allocated).
        unowned(unsafe) var deferredHead: IntervalSubscription? = nil
        unowned(unsafe) var deferredTail: IntervalSubscription? = nil
        var released = false
        /// What each invalidation in flight has already looked for subscribers of (its walk of
        /// the tree is done or under way), one slot each: a window's slot holds the hull of the
        /// ranges it invalidated so far. A subscription inserted now that overlaps one of them
        /// would miss that invalidation (`insertIntervalWithoutWaiting` refuses it). A slot is
        /// taken when its invalidation starts and freed when it ends. When all are taken, further
        /// ranges go to `walkedOverflow`, forgotten when the last invalidation ends: broader,
        /// never wrong.
        var walked = [WalkedHull](repeating: WalkedHull(), count: 16)
        var walkedOverflow = WalkedHull()

        /// A free slot of `walked`, now in use, or `WalkedHull.overflow`.
        mutating func takeWalkedSlot() -> Int {
            for index in walked.indices where !walked[index].inUse {
                walked[index] = WalkedHull(inUse: true)
                return index
            }
            return WalkedHull.overflow
        }

        mutating func noteWalked(_ range: AddressRange, slot: Int) {
            if range.isEmpty { return }
            if slot >= 0 { walked[slot].extend(range) } else { walkedOverflow.extend(range) }
        }

        /// Frees `slot` (its invalidation ended; `activeInvalidations` already counts that).
        mutating func freeWalkedSlot(_ slot: Int) {
            if slot >= 0 { walked[slot] = WalkedHull() }
            if activeInvalidations == 0 { walkedOverflow = WalkedHull() }
        }

        func overlapsWalked(_ range: AddressRange) -> Bool {
            if range.isEmpty { return false }
            return walkedOverflow.overlaps(range) || walked.contains { $0.overlaps(range) }
        }

        /// Inserts `sub`, which no invalidation in flight has looked for (`overlapsWalked` is
        /// false), without making anyone wait: deferred while the tree is walked (reached meanwhile
        /// by `markDeferred`), else into the tree. Its sequence is one no invalidation sets (an
        /// odd one from the past, or an even one), which it returns: `readBegin` does not wait,
        /// and the first call makes `readRetry` true.
        mutating func insertUnrelated(_ sub: IntervalSubscription) -> UInt64 {
            sub.insertedWithoutWaiting = true
            if sequence & 1 == 1 {
                defer_(sub)
                sub.membership = .pendingInsert
            } else {
                tree.insert(sub)
                sub.membership = .inTree
            }
            sub.sequence.store(sequence - 1, ordering: .releasing)
            return sequence - 1
        }

        /// The deferred inserts of `insertUnrelated` that overlap `range` and were
        /// not called yet: each gets `sequence` now (its owner's `readRetry` turns true at once)
        /// and is returned, retained, in a list linked through `left` for the caller to call
        /// after the lock (`callMarked`). A deferred insert is not in the tree, so `left` is
        /// free, and none is applied before the invalidation that marked it ends: the caller,
        /// still counted active, owns the links until it has called them.
        mutating func markDeferred(overlapping range: AddressRange, sequence: UInt64) -> Unmanaged<IntervalSubscription>? {
            var marked: Unmanaged<IntervalSubscription>? = nil
            var node = deferredHead
            while let sub = node {
                node = sub.nextDeferred
                guard sub.membership == .pendingInsert, sub.insertedWithoutWaiting, !sub.calledWhileDeferred,
                      sub.range.overlaps(range) else { continue }
                sub.calledWhileDeferred = true
                sub.sequence.store(sequence, ordering: .releasing)
                sub.left = marked
                marked = Unmanaged.passRetained(sub)
            }
            return marked
        }

        mutating func defer_(_ sub: IntervalSubscription) {
            sub.nextDeferred = nil
            if let tail = deferredTail { tail.nextDeferred = sub } else { deferredHead = sub }
            deferredTail = sub
        }

        /// Takes `sub` (a pending insert) out of the deferred list.
        mutating func undefer(_ sub: IntervalSubscription) {
            var previous: IntervalSubscription? = nil
            var node = deferredHead
            while let current = node, current !== sub {
                previous = current
                node = current.nextDeferred
            }
            guard node != nil else { return }
            if let previous { previous.nextDeferred = sub.nextDeferred } else { deferredHead = sub.nextDeferred }
            if deferredTail === sub { deferredTail = previous }
            sub.nextDeferred = nil
        }
    }

    /// The ranges one invalidation in flight has looked for subscribers of (a hull), in one of
    /// `IntervalState.walked`'s slots.
    struct WalkedHull {
        /// `takeWalkedSlot`'s answer when every slot is taken.
        static let overflow = -1
        var inUse = false
        var start = UInt.max
        var last: UInt = 0

        mutating func extend(_ range: AddressRange) {
            start = Swift.min(start, range.start)
            last = Swift.max(last, range.last)
        }

        func overlaps(_ range: AddressRange) -> Bool { start <= last && range.start <= last && start <= range.last }
    }

    let notifiers = Locked(NotifierState())
    /// `NotifierState.list.count`, stored under the notifier lock after each change: an
    /// invalidation with no notifier to call skips the read section and the lock (the kernel's
    /// `mm_has_notifiers`). One that reads 0 while a notifier registers is ordered as if it had
    /// copied the list just before the register, as a locked copy could be.
    private let listedNotifiers = Atomic<Int>(0)
    let intervals = Locked(IntervalState())
    /// Copy of `IntervalState.sequence` for waiters that test it under the wait queue's lock.
    @usableFromInline let intervalSequence = Atomic<UInt64>(2)
    /// Odd while a monitor's window (an invalidation of ranges not known yet) is open: made odd
    /// by the first window to open and even by the last to close, under the interval lock. In C
    /// memory, so that a C fast path can read it too (`windowSequenceAddress`).
    /// `nonisolated(unsafe)`: the pointer is set once, here, and freed only in `deinit`; the
    /// value behind it is only ever accessed atomically.
    @usableFromInline nonisolated(unsafe) let windowSequence: UnsafeMutablePointer<cmmu_window_sequence>
    let intervalEvents = WaitQueue()

    public init(srcu: SRCUDomain = SRCUDomain()) {
        self.srcu = srcu
        windowSequence = .allocate(capacity: 1)
        cmmu_window_sequence_init(windowSequence, 2)
        _ = cmmu_window_sequence_track(windowSequence)  // fork(): see `isForkedChild`
    }

    deinit {
        cmmu_window_sequence_untrack(windowSequence)
        windowSequence.deallocate()
    }

    /// True in a `fork()` child (without exec) of a process that made an address space. The
    /// child has none of the parent's threads (monitor, reclaim), a lock a parent thread held
    /// stays held, and its memory is watched by nobody; so its window sequences are made odd for
    /// good at the fork, every lookup leaves its fast path, and the waits throw `.forkedChild`
    /// instead of waiting for a window nobody will close.
    public static var isForkedChild: Bool { cmmu_in_forked_child() != 0 }

    /// Where the window sequence lives, for fast paths written in C: a 64-bit value to read with
    /// an acquire load (`cmmu_window_sequence_load`), odd while a window is open, as
    /// `openWindowSequence`. Valid as long as this space lives.
    public var windowSequenceAddress: UnsafeRawPointer { UnsafeRawPointer(windowSequence) }

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
            listedNotifiers.store(s.list.count, ordering: .releasing)
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
            listedNotifiers.store(s.list.count, ordering: .releasing)
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
            listedNotifiers.store(s.list.count, ordering: .releasing)
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
            listedNotifiers.store(s.list.count, ordering: .releasing)
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
        let slot = (try? itreeStart(InvalidationRange(range: .everything, event: .release))) ?? WalkedHull.overflow
        itreeEnd(closingWindow: false, walkedSlot: slot)
        srcu.withReadLock {
            for entry in entries where entry.claimRelease() { entry.notifier.release(self) }
        }
        notifiers.withLock { s in
            for entry in s.list { entry.registered.store(false, ordering: .releasing) }
            s.list = []
            listedNotifiers.store(s.list.count, ordering: .releasing)
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

    /// Opens an invalidation whose ranges are not known yet. Until `end()`, every
    /// `readBegin` of this space waits and every sequence a subscriber holds is suspect.
    /// Allocation-free; takes only the engine's internal lock (monitor path, DESIGN.md).
    public func beginInvalidation() -> InvalidationWindow {
        let slot = intervals.withLock { s -> Int in
            s.activeInvalidations += 1
            s.openWindows += 1
            if s.openWindows == 1 { cmmu_window_sequence_bump(windowSequence) }
            s.sequence |= 1
            intervalSequence.store(s.sequence, ordering: .releasing)
            return s.takeWalkedSlot()
        }
        return InvalidationWindow(space: self, walkedSlot: slot)
    }

    /// The window sequence as a lock-free reader sees it: odd while a monitor's window is open,
    /// that is, while changes the kernel already let return may not be invalidated yet. A lookup
    /// of an RCU index of cached translations loads it first and, if it is odd, waits
    /// (`waitWhileWindowOpen`) before it trusts what it finds. Invalidations of known ranges
    /// (a hook's, an explicit one) need no such wait: they end before the call that made them
    /// returns, so no lookup that starts after that call can find what they revoked. A
    /// read-only load.
    @inlinable
    public var openWindowSequence: UInt64 { cmmu_window_sequence_load(windowSequence) }

    /// Waits until the window sequence is no longer `sequence` (returns at once for an even one):
    /// every window open when it was read has closed. Never call it holding a lock that an
    /// invalidate callback takes. Inlinable: every hit asks, and almost always the answer is a
    /// load and a test.
    ///
    /// Throws `.wouldDeadlock` instead of waiting from inside an invalidation callback: the
    /// window may be the one the callback runs in, which closes only after it returns.
    @inlinable
    public func waitWhileWindowOpen(_ sequence: UInt64) throws(NotifierError) {
        if sequence & 1 == 1 { try waitForWindowToClose(sequence) }
    }

    @usableFromInline
    func waitForWindowToClose(_ sequence: UInt64) throws(NotifierError) {
        if Self.isForkedChild { throw .forkedChild }
        if Self.isInsideCallback {
            throw .wouldDeadlock("a lookup inside an invalidation callback while a monitor's window is open")
        }
        intervalEvents.wait { cmmu_window_sequence_load(windowSequence) != sequence }
    }

    /// True while the calling thread runs an invalidation callback (of any space): it must not
    /// wait for an invalidation to end, which may be its own.
    public static var isInsideCallback: Bool { cmmu_callback_depth() > 0 }

    /// Runs callbacks of an invalidation, counted as such on this thread (`isInsideCallback`).
    @inline(__always)
    func inCallbacks<R>(_ body: () -> R) -> R {
        cmmu_callback_depth_enter()
        defer { cmmu_callback_depth_leave() }
        return body()
    }

    /// Starts invalidating `range` (`mmu_notifier_invalidate_range_start`): interval
    /// subscribers first, then notifiers. Non-blockable starts may fail with `.wouldBlock`, in
    /// which case nothing stays started. End it with `RangeInvalidation.end()`.
    public func invalidateRangeStart(_ range: AddressRange, event: InvalidationEvent,
                                     blockable: Bool = true) throws(NotifierError) -> RangeInvalidation {
        let r = InvalidationRange(range: range, event: event, blockable: blockable)
        let slot = try itreeStart(r)
        if range.isEmpty { return RangeInvalidation(space: self, range: r, entries: [], walkedSlot: slot) }
        guard let entries = notifiersStart(r) else {
            itreeEnd(closingWindow: false, walkedSlot: slot)
            throw .wouldBlock
        }
        return RangeInvalidation(space: self, range: r, entries: entries, walkedSlot: slot)
    }

    /// Start and end at once, blockable: for a change that already happened. An empty range
    /// reaches nobody.
    public func invalidate(_ range: AddressRange, event: InvalidationEvent) {
        if range.isEmpty { return }
        let r = InvalidationRange(range: range, event: event)
        let slot = (try? itreeStart(r)) ?? WalkedHull.overflow  // blockable: cannot fail
        let entries = notifiersStart(r) ?? []
        notifiersEnd(r, entries)
        itreeEnd(closingWindow: false, walkedSlot: slot)
    }

    /// The interval half of a start (`mn_itree_inv_start_range`): count it active, make the
    /// sequence odd if it covers a subscription, and call those subscriptions. While the
    /// sequence is odd the tree cannot change (inserts and removes are deferred to `itreeEnd`),
    /// so it is walked after the lock is dropped, as the kernel walks its interval tree.
    /// Returns the slot of `IntervalState.walked` it took, for its `itreeEnd`.
    func itreeStart(_ r: InvalidationRange) throws(NotifierError) -> Int {
        let (root, seq, marked, slot) = intervals.withLock { s -> (IntervalTree.Link?, UInt64, Unmanaged<IntervalSubscription>?, Int) in
            s.activeInvalidations += 1
            let slot = s.takeWalkedSlot()
            if r.range.isEmpty { return (nil, s.sequence, nil, slot) }
            s.noteWalked(r.range, slot: slot)
            let marked = s.deferredHead == nil ? nil : s.markDeferred(overlapping: r.range, sequence: s.sequence)
            guard s.tree.hasOverlap(start: r.range.start, last: r.range.last) else { return (nil, s.sequence, marked, slot) }
            s.sequence |= 1
            intervalSequence.store(s.sequence, ordering: .releasing)
            return (s.tree.root, s.sequence, marked, slot)
        }
        if marked == nil && root == nil { return slot }
        let refused = srcu.withReadLock {
            inCallbacks {
                callMarked(marked, r, sequence: seq)
                guard let root else { return false }
                return !IntervalTree.forEachOverlap(root, start: r.range.start, last: r.range.last) { sub in
                    sub.invalidate(r, currentSequence: seq) || r.blockable
                }
            }
        }
        if refused {
            itreeEnd(closingWindow: false, walkedSlot: slot)
            throw .wouldBlock
        }
        return slot
    }

    /// Calls the interval subscriptions overlapping `r` within an open window (sequence odd, so
    /// the tree is frozen and walked without the lock).
    func itreeInvalidateInWindow(_ r: InvalidationRange, walkedSlot: Int) {
        if r.range.isEmpty { return }
        let (root, seq, marked) = intervals.withLock { s -> (IntervalTree.Link?, UInt64, Unmanaged<IntervalSubscription>?) in
            s.noteWalked(r.range, slot: walkedSlot)
            let marked = s.deferredHead == nil ? nil : s.markDeferred(overlapping: r.range, sequence: s.sequence)
            return (s.tree.root, s.sequence, marked)
        }
        if marked == nil && root == nil { return }
        srcu.withReadLock {
            inCallbacks {
                callMarked(marked, r, sequence: seq)
                guard let root else { return }
                _ = IntervalTree.forEachOverlap(root, start: r.range.start, last: r.range.last) { sub in
                    _ = sub.invalidate(r, currentSequence: seq)
                    return true
                }
            }
        }
    }

    /// Calls the deferred inserts `markDeferred` listed (inside the caller's read section and
    /// callback count), unlinks them and drops its retains. What they return is not asked: they
    /// are told of a change they would otherwise miss, whatever `blockable` says.
    private func callMarked(_ list: Unmanaged<IntervalSubscription>?, _ r: InvalidationRange, sequence: UInt64) {
        var node = list
        while let current = node {
            let sub = current.takeUnretainedValue()
            node = sub.left
            sub.left = nil
            _ = sub.invalidate(r, currentSequence: sequence)
            current.release()
        }
    }

    /// The interval half of an end (`mn_itree_inv_end`): the last active invalidation makes the
    /// sequence even, applies deferred inserts and removes, and wakes `readBegin` and `remove`
    /// waiters. The tree's references to removed subscriptions are dropped after the lock.
    func itreeEnd(closingWindow: Bool, walkedSlot: Int) {
        let (wake, removed) = intervals.withLock { s -> (Bool, IntervalSubscription?) in
            s.activeInvalidations -= 1
            s.freeWalkedSlot(walkedSlot)
            var windowClosed = false
            if closingWindow {
                s.openWindows -= 1
                if s.openWindows == 0 {
                    cmmu_window_sequence_bump(windowSequence)
                    windowClosed = true
                }
            }
            if s.activeInvalidations > 0 || s.sequence & 1 == 0 { return (windowClosed, nil) }
            s.sequence += 1
            unowned(unsafe) var removed: IntervalSubscription? = nil
            var node = s.deferredHead
            while let sub = node {
                node = sub.nextDeferred
                sub.nextDeferred = nil
                switch sub.membership {
                case .pendingInsert:
                    s.tree.insert(sub)
                    sub.membership = .inTree
                case .pendingRemove:
                    s.tree.remove(sub)
                    sub.membership = .removed
                    sub.nextDeferred = removed
                    removed = sub
                case .notInserted, .inTree, .removed:
                    break
                }
            }
            s.deferredHead = nil
            s.deferredTail = nil
            intervalSequence.store(s.sequence, ordering: .releasing)
            return (true, removed)
        }
        if wake { intervalEvents.wakeAll() }
        releaseRemoved(removed)
    }

    /// Drops the tree's reference to each subscription of a list of removed ones (outside the
    /// lock: a last release frees the object).
    private func releaseRemoved(_ list: IntervalSubscription?) {
        var node = list
        while let sub = node {
            node = sub.nextDeferred
            sub.nextDeferred = nil
            Unmanaged.passUnretained(sub).release()
        }
    }

    /// Notifier starts inside one read section; nil if a non-blockable start was refused
    /// (the ones already started get their end, as the kernel does).
    func notifiersStart(_ r: InvalidationRange) -> [NotifierEntry]? {
        if listedNotifiers.load(ordering: .acquiring) == 0 { return [] }
        return srcu.withReadLock {
            cmmu_callback_depth_enter()
            defer { cmmu_callback_depth_leave() }
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
            inCallbacks {
                for entry in entries where entry.isLive { entry.notifier.invalidateRangeEnd(r, in: self) }
            }
        }
    }

    // MARK: Interval subscriptions

    /// Subscribes `sub` (`mmu_interval_notifier_insert`). During an invalidation the insert is
    /// deferred to its end. Allocates nothing under the lock.
    ///
    /// Whether `readBegin` then waits for that end: the kernel makes every insert during an
    /// invalidation wait, since it does not know the ranges in flight. This space does
    /// (`walked`): a subscription no invalidation in flight has looked for is unrelated to them
    /// all, and starts as `insertIntervalWithoutWaiting`'s do, so that a miss in one thread does
    /// not wait for another thread's munmap of other memory (two threads mapping, registering
    /// and unmapping spent 5% of their time spinning in `readBegin`). An invalidation that
    /// starts meanwhile and overlaps it calls it at once (`markDeferred`); after that call its
    /// sequence is the space's odd one, so the owner's next `readBegin` waits for the end as
    /// before, when the insert is in the tree. Only a subscription whose range an invalidation
    /// in flight already looked at waits from the start, and so does one made inside a callback
    /// (its `readBegin` throws `.wouldDeadlock` there, as before: a miss inside an invalidation
    /// is refused, not run).
    public func insertInterval(_ sub: IntervalSubscription) throws(NotifierError) {
        guard sub.space === self else { throw .foreignSubscription }
        let reference = Unmanaged.passRetained(sub)  // the tree's, dropped after removal
        let insideCallback = Self.isInsideCallback
        do {
            try intervals.withLock { s throws(NotifierError) in
                if s.released { throw .spaceReleased }
                guard sub.membership == .notInserted else { throw .alreadyInserted }
                if s.activeInvalidations > 0 && !insideCallback && !s.overlapsWalked(sub.range) {
                    _ = s.insertUnrelated(sub)
                } else if s.activeInvalidations > 0 {
                    // The sequence a new subscription starts with must differ from the space's,
                    // so its first readBegin waits for the invalidation in flight.
                    if s.sequence & 1 == 1 {
                        s.defer_(sub)
                        sub.membership = .pendingInsert
                    } else {
                        s.sequence |= 1
                        intervalSequence.store(s.sequence, ordering: .releasing)
                        s.tree.insert(sub)
                        sub.membership = .inTree
                    }
                    sub.sequence.store(s.sequence, ordering: .releasing)
                } else {
                    sub.sequence.store(s.sequence - 1, ordering: .releasing)
                    s.tree.insert(sub)
                    sub.membership = .inTree
                }
            }
        } catch {
            reference.release()
            throw error
        }
    }

    /// Subscribes `sub` for an owner that must never wait, and that already built what the
    /// subscription guards (libfabric registers a region, then subscribes it, holding a lock its
    /// `notify` takes, so `readBegin` would deadlock). Returns the sequence to pass to
    /// `readRetry`, or nil, with `sub` not inserted, when an invalidation in flight has already
    /// looked for the subscribers of a range overlapping `sub`'s (it would never reach `sub`:
    /// what the owner built may be of the old pages).
    ///
    /// Why only those are refused: an invalidation that has not looked yet finds `sub`. Where
    /// the tree is being walked (the space's sequence odd: a monitor's window, or an
    /// invalidation of subscribed memory) the insert is deferred to the end of the last
    /// invalidation in flight, as any insert is; an invalidation that starts meanwhile, or a
    /// window's range invalidated meanwhile, that overlaps `sub` calls it at once from its own
    /// thread (`markDeferred`), instead of waiting for the tree. Everything else is unrelated
    /// memory. The returned sequence is one no invalidation sets (an odd one from the past, or
    /// an even one), so the first call of `sub` makes `readRetry` true.
    public func insertIntervalWithoutWaiting(_ sub: IntervalSubscription) throws(NotifierError) -> UInt64? {
        guard sub.space === self else { throw .foreignSubscription }
        return try intervals.withLock { s throws(NotifierError) -> UInt64? in
            if s.released { throw .spaceReleased }
            guard sub.membership == .notInserted else { throw .alreadyInserted }
            if s.overlapsWalked(sub.range) { return nil }
            _ = Unmanaged.passRetained(sub)  // the tree's, dropped after removal
            return s.insertUnrelated(sub)
        }
    }

    /// Subscribes `ops` to invalidations of `range`: a plain subscription that calls `ops`.
    public func insertInterval(_ range: AddressRange, ops: any IntervalNotifierOps)
        throws(NotifierError) -> IntervalSubscription
    {
        let sub = try OpsIntervalSubscription(space: self, range: range, ops: ops)
        try insertInterval(sub)
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
        if let waitFor = try detachInterval(sub, mayWait: !srcu.isInsideReadSection) {
            intervalEvents.wait { intervalSequence.load(ordering: .acquiring) != waitFor }
        }
    }

    /// Unsubscribes without waiting: where an invalidation that sees the subscription is in
    /// flight, the removal is applied when it ends, and until then its callbacks may still
    /// reach `sub` (which the tree keeps alive). For a caller that must not wait (inside a
    /// callback, or giving up a registration whose subscription nobody else knows).
    public func removeIntervalWithoutWaiting(_ sub: IntervalSubscription) throws(NotifierError) {
        _ = try detachInterval(sub, mayWait: nil)
    }

    /// `removeIntervalWithoutWaiting` for several subscriptions of this space under one
    /// acquisition of the interval lock: a cache evicting a batch of entries paid a lock round
    /// trip for each. A subscription not in the space (never inserted, already removed, of
    /// another space) is skipped. Returns how many were removed or had their removal deferred.
    /// Unmanaged: the caller keeps each alive, so the batch costs no reference counting (an
    /// array of strong references cost the evicting miss a retain and a release per entry, and
    /// an upcast copy of it).
    @discardableResult
    public func removeIntervalsWithoutWaiting(_ subs: [Unmanaged<IntervalSubscription>]) -> Int {
        intervals.withLock { s in
            var detached = 0
            for link in subs {
                let dropReference = link._withUnsafeGuaranteedRef { sub -> Bool? in
                    guard sub.space === self else { return nil }
                    return (try? Self.detach(sub, from: &s, mayWait: nil))?.1
                }
                guard let dropReference else { continue }
                // The caller holds `sub`: never the last reference, so nothing is freed here.
                if dropReference { link.release() }
                detached += 1
            }
            return detached
        }
    }

    /// Takes `sub` out of the tree, or defers that to the end of the invalidation in flight;
    /// returns the sequence to wait for in the latter case when `mayWait` is true. `mayWait`
    /// false throws `.wouldDeadlock` where waiting would be needed; nil never waits.
    private func detachInterval(_ sub: IntervalSubscription, mayWait: Bool?) throws(NotifierError) -> UInt64? {
        guard sub.space === self else { throw .foreignSubscription }
        let (waitFor, dropReference) = try intervals.withLock { s throws(NotifierError) in
            try Self.detach(sub, from: &s, mayWait: mayWait)
        }
        // The caller holds `sub`, so this is never the last reference.
        if dropReference { Unmanaged.passUnretained(sub).release() }
        return waitFor
    }

    /// `detachInterval` under the interval lock: the sequence to wait for, and whether the
    /// tree's reference is to be dropped.
    private static func detach(_ sub: IntervalSubscription, from s: inout IntervalState,
                               mayWait: Bool?) throws(NotifierError) -> (UInt64?, Bool) {
        switch sub.membership {
        case .notInserted:
            throw .notInserted
        case .removed, .pendingRemove:
            throw .alreadyRemoved
        case .pendingInsert:
            s.undefer(sub)
            sub.membership = .removed
            return (nil, true)
        case .inTree:
            if s.sequence & 1 == 1 {
                if mayWait == false { throw .wouldDeadlock("removeInterval() inside a callback") }
                s.defer_(sub)
                sub.membership = .pendingRemove
                return (mayWait == true ? s.sequence : nil, false)
            }
            s.tree.remove(sub)
            sub.membership = .removed
            return (nil, true)
        }
    }

    /// The space's invalidate sequence: even when idle, odd while an invalidation runs.
    public var invalidateSequence: UInt64 { intervals.withLock { $0.sequence } }

    /// Interval subscriptions in the index (deferred inserts not yet applied are not counted).
    public var intervalCount: Int { intervals.withLock { $0.tree.count } }

    /// Number of subscriptions overlapping `range`, without building a list (benchmarks).
    public func countIntervals(overlapping range: AddressRange) -> Int {
        if range.isEmpty { return 0 }
        return intervals.withLock { s in
            var n = 0
            IntervalTree.forEachOverlap(s.tree.root, start: range.start, last: range.last) { _ in
                n += 1
                return true
            }
            return n
        }
    }
}

/// A monitor's open invalidation (see `AddressSpace.beginInvalidation()`). Not copyable: it is
/// ended exactly once, by `end()` or, if dropped, by its deinit.
public struct InvalidationWindow: ~Copyable, Sendable {
    let space: AddressSpace
    /// Its slot of the ranges it has invalidated so far (`IntervalState.walked`).
    let walkedSlot: Int

    /// Invalidates `range`: interval subscribers overlapping it and every notifier (start
    /// then end: the change already happened). Blockable. Callbacks may allocate and block,
    /// so a monitor calls this only after it has read the kernel's events.
    public func invalidate(_ range: AddressRange, event: InvalidationEvent) {
        if range.isEmpty { return }
        let r = InvalidationRange(range: range, event: event)
        space.itreeInvalidateInWindow(r, walkedSlot: walkedSlot)
        let entries = space.notifiersStart(r) ?? []
        space.notifiersEnd(r, entries)
    }

    /// Closes the window: the sequence turns even once no other invalidation runs.
    public consuming func end() {}

    deinit { space.itreeEnd(closingWindow: true, walkedSlot: walkedSlot) }
}

/// A started range invalidation (see `AddressSpace.invalidateRangeStart`). Ended exactly once,
/// by `end()` or by its deinit; the end reaches exactly the notifiers the start reached.
public struct RangeInvalidation: ~Copyable, Sendable {
    let space: AddressSpace
    public let range: InvalidationRange
    let entries: [NotifierEntry]
    let walkedSlot: Int

    public consuming func end() {}

    deinit {
        space.notifiersEnd(range, entries)
        space.itreeEnd(closingWindow: false, walkedSlot: walkedSlot)
    }
}
