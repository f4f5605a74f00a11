#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value behind a pthread mutex. Used instead of the stdlib `Mutex` because ThreadSanitizer
/// sees pthread locking, while `Mutex`'s contended path (futex code inside the uninstrumented
/// Synchronization library) is invisible to it and produces false race reports. The engine's
/// tests run under TSan in CI, so every lock the engine takes must be one TSan understands.
public final class Locked<Value> {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    /// Unchecked by the runtime's exclusivity tracking: the mutex already makes every access
    /// exclusive (the dynamic check cost every lock a call into the runtime).
    @exclusivity(unchecked) private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        // Adaptive: a waiter spins briefly before it sleeps. The engine's and the cache's locks
        // are held for well under a microsecond, and the threads that meet on them (a miss and
        // the reclaim thread's teardown) otherwise pay a futex sleep and wake-up each time.
        var attributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&attributes)
        pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_ADAPTIVE_NP))
        pthread_mutex_init(mutex, &attributes)
        pthread_mutexattr_destroy(&attributes)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value. Not reentrant.
    @inline(__always)
    public func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

/// `@unchecked Sendable`: `value` is read and written only inside `withLock`, between
/// `pthread_mutex_lock` and `pthread_mutex_unlock` of `mutex`, which is allocated once and never
/// reassigned; and `Value` itself is `Sendable`, so what goes in or comes out may cross threads.
extension Locked: @unchecked Sendable where Value: Sendable {}
