#if canImport(Glibc)
import Glibc
#endif

/// Fails the test (instead of hanging the run) if `body` does not finish within `seconds`: runs
/// it on a thread of its own and waits with a deadline. A thread that never finishes is left
/// detached (the test has failed by then).
public func finishes(within seconds: Double, _ body: @escaping @Sendable () -> Void) -> Bool {
    final class Box: @unchecked Sendable {
        // @unchecked: `body` is immutable; `done` is written by the thread once, under `mutex`,
        // and read under it.
        let body: @Sendable () -> Void
        var done = false
        var mutex = pthread_mutex_t()
        var condition = pthread_cond_t()
        init(_ body: @escaping @Sendable () -> Void) {
            self.body = body
            pthread_mutex_init(&mutex, nil)
            var attributes = pthread_condattr_t()
            pthread_condattr_init(&attributes)
            pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
            pthread_cond_init(&condition, &attributes)
            pthread_condattr_destroy(&attributes)
        }
    }
    let box = Box(body)
    var thread = pthread_t()
    let context = Unmanaged.passRetained(box).toOpaque()
    guard pthread_create(&thread, nil, { raw in
        guard let raw else { return nil }
        let box = Unmanaged<Box>.fromOpaque(raw).takeRetainedValue()
        box.body()
        pthread_mutex_lock(&box.mutex)
        box.done = true
        pthread_cond_broadcast(&box.condition)
        pthread_mutex_unlock(&box.mutex)
        return nil
    }, context) == 0 else {
        Unmanaged<Box>.fromOpaque(context).release()
        return false
    }
    var deadline = timespec()
    clock_gettime(CLOCK_MONOTONIC, &deadline)
    deadline.tv_sec += Int(seconds)
    deadline.tv_nsec += Int((seconds - seconds.rounded(.down)) * 1e9)
    if deadline.tv_nsec >= 1_000_000_000 {
        deadline.tv_sec += 1
        deadline.tv_nsec -= 1_000_000_000
    }
    pthread_mutex_lock(&box.mutex)
    while !box.done {
        if pthread_cond_timedwait(&box.condition, &box.mutex, &deadline) == ETIMEDOUT { break }
    }
    let done = box.done
    pthread_mutex_unlock(&box.mutex)
    if done { pthread_join(thread, nil) } else { pthread_detach(thread) }
    return done
}
