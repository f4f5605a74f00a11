import MemoryMapping
import Testing
@testable import MemoryRegistration

/// 10^5 cached registrations with the userfaultfd monitor on: the monitor watches 2 MiB
/// granules (not each buffer), so mapping splits stay far below `vm.max_map_count`, and an
/// unmap still reaches every registration under it.
@Suite("Registration cache at scale") struct RegistrationCacheScaleTests {
    @Test func hundredThousandRegistrationsAllInvalidatedByUnmap() throws {
        let registrar = NullRegistrar()
        let cache = RegistrationCache(registrar: registrar)
        defer { cache.shutdown() }
        guard case .userfaultfd = cache.monitoring else {
            Issue.record("userfaultfd unavailable (tests run as root): \(cache.monitoring)")
            return
        }
        let count = 100_000
        let stride = 8192
        let mapping = try AnonymousMapping(length: count * stride, populate: false)
        for index in 0..<count {
            let registration = try cache.register(address: mapping.address + UInt(index * stride), length: 4096,
                                                  access: .rdma)
            let cached = registration.isCached
            #expect(cached, "buffer \(index): \(registration.uncachedReason ?? "")")
            registration.release()
            if !cached { break }
        }
        #expect(cache.statistics.cachedRegions == count)
        #expect(cache.statistics.hits == 0)
        // Every one is found again...
        let hits = try (0..<count).filter { index in
            let registration = try cache.register(address: mapping.address + UInt(index * stride) + 64, length: 64,
                                                  access: .localWrite)
            return registration.isCached
        }.count
        #expect(hits == count)
        // ...and one munmap of the whole mapping revokes every one of them.
        try mapping.unmap()
        _ = try? cache.register(address: mapping.address, length: 4096, access: .rdma)  // settles the invalidation
        #expect(cache.statistics.invalidations == count)
        #expect(cache.statistics.cachedRegions == 0)
        try cache.waitForPendingTeardowns()
        #expect(registrar.liveRegistrations <= 1)
    }
}
