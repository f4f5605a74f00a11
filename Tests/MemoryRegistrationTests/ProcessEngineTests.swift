#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NotifierEngine
import MemoryMapping
@testable import Monitors
import SharedTestSupport
import Synchronization
import Testing
import Verbs
@testable import MemoryRegistration

/// One engine per process: every cache shares the process's address space and its one
/// userfaultfd monitor; what that buys and what it must not cost.
@Suite("One engine per process") struct ProcessEngineTests {
    @Test("two caches (two devices, two domains) both cache and both see every unmap")
    func twoCachesBothCacheAndBothSeeUnmaps() throws {
        let first = RegistrationCache(registrar: NullRegistrar())
        let second = RegistrationCache(registrar: NullRegistrar())
        guard case .userfaultfd = first.monitoring, case .userfaultfd = second.monitoring else {
            Issue.record("userfaultfd unavailable: \(first.monitoring)")
            return
        }
        let shared = try AnonymousMapping(length: 65536)
        let own = try AnonymousMapping(length: 65536)  // likely in the same granule as `shared`
        let inFirst = try first.register(shared.bytes, access: .rdma)
        let inSecond = try second.register(shared.bytes, access: .rdma)
        let untouched = try second.register(own.bytes, access: .rdma)
        #expect(Bool(inFirst.isCached) && Bool(inSecond.isCached) && Bool(untouched.isCached),
                "\(inFirst.uncachedReason ?? "") \(inSecond.uncachedReason ?? "") \(untouched.uncachedReason ?? "")")
        try shared.replaceInPlace()
        #expect(Bool(inFirst.isRevoked) && Bool(inSecond.isRevoked), "an unmap reached only one of the caches")
        #expect(!Bool(untouched.isRevoked))
        #expect(first.statistics.invalidations == 1 && second.statistics.invalidations == 1)
        #expect(MemoryMonitor.shared.userfaultfd?.isRunning == true)
    }

    @Test("hits are counted per thread and summed exactly")
    func hitsSumOverThreads() throws {
        let cache = RegistrationCache(registrar: NullRegistrar())
        let buffer = try AnonymousMapping(length: 4096)
        let address = buffer.address
        try cache.register(buffer.bytes, access: .rdma).release()
        let rounds = 20_000
        let threads = (0..<3).map { _ in
            ThreadRunner {
                for _ in 0..<rounds {
                    try? cache.register(address: address, length: 4096, access: .rdma).release()
                    _ = try? cache.withRegistration(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: 4096),
                                                    access: .rdma) { $0.lkey }
                }
            }
        }
        for thread in threads { thread.join() }
        #expect(cache.statistics.hits == 3 * rounds)
        #expect(cache.statistics.scopedHits == 3 * rounds)
    }

    @Test("a registration forgotten (never released) is released at the end of its scope")
    func forgottenRegistrationIsReleased() throws {
        let registrar = NullRegistrar()
        let cache = RegistrationCache(registrar: registrar)
        let buffer = try AnonymousMapping(length: 8192)
        do {
            let registration = try cache.register(buffer.bytes, access: .rdma)
            #expect(registration.lkey != 0)
        }
        try buffer.replaceInPlace()  // revokes: the region goes once nobody holds it
        try cache.waitForPendingTeardowns()
        #expect(registrar.liveRegistrations == 0, "the forgotten registration still holds its region")
    }

    @Test("a refused deregistration is retried with the next teardowns and reported until then")
    func failedDeregistrationIsRetried() throws {
        let registrar = NullRegistrar()
        let cache = RegistrationCache(registrar: registrar)
        let buffer = try AnonymousMapping(length: 8192)
        let other = try AnonymousMapping(length: 8192)
        try cache.register(buffer.bytes, access: .rdma).release()
        try cache.register(other.bytes, access: .rdma).release()
        registrar.refuseDeregistrations(1)
        try buffer.replaceInPlace()
        try cache.waitForPendingTeardowns()
        var statistics = cache.statistics
        #expect(statistics.failedDeregistrations == 1)
        #expect(statistics.lastDeregistrationFailure?.contains("refused") == true, "\(statistics.lastDeregistrationFailure ?? "")")
        #expect(registrar.liveRegistrations == 2)
        #expect(statistics.pinnedBytes == 2 * 8192, "a region the device still pins stays counted")
        try other.replaceInPlace()  // the next batch retries the refused one too
        try cache.waitForPendingTeardowns()
        statistics = cache.statistics
        #expect(statistics.failedDeregistrations == 0)
        #expect(registrar.liveRegistrations == 0)
        #expect(statistics.pinnedBytes == 0)
    }

    @Test("a monitor that fails: cached regions are revoked, later registrations are uncached with the reason")
    func failedMonitorMakesRegistrationsUncached() throws {
        let monitor = MemoryMonitor(space: AddressSpace())
        defer { monitor.shutdown() }
        guard let userfaultfd = monitor.userfaultfd else {
            Issue.record("no userfaultfd: \(monitor.mode)")
            return
        }
        let registrar = NullRegistrar()
        let cache = RegistrationCache(registrar: registrar, options: .init(), monitor: monitor, deviceContext: nil)
        defer { cache.shutdown() }
        let base = try mapFarAway(65536)
        defer { munmap(UnsafeMutableRawPointer(bitPattern: base), 65536) }
        let held = try cache.register(address: base, length: 65536, access: .rdma)
        #expect(Bool(held.isCached), "\(held.uncachedReason ?? "")")
        userfaultfd.injectFailure(.worker)
        #expect(finishes(within: 20) { while userfaultfd.failure == nil { usleep(1000) } })
        #expect(Bool(held.isRevoked))
        guard case .failed = cache.monitoring else {
            Issue.record("monitoring: \(cache.monitoring)")
            return
        }
        let after = try cache.register(address: base, length: 4096, access: .rdma)
        #expect(!Bool(after.isCached))
        #expect(after.uncachedReason?.contains("failed") == true, "\(after.uncachedReason ?? "")")
    }
}

/// Anonymous memory far from where the kernel places mappings (1.5 TiB up), so that a private
/// monitor's granules there are never also the process monitor's.
func mapFarAway(_ length: Int) throws -> UInt {
    let pointer = mmap(UnsafeMutableRawPointer(bitPattern: 0x0180_0000_0000), length, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | 0x100000 /* MAP_FIXED_NOREPLACE */, -1, 0)
    guard let pointer, pointer != MAP_FAILED else { throw MappingError(call: "mmap", argument: "\(length)", errno: .init(rawValue: errno)) }
    return UInt(bitPattern: pointer)
}
