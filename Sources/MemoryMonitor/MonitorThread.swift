#if canImport(Glibc)
import Glibc
#endif
import CShims
import MMUNotifier
import Synchronization

/// The monitor thread's loop and the state only it touches.
///
/// The protocol (DESIGN.md, "Closing the userfaultfd race"): the kernel lets `munmap` return
/// once this thread has *read()* the UNMAP event, not once it has acted on it. So on every
/// wake-up the thread first opens an invalidation window (the engine's sequence turns odd and
/// every `readBegin` waits), then reads, then invalidates each range, then closes the window.
/// Any lookup that starts after such a `munmap` returned therefore waits for, or sees, its
/// invalidation.
///
/// Deadlock rules this code keeps:
/// - Between poll() returning and read() returning: no allocation, no free, no lock but the
///   engine's short internal one (taken inside `beginInvalidation`). A thread in `munmap`,
///   `madvise(DONTNEED)`, `mremap` or `brk` of watched memory sleeps until the read; if this
///   thread waited for a lock that thread holds, or for malloc (which may trim watched heap
///   pages with madvise/brk and so wait for this very thread), nothing would ever move again.
/// - This thread never touches, unmaps or frees watched memory: `munmap` of a watched range
///   waits for this thread's read, so doing it here would wait for itself. The read buffer and
///   the poll set are allocated by `init`, before the thread starts, and freed after it ends.
final class MonitorThread: Sendable {
    let descriptor: UserfaultfdDescriptor
    let space: AddressSpace
    let counters = MonitorCounters()
    /// eventfd written by `requestStop()`.
    let stopFD: Int32
    /// `pthread_self()` of the running thread, 0 before it starts.
    let threadID = Atomic<UInt>(0)
    let finished = Atomic<Bool>(false)
    /// Unwatches asked for from inside invalidation callbacks (on this thread), performed later
    /// by the next `watch`/`unwatch`/`shutdown` on another thread. Taken by this thread only
    /// after read(), and by other threads only to swap the array out (they never allocate or
    /// free while holding it).
    let deferredUnwatches = MonitorLock<[AddressRange]>([])

    private let bufferBytes: Int
    /// Preallocated read buffer and poll set; only the monitor thread uses them while it runs.
    /// Stored as bit patterns so the class is Sendable without an unchecked exception.
    private let bufferAddress: UInt
    private let pollAddress: UInt

    init(descriptor: UserfaultfdDescriptor, space: AddressSpace, eventsPerRead: Int) throws(MonitorError) {
        let stop = cshims_eventfd()
        guard stop >= 0 else {
            throw .systemCall(call: "eventfd", argument: "EFD_CLOEXEC | EFD_NONBLOCK", errno: .init(rawValue: errno))
        }
        self.descriptor = descriptor
        self.space = space
        stopFD = stop
        bufferBytes = max(1, eventsPerRead) * UserfaultfdEvent.size
        bufferAddress = UInt(bitPattern: UnsafeMutableRawPointer.allocate(byteCount: bufferBytes, alignment: 16))
        let polls = UnsafeMutablePointer<pollfd>.allocate(capacity: 2)
        polls.initialize(repeating: pollfd(), count: 2)
        pollAddress = UInt(bitPattern: polls)
    }

    deinit {
        UnsafeMutableRawPointer(bitPattern: bufferAddress)?.deallocate()
        UnsafeMutablePointer<pollfd>(bitPattern: pollAddress)?.deallocate()
        close(stopFD)
    }

    var isCurrentThread: Bool {
        let id = threadID.load(ordering: .acquiring)
        return id != 0 && pthread_equal(pthread_self(), pthread_t(id)) != 0
    }

    func requestStop() {
        var one: UInt64 = 1
        _ = write(stopFD, &one, 8)
    }

    /// The thread body: wait, drain, repeat; on stop, drain what is queued and return.
    func run() {
        threadID.store(UInt(pthread_self()), ordering: .releasing)
        guard let polls = UnsafeMutablePointer<pollfd>(bitPattern: pollAddress) else { return }
        while true {
            polls[0] = pollfd(fd: descriptor.fd, events: Int16(POLLIN), revents: 0)
            polls[1] = pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)
            let ready = poll(polls, 2, -1)
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            if polls[1].revents != 0 { break }
            if polls[0].revents & Int16(POLLIN) != 0 {
                _ = drainOnce()
            } else if polls[0].revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 {
                break
            }
        }
        // Stop requested: events already queued still get their invalidation.
        while drainOnce() {}
        finished.store(true, ordering: .releasing)
    }

    /// One window: open, read, invalidate, close. Returns false when read() found nothing.
    @discardableResult
    func drainOnce() -> Bool {
        guard let buffer = UnsafeMutableRawPointer(bitPattern: bufferAddress) else { return false }
        counters.wakeups.wrappingAdd(1, ordering: .relaxed)
        // --- From here to read() returning: no allocation, no free, no lock but the engine's
        // --- internal one, no access to watched memory (see the type's comment).
        let window = space.beginInvalidation()
        var count = 0
        while true {
            let n = read(descriptor.fd, buffer, bufferBytes)
            if n < 0 && errno == EINTR { continue }
            count = n > 0 ? n / UserfaultfdEvent.size : 0
            break
        }
        // --- read() returned: the munmaps it reported may return now; the window is still
        // --- open, so lookups that start from here on wait for the invalidations below.
        if count == 0 {
            counters.emptyWakeups.wrappingAdd(1, ordering: .relaxed)
            window.end()
            return false
        }
        for index in 0..<count {
            let event = UserfaultfdEvent(at: buffer + index * UserfaultfdEvent.size)
            switch event.kind {
            case .unmap: counters.unmapEvents.wrappingAdd(1, ordering: .relaxed)
            case .remove: counters.removeEvents.wrappingAdd(1, ordering: .relaxed)
            case .remap: counters.remapEvents.wrappingAdd(1, ordering: .relaxed)
            case .writeProtectFault:
                // Never expected: nothing write-protects these pages. Resolve it so the
                // faulting thread does not hang (mode 0 also wakes it).
                counters.unexpectedFaults.wrappingAdd(1, ordering: .relaxed)
                let page = event.start & ~UInt(sysconf(Int32(_SC_PAGESIZE)) - 1)
                _ = descriptor.isRegistered(start: page, length: UInt(sysconf(Int32(_SC_PAGESIZE))))
            case .other: break
            }
            if let range = event.range, let cause = event.invalidationEvent {
                window.invalidate(range, event: cause)
            }
        }
        window.end()
        return true
    }
}

/// The pthread entry point: a nonisolated C function (a closure in top-level code would be
/// inferred @MainActor). Takes over one retain of the `MonitorThread` passed as `context`.
func monitorThreadEntry(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    guard let context else { return nil }
    let thread = Unmanaged<MonitorThread>.fromOpaque(context).takeRetainedValue()
    thread.run()
    return nil
}
