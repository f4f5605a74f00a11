#if canImport(Glibc)
import Glibc
#endif
import MemoryMapping
import Testing
@testable import MemoryRegistration

/// Eviction holds the pinned-bytes and region limits exactly, evicts about one region per miss
/// (in batches of half the slack: down to the limit minus one and a half slacks), and never
/// empties the cache to make room for one region.
@Suite("Eviction at the limits") struct EvictionLimitTests {
    /// Misses of `count` one-page buffers through `cache`; checks after each one that what the
    /// device pins never exceeds the limits, and returns the smallest number of regions the
    /// cache held after a miss once it was full.
    func missAll(_ cache: RegistrationCache, pages count: Int, maxPinnedBytes: Int, maxRegions: Int) throws -> Int {
        let page = AnonymousMapping.pageSize
        let mapping = try AnonymousMapping(length: 2 * count * page)
        var fewestCached = Int.max
        for index in 0..<count {
            try cache.register(address: mapping.address + UInt(2 * index * page), length: page, access: .rdma).release()
            let statistics = cache.statistics
            #expect(statistics.pinnedBytes <= maxPinnedBytes, "miss \(index): \(statistics.pinnedBytes) bytes pinned")
            #expect(statistics.registeredRegions <= maxRegions, "miss \(index): \(statistics.registeredRegions) regions")
            if statistics.pinnedBytes + page > maxPinnedBytes || statistics.registeredRegions + 1 > maxRegions {
                fewestCached = min(fewestCached, statistics.cachedRegions)
            }
        }
        return fewestCached
    }

    @Test("the default limit of a process that is not root (3/4 of RLIMIT_MEMLOCK)")
    func defaultNonRootLimit() throws {
        let memlock = RegistrationCache.Limits.memlockLimit() ?? 8 << 20  // Debian's default, for a root test run
        let limits = RegistrationCache.Limits(.init(), device: (.max, .max), memlock: memlock, root: false)
        #expect(limits.maxPinnedBytes == Int(memlock / 4 * 3))
        #expect(RegistrationCache.Limits(.init(), device: (.max, .max), memlock: memlock, root: true).maxPinnedBytes == .max)
        var options = RegistrationCache.Options()
        options.maxPinnedBytes = limits.maxPinnedBytes
        let cache = RegistrationCache(registrar: NullRegistrar(), options: options)
        let page = AnonymousMapping.pageSize
        let capacity = limits.maxPinnedBytes / page
        let count = 2 * capacity
        let fewest = try missAll(cache, pages: count, maxPinnedBytes: limits.maxPinnedBytes, maxRegions: .max)
        let statistics = cache.statistics
        let slack = capacity / 8
        #expect(fewest >= capacity - slack - slack / 2 - 1, "the cache was emptied to make room: \(fewest) of \(capacity) left")
        #expect(statistics.evictions <= count - capacity + slack + slack / 2 + 1, "more evicted than needed: \(statistics.evictions)")
        #expect(statistics.evictions >= count - capacity)
    }

    @Test("16 pages, 48 one-page misses: at most 16 pinned at any time, never fewer than 13 cached once full")
    func smallPinnedLimit() throws {
        let page = AnonymousMapping.pageSize
        var options = RegistrationCache.Options()
        options.maxPinnedBytes = 16 * page
        let cache = RegistrationCache(registrar: NullRegistrar(), options: options)
        let fewest = try missAll(cache, pages: 48, maxPinnedBytes: 16 * page, maxRegions: .max)
        #expect(fewest >= 13, "cached regions dropped to \(fewest)")
        #expect(cache.statistics.evictions <= 48 - 16 + 3)
    }

    @Test("a region limit of 1000 with 4000 misses holds exactly")
    func regionLimit() throws {
        var options = RegistrationCache.Options()
        options.maxRegions = 1000
        let cache = RegistrationCache(registrar: NullRegistrar(), options: options)
        let fewest = try missAll(cache, pages: 4000, maxPinnedBytes: .max, maxRegions: 1000)
        let slack = 1000 / 8
        #expect(fewest >= 1000 - slack - slack / 2 - 1)
        #expect(cache.statistics.evictions <= 3000 + slack + slack / 2 + 1)
    }

