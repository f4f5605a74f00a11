// First figures of the registration cache's hit path, with the null registrar (no device work),
// so they are the cache's own. The full comparison with UCX is the benchmark issue's.
//
//   swift run -c release CacheBenchmark
import Foundation
import MemoryMapping
import MemoryRegistration
import Synchronization

/// Nanoseconds per call of `body`, median of `runs` runs of `iterations` calls.
func nanoseconds(runs: Int = 5, iterations: Int, _ body: () throws -> Void) rethrows -> Double {
    var samples: [Double] = []
    for _ in 0..<runs {
        let start = ContinuousClock.now
        for _ in 0..<iterations { try body() }
        let elapsed = ContinuousClock.now - start
        samples.append(Double(elapsed.components.attoseconds) / 1e9 + Double(elapsed.components.seconds) * 1e9)
    }
    return samples.sorted()[samples.count / 2] / Double(iterations)
}

/// Operations per second of `threads` threads each running `body` for `seconds`.
func throughput(threads: Int, seconds: Double, _ body: @escaping @Sendable () -> Void) -> Double {
    let done = DispatchGroup()
    let total = Counter()
    for _ in 0..<threads {
        done.enter()
        Thread {
            let deadline = ContinuousClock.now + .seconds(seconds)
            var count = 0
            while ContinuousClock.now < deadline {
                for _ in 0..<1000 { body() }
                count += 1000
            }
            total.value.add(count, ordering: .relaxed)
            done.leave()
        }.start()
    }
    done.wait()
    return Double(total.value.load(ordering: .relaxed)) / seconds
}

final class Counter: Sendable {
    let value = Atomic<Int>(0)
}

func run() throws {
    let cache = RegistrationCache(registrar: NullRegistrar())
    defer { cache.shutdown() }
    print("monitoring: \(cache.monitoring)")
    for size in [4096, 65536, 1 << 20] {
        let buffer = try AnonymousMapping(length: size)
        let bytes = UnsafeRawBufferPointer(buffer.bytes)
        try cache.register(bytes, access: .rdma).release()
        let scoped = try nanoseconds(iterations: 1_000_000) {
            _ = try cache.withRegistration(bytes, access: .rdma) { $0.lkey }
        }
        let counted = try nanoseconds(iterations: 1_000_000) {
            try cache.register(bytes, access: .rdma).release()
        }
        print(String(format: "hit %7d B: scoped %6.1f ns, counted register+release %6.1f ns", size, scoped, counted))
    }
    let hot = try AnonymousMapping(length: 4096)
    let address = hot.address
    try cache.register(UnsafeRawBufferPointer(hot.bytes), access: .rdma).release()
    let scopedHit: @Sendable () -> Void = {
        _ = try? cache.withRegistration(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: 4096),
                                        access: .rdma) { $0.lkey }
    }
    let one = throughput(threads: 1, seconds: 1, scopedHit)
    let two = throughput(threads: 2, seconds: 1, scopedHit)
    print(String(format: "scoped hits on one hot region: 1 thread %.1f M/s, 2 threads %.1f M/s (%.2fx)",
                 one / 1e6, two / 1e6, two / one))
    let countedHit: @Sendable () -> Void = {
        try? cache.register(address: address, length: 4096, access: .rdma).release()
    }
    let countedOne = throughput(threads: 1, seconds: 1, countedHit)
    let countedTwo = throughput(threads: 2, seconds: 1, countedHit)
    print(String(format: "counted hits on one hot region: 1 thread %.1f M/s, 2 threads %.1f M/s (%.2fx)",
                 countedOne / 1e6, countedTwo / 1e6, countedTwo / countedOne))
}

try run()
