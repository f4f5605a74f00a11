import BenchmarkSupport
import MemoryMapping
import Monitors
import MemoryRegistration
import Verbs

/// What the cache costs and saves on a real device (rxe in the VM), each figure as a pair: the
/// plain verbs an application would call without a cache, and the same work through the cache.
/// `DeviceReport` prints them side by side with cached/plain.
///
/// The pairs (64 KiB buffers unless a size is given):
/// - cycle: a buffer's whole life, mmap, touch every page, register, deregister, munmap; plain
///   with `ibv_reg_mr` + `ibv_dereg_mr`, cached with `register` + `release` (every one a miss:
///   the munmap invalidates, and the deregistration it leads to is waited for inside the timed
///   part, so the cache's deferred work is counted).
/// - miss: registering a mapped, touched buffer never registered before; plain times
///   `ibv_reg_mr` alone (the deregistration happens untimed), cached times `register` +
///   `release` in a cache with room for all.
/// - miss_evicting: the same misses in a cache that holds 16 regions, so almost every miss also
///   evicts (and deregisters, waited for inside the timed part); against plain `ibv_reg_mr`
///   alone, so the ratio includes the evicted region's `ibv_dereg_mr`.
/// - hit: `register` + `release` of a registered buffer against `ibv_reg_mr` + `ibv_dereg_mr` of
///   it every time (4 KiB, 64 KiB, 1 MiB): what the cache is for.
///
/// Cycle, miss and miss_evicting are medians of `rounds` rounds of `operations` operations,
/// the plain and the cached rounds taken in turn so that drift in the emulated machine's speed
/// hits both alike.
struct DeviceFigures {
    var device: String
    var scale: Int

    static let bufferSize = 64 * 1024
    static let rounds = 5
    static let evictingLimit = 16
    var operations: Int { max(20, 200 / scale) }

    /// Which figure is plain and which cached, per row of the table.
    static let pairs: [(row: String, plain: String, cached: String)] = [
        ("cycle", "cycle_plain", "cycle_cached"),
        ("miss", "miss_plain", "miss_cached"),
        ("miss_evicting", "miss_evicting_plain", "miss_evicting_cached"),
        ("hit", "uncached_reg_dereg", "cached_register_release"),
    ]

    func all(only: String? = nil) throws -> [FigureResult] {
        let context = try DeviceContext(name: device)
        let domain = try ProtectionDomain(context: context)
        var results: [FigureResult] = []
        let wanted = { (row: String) in only == nil || only == row }
        if wanted("cycle") { results += try cycle(domain) }
        if wanted("miss") { results += try miss(domain) }
        if wanted("miss_evicting") { results += try missEvicting(domain) }
        if wanted("hit") { results += try hits(domain) }
        if let monitor = MemoryMonitor.shared.userfaultfd {
            // Where the watches' time went: how many asked the kernel nothing.
            let statistics = monitor.statistics
            print("monitor: \(statistics.watchesWithoutIoctl) watches without an ioctl, "
                + "\(statistics.watchesOfKnownMappings) of mappings the hooked mmap made, "
                + "\(statistics.interceptedUnmaps) unmaps intercepted, \(statistics.events) events")
        }
        return results
    }

    // MARK: - The pairs

    func cycle(_ domain: ProtectionDomain) throws -> [FigureResult] {
        let size = Self.bufferSize
        let cache = RegistrationCache(protectionDomain: domain)
        defer { cache.shutdown() }
        let (plain, cached) = try alternating(
            plain: {
                try timed {
                    for _ in 0..<operations {
                        let mapping = try touchedMapping(size)
                        try domain.registerMemory(mapping.bytes, access: .rdma).deregister()
                        try mapping.unmap()
                    }
                }
            },
            cached: {
                let misses = cache.statistics.misses
                let time = try timed {
                    for _ in 0..<operations {
                        let mapping = try touchedMapping(size)
                        try cache.register(mapping.bytes, access: .rdma).release()
                        try mapping.unmap()
                    }
                    try cache.waitForPendingTeardowns()
                }
                try expect(cache.statistics.misses - misses == operations, "cycle: not every register was a miss")
                return time
            })
        return pair("cycle", plain: plain, cached: cached, parameters: ["size": size])
    }

    func miss(_ domain: ProtectionDomain) throws -> [FigureResult] {
        let size = Self.bufferSize
        let (plain, cached) = try alternating(
            plain: { try plainRegistrations(domain, size: size) },
            cached: {
                let buffers = try (0..<operations).map { _ in try touchedMapping(size) }
                let cache = RegistrationCache(protectionDomain: domain)
                defer { cache.shutdown() }
                let time = try timed {
                    for buffer in buffers { try cache.register(buffer.bytes, access: .rdma).release() }
                }
                try expect(cache.statistics.misses == operations && cache.statistics.evictions == 0,
                           "miss: expected \(operations) misses and no eviction, got \(cache.statistics)")
                return time
            })
        return pair("miss", plain: plain, cached: cached, parameters: ["size": size])
    }

