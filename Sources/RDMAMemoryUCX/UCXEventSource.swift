import CUCXMonitor
import NotifierEngine
import Monitors

/// RDMAMemory as the source of UCX's VM_UNMAPPED memory events: a notifier on the process's
/// one address space that reports every invalidation to UCM (the C half's
/// `rdmamemory_ucx_invalidated`, which calls `ucm_vm_munmap`), and the watches of the ranges
/// UCX registered, so that changes no hook sees (raw system calls, glibc's own unmaps) become
/// invalidations there.
///
/// - A report runs in `invalidateRangeStart`, before the change is complete (UCX's own hooks call
///   it before the real `munmap`). UCM queues it when a lookup holds the cache's lock, and every
///   lookup applies the queue first.
/// - Watches are counted per registration: taken when UCX's `ibv_reg_mr` is served, undone when
///   UCX deregisters that region. The undo runs on the engine's reclaim thread after a grace
///   period, never in UCX's call: UCX deregisters under its cache's locks, and an unwatch may wait
///   for an invalidation in flight, whose report UCM delivers under those same caches' locks.
final class UCXEventSource: MMUNotifier {
    let monitor: MemoryMonitor
    /// The ranges UCX registered and this source watches, by the MR's address: a key only, never
    /// turned back into a pointer (libibverbs owns the MR; its address is unique while it lives,
    /// which is from the registration to the deregistration that removes the key).
    private let registrations = Locked<[UInt: AddressRange]>([:])  // pthread: TSan sees it (Locked's comment)

    init(monitor: MemoryMonitor) {
        self.monitor = monitor
    }

    func invalidateRangeStart(_ range: InvalidationRange, in space: AddressSpace) -> Bool {
        let start = range.range.start
        // `AddressRange.everything` (a release) has no length that fits: up to the top.
        let length = range.range.length ?? (UInt.max - start)
        rdmamemory_ucx_invalidated(start, Int(bitPattern: length))
        return true
    }

    /// Watches a range UCX is about to register: false when userfaultfd cannot (shared or file
    /// memory, another userfaultfd's range, no userfaultfd at all).
    func watch(_ range: AddressRange) -> Bool {
        monitor.watch(range) == .watched
    }

    /// UCX registered `range` as the MR at `key`, with one watch taken for it.
    func registered(key: UInt, _ range: AddressRange) {
        let replaced = registrations.withLock { $0.updateValue(range, forKey: key) }
        // An MR address is reused only after its deregistration, which removed the key: a
        // leftover means a deregistration this source did not see; its watch goes now.
        if let replaced { unwatchLater(replaced) }
    }

    /// UCX is deregistering the MR at `key`: its watch, if it had one, is undone later.
    func deregistering(key: UInt) {
        if let range = registrations.withLock({ $0.removeValue(forKey: key) }) { unwatchLater(range) }
    }

    /// Undoes one watch after a grace period, on the reclaim thread (see the type's comment).
    func unwatchLater(_ range: AddressRange) {
        let monitor = monitor
        monitor.space.srcu.call(afterGracePeriod: { try? monitor.unwatch(range) })
    }

    /// Number of UCX registrations watched now.
    var registrationCount: Int { registrations.withLock { $0.count } }
}
