#if canImport(Glibc)
import Glibc
#endif
import CShims
import NotifierEngine
import Synchronization
import SystemPackage

/// The monitor's two threads: the *reader*, which only waits, opens windows and reads, and
/// the *worker*, which invalidates (runs the engine's callbacks) and closes the windows.
///
/// The protocol (DESIGN.md, "Closing the userfaultfd race"): the kernel lets `munmap` return
/// once the reader has *read()* the UNMAP event, not once anyone has acted on it. So on every
/// wake-up the reader first opens an invalidation window (the engine's sequence turns odd and
/// every `readBegin` waits), then reads; the worker invalidates each range and closes the
/// window. Any lookup that starts after such a `munmap` returned waits for, or sees, its
/// invalidation.
///
/// Deadlock rules:
/// - The reader, between poll() returning and read() returning, does not allocate, free, or
///   take a lock but the engine's short internal one and the event queue's (whose holders
///   never block on anything). A thread in `munmap`, `madvise(DONTNEED)`, `mremap` or `brk` of
///   watched memory sleeps until that read; if the reader waited for a lock such a thread
///   holds, or for malloc (which may trim watched heap pages and so wait for the reader),
///   nothing would move again. Its buffers are preallocated before it starts.
/// - The reader never touches, unmaps or frees watched memory (it would wait for itself).
/// - Callbacks run on the worker, so they may allocate, free, watch, unwatch, and even unmap
///   watched memory: that waits for the reader, which never waits for the worker (a full
///   `EventQueue` overflows into one merged range instead).
/// - A `munmap` through the C library's symbol never reaches this thread when the monitor
///   intercepts it (`MemoryHooks`): its callbacks run in the unmapping thread, as the kernel's
///   mmu notifiers do, so there a callback must not take a lock held across that `munmap`.
///
/// Failure: if either thread stops for any reason but a requested stop (poll or read fails,
/// POLLERR, an injected failure in tests), `terminate` ends the userfaultfd context at once
/// (`UserfaultfdFile.releaseContext`: every thread waiting for an unread event wakes, every
/// registration goes), refuses later watches with the reason, and invalidates the whole address
/// space, so nothing cached outlives the monitoring and nothing waits for a reader that is gone.
final class MonitorThreads: Sendable {
    enum InjectedFailure: UInt8 {
        case none = 0
        /// The reader fails on its next wake-up with events, before reading them.
        case readerBeforeRead
        /// The worker fails at once (it is woken for it), before invalidating anything more.
        case worker
    }

    let descriptor: UserfaultfdDescriptor
    let file: UserfaultfdFile
    let space: AddressSpace
    /// The granule state: the worker forgets what an unmap or remap touched before it closes
    /// the window, and drops every record when the monitor fails.
    let granules: GranuleWatch
    var counters: MonitorCounters { granules.counters }
    let queue: EventQueue
    /// eventfd written by `requestStop()`.
    let stopFD: Int32
    /// `pthread_self()` of the worker (the thread that runs callbacks), 0 before it starts.
    let workerID = Atomic<UInt>(0)
    let readerID = Atomic<UInt>(0)
    /// Set once the reader has warmed up (its warm-up opens and closes an empty window, which
    /// would take back a validation racing with it: `init` waits for this).
    let readerReady = Atomic<Bool>(false)
    let finished = Atomic<Bool>(false)
    /// Set once by `terminate`.
    let failed = Atomic<Bool>(false)
    /// Set by `shutdown` when it runs on the worker: the worker closes the descriptor number
    /// when its loop ends (nothing else may close it while the worker can still use it).
    let closeWhenWorkerEnds = Atomic<Bool>(false)
    private let injected = Atomic<UInt8>(InjectedFailure.none.rawValue)
    /// Tests close it to hold the worker before it invalidates what the reader read: the window
    /// stays open, which is how a test watches a lookup wait deterministically.
    let workerGate = Atomic<Bool>(false)
    private let pageSize = UInt(sysconf(Int32(_SC_PAGESIZE)))
    /// Preallocated poll set, only used by the reader (bit pattern: Sendable without exception).
    private let pollAddress: UInt

