#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NotifierEngine
import MemoryMapping
import Monitors
import Testing
import Verbs
@testable import MemoryRegistration

/// The cache's behaviour with a registrar that does no device work and the real userfaultfd
/// monitor (tests run as root). The same behaviour on real rxe: IntegrationTests.
@Suite("Registration cache") struct RegistrationCacheTests {
    let registrar = NullRegistrar()

    func makeCache(_ configure: (inout RegistrationCache.Options) -> Void = { _ in }) -> RegistrationCache {
        var options = RegistrationCache.Options()
        configure(&options)
        return RegistrationCache(registrar: registrar, options: options)
    }

    @Test func secondRegistrationOfABufferIsAHit() throws {
        let cache = makeCache()
        defer { cache.shutdown() }
        let buffer = try AnonymousMapping(length: 16384)
        let first = try cache.register(buffer.bytes, access: .rdma)
        let second = try cache.register(buffer.bytes, access: .rdma)
        #expect(Bool(first.isCached) && second.isCached)
        #expect(first.lkey == second.lkey)
        let inside = try cache.register(address: buffer.address + 100, length: 4000, access: .localWrite)
        #expect(inside.lkey == first.lkey, "a buffer inside a cached region with less access hits")
        #expect(cache.statistics.hits == 2)
        #expect(cache.statistics.misses == 1)
        first.release()
        second.release()
        inside.release()
        #expect(cache.statistics.cachedRegions == 1, "released registrations stay cached")
        #expect(registrar.liveRegistrations == 1)
    }

    @Test("overlapping and adjacent buffers get regions of their own (no merging)")
    func overlapAndAdjacency() throws {
        let cache = makeCache()
        defer { cache.shutdown() }
        let page = AnonymousMapping.pageSize
        let buffer = try AnonymousMapping(length: 4 * page)
        let left = try cache.register(address: buffer.address, length: 2 * page, access: .rdma)
        let adjacent = try cache.register(address: buffer.address + UInt(2 * page), length: 2 * page, access: .rdma)
        let straddling = try cache.register(address: buffer.address + UInt(page), length: 2 * page, access: .rdma)
        #expect(Set([left.lkey, adjacent.lkey, straddling.lkey]).count == 3)
        let moreAccess = try cache.register(address: buffer.address, length: page, access: [.localWrite, .remoteAtomic])
        #expect(moreAccess.lkey != left.lkey, "more access than cached is a miss")
        #expect(cache.statistics.misses == 4)
    }

    @Test("mmap(MAP_FIXED) over the buffer (new pages, same address): the next register makes a new region; a holder sees isRevoked")
    func unmapRevokes() throws {
        let cache = makeCache()
        defer { cache.shutdown() }
        guard case .userfaultfd = cache.monitoring else {
            Issue.record("userfaultfd unavailable: \(cache.monitoring)")
            return
        }
        let buffer = try AnonymousMapping(length: 65536)
        let held = try cache.register(buffer.bytes, access: .rdma)
        #expect(Bool(held.isCached), "\(held.uncachedReason ?? "")")
        try buffer.replaceInPlace()  // one step: under TSan other threads map memory too
        #expect(Bool(held.isRevoked))
        let again = try cache.register(buffer.bytes, access: .rdma)
        #expect(again.lkey != held.lkey)
        #expect(!Bool(again.isRevoked))
        #expect(cache.statistics.revokedWhileHeld == 1)
        #expect(registrar.liveRegistrations == 2, "the held region stays registered (its pages stay pinned)")
        held.release()
        try cache.waitForPendingTeardowns()
        #expect(registrar.liveRegistrations == 1)
        again.release()
    }

    @Test("madvise(DONTNEED) and mremap revoke as well", arguments: ["dontneed", "mremap"])
    func otherChangesRevoke(change: String) throws {
        let cache = makeCache()
        defer { cache.shutdown() }
        let buffer = try AnonymousMapping(length: 65536)
        let first = try cache.register(buffer.bytes, access: .rdma)
        let oldAddress = buffer.address
        if change == "dontneed" { try buffer.advise(MADV_DONTNEED) } else { try buffer.remap(to: 1 << 20) }
        #expect(Bool(first.isRevoked), "\(change)")
        let firstKey = first.lkey
        first.release()
        let again = try cache.register(address: oldAddress, length: 4096, access: .rdma)
        #expect(again.lkey != firstKey)
    }

    @Test func explicitInvalidation() throws {
        let cache = makeCache { $0.monitoring = .explicitOnly }
        defer { cache.shutdown() }
        let buffer = try AnonymousMapping(length: 8192)
        let first = try cache.register(buffer.bytes, access: .rdma)
        #expect(Bool(first.isCached), "explicit-only mode caches: the application reports changes")
        cache.invalidate(address: buffer.address + 4096, length: 1)
        #expect(Bool(first.isRevoked))
        #expect(try cache.register(buffer.bytes, access: .rdma).lkey != first.lkey)
        #expect(cache.monitoring.description.contains("explicit"))
    }

