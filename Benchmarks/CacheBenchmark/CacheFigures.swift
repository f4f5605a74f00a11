#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import BenchmarkSupport
import CTestShims
import MemoryMapping
import MemoryRegistration
import Synchronization

/// The registration cache's figures with the null registrar: the same list, sizes and layouts
/// as `Benchmarks/UCXPeer`, so each pairs with UCX's. Nonisolated code: thread entry points
/// must not be inferred @MainActor.
struct CacheFigures {
    /// Divides every iteration count (a smoke run).
    var scale: Int

    /// 4 KiB regions 8 KiB apart, as in the peer: no two are adjacent.
    static let regionSize = 4096
    static let regionStride = 8192

    /// Groups of figures, to measure (or profile) one alone.
    enum Group: String, CaseIterable, ExpressibleByArgument {
        case hit, random, miss, freshMiss = "fresh-miss", evicting, invalidation, throughput, churn
    }

    func all(only: Group? = nil) throws -> [FigureResult] {
        var results: [FigureResult] = []
        let wanted = { (group: Group) in only == nil || only == group }
        if wanted(.hit) { for size in [4096, 65536, 1 << 20] { results += try hit(size: size) } }
        if wanted(.random) { for regions in [1000, 100_000] { results += try randomHits(regions: regions) } }
        if wanted(.miss) { results += try misses(regions: 200_000 / scale) }
        if wanted(.freshMiss) { results += try missesOfFreshMappings(count: 2000 / scale) }
        if wanted(.evicting) { results += try missesEvicting(regions: 200_000 / scale, limit: 1000) }
        if wanted(.invalidation) { results += try invalidation(iterations: 20_000 / scale) }
        if wanted(.throughput) {
            for threads in [1, 2] {
                results += try throughput(regions: 1000, threads: threads)
                results += try throughput(regions: 1, threads: threads)
            }
        }
        if wanted(.churn) { for threads in [1, 2] { results += churn(threads: threads) } }
        return results
    }

    private func makeCache(maxRegions: Int? = nil) -> RegistrationCache {
        var options = RegistrationCache.Options()
        options.maxRegions = maxRegions
        options.maxPinnedBytes = .max  // the null registrar pins nothing
        return RegistrationCache(registrar: NullRegistrar(), options: options)
    }

    /// Counted `register` + `release` (what UCX's get + put does) and the scoped form.
    func hit(size: Int) throws -> [FigureResult] {
        let cache = makeCache()
        defer { cache.shutdown() }
        let buffer = try AnonymousMapping(length: size)
        let bytes = UnsafeRawBufferPointer(buffer.bytes)
        try cache.register(bytes, access: .rdma).release()
        let iterations = 2_000_000 / scale
        let counted = try timed(iterations) { try cache.register(bytes, access: .rdma).release() }
        let scoped = try timed(iterations) { blackHole(try cache.withRegistration(bytes, access: .rdma) { $0.lkey }) }
        return [
            FigureResult(figure: "hit", parameters: ["size": size], value: counted, unit: "ns_per_op"),
            FigureResult(figure: "hit_scoped", parameters: ["size": size], value: scoped, unit: "ns_per_op"),
        ]
    }

