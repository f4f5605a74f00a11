#if canImport(Glibc)
import Glibc
#endif

/// A joinable OS thread (tests need real threads, not tasks: readers block).
public struct JoinHandle {
    public let thread: pthread_t
    public func join() { pthread_join(thread, nil) }
    public func detach() { pthread_detach(thread) }
}

private final class ThreadBody: Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

public func spawn(_ body: @escaping @Sendable () -> Void) -> JoinHandle {
    let context = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        guard let raw else { return nil }
        Unmanaged<ThreadBody>.fromOpaque(raw).takeRetainedValue().body()
        return nil
    }, context)
    precondition(rc == 0, "pthread_create failed")
    return JoinHandle(thread: thread)
}

/// Runs `body(i)` on `count` threads at once and joins them.
public func runConcurrently(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let handles = (0..<count).map { i in spawn { body(i) } }
    for h in handles { h.join() }
}

/// CLOCK_MONOTONIC in nanoseconds: deadlines of bounded stress runs.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
