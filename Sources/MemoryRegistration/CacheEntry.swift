import NotifierEngine
import Synchronization
import Verbs

/// One cached registration, in one allocation: it *is* the interval subscription that tells the
/// cache when its range changes (tree links inside, as the kernel embeds its interval notifier
/// in the driver's struct), and carries the device keys, the registrar's handle, the count of its
/// users and its CLOCK bit. The index refers to it by address; nothing maps it by identity.
///
/// Lifetime: inserted, published, revoked or evicted, retired, torn down, freed; the table in
/// `CacheCore+EntryLife.swift` says which thread and lock moves it each step, what keeps it
/// alive meanwhile and what each step guarantees. Lookups find it through the index inside an
/// SRCU read section, so it is torn down only a grace period after it leaves the index.
///
/// `holders` counts the index's reference (1 while the entry can be found) plus one per counted
/// `Registration`. It starts at 0 and is set to 2 (the index's and the caller's) when the miss
/// publishes it; lookups take a reference with `getUnlessZero` and then check `revoked` (seed
/// 004: speculative references); eviction freezes an idle count (1 → 0) so a racing lookup and
/// the eviction cannot both win.
///
/// `@unchecked Sendable`: `core` never changes. `region`, `access` and `watched` are written by
/// the missing thread before the entry is published (the index's release store) and never
/// after; readers load them after the index's acquire load. `published` is read and written
/// under the cache's state lock only. The rest is atomic. The base class's comment covers its
/// own fields.
final class CacheEntry: IntervalSubscription, @unchecked Sendable {
    // Declared in this order so that what a hit reads and writes (the count, the keys, the
    // access and the flags) shares one cache line after the subscription's own fields.
    let holders = SpeculativeRefCount(0)
    @exclusivity(unchecked) var region = RegisteredRegion(lkey: 0, rkey: 0, handle: 0)
    @exclusivity(unchecked) var access: AccessFlags = []
    /// Set once, when an invalidation revoked the entry: holders see `isRevoked`.
    let revoked = Atomic<Bool>(false)
    /// The CLOCK bit: set by lookups (only when clear, so a hot entry is not written on every
    /// hit), cleared by the eviction hand. Clear at first: a region never found again since its
    /// miss goes before one that was (and costs the hand one visit, not two: set at first, every
    /// entry of a cache that misses more than it hits got a second chance it never used).
    let referenced = Atomic<Bool>(false)
    /// Set by whichever path deregisters the region, so it happens once.
    let tornDown = Atomic<Bool>(false)
    /// Whether the monitor watches the range for this entry (undone at teardown).
    @exclusivity(unchecked) var watched = false
    /// In the index: published, and not yet revoked or evicted.
    @exclusivity(unchecked) var published = false
    let core: CacheCore

    init(core: CacheCore, range: AddressRange) throws(NotifierError) {
        self.core = core
        try super.init(space: core.space, range: range)
    }

    var start: UInt { range.start }
    /// One past the last byte (regions are page-aligned and never end at the top of memory).
    var end: UInt { range.last &+ 1 }
    var length: Int { Int(range.last - range.start) + 1 }

    /// Whether the entry serves `[start, end)` with at least `access`.
    @inline(__always)
    func covers(start: UInt, end: UInt, access wanted: UInt32) -> Bool {
        range.start <= start && end &- 1 <= range.last && access.rawValue & wanted == wanted
    }

    @inline(__always)
    func markReferenced() {
        if !referenced.load(ordering: .relaxed) { referenced.store(true, ordering: .relaxed) }
    }

    /// The invalidation callback: see `CacheCore.invalidate(_:_:sequence:)`.
    override func invalidate(_ invalidation: InvalidationRange, currentSequence: UInt64) -> Bool {
        core.invalidate(self, invalidation, sequence: currentSequence)
        return true
    }
}