    func randomHits(regions: Int) throws -> [FigureResult] {
        let cache = makeCache()
        defer { cache.shutdown() }
        let mapping = try populate(cache, regions: regions)
        let base = mapping.address
        let iterations = 2_000_000 / scale
        var random = XorShift()
        let counted = try timed(iterations) {
            let address = base + UInt(Int(random.next() % UInt64(regions)) * Self.regionStride)
            try cache.register(address: address, length: Self.regionSize, access: .rdma).release()
        }
        let scoped = try timed(iterations) {
            let address = base + UInt(Int(random.next() % UInt64(regions)) * Self.regionStride)
            let buffer = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: Self.regionSize)
            blackHole(try cache.withRegistration(buffer, access: .rdma) { $0.lkey })
        }
        return [
            FigureResult(figure: "random_hit", parameters: ["regions": regions], value: counted, unit: "ns_per_op"),
            FigureResult(figure: "random_hit_scoped", parameters: ["regions": regions], value: scoped, unit: "ns_per_op"),
        ]
    }

    /// Misses (insert + null registration + watch) growing to `regions`, and the heap each costs.
    func misses(regions: Int) throws -> [FigureResult] {
        let cache = makeCache()
        defer { cache.shutdown() }
        let before = heapInUse()
        let start = nowNanoseconds()
        let mapping = try populate(cache, regions: regions)
        let perMiss = Double(nowNanoseconds() - start) / Double(regions)
        let bytes = (heapInUse() - before) / Double(regions)
        withExtendedLifetime(mapping) {}  // unmapped after the timing, not after its last use
        return [
            FigureResult(figure: "miss", parameters: ["regions": regions], value: perMiss, unit: "ns_per_op"),
            FigureResult(figure: "bytes_per_region", parameters: ["regions": regions], value: bytes, unit: "bytes"),
        ]
    }

    /// Misses on buffers as the device figures make them: each a 64 KiB mapping of its own,
    /// touched, made before the cache sees it (so the monitor must find out what is mapped
    /// there). Null registrations: what the monitor and the cache cost a device miss.
    func missesOfFreshMappings(count: Int) throws -> [FigureResult] {
        let size = 65536
        let buffers = try (0..<count).map { _ in
            let mapping = try AnonymousMapping(length: size, populate: false)
            for offset in stride(from: 0, to: size, by: AnonymousMapping.pageSize) { mapping.bytes[offset] = 1 }
            return mapping
        }
        let cache = makeCache()
        defer { cache.shutdown() }
        let start = nowNanoseconds()
        for buffer in buffers { try cache.register(buffer.bytes, access: .rdma).release() }
        let perMiss = Double(nowNanoseconds() - start) / Double(count)
        // Unmapped only now: released after their last use, they were unmapped inside the timed
        // part (measured: 14 us of the 15 each "miss" cost).
        withExtendedLifetime(buffers) {}
        return [FigureResult(figure: "miss_fresh_mappings", parameters: ["size": size], value: perMiss, unit: "ns_per_op")]
    }

    func missesEvicting(regions: Int, limit: Int) throws -> [FigureResult] {
        let cache = makeCache(maxRegions: limit)
        defer { cache.shutdown() }
        let start = nowNanoseconds()
        let mapping = try populate(cache, regions: regions)
        let perMiss = Double(nowNanoseconds() - start) / Double(regions)
        withExtendedLifetime(mapping) {}  // unmapped after the timing, not after its last use
        return [FigureResult(figure: "miss_evicting", parameters: ["limit": limit, "regions": regions],
                             value: perMiss, unit: "ns_per_op")]
    }

    /// `munmap` of a cached 64 KiB region vs an uncached one, and from `munmap` returning to
    /// the cache having revoked the region (UCX revokes inside its munmap hook: 0 there).
    func invalidation(iterations: Int) throws -> [FigureResult] {
        let cache = makeCache()
        defer { cache.shutdown() }
        let size = 65536
        var cached = 0.0, uncached = 0.0, revoked = 0.0
        for _ in 0..<iterations {
            let mapping = try AnonymousMapping(length: size)
            let registration = try cache.register(mapping.bytes, access: .rdma)
            var start = nowNanoseconds()
            try mapping.unmap()
            let returned = nowNanoseconds()
            cached += Double(returned - start)
            guard registration.isRevoked else { throw BenchmarkFailure("munmap of a cached region was not seen") }
            revoked += Double(nowNanoseconds() - returned)
            registration.release()
            let plain = try AnonymousMapping(length: size)
            start = nowNanoseconds()
            try plain.unmap()
            uncached += Double(nowNanoseconds() - start)
        }
        let count = Double(iterations)
        return [
            FigureResult(figure: "munmap_cached_64k", value: cached / count, unit: "ns_per_op"),
            FigureResult(figure: "munmap_uncached_64k", value: uncached / count, unit: "ns_per_op"),
            FigureResult(figure: "munmap_to_revoked_64k", value: revoked / count, unit: "ns_per_op"),
        ]
    }

    /// Operations per second of `threads` threads on a shared set of regions (1: one hot
    /// region), counted and scoped.
    func throughput(regions: Int, threads: Int) throws -> [FigureResult] {
        let cache = makeCache()
        defer { cache.shutdown() }
        let mapping = try populate(cache, regions: regions)
        let base = mapping.address
        let seconds = scale > 1 ? 0.2 : 1.0
        let name = regions == 1 ? "hot_region_throughput" : "shared_set_throughput"
        let counted = run(threads: threads, seconds: seconds) { random in
            let address = base + UInt(regions == 1 ? 0 : Int(random.next() % UInt64(regions)) * Self.regionStride)
            try? cache.register(address: address, length: Self.regionSize, access: .rdma).release()
        }
        let scoped = run(threads: threads, seconds: seconds) { random in
            let address = base + UInt(regions == 1 ? 0 : Int(random.next() % UInt64(regions)) * Self.regionStride)
            let buffer = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: Self.regionSize)
            blackHole(try? cache.withRegistration(buffer, access: .rdma) { $0.lkey })
        }
        return [
            FigureResult(figure: name, parameters: ["threads": threads], value: counted, unit: "ops_per_s"),
            FigureResult(figure: name + "_scoped", parameters: ["threads": threads], value: scoped, unit: "ops_per_s"),
        ]
    }

    /// Buffers that come and go, as an application's do: map 4-128 KiB, register it (a miss),
    /// register it again (a counted hit), use it scoped, release both, then unmap it or map new
    /// pages over it (half each). Iterations per second of each thread, summed; the same loop as
    /// the peer's.
    func churn(threads: Int) -> [FigureResult] {
        let cache = makeCache()
        defer { cache.shutdown() }
        let seconds = scale > 1 ? 0.2 : 1.0
        let page = AnonymousMapping.pageSize
        let rate = run(threads: threads, seconds: seconds) { random in
            let length = (1 + Int(random.next() % 32)) * page
            guard let pointer = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                  pointer != MAP_FAILED else { return }
            let bytes = UnsafeRawBufferPointer(start: pointer, count: length)
            if let first = try? cache.register(bytes, access: .rdma), let second = try? cache.register(bytes, access: .rdma) {
                blackHole(try? cache.withRegistration(bytes, access: .rdma) { $0.lkey })
                first.release()
                second.release()
            }
            if random.next() % 2 == 0 {
                _ = mmap(pointer, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
            }
            munmap(pointer, length)
        }
        return [FigureResult(figure: "churn_throughput", parameters: ["threads": threads], value: rate, unit: "ops_per_s")]
    }

    private func run(threads: Int, seconds: Double, _ body: @escaping @Sendable (inout XorShift) -> Void) -> Double {
        operationsPerSecond(threads: threads, seconds: seconds) { thread, running in
            var random = XorShift(seed: 0x9E37_79B9_7F4A_7C15 &* UInt64(thread + 1))
            var done = 0
            while running() {
                for _ in 0..<256 { body(&random) }
                done += 256
            }
            return done
        }
    }

    /// Maps `regions` 4 KiB regions 8 KiB apart and registers (misses) each once. The mapping
    /// is not populated: the null registrar never touches it, and mapping it is not a miss.
    private func populate(_ cache: RegistrationCache, regions: Int) throws -> AnonymousMapping {
        let mapping = try AnonymousMapping(length: regions * Self.regionStride, populate: false)
        for index in 0..<regions {
            try cache.register(address: mapping.address + UInt(index * Self.regionStride), length: Self.regionSize,
                               access: .rdma).release()
        }
        return mapping
    }

    private func timed(_ iterations: Int, _ body: () throws -> Void) rethrows -> Double {
        let start = nowNanoseconds()
        for _ in 0..<iterations { try body() }
        return Double(nowNanoseconds() - start) / Double(iterations)
    }

    /// Bytes the heap has handed out (as the peer measures: mallinfo2, not RSS).
    private func heapInUse() -> Double { Double(ctest_heap_in_use()) }
}

/// A cheap generator so random figures do not measure the generator (the peer uses the same).
struct XorShift {
    var state: UInt64 = 88_172_645_463_325_252
    init(seed: UInt64 = 88_172_645_463_325_252) { state = seed == 0 ? 1 : seed }
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}

struct BenchmarkFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
