import CMMUNotifier
import Synchronization

/// Sleepable RCU (the kernel's `srcu_struct`): readers may block inside their section, and the
/// read side writes only the calling thread's own counters (seed 000: no shared cache line on
/// the fast path). The grace-period side sums every thread's counters with the two-index flip of
/// Linux's classic SRCU, after a `membarrier()` that stands in for the readers' fences.
///
/// - `readLock()` / `readUnlock(_:)` or `withReadLock(_:)`: a read section; nestable.
/// - `synchronize()`: waits for every reader that entered before the call (`synchronize_srcu`).
/// - `call(afterGracePeriod:)`: runs a callback on the reclaim thread after a grace period, in
///   enqueue order (`call_srcu`).
/// - `barrier()`: waits for every callback queued before it (`srcu_barrier`).
public final class SRCUDomain: Sendable {
    @usableFromInline let counters: SRCUCounters
    let reclaimer: GracePeriodReclaimer

    public init() {
        counters = SRCUCounters()
        reclaimer = GracePeriodReclaimer(counters: counters)
    }

    deinit { reclaimer.stop() }

    /// The read side alone, for hot paths that keep it beside their own data: one stored word
    /// (the C domain) instead of a chain of class references, which the optimizer may retain
    /// around a read section (an atomic write to a line every thread shares). The holder keeps
    /// the domain alive.
    @inlinable
    public var readSide: SRCUReadSide { SRCUReadSide(domain: counters.domain) }

    /// Enters a read section. The token must be given back on the same thread (it is neither
    /// copyable nor `Sendable`); dropping it leaves the section too.
    @inlinable @inline(__always)
    public func readLock() -> SRCUReadToken { readSide.lock() }

    /// Leaves the read section `token` opened.
    @inlinable @inline(__always)
    public func readUnlock(_ token: consuming SRCUReadToken) {
        token.unlock()
    }

    /// Runs `body` inside a read section.
    @inlinable @inline(__always)
    public func withReadLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        let token = readLock()
        do {
            let result = try body()
            readUnlock(token)
            return result
        } catch {
            readUnlock(token)
            throw error
        }
    }

    /// Creates the calling thread's counter slot now (one allocation), so that its first read
    /// section allocates nothing: for threads that must not allocate at some later point.
    public func prepareCurrentThread() { _ = srcu_thread_nesting(counters.domain) }

    /// True when the calling thread is inside a read section of this domain.
    public var isInsideReadSection: Bool { srcu_thread_nesting(counters.domain) > 0 }

    /// Waits until every read section that began before this call has ended. Throws
    /// `.wouldDeadlock` when called inside a read section of this domain.
    public func synchronize() throws(NotifierError) {
        if isInsideReadSection { throw .wouldDeadlock("synchronize() inside a read section") }
        counters.synchronize()
    }

    /// Queues `callback` to run on the domain's reclaim thread after a grace period, after
    /// every callback queued before it. Never blocks and may be called inside a read section
    /// or from a notifier callback (seed 002: a notifier frees itself this way).
    public func call(afterGracePeriod callback: @escaping @Sendable () -> Void) {
        reclaimer.enqueue(callback)
    }

    /// Starts the grace period of the callbacks queued so far now, instead of after the batching
    /// delay (a caller that needs their work soon: a cache out of room).
    public func expedite() { reclaimer.expedite() }

    /// Waits until every callback queued before this call has run.
    public func barrier() throws(NotifierError) {
        if isInsideReadSection { throw .wouldDeadlock("barrier() inside a read section") }
        try reclaimer.barrier()
    }

    /// Threads that ever read this domain (each owns one counter slot; slots of exited threads
    /// are reused).
    public var readerSlotCount: Int { srcu_slot_count(counters.domain) }
}

/// `SRCUDomain.readSide`: enters and leaves read sections of a domain that its holder keeps alive.
///
/// `@unchecked Sendable`: the only stored property is the C domain's address, immutable; the
/// read-side functions it is passed to touch only the calling thread's own counters.
@frozen
public struct SRCUReadSide: @unchecked Sendable {
    @usableFromInline let domain: UnsafeMutableRawPointer

    @inlinable
    init(domain: UnsafeMutableRawPointer) { self.domain = domain }

    @inlinable @inline(__always)
    public func lock() -> SRCUReadToken {
        var slot: UnsafeMutableRawPointer?
        let index = srcu_read_lock_fast(domain, &slot)
        // srcu_read_lock_fast always sets the slot (it aborts on out-of-memory instead).
        return SRCUReadToken(slot: slot.unsafelyUnwrapped, index: index)
    }

    @inlinable @inline(__always)
    public func unlock(_ token: consuming SRCUReadToken) { token.unlock() }
}

/// A read section in progress. Not copyable (one unlock per lock) and not `Sendable` (the
/// counters it touches belong to the thread that locked).
@frozen
public struct SRCUReadToken: ~Copyable {
    @usableFromInline let slot: UnsafeMutableRawPointer
    @usableFromInline let index: UInt32

    @inlinable @inline(__always)
    init(slot: UnsafeMutableRawPointer, index: UInt32) {
        self.slot = slot
        self.index = index
    }

    @inlinable @inline(__always)
    consuming func unlock() {
        srcu_read_unlock_fast(slot, index)
        discard self
    }

    @inlinable
    deinit { srcu_read_unlock_fast(slot, index) }
}

/// Owns the C counter domain; shared by the domain and its reclaim thread so that the counters
/// outlive both.
///
/// `@unchecked Sendable`: the only stored property is an immutable pointer. The pointee's
/// shared fields are C11 atomics (`flip`, the counters, the slot list) or guarded by its own
/// pthread mutexes (grace periods, slot registry); the pointer is freed only in `deinit`.
@usableFromInline
final class SRCUCounters: @unchecked Sendable {
    @usableFromInline let domain: UnsafeMutableRawPointer

    init() {
        guard let domain = srcu_domain_create() else {
            fatalError("SRCUDomain: out of memory creating a counter domain")
        }
        self.domain = domain
    }

    deinit { srcu_domain_destroy(domain) }

    func synchronize() { srcu_synchronize(domain) }
}
