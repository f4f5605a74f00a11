#if canImport(Glibc)
import Glibc
#endif
import MMUNotifier

/// The hand-off from the reader thread to the invalidation worker: a fixed ring of slots, each
/// one wake-up's open invalidation window plus the raw events read under it. Preallocated, so
/// the reader never allocates; one pthread mutex and two condition variables, held only for
/// index updates (no holder allocates, frees or waits for anything else while holding them).
///
/// Why two threads: invalidation callbacks run user code that allocates, frees, takes locks and
/// may even unmap watched memory; any of those can wait for a `read()` of the userfaultfd. On
/// the worker they wait for the reader, which never waits for them (DESIGN.md: "invalidation
/// runs on a worker while the reader thread only reads"). The reader waits for the worker only
/// when every slot is full, which needs more blocked unmapping threads than slots × events.
///
/// `@unchecked Sendable`: every stored property is set once in `init`. The pthread objects are
/// used only through pthread calls. `head`, `tail` and `stopping` are read and written only
/// with `mutex` held. A slot's window and events are written by the reader between `reserve()`
/// (which hands it a slot the worker is not using) and `publish()`, and read by the worker
/// between `take()` and `release()`, each under the mutex's happens-before edges.
final class EventQueue: @unchecked Sendable {
    let slots: Int
    let slotBytes: Int
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let notEmpty = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let notFull = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let windows: UnsafeMutablePointer<InvalidationWindow>
    private let counts: UnsafeMutablePointer<Int>
    private let buffers: UnsafeMutableRawPointer
    private var head = 0   // next slot the worker takes
    private var tail = 0   // next slot the reader fills
    private var stopping = false

    init(slots: Int, eventsPerSlot: Int) {
        self.slots = max(2, slots)
        slotBytes = max(1, eventsPerSlot) * UserfaultfdEvent.size
        windows = .allocate(capacity: self.slots)
        counts = .allocate(capacity: self.slots)
        counts.initialize(repeating: 0, count: self.slots)
        buffers = .allocate(byteCount: self.slots * slotBytes, alignment: 64)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        notEmpty.initialize(to: pthread_cond_t())
        pthread_cond_init(notEmpty, nil)
        notFull.initialize(to: pthread_cond_t())
        pthread_cond_init(notFull, nil)
    }

    deinit {
        // Slots between head and tail hold windows: end them (the worker normally drained them).
        while head != tail {
            (windows + head % slots).move().end()
            head += 1
        }
        pthread_cond_destroy(notFull)
        pthread_cond_destroy(notEmpty)
        pthread_mutex_destroy(mutex)
        notFull.deallocate()
        notEmpty.deallocate()
        mutex.deallocate()
        windows.deallocate()
        counts.deallocate()
        buffers.deallocate()
    }

    /// Reader: the index of a free slot, waiting while all are full.
    func reserve() -> Int {
        pthread_mutex_lock(mutex)
        while tail - head >= slots { pthread_cond_wait(notFull, mutex) }
        let index = tail % slots
        pthread_mutex_unlock(mutex)
        return index
    }

    func buffer(_ index: Int) -> UnsafeMutableRawPointer { buffers + index * slotBytes }

    /// Reader: hands the slot (its window, and `count` events in its buffer) to the worker.
    func publish(_ index: Int, window: consuming InvalidationWindow, count: Int) {
        (windows + index).initialize(to: window)
        counts[index] = count
        pthread_mutex_lock(mutex)
        tail += 1
        pthread_cond_signal(notEmpty)
        pthread_mutex_unlock(mutex)
    }

    /// Worker: the next published slot, or nil once stopping and drained.
    func take() -> Int? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while head == tail {
            if stopping { return nil }
            pthread_cond_wait(notEmpty, mutex)
        }
        return head % slots
    }

    func events(_ index: Int) -> Int { counts[index] }

    /// Worker: the slot's window, moved out (the worker ends it).
    func window(_ index: Int) -> InvalidationWindow { (windows + index).move() }

    /// Worker: the slot is free again.
    func release() {
        pthread_mutex_lock(mutex)
        head += 1
        pthread_cond_signal(notFull)
        pthread_mutex_unlock(mutex)
    }

    /// Reader, after its last publish: the worker drains what is left and returns.
    func stop() {
        pthread_mutex_lock(mutex)
        stopping = true
        pthread_cond_broadcast(notEmpty)
        pthread_mutex_unlock(mutex)
    }
}