    @Test func scopedFormHitsWithoutAReference() throws {
        let cache = makeCache()
        defer { cache.shutdown() }
        let buffer = try AnonymousMapping(length: 4096)
        let lkey = try cache.withRegistration(buffer.bytes, access: .rdma) { $0.lkey }  // a miss
        let again = try cache.withRegistration(buffer.bytes, access: .rdma) { $0.lkey }  // a hit
        #expect(lkey == again)
        #expect(cache.statistics.misses == 1)
        #expect(cache.statistics.scopedHits == 1)
        #expect(cache.statistics.hits == 0)
        #expect(cache.statistics.cachedRegions == 1)
        let nothing: Int? = try cache.withRegistration(buffer.bytes, access: .rdma) { _ in nil }
        #expect(nothing == nil)
    }

    @Test func badInputIsATypedErrorAndLosesNothing() throws {
        let cache = makeCache()
        defer { cache.shutdown() }
        let buffer = try AnonymousMapping(length: 4096)
        let kept = try cache.register(buffer.bytes, access: .rdma)
        #expect(throws: RegistrationError.invalidRange(call: "register", address: buffer.address, length: 0,
                                                       reason: "the length must be positive")) {
            _ = try cache.register(address: buffer.address, length: 0, access: .rdma)
        }
        #expect(throws: RegistrationError.self) { _ = try cache.register(address: 0, length: 4096, access: .rdma) }
        #expect(throws: RegistrationError.self) {
            _ = try cache.register(address: UInt.max - 100, length: 4096, access: .rdma)
        }
        #expect(!Bool(kept.isRevoked))
        #expect(try cache.register(buffer.bytes, access: .rdma).lkey == kept.lkey, "still cached after the errors")
    }

    @Test func shutdownDeregistersEverythingAndRefusesLaterCalls() throws {
        let cache = makeCache()
        let buffer = try AnonymousMapping(length: 8192)
        let other = try AnonymousMapping(length: 8192)
        try cache.register(buffer.bytes, access: .rdma).release()
        let held = try cache.register(other.bytes, access: .rdma)
        cache.shutdown()
        cache.shutdown()  // harmless
        #expect(MemoryMonitor.shared.userfaultfd?.isRunning == true, "the process's monitor serves other caches still")
        #expect(registrar.liveRegistrations == 1, "only the held one remains, until released")
        #expect(Bool(held.isRevoked))
        held.release()
        #expect(registrar.liveRegistrations == 0)
        #expect(cache.statistics.pinnedBytes == 0)
        let error = #expect(throws: RegistrationError.self) { _ = try cache.register(buffer.bytes, access: .rdma) }
        #expect(error?.description.contains("shut down") == true)
    }

    @Test func evictsIdleRegionsBeyondTheLimit() throws {
        let cache = makeCache { $0.maxRegions = 4 }
        defer { cache.shutdown() }
        let buffers = try (0..<10).map { _ in try AnonymousMapping(length: 4096) }
        let held = try cache.register(buffers[0].bytes, access: .rdma)
        for buffer in buffers.dropFirst() { try cache.register(buffer.bytes, access: .rdma).release() }
        let statistics = cache.statistics
        #expect(statistics.cachedRegions <= 4)
        #expect(statistics.evictions >= 6)
        #expect(!Bool(held.isRevoked), "a held region is never evicted")
        #expect(try cache.register(buffers[0].bytes, access: .rdma).lkey == held.lkey)
        #expect(statistics.registeredRegions <= 4, "the region limit counts what waits for its teardown too")
    }

    @Test func largerThanThePinnedLimitIsRegisteredUncached() throws {
        let cache = makeCache { $0.maxPinnedBytes = 65536 }
        defer { cache.shutdown() }
        let buffer = try AnonymousMapping(length: 1 << 20)
        let registration = try cache.register(buffer.bytes, access: .rdma)
        #expect(!Bool(registration.isCached))
        #expect(registration.uncachedReason?.contains("maxPinnedBytes") == true)
        registration.release()
        #expect(registrar.liveRegistrations == 0)
    }

    @Test("file-backed memory is registered uncached, and the handle says why")
    func unwatchableMemoryIsNotCachedSilently() throws {
        let cache = makeCache()
        defer { cache.shutdown() }
        let path = FileManager.default.currentDirectoryPath + "/.build/cache-test-\(getpid()).bin"
        let descriptor = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        #expect(descriptor >= 0)
        defer { close(descriptor); unlink(path) }
        #expect(ftruncate(descriptor, 8192) == 0)
        let pointer = try #require(mmap(nil, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0))
        defer { munmap(pointer, 8192) }
        let registration = try cache.register(address: UInt(bitPattern: pointer), length: 8192, access: .rdma)
        #expect(!Bool(registration.isCached))
        #expect(registration.uncachedReason?.contains("cache-test") == true, "\(registration.uncachedReason ?? "")")
    }
}

@Suite struct AccessPolicyTests {
    @Test("the widened policy registers more access, so a later request with other access hits")
    func widenedPolicyServesOtherAccess() throws {
        var options = RegistrationCache.Options()
        options.accessPolicy = .widened(by: .rdma)
        let cache = RegistrationCache(registrar: NullRegistrar(), options: options)
        defer { cache.shutdown() }
        let buffer = try AnonymousMapping(length: 4096)
        let first = try cache.register(buffer.bytes, access: .localWrite)
        let second = try cache.register(buffer.bytes, access: .remoteRead)
        #expect(second.lkey == first.lkey)
        #expect(cache.statistics.misses == 1)
    }
}
