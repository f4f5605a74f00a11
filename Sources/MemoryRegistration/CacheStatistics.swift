import Synchronization

/// The cache's counters. Written on misses, invalidations and teardowns, never on the scoped
/// hit path (which writes no shared memory); counted hits share the entry's cache line anyway.
final class CacheCounters: Sendable {
    let hits = Atomic<Int>(0)
    let misses = Atomic<Int>(0)
    let uncached = Atomic<Int>(0)
    let raced = Atomic<Int>(0)
    let invalidations = Atomic<Int>(0)
    let evictions = Atomic<Int>(0)
    let revokedWhileHeld = Atomic<Int>(0)
    let pinnedBytes = Atomic<Int>(0)
    let registeredRegions = Atomic<Int>(0)
    let pendingTeardowns = Atomic<Int>(0)
}

/// A snapshot of what the cache has done and holds.
public struct CacheStatistics: Sendable, Hashable {
    /// `register` calls served by a cached region (scoped `withRegistration` hits are not
    /// counted: counting them would write a shared cache line on the hit path).
    public var hits: Int
    /// Registrations made and cached.
    public var misses: Int
    /// Registrations made for one handle only (unwatchable memory, over the pinned limit).
    public var uncached: Int
    /// Registrations thrown away because an invalidation raced them.
    public var racedInvalidations: Int
    public var invalidations: Int
    public var evictions: Int
    /// Invalidations of regions a `Registration` still held.
    public var revokedWhileHeld: Int
    /// Regions registered with the device now (cached, revoked-but-held and uncached).
    public var registeredRegions: Int
    /// Bytes those regions pin.
    public var pinnedBytes: Int
    /// Cached regions a lookup can find now.
    public var cachedRegions: Int
    /// Teardowns queued behind a grace period.
    public var teardownsWaitingForGracePeriod: Int
}

extension RegistrationCache {
    public var statistics: CacheStatistics {
        CacheStatistics(
            hits: counters.hits.load(ordering: .relaxed),
            misses: counters.misses.load(ordering: .relaxed),
            uncached: counters.uncached.load(ordering: .relaxed),
            racedInvalidations: counters.raced.load(ordering: .relaxed),
            invalidations: counters.invalidations.load(ordering: .relaxed),
            evictions: counters.evictions.load(ordering: .relaxed),
            revokedWhileHeld: counters.revokedWhileHeld.load(ordering: .relaxed),
            registeredRegions: counters.registeredRegions.load(ordering: .relaxed),
            pinnedBytes: counters.pinnedBytes.load(ordering: .relaxed),
            cachedRegions: state.withLock { $0.entries.count },
            teardownsWaitingForGracePeriod: counters.pendingTeardowns.load(ordering: .relaxed))
    }
}
