import NotifierEngine
import Synchronization
import Verbs

/// A counted registration of one buffer: its keys stay valid until `release()` (or the end of
/// the handle's scope, which releases a forgotten one), even if the memory under it is unmapped
/// meanwhile (the old pages then stay pinned until release, and `isRevoked` says so). Hold one
/// across asynchronous work: post a work request with `lkey`/`rkey`, release when it completed.
///
/// Not copyable, so it is released exactly once by construction, and it allocates nothing: on a
/// hit it is a reference taken on the cached region's count (a lookup and two atomics on the
/// region's cache line for `register` + `release`, what UCX's get + put costs).
public struct Registration: ~Copyable {
    /// The buffer asked for (not the page-aligned region behind it).
    public let address: UInt
    public let length: Int
    public let lkey: UInt32
    public let rkey: UInt32
    let backing: Backing

    enum Backing {
        /// A reference counted on a cached entry (`CacheEntry.holders`); the entry is alive while
        /// it is counted (its teardown waits for the count).
        case cached(Unmanaged<CacheEntry>)
        /// A registration made for this handle alone, and why it is not cached.
        case uncached(RegisteredRegion, CacheCore, reason: String)
    }

    init(address: UInt, length: Int, entry: Unmanaged<CacheEntry>) {
        self.address = address
        self.length = length
        (lkey, rkey) = entry._withUnsafeGuaranteedRef { ($0.region.lkey, $0.region.rkey) }
        backing = .cached(entry)
    }

    init(address: UInt, length: Int, uncached region: RegisteredRegion, core: CacheCore, reason: String) {
        self.address = address
        self.length = length
        lkey = region.lkey
        rkey = region.rkey
        backing = .uncached(region, core, reason: reason)
    }

    /// Gives the registration back: the cached region is dropped once its last holder is gone
    /// and it was revoked or evicted; an uncached one is deregistered now. A device that refuses
    /// the deregistration is retried later and reported in `CacheStatistics`.
    public consuming func release() {
        // Consuming `self` ends it here: its deinit gives the registration back.
    }

    deinit {
        switch backing {
        case let .cached(entry):
            entry._withUnsafeGuaranteedRef { $0.core.put($0) }
        case let .uncached(region, core, _):
            core.deregister(region, bytes: length, uncached: true)
        }
    }

    /// Whether a cached region serves it (false: registered for this handle alone).
    public var isCached: Bool {
        if case .cached = backing { return true }
        return false
    }

    /// Why the buffer is not cached (nil when it is): memory the monitor cannot watch (shared
    /// memory, a file, another userfaultfd's), a buffer larger than the pinned-bytes limit, or a
    /// cache without userfaultfd (explicit-only fallback, or a monitor that failed).
    public var uncachedReason: String? {
        if case let .uncached(_, _, reason) = backing { return reason }
        return nil
    }

    /// True once the memory under the registration changed (unmapped, remapped, made read-only,
    /// released): RDMA through it still reaches the *old* pages, or is refused. Register again
    /// for the new memory. Inside an invalidation callback it does not wait for a monitor's
    /// open window (that may be the callback's own): it answers what is revoked so far.
    public var isRevoked: Bool {
        guard case let .cached(entry) = backing else { return false }
        return entry._withUnsafeGuaranteedRef { entry in
            try? entry.core.settleInvalidations(call: "isRevoked")  // an unmap that returned is reflected here
            return entry.revoked.load(ordering: .acquiring)
        }
    }
}

/// A registration borrowed inside `RegistrationCache.withRegistration`: valid only inside the
/// closure, which runs in an SRCU read section (a hit took no reference and wrote no shared
/// memory). Not copyable, and lent to the closure as `borrowing`, so it cannot be stored or
/// returned: its keys are valid only until the closure returns, and work posted with them must
/// complete inside the closure (a work request that outlives it may reach memory the cache has
/// already deregistered). For work that completes later, hold a counted `Registration`.
public struct ScopedRegistration: ~Copyable {
    public let address: UInt
    public let length: Int
    public let lkey: UInt32
    public let rkey: UInt32

    @usableFromInline
    init(address: UInt, length: Int, lkey: UInt32, rkey: UInt32) {
        self.address = address
        self.length = length
        self.lkey = lkey
        self.rkey = rkey
    }
}
