import NotifierEngine

/// The entries one sweep of the CLOCK hand evicted, still in the interval tree and not yet
/// counted as retiring: they leave the tree and are queued for teardown together
/// (`CacheCore.retireEvictions`), and until then the sweep counts them itself (`bytes`).
/// Unretained: each is kept alive by the reference `unpublish` took, so the batch costs no
/// reference counting and goes to `AddressSpace.removeIntervalsWithoutWaiting` as it is.
struct EvictionBatch: Sendable {
    private(set) var subscriptions: [Unmanaged<IntervalSubscription>] = []
    private(set) var bytes = 0

    var count: Int { subscriptions.count }
    var isEmpty: Bool { subscriptions.isEmpty }

    mutating func append(_ entry: CacheEntry) {
        subscriptions.append(.passUnretained(entry))
        bytes += entry.length
    }

    /// The entries, in eviction order (only cache entries are ever appended).
    func forEachEntry(_ body: (CacheEntry) -> Void) {
        for link in subscriptions { link._withUnsafeGuaranteedRef { body(unsafeDowncast($0, to: CacheEntry.self)) } }
    }

    /// Empties the batch, keeping its storage for the next sweep.
    mutating func removeAll() {
        subscriptions.removeAll(keepingCapacity: true)
        bytes = 0
    }
}