    func missEvicting(_ domain: ProtectionDomain) throws -> [FigureResult] {
        let size = Self.bufferSize
        let (plain, cached) = try alternating(
            plain: { try plainRegistrations(domain, size: size) },
            cached: {
                let buffers = try (0..<operations).map { _ in try touchedMapping(size) }
                var options = RegistrationCache.Options()
                options.maxRegions = Self.evictingLimit
                let cache = RegistrationCache(protectionDomain: domain, options: options)
                defer { cache.shutdown() }
                let time = try timed {
                    for buffer in buffers { try cache.register(buffer.bytes, access: .rdma).release() }
                    try cache.waitForPendingTeardowns()
                }
                try expect(cache.statistics.misses == operations && cache.statistics.evictions > 0,
                           "miss_evicting: expected \(operations) misses and evictions, got \(cache.statistics)")
                return time
            })
        return pair("miss_evicting", plain: plain, cached: cached,
                    parameters: ["size": size, "limit": Self.evictingLimit])
    }

    /// The hit figures as before: many iterations each, a cache hit against a registration and
    /// deregistration every time.
    func hits(_ domain: ProtectionDomain) throws -> [FigureResult] {
        let cache = RegistrationCache(protectionDomain: domain)
        defer { cache.shutdown() }
        var results: [FigureResult] = []
        for size in [4096, 65536, 1 << 20] {
            let buffer = try AnonymousMapping(length: size)
            // Read once, outside the timing: `AnonymousMapping.bytes` reads class properties with
            // dynamic exclusivity checks (a thread-local lookup each), which under TCG cost as
            // much as the hit itself (a third of the timed loop in perf) and the C peer pays none.
            let bytes = buffer.bytes
            let iterations = max(20, (size >= 1 << 20 ? 200 : 2000) / scale)
            let uncached = try timed(iterations) {
                try domain.registerMemory(bytes, access: .rdma).deregister()
            }
            try cache.register(bytes, access: .rdma).release()
            let cached = try timed(iterations * 100) { try cache.register(bytes, access: .rdma).release() }
            withExtendedLifetime(buffer) {}  // mapped until the last timing
            results += pair("hit", plain: uncached, cached: cached, parameters: ["size": size])
        }
        return results
    }

    // MARK: - Helpers

    /// `ibv_reg_mr` of `operations` distinct mapped, touched buffers, timed; each deregistered
    /// after the timed part. Nanoseconds per registration.
    private func plainRegistrations(_ domain: ProtectionDomain, size: Int) throws -> Double {
        let buffers = try (0..<operations).map { _ in try touchedMapping(size) }
        var regions: [MemoryRegion] = []
        regions.reserveCapacity(buffers.count)
        let time = try timed {
            for buffer in buffers { regions.append(try domain.registerMemory(buffer.bytes, access: .rdma)) }
        }
        for region in regions { try region.deregister() }
        return time
    }

    /// `rounds` rounds of each, plain first, in turn; the median nanoseconds per operation of each.
    private func alternating(plain: () throws -> Double, cached: () throws -> Double) throws
        -> (plain: Double, cached: Double)
    {
        var plainRounds: [Double] = []
        var cachedRounds: [Double] = []
        for _ in 0..<Self.rounds {
            plainRounds.append(try plain())
            cachedRounds.append(try cached())
        }
        return (median(plainRounds), median(cachedRounds))
    }

    /// A fresh anonymous mapping, every page written once (not populated by mmap: the touch is
    /// part of what an application does before it registers).
    private func touchedMapping(_ size: Int) throws -> AnonymousMapping {
        let mapping = try AnonymousMapping(length: size, populate: false)
        let bytes = mapping.bytes
        for offset in stride(from: 0, to: size, by: AnonymousMapping.pageSize) { bytes[offset] = 1 }
        return mapping
    }

    private func pair(_ row: String, plain: Double, cached: Double, parameters: [String: Int]) -> [FigureResult] {
        guard let names = Self.pairs.first(where: { $0.row == row }) else { return [] }
        return [
            FigureResult(peer: "rdmamemory-rxe", figure: names.plain, parameters: parameters, value: plain, unit: "ns_per_op"),
            FigureResult(peer: "rdmamemory-rxe", figure: names.cached, parameters: parameters, value: cached, unit: "ns_per_op"),
        ]
    }

    private func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
        guard condition else { throw BenchmarkFailure(message()) }
    }

    /// Nanoseconds per operation of `body`, which does `operations` of them.
    private func timed(_ body: () throws -> Void) rethrows -> Double {
        let start = nowNanoseconds()
        try body()
        return Double(nowNanoseconds() - start) / Double(operations)
    }

    private func timed(_ iterations: Int, _ body: () throws -> Void) rethrows -> Double {
        let start = nowNanoseconds()
        for _ in 0..<iterations { try body() }
        return Double(nowNanoseconds() - start) / Double(iterations)
    }
}
