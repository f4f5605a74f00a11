import Verbs

/// Entries on their way out, guarded by `CacheCore.teardowns`.
struct TeardownLists: Sendable {
    /// Taken out of the index since the batch in flight was sealed: they wait for the next one.
    var pending: [RetiredEntry] = []
    /// The batch whose grace period is running (sealed when it was scheduled).
    var sealed: [RetiredEntry] = []
    var batchInFlight = false
    /// Batches whose grace period is over: torn down by the next misses (`reapRetired`), or by
    /// the reclaim thread one grace period later if no miss came.
    var ready: [RetiredEntry] = []
    /// Evicted by misses, torn down by the miss that finds enough of them after one grace
    /// period of its own (`tearDownEvicted`).
    var evicted: [EntryReference] = []
    /// Torn down, kept alive by one retain each, to be released by a missing thread (so the
    /// thread that allocates entries also frees them, instead of fighting it for the arena).
    var freeable: [EntryReference] = []
    /// Deregistrations the device refused: retried with every later batch and at shutdown.
    var failed: [FailedDeregistration] = []
}

/// An entry out of the index, waiting for a grace period. `evicted`: its count was frozen (no
/// holder), so it is torn down; otherwise (revoked) the index's reference is dropped, and the
/// last holder tears it down.
struct RetiredEntry: Sendable {
    let entry: EntryReference
    let evicted: Bool
}

/// An entry by address, without a retain (or with one the holder owns and gives back once).
///
/// `@unchecked Sendable`: it only carries a pointer to a `Sendable` object between threads,
/// under the teardown lock or inside one SRCU callback; the lists that hold it say who keeps
/// the object alive meanwhile (the interval tree, or a retain taken for the list).
struct EntryReference: @unchecked Sendable {
    let unmanaged: Unmanaged<CacheEntry>
    init(_ entry: CacheEntry, retained: Bool) {
        unmanaged = retained ? .passRetained(entry) : .passUnretained(entry)
    }
    var entry: CacheEntry { unmanaged.takeUnretainedValue() }
    func release() { unmanaged.release() }
}

/// A registration whose deregistration the device refused, and what it belongs to.
struct FailedDeregistration: Sendable {
    enum Owner: Sendable {
        /// A cached entry (kept alive by a retain until its teardown can finish).
        case entry(EntryReference)
        /// A miss that lost a race: counted as the cache's until it is gone.
        case raced
        /// A handle's own registration.
        case uncached
    }
    let region: RegisteredRegion
    let bytes: Int
    let owner: Owner
}
