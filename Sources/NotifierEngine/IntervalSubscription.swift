import Synchronization

/// What an interval subscriber does when its range is invalidated (`mmu_interval_notifier_ops`),
/// for subscribers that are not themselves a subclass of `IntervalSubscription`.
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

/// A range of one address space plus a sequence number (`struct mmu_interval_notifier`), with
/// the links that place it in the space's interval index.
///
/// Subclass it to keep a translation and its subscription in one object, as the kernel embeds
/// `struct mmu_interval_notifier` (and its `interval_tree_node`) in the driver's own struct: a
/// registration cache entry *is* its subscription. Inserting then allocates nothing, and the
/// space's lock is never held across `malloc` or `free` (a thread in `free()` may be trimming
/// watched heap pages and so waiting for a monitor that waits for that lock: DESIGN.md).
/// Override `invalidate(_:currentSequence:)`; `space.insertInterval(_:ops:)` makes a plain
/// subscription that calls an `IntervalNotifierOps` instead.
///
/// The collision-retry protocol of a registration cache miss:
/// ```
/// let seq = sub.readBegin()          // waits while an invalidation covering sub is in flight
/// let mr = try registerMemory(...)   // ibv_reg_mr, outside any lock invalidation takes
/// lock(cacheLock)
/// if sub.readRetry(seq) { unlock; deregister(mr); retry }   // an invalidation raced: discard
/// publish(mr); unlock(cacheLock)
/// ```
///
/// `@unchecked Sendable`: `range` and `space` never change and `sequence` is atomic. The tree
/// fields (`left`, `right`, `maxLast`, `priority`, `nextDeferred`, `membership`,
/// `insertedWithoutWaiting`, `calledWhileDeferred`) are written only under the space's
/// interval lock (but for `left` of a deferred insert, which `AddressSpace.markDeferred`'s
/// caller uses as a list link, see there), and read either under it or, without it, by an
/// invalidation while the space's sequence is odd: then every insert and remove is deferred
/// (`AddressSpace.itreeEnd`), so nothing writes them. Subclasses that add state must keep it
/// `Sendable` themselves (atomics, or a lock) and say so.
open class IntervalSubscription: @unchecked Sendable {
    enum Membership: UInt8 {
        case notInserted, pendingInsert, inTree, pendingRemove, removed
    }

    // Declared in this order so the small fields fill the tail of `range` (17 bytes): a cache
    // entry, which is a subscription, stays one small allocation.
    public let range: AddressRange
    @exclusivity(unchecked) var membership: Membership = .notInserted
    /// Inserted while invalidations that never looked at its range were in flight
    /// (`IntervalState.insertUnrelated`): an invalidation that finds it still deferred calls it
    /// at once (`markDeferred`), since its owner does not wait for the deferred insert.
    @exclusivity(unchecked) var insertedWithoutWaiting = false
    /// Called already while its insert was deferred (once is enough: the owner knows).
    @exclusivity(unchecked) var calledWhileDeferred = false
    @exclusivity(unchecked) var priority: UInt32 = 0
    /// The space holds the subscription while inserted, and the subscription holds the space
    /// (the kernel's mmgrab), so `remove` always has a space to remove from.
    public let space: AddressSpace
    let sequence = Atomic<UInt64>(0)

    // Interval tree node, guarded as the type's comment says. Unmanaged: the tree keeps each
    // node alive with one retain taken at insert and dropped after removal, and walks it
    // without reference counting.
    @exclusivity(unchecked) var left: Unmanaged<IntervalSubscription>? = nil
    @exclusivity(unchecked) var right: Unmanaged<IntervalSubscription>? = nil
    @exclusivity(unchecked) var maxLast: UInt = 0
    /// Next in the space's deferred list (or in the list of removed nodes to release).
    @exclusivity(unchecked) unowned(unsafe) var nextDeferred: IntervalSubscription? = nil

    /// A subscription to `range` of `space`, not yet inserted (`insert()`).
    public init(space: AddressSpace, range: AddressRange) throws(NotifierError) {
        if range.isEmpty { throw .emptyRange }
        self.space = space
        self.range = range
    }

    /// The invalidation callback (`mmu_interval_notifier_ops.invalidate`). Stop using
    /// translations of `range` that overlap `invalidation.range`; before dropping them, and under
    /// the same lock held around `readRetry`, call `setSequence(currentSequence)`. Return false
    /// only if `invalidation.blockable` is false and the work would block. Runs inside a read
    /// section of the space's SRCU domain; may block. The default only sets the sequence.
    open func invalidate(_ invalidation: InvalidationRange, currentSequence: UInt64) -> Bool {
        setSequence(currentSequence)
        return true
    }

    /// Subscribes to invalidations of `range` (`mmu_interval_notifier_insert`). During an
    /// invalidation the insert is deferred to its end, and `readBegin` waits for that end.
    public final func insert() throws(NotifierError) { try space.insertInterval(self) }

