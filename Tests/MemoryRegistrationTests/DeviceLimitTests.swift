import NotifierEngine
import MemoryMapping
import Synchronization
import Testing
import Verbs
@testable import MemoryRegistration

/// A device that holds at most `capacity` registrations and then answers ENOMEM, as
/// `ibv_reg_mr` does when the device or the pinning limit is exhausted.
final class CapacityRegistrar: MemoryRegistrar {
    let inner = NullRegistrar()
    let capacity: Int
    let refusals = Atomic<Int>(0)
    init(capacity: Int) { self.capacity = capacity }

    var limits: (maxRegionBytes: UInt64, maxRegions: Int) { (.max, .max) }

    func registerRegion(address: UInt, length: Int, access: AccessFlags) throws -> RegisteredRegion {
        guard inner.liveRegistrations < capacity else {
            refusals.add(1, ordering: .relaxed)
            throw VerbsError(call: "ibv_reg_mr", argument: "length: \(length)", errno: .noMemory)
        }
        return try inner.registerRegion(address: address, length: length, access: access)
    }

    func deregisterRegion(_ region: RegisteredRegion) throws { try inner.deregisterRegion(region) }
}

@Suite("Registration cache against device limits") struct DeviceLimitTests {
    @Test("ENOMEM from the device: evict idle regions and retry once")
    func evictsAndRetriesOnce() throws {
        let registrar = CapacityRegistrar(capacity: 3)
        let cache = RegistrationCache(registrar: registrar)
        defer { cache.shutdown() }
        let buffers = try (0..<4).map { _ in try AnonymousMapping(length: 4096) }
        for buffer in buffers.prefix(3) { try cache.register(buffer.bytes, access: .rdma).release() }
        let fourth = try cache.register(buffers[3].bytes, access: .rdma)
        #expect(Bool(fourth.isCached))
        #expect(registrar.refusals.load(ordering: .relaxed) == 1)
        #expect(cache.statistics.evictions == 3)
        fourth.release()
    }

    @Test("ENOMEM with every region held: a clear error, and nothing held is lost")
    func clearErrorWhenNothingIsIdle() throws {
        let registrar = CapacityRegistrar(capacity: 2)
        let cache = RegistrationCache(registrar: registrar)
        defer { cache.shutdown() }
        let buffers = try (0..<3).map { _ in try AnonymousMapping(length: 4096) }
        let first = try cache.register(buffers[0].bytes, access: .rdma)
        let second = try cache.register(buffers[1].bytes, access: .rdma)
        let error = try #require(throws: RegistrationError.self) { _ = try cache.register(buffers[2].bytes, access: .rdma) }
        guard case .device(let verbs) = error else {
            Issue.record("expected a device error, got \(error)")
            return
        }
        #expect(verbs.errno == .noMemory)
        #expect(!Bool(first.isRevoked) && !second.isRevoked)
        #expect(cache.statistics.cachedRegions == 2)
        #expect(registrar.inner.liveRegistrations == 2)
    }
}

/// A registrar under which the memory changes during every registration (an invalidation of
/// the range lands between readBegin and readRetry each time).
final class AlwaysRacedRegistrar: MemoryRegistrar {
    let inner = NullRegistrar()
    let invalidate = Locked<(@Sendable (UInt, Int) -> Void)?>(nil)
    var limits: (maxRegionBytes: UInt64, maxRegions: Int) { (.max, .max) }

    func registerRegion(address: UInt, length: Int, access: AccessFlags) throws -> RegisteredRegion {
        let region = try inner.registerRegion(address: address, length: length, access: access)
        invalidate.withLock { $0 }?(address, length)
        return region
    }

    func deregisterRegion(_ region: RegisteredRegion) throws { try inner.deregisterRegion(region) }
}

@Suite struct RacedRegistrationTests {
    @Test("a registration that races an invalidation every time is retried, then a clear error; none is handed out")
    func keptChanging() throws {
        let registrar = AlwaysRacedRegistrar()
        var options = RegistrationCache.Options()
        options.maxAttempts = 4
        let cache = RegistrationCache(registrar: registrar, options: options)
        defer { cache.shutdown() }
        registrar.invalidate.withLock { $0 = { [weak cache] address, length in cache?.invalidate(address: address, length: length) } }
        let buffer = try AnonymousMapping(length: 8192)
        let error = try #require(throws: RegistrationError.self) { _ = try cache.register(buffer.bytes, access: .rdma) }
        #expect(error == .keptChanging(address: buffer.address, length: 8192, attempts: 4))
        #expect(cache.statistics.racedInvalidations == 4)
        #expect(cache.statistics.cachedRegions == 0)
        #expect(registrar.inner.liveRegistrations == 0, "every raced registration was deregistered")
    }
}
