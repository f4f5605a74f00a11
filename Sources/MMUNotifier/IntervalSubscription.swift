import Synchronization

/// What an interval subscriber does when its range is invalidated (`mmu_interval_notifier_ops`).
public protocol IntervalNotifierOps: AnyObject, Sendable {
    /// Stop using translations of `subscription.range` that overlap `range.range`. Before
    /// dropping them, and under the same lock the subscriber holds when it calls `readRetry`,
    /// call `subscription.setSequence(currentSequence)`: that is what makes a racing
    /// `readBegin`/`readRetry` pair retry. Return false only if `range.blockable` is false and
    /// the work would block.
    func invalidate(_ subscription: IntervalSubscription, range: InvalidationRange,
                    currentSequence: UInt64) -> Bool
}

/// Interval ops from a closure.
public final class ClosureIntervalOps: IntervalNotifierOps {
    public typealias Callback = @Sendable (IntervalSubscription, InvalidationRange, UInt64) -> Bool
    private let callback: Callback
    public init(_ callback: @escaping Callback) { self.callback = callback }
    public func invalidate(_ subscription: IntervalSubscription, range: InvalidationRange,
                           currentSequence: UInt64) -> Bool {
        callback(subscription, range, currentSequence)
    }
}

/// A range of one address space plus a sequence number (`struct mmu_interval_notifier`).
///
/// The collision-retry protocol of a registration cache miss:
/// ```
/// let seq = sub.readBegin()          // waits while an invalidation covering sub is in flight
/// let mr = try registerMemory(...)   // ibv_reg_mr, outside any lock invalidation takes
/// lock(cacheLock)
/// if sub.readRetry(seq) { unlock; deregister(mr); retry }   // an invalidation raced: discard
/// publish(mr); unlock(cacheLock)
/// ```
public final class IntervalSubscription: Sendable {
    enum Membership: UInt8 {
        case pendingInsert = 0, inTree, pendingRemove, removed
    }

    public let range: AddressRange
    /// The space holds the subscription while inserted, and the subscription holds the space
    /// (the kernel's mmgrab), so `remove` always has a space to remove from.
    public let space: AddressSpace
    let ops: any IntervalNotifierOps
    let sequence = Atomic<UInt64>(0)
    /// Guarded by the space's interval lock; atomic only to be `Sendable` without exceptions.
    let membershipRaw = Atomic<UInt8>(Membership.pendingInsert.rawValue)
    let treeHandle = Atomic<Int>(-1)

    init(space: AddressSpace, range: AddressRange, ops: any IntervalNotifierOps) {
        self.space = space
        self.range = range
        self.ops = ops
    }

    var membership: Membership {
        get { Membership(rawValue: membershipRaw.load(ordering: .relaxed)) ?? .removed }
        set { membershipRaw.store(newValue.rawValue, ordering: .relaxed) }
    }

    /// Starts a read: returns a sequence for `readRetry`. Waits while an invalidation that
    /// covers this subscription (or a monitor's open invalidation of still unknown range) is
    /// in flight. Never call it holding a lock that an invalidate callback takes.
    public func readBegin() -> UInt64 {
        while true {
            let (seq, busy) = space.intervals.withLock { s -> (UInt64, UInt64?) in
                let mine = sequence.load(ordering: .relaxed)
                if mine == s.sequence || s.openWindows > 0 { return (mine, s.sequence) }
                return (mine, nil)
            }
            guard let busy else { return seq }
            space.intervalEvents.wait {
                space.intervalSequence.load(ordering: .acquiring) != busy
            }
        }
    }

    /// True when an invalidation touched this subscription since `readBegin` returned `seq`:
    /// the caller must discard what it built. Call it under the lock the invalidate callback
    /// takes around `setSequence`; then a false answer holds until that lock is released.
    public func readRetry(_ seq: UInt64) -> Bool {
        sequence.load(ordering: .acquiring) != seq
    }

    /// The same test without the caller's lock (`mmu_interval_check_retry`): a cheap early
    /// exit; a false answer may be stale at once.
    public func checkRetry(_ seq: UInt64) -> Bool {
        sequence.load(ordering: .acquiring) != seq
    }

    /// Called by the invalidate callback, under the subscriber's lock (`mmu_interval_set_seq`).
    public func setSequence(_ currentSequence: UInt64) {
        sequence.store(currentSequence, ordering: .releasing)
    }

    /// Same as `space.removeInterval(self)`.
    public func remove() throws(NotifierError) { try space.removeInterval(self) }

    public var isRemoved: Bool {
        space.intervals.withLock { _ in membership == .removed || membership == .pendingRemove }
    }
}
