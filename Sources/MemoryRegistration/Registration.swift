import Synchronization
import MemoryMonitor
import Verbs

/// A counted registration of one buffer: its keys stay valid until `release()` (or the end of
/// the handle), even if the memory under it is unmapped meanwhile (the old pages then stay
/// pinned until release, and `isRevoked` says so). Hold one across asynchronous work: post a
/// work request with `lkey`/`rkey`, release when it completed.
public final class Registration: Sendable {
    /// The buffer asked for (not the page-aligned region behind it).
    public let address: UInt
    public let length: Int
    public let lkey: UInt32
    public let rkey: UInt32
    /// Why the buffer is not cached (nil when it is): memory the monitor cannot watch, a
    /// buffer larger than the pinned-bytes limit, or a cache in explicit-only fallback.
    public let uncachedReason: String?
    private let backing: Backing
    private let released = Atomic<Bool>(false)

    enum Backing: Sendable {
        case cached(CacheEntry, RegionReclaimer)
        case uncached(any RegisteredMemory, RegionReclaimer)
    }

    init(address: UInt, length: Int, backing: Backing, uncachedReason: String? = nil) {
        self.address = address
        self.length = length
        self.backing = backing
        self.uncachedReason = uncachedReason
        switch backing {
        case .cached(let entry, _):
            lkey = entry.memory.lkey
            rkey = entry.memory.rkey
        case .uncached(let memory, _):
            lkey = memory.lkey
            rkey = memory.rkey
        }
    }

    deinit {
        if !released.load(ordering: .acquiring) { try? release() }
    }

    /// Whether a cached region serves it (false: registered for this handle alone).
    public var isCached: Bool {
        if case .cached = backing { return true }
        return false
    }

    /// True once the memory under the registration changed (unmapped, remapped, released):
    /// RDMA through it still reaches the *old* pages. Register again for the new memory.
    public var isRevoked: Bool {
        switch backing {
        case .cached(let entry, let cache):
            cache.settleInvalidations()  // an unmap that returned is reflected here
            return entry.revoked.load(ordering: .acquiring)
        case .uncached: return false
        }
    }

    public var isReleased: Bool { released.load(ordering: .acquiring) }

    /// The device registration behind the handle (shared with other handles when cached).
    var registeredMemory: any RegisteredMemory {
        switch backing {
        case .cached(let entry, _): entry.memory
        case .uncached(let memory, _): memory
        }
    }

    /// Gives the registration back. A second call throws `alreadyReleased`.
    public func release() throws(RegistrationError) {
        guard !released.exchange(true, ordering: .acquiringAndReleasing) else {
            throw .alreadyReleased(lkey: lkey)
        }
        switch backing {
        case let .cached(entry, cache): cache.put(entry)
        case let .uncached(memory, cache): cache.releaseUncached(memory, length: length)
        }
    }
}

/// A registration borrowed inside `RegistrationCache.withRegistration`: valid only inside the
/// closure, which runs in an SRCU read section (a hit took no reference and wrote no shared
/// memory).
public struct ScopedRegistration: Sendable {
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