    /// Starts a read: returns a sequence for `readRetry`. Waits while an invalidation that
    /// covers this subscription (or a monitor's open invalidation of still unknown range) is
    /// in flight. Never call it holding a lock that an invalidate callback takes.
    ///
    /// Throws `.wouldDeadlock` where it would wait from inside an invalidation callback (on
    /// any thread): the invalidation in flight may be the callback's own, which ends only after
    /// the callback returns (a cache miss from a callback, a subscription inserted during the
    /// invalidation that runs it). It returns at once there when nothing covers it.
    public final func readBegin() throws(NotifierError) -> UInt64 {
        // Before the lock: in a fork() child a parent thread may have held it at the fork.
        if AddressSpace.isForkedChild { throw .forkedChild }
        // The usual answer, nothing in flight here, without the lock (a cache miss took it twice,
        // here and to insert). The kernel reads the two sequences under its lock for the wait
        // alone: a read that races an invalidation starting returns the old sequence, as a read
        // under the lock just before it would, and the owner's `readRetry` (under its own lock)
        // catches the change, as it catches any invalidation after `readBegin`
        // (mmu_interval_read_begin: "any races here are closed by an eventual
        // mmu_interval_read_retry()"). Ours loaded first with acquire: if an invalidation's
        // callback set it, the space's sequence loaded next is that invalidation's or later.
        let mine = sequence.load(ordering: .acquiring)
        if mine != space.intervalSequence.load(ordering: .acquiring) && space.openWindowSequence & 1 == 0 {
            return mine
        }
        while true {
            let (seq, busy) = space.intervals.withLock { s -> (UInt64, UInt64?) in
                let mine = sequence.load(ordering: .relaxed)
                if mine == s.sequence || s.openWindows > 0 { return (mine, s.sequence) }
                return (mine, nil)
            }
            guard let busy else { return seq }
            if AddressSpace.isInsideCallback {
                throw .wouldDeadlock("readBegin() inside an invalidation callback, while an invalidation is in flight")
            }
            // Most invalidations in flight are another thread's hooked munmap, a few
            // microseconds: wait for it spinning first, as an adaptive mutex does, and sleep only
            // if it lasts (a sleep and a wake-up cost more than the munmap; two threads mapping,
            // registering and unmapping spent most of their time in them).
            var spins = 0
            while spins < Self.spinsBeforeSleeping && space.intervalSequence.load(ordering: .acquiring) == busy {
                spins += 1
            }
            space.intervalEvents.wait {
                space.intervalSequence.load(ordering: .acquiring) != busy
            }
        }
    }

    /// Loads of the space's sequence `readBegin` makes before it sleeps (a few microseconds).
    static let spinsBeforeSleeping = 4000

    /// True when an invalidation touched this subscription since `readBegin` returned `seq`:
    /// the caller must discard what it built. Call it under the lock the invalidate callback
    /// takes around `setSequence`; then a false answer holds until that lock is released.
    public final func readRetry(_ seq: UInt64) -> Bool {
        sequence.load(ordering: .acquiring) != seq
    }

    /// The same test without the caller's lock (`mmu_interval_check_retry`): a cheap early
    /// exit; a false answer may be stale at once.
    public final func checkRetry(_ seq: UInt64) -> Bool {
        sequence.load(ordering: .acquiring) != seq
    }

    /// Called by the invalidate callback, under the subscriber's lock (`mmu_interval_set_seq`).
    public final func setSequence(_ currentSequence: UInt64) {
        sequence.store(currentSequence, ordering: .releasing)
    }

    /// Same as `space.removeInterval(self)`.
    public final func remove() throws(NotifierError) { try space.removeInterval(self) }

    /// Unsubscribes without waiting (`AddressSpace.removeIntervalWithoutWaiting`): callbacks of
    /// an invalidation in flight may still arrive until it ends.
    public final func removeWithoutWaiting() throws(NotifierError) { try space.removeIntervalWithoutWaiting(self) }

    public final var isRemoved: Bool {
        space.intervals.withLock { _ in membership == .removed || membership == .pendingRemove }
    }
}

/// The subscription `AddressSpace.insertInterval(_:ops:)` makes: calls its ops.
final class OpsIntervalSubscription: IntervalSubscription, @unchecked Sendable {
    // @unchecked: adds one immutable Sendable field to a base class whose comment proves the rest.
    let ops: any IntervalNotifierOps

    init(space: AddressSpace, range: AddressRange, ops: any IntervalNotifierOps) throws(NotifierError) {
        self.ops = ops
        try super.init(space: space, range: range)
    }

    override func invalidate(_ invalidation: InvalidationRange, currentSequence: UInt64) -> Bool {
        ops.invalidate(self, range: invalidation, currentSequence: currentSequence)
    }
}
