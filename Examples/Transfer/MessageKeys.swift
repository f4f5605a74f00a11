import MemoryRegistration
import Verbs

/// How the client gets keys for a message buffer: from the registration cache (a hit when the
/// buffer's memory is unchanged since it was last registered), or one `ibv_reg_mr` per message,
/// as a program without a cache does.
enum RegistrationChoice: String, CaseIterable, Sendable {
    case cache, plain
}

/// The keys of one message buffer, held until its RDMA WRITE completes (the device reads the
/// buffer until then).
enum MessageKeys: ~Copyable {
    case cached(Registration)
    case plain(MemoryRegion)

    var lkey: UInt32 {
        switch self {
        case .cached(let registration): registration.lkey
        case .plain(let region): region.lkey
        }
    }

    /// Gives the keys back: a cache release, or `ibv_dereg_mr`.
    consuming func release() throws {
        switch consume self {
        case .cached(let registration): registration.release()
        case .plain(let region): try region.deregister()
        }
    }
}

/// Makes `MessageKeys` the chosen way and counts what that cost.
final class MessageRegistrar {
    private let domain: ProtectionDomain
    /// The cache, when `choice` is `.cache`. It watches the buffers through the process's one
    /// memory monitor, so a freed and reused or remapped buffer gets a new region.
    private let cache: RegistrationCache?
    private(set) var plainRegistrations = 0
    /// Time spent getting and giving back keys, the part of a message the cache saves.
    private(set) var registrationTime = Duration.zero
    /// The `keys(for:)` calls that registered with the device (every plain one; a cache's
    /// misses), and their time: what a miss costs against a plain `ibv_reg_mr`.
    private(set) var deviceRegistrations = 0
    private(set) var deviceRegistrationTime = Duration.zero

    init(_ choice: RegistrationChoice, domain: ProtectionDomain) {
        self.domain = domain
        cache = choice == .cache ? RegistrationCache(protectionDomain: domain) : nil
    }

    func keys(for buffer: UnsafeMutableRawBufferPointer) throws -> MessageKeys {
        let clock = ContinuousClock()
        guard let cache else {
            let start = clock.now
            defer {
                let took = clock.now - start
                registrationTime += took
                deviceRegistrationTime += took
                deviceRegistrations += 1
            }
            plainRegistrations += 1
            return .plain(try domain.registerMemory(buffer, access: [.localWrite]))
        }
        let registeredBefore = Self.registered(cache.statistics)  // outside the timing
        let start = clock.now
        let keys = MessageKeys.cached(try cache.register(buffer, access: [.localWrite]))
        let took = clock.now - start
        registrationTime += took
        if Self.registered(cache.statistics) != registeredBefore {
            deviceRegistrationTime += took
            deviceRegistrations += 1
        }
        return keys
    }

    private static func registered(_ statistics: CacheStatistics) -> Int { statistics.misses + statistics.uncached }

    func release(_ keys: consuming MessageKeys) throws {
        let clock = ContinuousClock()
        let start = clock.now
        defer { registrationTime += clock.now - start }
        try keys.release()
    }

    /// `ibv_reg_mr` calls made, cache hits and invalidations so far.
    var counts: (registrations: Int, hits: Int, invalidations: Int) {
        guard let statistics = cache?.statistics else { return (plainRegistrations, 0, 0) }
        return (statistics.misses + statistics.uncached, statistics.hits, statistics.invalidations)
    }

    /// Deregisters what the cache still holds.
    func shutdown() { cache?.shutdown() }
}

/// The keys of the messages whose writes are in flight, by window slot.
final class InFlightKeys {
    private let slots: UnsafeMutablePointer<MessageKeys?>
    private let count: Int

    init(count: Int) {
        self.count = count
        slots = .allocate(capacity: count)
        for index in 0..<count { (slots + index).initialize(to: nil) }
    }

    deinit {
        slots.deinitialize(count: count)
        slots.deallocate()
    }

    func isFree(_ slot: Int) -> Bool {
        switch slots[slot] {
        case .none: true
        case .some: false
        }
    }

    func store(_ keys: consuming MessageKeys, at slot: Int) {
        (slots + slot).pointee = .some(keys)
    }

    func take(_ slot: Int) -> MessageKeys? {
        let keys = (slots + slot).move()
        (slots + slot).initialize(to: nil)
        return keys
    }
}
