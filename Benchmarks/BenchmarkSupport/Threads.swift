#if canImport(Glibc)
import Glibc
#endif

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