    @Test("evicting misses inside a scoped registration (a read section): the limit holds, nothing hangs, all torn down")
    func evictingInsideReadSection() throws {
        var options = RegistrationCache.Options()
        options.maxRegions = 64
        let registrar = NullRegistrar()
        let cache = RegistrationCache(registrar: registrar, options: options)
        let page = AnonymousMapping.pageSize
        let mapping = try AnonymousMapping(length: 2 * 400 * page)
        let anchor = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: mapping.address), count: page)
        // A hit: the scoped form then runs its body inside a read section. Inside it a miss
        // cannot wait for a grace period (it would wait for itself): its evictions go to the
        // reclaim thread, whose grace period ends after the section. Fewer misses than the
        // slack, so that none of them has to wait for room.
        try cache.register(anchor, access: .rdma).release()
        try cache.withRegistration(anchor, access: .rdma) { _ in
            #expect(cache.statistics.scopedHits == 1)
            for index in 1..<62 {
                try cache.register(address: mapping.address + UInt(2 * index * page), length: page, access: .rdma).release()
                #expect(cache.statistics.registeredRegions <= 64)
            }
            #expect(cache.statistics.evictions > 0, "the misses evicted inside the section")
        }
        // Outside it, evictions are torn down by the missing thread after its own grace period.
        for index in 62..<400 {
            try cache.register(address: mapping.address + UInt(2 * index * page), length: page, access: .rdma).release()
            #expect(cache.statistics.registeredRegions <= 64)
        }
        try cache.waitForPendingTeardowns()
        let statistics = cache.statistics
        #expect(statistics.evictions >= 400 - 64)
        #expect(statistics.registeredRegions == statistics.cachedRegions, "every evicted region deregistered")
        cache.shutdown()
        #expect(registrar.liveRegistrations == 0)
    }

    @Test("every cached region held: a miss fails with limitReached, and nothing held is lost")
    func limitReachedWhenAllIsHeld() throws {
        var options = RegistrationCache.Options()
        options.maxRegions = 2
        let registrar = NullRegistrar()
        let cache = RegistrationCache(registrar: registrar, options: options)
        let buffers = try (0..<3).map { _ in try AnonymousMapping(length: 4096) }
        let first = try cache.register(buffers[0].bytes, access: .rdma)
        let second = try cache.register(buffers[1].bytes, access: .rdma)
        let error = try #require(throws: RegistrationError.self) { _ = try cache.register(buffers[2].bytes, access: .rdma) }
        guard case .limitReached(let regions, let maxRegions, _, _, _) = error else {
            Issue.record("\(error)")
            return
        }
        #expect(regions == 2 && maxRegions == 2)
        #expect(!Bool(first.isRevoked) && !Bool(second.isRevoked))
        #expect(registrar.liveRegistrations == 2)
    }

    @Test("a buffer the cache will not cache takes no room: at the limit it is registered uncached, nothing evicted")
    func uncachedTakesNoRoom() throws {
        var options = RegistrationCache.Options()
        options.maxRegions = 2
        let registrar = NullRegistrar()
        let cache = RegistrationCache(registrar: registrar, options: options)
        let buffers = try (0..<2).map { _ in try AnonymousMapping(length: 4096) }
        let held = try cache.register(buffers[0].bytes, access: .rdma)
        try cache.register(buffers[1].bytes, access: .rdma).release()  // idle, evictable
        let shared = try #require(mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0))
        try #require(shared != MAP_FAILED)
        defer { munmap(shared, 4096) }
        let uncached = try cache.register(UnsafeRawBufferPointer(start: shared, count: 4096), access: .rdma)
        #expect(!Bool(uncached.isCached), "shared memory must not be cached")
        #expect(cache.statistics.evictions == 0, "room was made for a buffer that is not cached")
        #expect(cache.statistics.cachedRegions == 2)
        uncached.release()
        held.release()
    }
}