    /// After a wake-up that found events, the reader keeps polling without sleeping for this
    /// long: an unmapping thread whose event is read before it goes to sleep returns at once.
    private let spinNanoseconds: UInt64

    init(descriptor: UserfaultfdDescriptor, file: UserfaultfdFile, space: AddressSpace,
         granules: GranuleWatch, eventsPerRead: Int, slots: Int, spinMicroseconds: Int) throws(MonitorError) {
        let stop = cshims_eventfd()
        guard stop >= 0 else {
            throw .systemCall(call: "eventfd", argument: "EFD_CLOEXEC | EFD_NONBLOCK", errno: .init(rawValue: errno))
        }
        self.descriptor = descriptor
        self.file = file
        self.space = space
        self.granules = granules
        spinNanoseconds = UInt64(spinMicroseconds) * 1000  // validated by the monitor's init
        stopFD = stop
        queue = EventQueue(slots: slots, eventsPerSlot: eventsPerRead)  // validated by the monitor's init
        let polls = UnsafeMutablePointer<pollfd>.allocate(capacity: 2)
        polls.initialize(repeating: pollfd(), count: 2)
        pollAddress = UInt(bitPattern: polls)
    }

    deinit {
        UnsafeMutablePointer<pollfd>(bitPattern: pollAddress)?.deallocate()
        close(stopFD)
    }

    /// True on the thread that runs invalidation callbacks.
    var isWorkerThread: Bool { isThread(workerID) }
    var isReaderThread: Bool { isThread(readerID) }

    private func isThread(_ id: borrowing Atomic<UInt>) -> Bool {
        let value = id.load(ordering: .acquiring)
        return value != 0 && pthread_equal(pthread_self(), pthread_t(value)) != 0
    }

    func requestStop() {
        var one: UInt64 = 1
        _ = write(stopFD, &one, 8)
    }

    /// Makes the reader or the worker fail at its next step, as a real failure would (tests).
    func inject(_ failure: InjectedFailure) {
        injected.store(failure.rawValue, ordering: .releasing)
        if failure == .worker { queue.poke() }
    }

    private func takeInjected(_ failure: InjectedFailure) -> Bool {
        // A load first: the reader asks on every wake-up, and a failure is almost never injected.
        injected.load(ordering: .relaxed) == failure.rawValue
            && injected.compareExchange(expected: failure.rawValue, desired: InjectedFailure.none.rawValue,
                                        ordering: .acquiringAndReleasing).exchanged
    }

    /// The monitor stops monitoring for good (once). A window opens first, so that lookups
    /// wait; then the userfaultfd context ends, so no thread waits any longer for a read that
    /// will not come (an unmap released that way has not been invalidated yet: the open window
    /// keeps every lookup that starts after it returned waiting until the invalidation), and
    /// from then on no thread can be waiting for the reader. The context really ends because
    /// this process alone holds the descriptor: a fork() child closes its copy at once
    /// (`UserfaultfdFile`).
    ///
    /// The rest runs on the worker, never on the reader (no user callback ever runs there):
    /// the window is handed over as an overflow of the whole address space, and the worker
    /// records the failure (later watches fail with `error`) and forgets every granule (the
    /// kernel dropped every registration with the context) before it invalidates everything
    /// and closes the window, so every cached translation is revoked.
    func terminate(_ error: MonitorError) {
        // Recorded before `failed` is set: the worker reads it once it sees `failed`.
        let first = failure.withLock { recorded -> Bool in
            if recorded != nil { return false }
            recorded = error
            return true
        }
        guard first else { return }
        failed.store(true, ordering: .releasing)
        let window = space.beginInvalidation()
        file.releaseContext()
        requestStop()
        if isWorkerThread {
            recordFailure()
            window.invalidate(.everything, event: .explicit)
            window.end()
        } else {
            queue.publishOverflow(window: window, start: 0, end: .max)
        }
    }

