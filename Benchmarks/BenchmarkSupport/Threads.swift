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
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2]
        : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

@inline(never) public func blackHole<T>(_ value: T) { _ = value }
