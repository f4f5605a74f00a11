import CShardedCounters
import NotifierEngine
import Synchronization

/// The cache's counters. Hits are counted per thread (`CShims` sharded counters: a thread bumps
/// its own cache line, a read sums them), so no hit path writes a line another thread writes;
/// the rest change on misses, invalidations and teardowns, which write shared state anyway.
///
/// `@unchecked Sendable`: `hitShards` is allocated once in `init` and freed in `deinit`; it is
/// only read and written through the sharded-counter functions, whose words are C atomics.
@usableFromInline
final class CacheCounters: @unchecked Sendable {
    private let hitShards: UnsafeMutableRawPointer
    private static let countedHit: Int32 = 0
    private static let scopedHit: Int32 = 1

    let misses = Atomic<Int>(0)
    let uncached = Atomic<Int>(0)
    let raced = Atomic<Int>(0)
    let invalidations = Atomic<Int>(0)
    let evictions = Atomic<Int>(0)
    let revokedWhileHeld = Atomic<Int>(0)
    /// Regions the cache registered (cached, or out of the cache and not yet deregistered).
    private let cacheRegionCount = Atomic<Int>(0)
    private let cacheByteCount = Atomic<Int>(0)
    /// Room taken by misses in flight (reserved, registered, not yet published): atomics, so
    /// that a miss far from the limits reserves without the state lock (`CacheCore.makeRoom`).
    private let reservedRegionCount = Atomic<Int>(0)
    private let reservedByteCount = Atomic<Int>(0)
    /// Regions registered for one handle alone.
    private let uncachedRegionCount = Atomic<Int>(0)
    private let uncachedByteCount = Atomic<Int>(0)
    /// Regions in the index now.
    let cachedRegions = Atomic<Int>(0)
    /// Out of the index, waiting for a grace period (or a teardown in flight).
    let retiringRegions = Atomic<Int>(0)
    let retiringBytes = Atomic<Int>(0)
    /// Torn-down entries waiting to be freed by a missing thread.
    let freeable = Atomic<Int>(0)
    /// Entries whose grace period is over, waiting for a miss to tear them down (a hint read
    /// without the teardown lock).
    let readyToReap = Atomic<Int>(0)
    /// Evicted entries waiting for a miss to tear them down after its own grace period (a hint).
    let evictedWaiting = Atomic<Int>(0)
    /// Deregistrations the device refused and that are waiting for a retry.
    let failedDeregistrations = Atomic<Int>(0)
    let lastFailure = Locked<String?>(nil)

    init() {
        guard let shards = csharded_create() else { fatalError("CacheCounters: out of memory for 8 KiB of counters") }
        hitShards = shards
    }

    deinit { csharded_destroy(hitShards) }

    @usableFromInline @inline(__always)
    func countHit() { csharded_add(hitShards, Self.countedHit, 1) }

    @usableFromInline @inline(__always)
    func countScopedHit() { csharded_add(hitShards, Self.scopedHit, 1) }

    var hits: Int { csharded_sum(hitShards, Self.countedHit) }
    var scopedHits: Int { csharded_sum(hitShards, Self.scopedHit) }

    var cacheRegions: Int { cacheRegionCount.load(ordering: .relaxed) }
    var cacheBytes: Int { cacheByteCount.load(ordering: .relaxed) }

    func registered(regions: Int, bytes: Int) {
        cacheRegionCount.add(regions, ordering: .relaxed)
        cacheByteCount.add(bytes, ordering: .relaxed)
    }

    var reservedRegions: Int { reservedRegionCount.load(ordering: .acquiring) }
    var reservedBytes: Int { reservedByteCount.load(ordering: .acquiring) }

    /// Reserves room for one region of `bytes` if what is registered and reserved, with it, stays
    /// within `maxRegions` and `maxBytes`; otherwise takes nothing. The add comes first, so two
    /// misses that reserve at once each count the other's room: the limits hold without a lock.
    /// Acquiring: a publish counts its region before it gives its reservation back (releasing),
    /// so a reservation that sees the room given back also sees the region counted.
    func reserve(bytes: Int, maxRegions: Int, maxBytes: Int) -> Bool {
        let regions = reservedRegionCount.add(1, ordering: .acquiringAndReleasing).newValue
        let reserved = reservedByteCount.add(bytes, ordering: .acquiringAndReleasing).newValue
        if cacheRegions + regions <= maxRegions && cacheBytes + reserved <= maxBytes { return true }
        unreserve(bytes: bytes)
        return false
    }

    /// Gives back the room `reserve` took (the miss published: after `registered` counted it).
    func unreserve(bytes: Int) {
        reservedRegionCount.subtract(1, ordering: .releasing)
        reservedByteCount.subtract(bytes, ordering: .releasing)
    }

    func uncachedRegistered(regions: Int, bytes: Int) {
        uncachedRegionCount.add(regions, ordering: .relaxed)
        uncachedByteCount.add(bytes, ordering: .relaxed)
    }

    var registeredRegions: Int { cacheRegions + uncachedRegionCount.load(ordering: .relaxed) }
    var pinnedBytes: Int { cacheBytes + uncachedByteCount.load(ordering: .relaxed) }
}

/// A snapshot of what the cache has done and holds.
public struct CacheStatistics: Sendable, Hashable {
    /// `register` calls served by a cached region.
    public var hits: Int
    /// `withRegistration` calls served by a cached region (counted per thread: no shared write).
    public var scopedHits: Int
    /// Registrations made and cached.
    public var misses: Int
    /// Registrations made for one handle only (memory that must not be cached, over the limit).
    public var uncached: Int
    /// Registrations thrown away because an invalidation raced them.
    public var racedInvalidations: Int
    public var invalidations: Int
    public var evictions: Int
    /// Invalidations of regions a `Registration` still held.
    public var revokedWhileHeld: Int
    /// Regions registered with the device now (cached, out of the cache but still held or
    /// waiting for their teardown, and uncached).
    public var registeredRegions: Int
    /// Bytes those regions pin.
    public var pinnedBytes: Int
    /// Cached regions a lookup can find now.
    public var cachedRegions: Int
    /// Regions out of the cache waiting for a grace period before their teardown.
    public var teardownsWaitingForGracePeriod: Int
    /// Deregistrations the device refused, retried with every later teardown; still pinned.
    public var failedDeregistrations: Int
    /// The last refusal, in words.
    public var lastDeregistrationFailure: String?
}

extension RegistrationCache {
    public var statistics: CacheStatistics {
        let counters = core.counters
        return CacheStatistics(
            hits: counters.hits,
            scopedHits: counters.scopedHits,
            misses: counters.misses.load(ordering: .relaxed),
            uncached: counters.uncached.load(ordering: .relaxed),
            racedInvalidations: counters.raced.load(ordering: .relaxed),
            invalidations: counters.invalidations.load(ordering: .relaxed),
            evictions: counters.evictions.load(ordering: .relaxed),
            revokedWhileHeld: counters.revokedWhileHeld.load(ordering: .relaxed),
            registeredRegions: counters.registeredRegions,
            pinnedBytes: counters.pinnedBytes,
            cachedRegions: counters.cachedRegions.load(ordering: .relaxed),
            teardownsWaitingForGracePeriod: counters.retiringRegions.load(ordering: .relaxed),
            failedDeregistrations: counters.failedDeregistrations.load(ordering: .relaxed),
            lastDeregistrationFailure: counters.lastFailure.withLock { $0 })
    }
}
