import MMUNotifier
import Synchronization
import Verbs

/// One cached registration: a device region over a page-aligned range, the interval
/// subscription that tells the cache when that range changes, and the count of its users.
///
/// `holders` counts the index's own reference (1 while the entry can be found) plus one per
/// counted `Registration`. Lookups take a reference with `getUnlessZero` inside an SRCU read
/// section and then check the entry is not revoked (seed 004: speculative references);
/// eviction freezes an idle count (1 → 0) so a racing lookup and the eviction cannot both win.
/// The region is deregistered when the count reaches 0 and every reader is done.
final class CacheEntry: Sendable {
    let start: UInt
    let end: UInt
    let access: AccessFlags
    let memory: any RegisteredMemory
    let subscription: IntervalSubscription
    /// Whether the monitor watches the range for this entry (undone at teardown).
    let watched: Bool
    let holders = SpeculativeRefCount(1)
    /// Set once, when an invalidation revoked the entry: holders see `isRevoked`.
    let revoked = Atomic<Bool>(false)
    /// The CLOCK bit: set by lookups (only when clear, so a hot entry is not written on every
    /// hit), cleared by the eviction hand.
    let referenced = Atomic<Bool>(true)
    /// Set by whichever path deregisters the region, so it happens once.
    let tornDown = Atomic<Bool>(false)

    init(start: UInt, end: UInt, access: AccessFlags, memory: any RegisteredMemory,
         subscription: IntervalSubscription, watched: Bool) {
        self.start = start
        self.end = end
        self.access = access
        self.memory = memory
        self.subscription = subscription
        self.watched = watched
    }

    var length: Int { Int(end - start) }

    /// This entry as the index refers to it (its `Unmanaged` bits). The cache keeps the entry
    /// alive while any record with these bits can still be read (until a grace period after
    /// it was removed from the index).
    var owner: UInt { UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque()) }

    var record: RegionRecord {
        RegionRecord(start: start, end: end, access: access.rawValue, lkey: memory.lkey, rkey: memory.rkey,
                     owner: owner)
    }

    @inline(__always)
    func markReferenced() {
        if !referenced.load(ordering: .relaxed) { referenced.store(true, ordering: .relaxed) }
    }
}
