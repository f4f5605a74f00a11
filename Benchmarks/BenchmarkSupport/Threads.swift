#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A joinable OS thread: benchmarks measure threads they start themselves, not Swift's
/// cooperative pool.
public struct BenchThread {
    let thread: pthread_t
    public func join() { pthread_join(thread, nil) }
}

private final class Body: Sendable {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

/// Starts a thread running `run`. The entry point is a nonisolated closure in a non-main file
/// (a closure in top-level main.swift code would be inferred @MainActor and trap).
public func startThread(_ run: @escaping @Sendable () -> Void) -> BenchThread {
    let context = Unmanaged.passRetained(Body(run)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        guard let raw else { return nil }
        Unmanaged<Body>.fromOpaque(raw).takeRetainedValue().run()
        return nil
    }, context)
    if rc != 0 { fatalError("pthread_create: \(rc)") }
    return BenchThread(thread: thread)
}

public func nowNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

public func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    if sorted.isEmpty { return 0 }
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2]
        : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

/// `value` rounded to `digits` decimals, for tables.
public func format(_ value: Double, _ digits: Int = 2) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    return "\(rounded)"
}

@inline(never) public func blackHole<T>(_ value: T) { _ = value }

/// Operations per second of `threads` threads running `work` together for `seconds`. Each
/// thread waits until all are started, loops while `running()` is true and returns how many
/// operations it did; the count is over the time from the start signal to the last join.
public func operationsPerSecond(
    threads: Int, seconds: Double,
    _ work: @escaping @Sendable (_ thread: Int, _ running: () -> Bool) -> Int
) -> Double {
    let shared = ThroughputRun()
    let workers = (0..<threads).map { thread in
        startThread {
            while !shared.go.load(ordering: .acquiring) {}
            let done = work(thread) { !shared.stop.load(ordering: .relaxed) }
            shared.total.wrappingAdd(done, ordering: .relaxed)
        }
    }
    let start = nowNanoseconds()
    shared.go.store(true, ordering: .releasing)
    usleep(UInt32(seconds * 1e6))
    shared.stop.store(true, ordering: .relaxed)
    for worker in workers { worker.join() }
    return Double(shared.total.load(ordering: .relaxed)) / (Double(nowNanoseconds() - start) / 1e9)
}

private final class ThroughputRun: Sendable {
    let go = Atomic<Bool>(false)
    let stop = Atomic<Bool>(false)
    let total = Atomic<Int>(0)
}
