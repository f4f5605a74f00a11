import CTestShims
import NotifierEngine
import MemoryMapping
import SharedTestSupport
import Testing
import Verbs
@testable import MemoryRegistration

/// fork() and a failed device, the two ways a cache's world ends under it.
@Suite("Registration cache lifecycle") struct CacheLifecycleTests {
    /// Policy: a forked child inherits no monitoring and must not use the parent's
    /// registrations; what the child does to its copy of the memory never revokes the
    /// parent's registrations, and the parent keeps working.
    @Test func forkedChildLeavesTheParentsCacheAlone() throws {
        let registrar = NullRegistrar()
        let cache = RegistrationCache(registrar: registrar)
        defer { cache.shutdown() }
        let page = AnonymousMapping.pageSize
        let buffer = try AnonymousMapping(length: 16 * page)
        let held = try cache.register(buffer.bytes, access: .rdma)
        let child = ctest_fork_touch_unmap_exit(buffer.bytes.baseAddress, UInt(buffer.length), UInt(page))
        try #require(child > 0)
        #expect(ctest_wait_child(child, 10_000) == 0, "the child hung: its munmap waited for a monitor it does not have")
        #expect(!Bool(held.isRevoked), "the child's unmap is not the parent's")
        let again = try cache.register(buffer.bytes, access: .rdma)
        #expect(again.lkey == held.lkey)
        again.release()
        try buffer.unmap()
        #expect(Bool(held.isRevoked), "the parent's own unmap is still seen after the fork")
        held.release()
    }

    /// What a fatal device event does (`DeviceEventMonitor` calls `close`): every registration
    /// is revoked at once, and later calls fail with the reason.
    @Test func deviceFailureRevokesEverythingAndRefusesLaterCalls() throws {
        let registrar = NullRegistrar()
        let cache = RegistrationCache(registrar: registrar)
        defer { cache.shutdown() }
        let buffer = try AnonymousMapping(length: 8192)
        let held = try cache.register(buffer.bytes, access: .rdma)
        cache.core.close(reason: "the device reported a fatal error")
        #expect(Bool(held.isRevoked))
        let error = #expect(throws: RegistrationError.self) { _ = try cache.register(buffer.bytes, access: .rdma) }
        #expect(error?.description.contains("fatal error") == true)
        held.release()
        try cache.waitForPendingTeardowns()
        #expect(registrar.liveRegistrations == 0)
    }

    /// The last reference to a cache going away shuts it down: nothing registered, nothing
    /// pinned, nothing left in the process's address space; a registration still held keeps
    /// working and is deregistered when released.
    @Test func droppingTheLastReferenceShutsDown() throws {
        let registrar = NullRegistrar()
        let buffers = try (0..<8).map { _ in try AnonymousMapping(length: 16384) }
        var held: Registration?
        do {
            let cache = RegistrationCache(registrar: registrar)
            for buffer in buffers { try cache.register(buffer.bytes, access: .rdma).release() }
            held = try cache.register(buffers[0].bytes, access: .rdma)
            #expect(registrar.liveRegistrations == 8)
        }
        #expect(registrar.liveRegistrations == 1, "the dropped cache left regions registered")
        let revoked = held?.isRevoked == true
        #expect(revoked)
        held.take()?.release()
        #expect(registrar.liveRegistrations == 0)
        for buffer in buffers {
            let subscriptions = AddressSpace.process.countIntervals(overlapping: try AddressRange(start: buffer.address, length: UInt(buffer.length)))
            #expect(subscriptions == 0, "a subscription of the dropped cache is left in the process's address space")
        }
    }

    /// A registration still in flight (`register` not returned) when the cache is shut down:
    /// it fails with the reason, and nothing it made stays registered.
    @Test func shutdownDuringAMiss() throws {
        let registrar = GatedRegistrar()
        let cache = RegistrationCache(registrar: registrar)
        let buffer = try AnonymousMapping(length: 8192)
        let address = buffer.address
        let outcome = Locked<String?>(nil)
        let miss = ThreadRunner {
            do {
                let registration = try cache.register(address: address, length: 8192, access: .rdma)
                outcome.withLock { $0 = "registered \(registration.lkey)" }
            } catch {
                outcome.withLock { $0 = "\(error)" }
            }
        }
        registrar.waitUntilInside()
        cache.shutdown()
        registrar.open()
        miss.join()
        #expect(outcome.withLock { $0 }?.contains("shut down") == true, "\(outcome.withLock { $0 } ?? "")")
        #expect(registrar.inner.liveRegistrations == 0)
    }
}

/// A registrar whose first registration waits until the test opens it: a miss held in flight.
final class GatedRegistrar: MemoryRegistrar {
    let inner = NullRegistrar()
    private let gate = WaitQueue()
    private let state = Locked<(inside: Bool, open: Bool)>((false, false))
    var limits: (maxRegionBytes: UInt64, maxRegions: Int) { (.max, .max) }

    func registerRegion(address: UInt, length: Int, access: AccessFlags) throws -> RegisteredRegion {
        state.withLock { $0.inside = true }
        gate.wakeAll()
        gate.wait { state.withLock { $0.open } }
        return try inner.registerRegion(address: address, length: length, access: access)
    }

    func deregisterRegion(_ region: RegisteredRegion) throws { try inner.deregisterRegion(region) }

    func waitUntilInside() { gate.wait { state.withLock { $0.inside } } }

    func open() {
        state.withLock { $0.open = true }
        gate.wakeAll()
    }
}