    /// Why `terminate` ran (set once, before `failed`), for the worker to record. Readable at
    /// once (the worker records it in the granule table a moment later). Lock order: the
    /// granule lock, then this one; the reader takes this one alone.
    private let failure = Locked<MonitorError?>(nil)

    var terminationReason: MonitorError? { failure.withLock { $0 } }

    /// The worker's half of a failure: watches refused with its reason, every record dropped.
    private func recordFailure() {
        granules.fail(failure.withLock { $0 } ?? .shutDown)
    }

    // MARK: Reader

    func runReader() {
        readerID.store(UInt(pthread_self()), ordering: .releasing)
        cshims_name_thread("uffd-reader")
        guard let polls = UnsafeMutablePointer<pollfd>(bitPattern: pollAddress) else {
            readerReady.store(true, ordering: .releasing)
            return
        }
        // Warm up before the first wake-up: a thread's first use of thread-local state (the
        // Swift runtime's exclusivity tracking, dynamic TLS of shared libraries) may allocate,
        // which must not happen between a wake-up and its read(). Both calls are harmless:
        // reserve() commits nothing, and an empty window only makes lookups wait a moment.
        _ = queue.tryReserve()
        space.beginInvalidation().end()
        readerReady.store(true, ordering: .releasing)
        var spinUntil: UInt64 = 0
        var failure: MonitorError?
        while !failed.load(ordering: .acquiring) {
            polls[0] = pollfd(fd: descriptor.fd, events: Int16(POLLIN), revents: 0)
            polls[1] = pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)
            // Spinning polls without a window: an empty poll must not make lookups wait.
            let spinning = spinUntil != 0 && monotonicNanoseconds() < spinUntil
            let ready = poll(polls, 2, spinning ? 0 : -1)
            if ready < 0 {
                if errno == EINTR { continue }
                failure = .monitorFailed(thread: "reader", call: "poll(userfaultfd)", errno: Errno(rawValue: errno))
                break
            }
            if ready == 0 { continue }
            if polls[1].revents != 0 { break }
            if polls[0].revents & Int16(POLLIN) != 0 {
                if takeInjected(.readerBeforeRead) {
                    failure = .monitorFailed(thread: "reader", call: "read(userfaultfd) (injected failure)", errno: .ioError)
                    break
                }
                switch readOnce() {
                case .events: if spinNanoseconds > 0 { spinUntil = monotonicNanoseconds() + spinNanoseconds }
                case .empty: break
                case .failed(let error):
                    failure = error
                }
                if failure != nil { break }
            } else if polls[0].revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 {
                failure = .monitorFailed(thread: "reader", call: "poll(userfaultfd) reported "
                    + (polls[0].revents & Int16(POLLNVAL) != 0 ? "POLLNVAL" : polls[0].revents & Int16(POLLHUP) != 0 ? "POLLHUP" : "POLLERR"),
                    errno: nil)
                break
            }
        }
        if let failure {
            terminate(failure)
        } else if !failed.load(ordering: .acquiring) {
            // Stop requested: events already queued still get their invalidation.
            while case .events = readOnce() {}
        }
        queue.stop()
    }

    enum ReadOutcome { case events, empty, failed(MonitorError) }

    /// One wake-up: take a slot (or the spare buffer when all are full), open a window, read,
    /// publish. Never waits for the worker.
    private func readOnce() -> ReadOutcome {
        counters.wakeups.wrappingAdd(1, ordering: .relaxed)
        let slot = queue.tryReserve()
        let buffer = slot.map { queue.buffer($0) } ?? queue.spare
        // --- From here to read() returning: no allocation, no free, no lock but the engine's
        // --- internal one, no access to watched memory (see the type's comment).
        let window = space.beginInvalidation()
        var count = 0
        var failure: Errno?
        while true {
            let n = read(descriptor.fd, buffer, queue.slotBytes)
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno != EAGAIN { failure = Errno(rawValue: errno) }
            count = n > 0 ? n / UserfaultfdEvent.size : 0
            break
        }
        // --- read() returned: the munmaps it reported may return now. The window stays open
        // --- until the worker has invalidated them, so later lookups wait for that.
        if count == 0 {
            counters.emptyWakeups.wrappingAdd(1, ordering: .relaxed)
            window.end()
            if let failure { return .failed(.monitorFailed(thread: "reader", call: "read(userfaultfd)", errno: failure)) }
            return .empty
        }
        guard let slot else {
            // Ring full: merge this wake-up's ranges into the overflow (see EventQueue).
            counters.overflows.wrappingAdd(1, ordering: .relaxed)
            var start = UInt.max
            var end: UInt = 0
            for index in 0..<count {
                let event = UserfaultfdEvent(at: buffer + index * UserfaultfdEvent.size)
                self.count(event)
                if event.invalidationEvent != nil && event.end > event.start {
                    start = min(start, event.start)
                    end = max(end, event.end)
                }
            }
            queue.publishOverflow(window: window, start: start, end: end)
            return .events
        }
        queue.publish(slot, window: window, count: count)
        return .events
    }

    // MARK: Worker

    func runWorker() {
        workerID.store(UInt(pthread_self()), ordering: .releasing)
        cshims_name_thread("uffd-worker")
        var failureRecorded = false
        while let work = queue.next() {
            if takeInjected(.worker) {
                terminate(.monitorFailed(thread: "worker", call: "invalidation (injected failure)", errno: nil))
                failureRecorded = true
            }
            if failed.load(ordering: .acquiring) {
                // The failure's own window (the overflow, everything) invalidates all; the
                // windows of events read before it only end.
                if !failureRecorded {
                    recordFailure()
                    failureRecorded = true
                }
                switch work {
                case .slot(let slot):
                    queue.window(slot).end()
                    queue.release()
                case .overflow:
                    queue.drainOverflow(as: .explicit) { _, _ in }
                case .poked:
                    break
                }
                continue
            }
            switch work {
            case .poked:
                continue
            case .overflow:
                queue.drainOverflow { start, end in granules.forget(start: start, end: end) }
                continue
            case .slot(let slot):
                while workerGate.load(ordering: .acquiring) { sched_yield() }
                let window = queue.window(slot)
                let buffer = queue.buffer(slot)
                for index in 0..<queue.events(slot) {
                    let event = UserfaultfdEvent(at: buffer + index * UserfaultfdEvent.size)
                    count(event)
                    if let range = event.range, let cause = event.invalidationEvent {
                        window.invalidate(range, event: cause)
                        // The old range may be unregistered now (a remove keeps its registration).
                        if event.kind == .unmap || event.kind == .remap {
                            granules.forget(start: event.start, end: event.end)
                        }
                    }
                }
                window.end()
                queue.release()
            }
        }
        finished.store(true, ordering: .releasing)
        if closeWhenWorkerEnds.load(ordering: .acquiring) { file.close() }
    }

    private func count(_ event: UserfaultfdEvent) {
        switch event.kind {
        case .unmap: counters.unmapEvents.wrappingAdd(1, ordering: .relaxed)
        case .remove: counters.removeEvents.wrappingAdd(1, ordering: .relaxed)
        case .remap: counters.remapEvents.wrappingAdd(1, ordering: .relaxed)
        case .writeProtectFault:
            // Never expected: nothing write-protects these pages. Resolve it so the faulting
            // thread does not hang (UFFDIO_WRITEPROTECT mode 0 also wakes it).
            counters.unexpectedFaults.wrappingAdd(1, ordering: .relaxed)
            if !file.isReleased { _ = descriptor.isRegistered(start: event.start & ~(pageSize - 1), length: pageSize) }
        case .other: break
        }
    }
}

func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// pthread entry points: nonisolated C functions (a closure in top-level code would be inferred
/// @MainActor). Each takes over one retain of the `MonitorThreads` passed as `context`.
func monitorReaderEntry(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    guard let context else { return nil }
    Unmanaged<MonitorThreads>.fromOpaque(context).takeRetainedValue().runReader()
    return nil
}

func monitorWorkerEntry(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    guard let context else { return nil }
    Unmanaged<MonitorThreads>.fromOpaque(context).takeRetainedValue().runWorker()
    return nil
}
