#if canImport(Glibc)
import Glibc
#endif
import NotifierEngine

/// The hand-off from the reader thread to the invalidation worker: a fixed ring of slots, each
/// one wake-up's open invalidation window plus the raw events read under it, and one
/// *overflow* for when the ring is full. Preallocated, so the reader never allocates; one
/// pthread mutex and one condition variable, held only for index updates (no holder
/// allocates, frees or waits for anything else while holding them).
///
/// Why two threads: invalidation callbacks run user code that allocates, frees, takes locks and
/// may even unmap watched memory; any of those can wait for a `read()` of the userfaultfd. On
/// the worker they wait for the reader, which never waits for them (DESIGN.md: "invalidation
/// runs on a worker while the reader thread only reads").
///
/// Why the overflow: the reader must never wait for the worker either. A worker stalled in a
/// callback (say on a lock that an unmapping thread holds while it waits for the reader) lets
/// the ring fill up; the reader then reads into a spare buffer and merges the ranges into the
/// overflow's one range (coarser, never narrower: invalidating more is always safe). The
/// overflow keeps the window of the first wake-up that overflowed open until the worker has
/// invalidated the merged range, so later wake-ups' windows may close at once.
///
/// `@unchecked Sendable`: every stored property is set once in `init`. The pthread objects are
/// used only through pthread calls. `head`, `tail`, `stopping`, `poked` and the overflow fields are
/// read and written only with `mutex` held. A slot's window and events are written by the
/// reader between `tryReserve()` (which hands it a slot the worker is not using) and
/// `publish()`, and read by the worker between `next()` and `release()`; the spare buffer is
/// used by the reader only.
final class EventQueue: @unchecked Sendable {
    enum Work { case slot(Int), overflow, poked }

    let slots: Int
    let slotBytes: Int
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let notEmpty = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let windows: UnsafeMutablePointer<InvalidationWindow>
    private let counts: UnsafeMutablePointer<Int>
    private let buffers: UnsafeMutableRawPointer
    /// The reader's buffer when every slot is full.
    let spare: UnsafeMutableRawPointer
    private var head = 0   // next slot the worker takes
    private var tail = 0   // next slot the reader fills
    private var stopping = false
    private var poked = false
    private let overflowWindow: UnsafeMutablePointer<InvalidationWindow>
    private var overflowHeld = false
    private var overflowStart: UInt = 0
    private var overflowEnd: UInt = 0
    /// Wake-ups that found the ring full (diagnostics).
    private(set) var overflows = 0

    init(slots: Int, eventsPerSlot: Int) {
        self.slots = max(1, slots)
        slotBytes = max(1, eventsPerSlot) * UserfaultfdEvent.size
        windows = .allocate(capacity: self.slots)
        counts = .allocate(capacity: self.slots)
        counts.initialize(repeating: 0, count: self.slots)
        buffers = .allocate(byteCount: self.slots * slotBytes, alignment: 64)
        spare = .allocate(byteCount: slotBytes, alignment: 64)
        overflowWindow = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        notEmpty.initialize(to: pthread_cond_t())
        pthread_cond_init(notEmpty, nil)
    }

    deinit {
        // Windows still queued (the worker normally drained them) must end.
        while head != tail {
            (windows + head % slots).move().end()
            head += 1
        }
        if overflowHeld { overflowWindow.move().end() }
        pthread_cond_destroy(notEmpty)
        pthread_mutex_destroy(mutex)
        notEmpty.deallocate()
        mutex.deallocate()
        windows.deallocate()
        counts.deallocate()
        buffers.deallocate()
        spare.deallocate()
        overflowWindow.deallocate()
    }

    /// Reader: the index of a free slot, or nil when all are full. Never waits.
    func tryReserve() -> Int? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if tail - head >= slots { return nil }
        return tail % slots
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

    /// Reader, ring full: merges [start, end) into the overflow. The first overflowing window
    /// is kept open until the worker is done; a later one ends here, since the kept (older)
    /// window still makes lookups wait until the merged range is invalidated.
    func publishOverflow(window: consuming InvalidationWindow, start: UInt, end: UInt) {
        pthread_mutex_lock(mutex)
        overflows += 1
        if overflowHeld {
            overflowStart = min(overflowStart, start)
            overflowEnd = max(overflowEnd, end)
            pthread_cond_signal(notEmpty)
            pthread_mutex_unlock(mutex)
            window.end()
            return
        }
        overflowWindow.initialize(to: window)
        overflowHeld = true
        overflowStart = start
        overflowEnd = end
        pthread_cond_signal(notEmpty)
        pthread_mutex_unlock(mutex)
    }

    /// Worker: the next work, or nil once stopping and drained.
    func next() -> Work? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while head == tail && !overflowHeld && !poked {
            if stopping { return nil }
            pthread_cond_wait(notEmpty, mutex)
        }
        if poked {
            poked = false
            return .poked
        }
        return overflowHeld ? .overflow : .slot(head % slots)
    }

    func events(_ index: Int) -> Int { counts[index] }

    /// Worker: the slot's window, moved out (the worker ends it).
    func window(_ index: Int) -> InvalidationWindow { (windows + index).move() }

    /// Worker: the slot is free again.
    func release() {
        pthread_mutex_lock(mutex)
        head += 1
        pthread_mutex_unlock(mutex)
    }

    /// Worker: invalidates the overflow's merged range in its window and ends it.
    func drainOverflow(as event: InvalidationEvent = .unmap, beforeClosing forget: (_ start: UInt, _ end: UInt) -> Void) {
        pthread_mutex_lock(mutex)
        guard overflowHeld else {
            pthread_mutex_unlock(mutex)
            return
        }
        let window = overflowWindow.move()
        overflowHeld = false
        let (start, end) = (overflowStart, overflowEnd)
        pthread_mutex_unlock(mutex)
        if end > start, let range = try? AddressRange(start: start, length: end - start) {
            // Merged events of several kinds: unmap is the strongest (drop everything).
            window.invalidate(range, event: event)
            forget(start, end)
        }
        window.end()
    }

    var overflowCount: Int {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return overflows
    }

    /// Wakes the worker with no work (it then looks at its failure flags).
    func poke() {
        pthread_mutex_lock(mutex)
        poked = true
        pthread_cond_signal(notEmpty)
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
