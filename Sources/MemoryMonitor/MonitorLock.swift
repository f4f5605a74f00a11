#if canImport(Glibc)
import Glibc
#endif

/// A value behind a pthread mutex (ThreadSanitizer understands pthread locking; the stdlib
/// `Mutex`'s contended futex path is invisible to it).
///
/// Deadlock rule (DESIGN.md): the monitor thread never takes a `MonitorLock` whose holders may
/// allocate, free or unmap while holding it. Each lock's declaration says which side takes it.
final class MonitorLock<Value> {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

/// `@unchecked Sendable`: `value` is read and written only inside `withLock`, between
/// `pthread_mutex_lock` and `pthread_mutex_unlock` of `mutex`, which is allocated once and never
/// reassigned; `Value` is `Sendable`, so what goes in or comes out may cross threads.
extension MonitorLock: @unchecked Sendable where Value: Sendable {}
