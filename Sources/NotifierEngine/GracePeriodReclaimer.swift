import CMMUNotifier
import Synchronization

/// The `call_srcu` machinery: a FIFO of callbacks and one reclaim thread that takes everything
/// queued, waits one grace period for the whole batch, then runs it in order. Batching makes
/// the grace-period cost per callback small under load.
///
/// Like the kernel's SRCU (which starts a grace period from delayed work) and its lazy RCU
/// callbacks, the thread lets a batch gather for up to `batchDelay` before its grace period: a
/// steady trickle of callbacks (a buffer unmapped after every few registrations) then costs one
/// `membarrier` and one wake-up per batch instead of one per callback. `barrier()`, `expedite()`
/// and `stop()` cut the delay short (whoever waits for a callback uses one of them: a cache
/// short of room, a teardown waited for), and a batch of `batchLimit` callbacks starts at once.
///
/// Why 10 ms and not less: the grace period's `membarrier` interrupts every CPU running a thread
/// of the process, and the wake-up costs the thread that unmapped. With 200 µs the device cycle
/// (map, register, deregister, unmap 64 KiB on rxe in the VM) paid one grace period per buffer
/// and cost 1.4-1.8x a plain cycle; with 10 ms, 1.1-1.3x. What waits meanwhile is memory freed
/// late, bounded by the caches' limits, which expedite the batch when a miss needs room.
final class GracePeriodReclaimer: Sendable {
    private struct State {
        var queue: [@Sendable () -> Void] = []
        var enqueued: UInt64 = 0
        var completed: UInt64 = 0
        var threadStarted = false
        var threadWaiting = false
        var stopping = false
        /// Callers waiting in `barrier()`: the batch must not wait for company.
        var barriersWaiting = 0
        /// Set by `expedite()`: the next batch starts without waiting for company.
        var expedited = false
    }

    static let batchDelay = 10_000_000  // nanoseconds
    static let batchLimit = 4096

    private let counters: SRCUCounters
    private let state = Locked(State())
    private let events = WaitQueue()
    /// Set on the reclaim thread itself, so `barrier()` from a callback can refuse.
    private let reclaimThreadID = Atomic<UInt>(0)
    /// Mirrors `State.expedited`, so repeated `expedite()` calls before the batch starts cost a
    /// load each, not a lock and a wake-up.
    private let expedited = Atomic<Bool>(false)

    init(counters: SRCUCounters) { self.counters = counters }

    func enqueue(_ callback: @escaping @Sendable () -> Void) {
        let (start, wake) = state.withLock { s -> (Bool, Bool) in
            s.queue.append(callback)
            s.enqueued += 1
            let start = !s.threadStarted
            s.threadStarted = true
            // Wake an idle thread once, and a gathering one when the batch is full.
            let wake = s.threadWaiting || s.queue.count == Self.batchLimit
            s.threadWaiting = false
            return (start, wake)
        }
        if start { startThread() }
        if wake { events.wakeAll() }
    }

    func barrier() throws(NotifierError) {
        if reclaimThreadID.load(ordering: .relaxed) == currentThreadID() {
            throw .wouldDeadlock("barrier() on the reclaim thread")
        }
        let target = state.withLock { s in
            s.barriersWaiting += 1
            return s.enqueued
        }
        events.wakeAll()
        events.wait { state.withLock { $0.completed >= target } }
        state.withLock { $0.barriersWaiting -= 1 }
    }

    /// Cuts the batching delay of the batch gathering now.
    func expedite() {
        guard !expedited.load(ordering: .relaxed), !expedited.exchange(true, ordering: .acquiringAndReleasing) else { return }
        state.withLock { $0.expedited = true }
        events.wakeAll()
    }

    /// Lets the thread finish what is queued and exit (the domain is going away).
    func stop() {
        state.withLock { $0.stopping = true }
        events.wakeAll()
    }

    private func startThread() {
        do {
            try startDetachedThread { [self] in run() }
        } catch {
            // No thread. Inside a read section a grace period would wait for the caller: leave
            // the callbacks queued and try to start the thread again on the next `call`.
            if srcu_thread_nesting(counters.domain) > 0 {
                state.withLock { $0.threadStarted = false }
            } else {
                runBatchesInline()
            }
        }
    }

    /// Fallback when no thread can be started: same order, same grace period, on the caller.
    private func runBatchesInline() {
        while true {
            let (batch, upTo) = state.withLock { s in
                let batch = s.queue
                s.queue = []
                return (batch, s.enqueued)
            }
            if batch.isEmpty {
                state.withLock { $0.threadStarted = false }
                return
            }
            counters.synchronize()
            for callback in batch { callback() }
            state.withLock { $0.completed = max($0.completed, upTo) }
            events.wakeAll()
        }
    }

    private func run() {
        reclaimThreadID.store(currentThreadID(), ordering: .relaxed)
        while true {
            events.wait {
                state.withLock { s in
                    let ready = !s.queue.isEmpty || s.stopping
                    s.threadWaiting = !ready
                    return ready
                }
            }
            _ = events.wait(until: {
                state.withLock { s in s.stopping || s.barriersWaiting > 0 || s.expedited || s.queue.count >= Self.batchLimit }
            }, atMost: Self.batchDelay)
            let (batch, upTo, stopping) = state.withLock { s in
                let batch = s.queue
                s.queue = []
                s.expedited = false
                expedited.store(false, ordering: .releasing)
                return (batch, s.enqueued, s.stopping)
            }
            if batch.isEmpty && stopping { return }
            counters.synchronize()
            for callback in batch { callback() }
            state.withLock { $0.completed = upTo }
            events.wakeAll()
        }
    }
}

#if canImport(Glibc)
import Glibc
func currentThreadID() -> UInt { UInt(pthread_self()) }
#elseif canImport(Darwin)
import Darwin
func currentThreadID() -> UInt { UInt(bitPattern: pthread_self()) }
#endif
