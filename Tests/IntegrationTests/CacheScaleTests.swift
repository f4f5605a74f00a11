import Foundation
import MemoryMapping
import MemoryRegistration
import Testing
import Verbs

extension RxeIntegration {
    /// 10^5 cached registrations of small buffers on the real device with userfaultfd on: no
    /// ENOMEM from mapping splits (the monitor watches granules), and one unmap revokes them all.
    @Suite struct CacheScale {
        static var count: Int { Int(ProcessInfo.processInfo.environment["RDMAMEMORY_SCALE"] ?? "") ?? 100_000 }

        @Test func hundredThousandRealRegistrations() throws {
            let context = try DeviceContext(name: Rxe.deviceName)
            let domain = try ProtectionDomain(context: context)
            let baseline = try DeviceResources.current(device: Rxe.deviceName)
            let cache = RegistrationCache(protectionDomain: domain)
            defer { cache.shutdown() }
            let count = Self.count
            let stride = 8192
            let mapping = try AnonymousMapping(length: count * stride)
            let start = ContinuousClock.now
            for index in 0..<count {
                let registration = try cache.register(address: mapping.address + UInt(index * stride), length: 4096,
                                                      access: .rdma)
                guard registration.isCached else {
                    Issue.record("buffer \(index) not cached: \(registration.uncachedReason ?? "")")
                    return
                }
                registration.release()
            }
            print("[rxe-scale] \(count) registrations in \(ContinuousClock.now - start)")
            #expect(cache.statistics.cachedRegions == count)
            #expect(try DeviceResources.current(device: Rxe.deviceName).memoryRegions == baseline.memoryRegions + count)
            try mapping.unmap()
            try cache.waitForPendingTeardowns()
            #expect(cache.statistics.invalidations == count)
            #expect(try DeviceResources.current(device: Rxe.deviceName).memoryRegions == baseline.memoryRegions)
        }
    }
}
