import CMemoryHooks
import MMUNotifier

/// The monitor's bookkeeping of what it registered with userfaultfd.
///
/// Every registered sub-range splits its mapping, and `vm.max_map_count` (65,530) caps a
/// process at a few tens of thousands of VMAs, so the monitor registers large aligned
/// *granules* (2 MiB by default) and counts the watched buffers inside each: 10^5 buffers in
/// a few hundred granules cost a few hundred VMAs at most. A granule whose neighbourhood
/// cannot be registered (a file mapping or another userfaultfd's range inside it) falls back
/// to registering exactly the buffers' pages ("pieces").
struct GranuleRecord: Sendable {
    /// Buffers (watch calls) counted in this granule.
    var buffers: Int
    /// nil: the whole granule is registered. Otherwise the page ranges registered one by one.
    var pieces: RegisteredPieces?
    /// Watches left before the next attempt to validate the granule (see `ValidatedGranules`).
    var validationCountdown = 0

    static let revalidateEvery = 64
}

/// A page-aligned byte range [start, end).
struct PageRange: Hashable, Sendable {
    var start: UInt
    var end: UInt
    var length: UInt { end - start }

    /// The start of every `granuleSize` granule this range touches.
    func granuleStarts(granuleSize: UInt) -> StrideTo<UInt> {
        stride(from: start & ~(granuleSize - 1), to: end, by: Int(granuleSize))
    }

    /// The part of this range inside the granule at `granule`.
    func clipped(toGranule granule: UInt, granuleSize: UInt) -> PageRange {
        PageRange(start: max(start, granule), end: min(end, granule &+ granuleSize))
    }

    /// The overlap of two ranges, nil when they do not meet.
    func intersection(_ other: PageRange) -> PageRange? {
        let overlap = PageRange(start: max(start, other.start), end: min(end, other.end))
        return overlap.start < overlap.end ? overlap : nil
    }
}

/// The granule table, guarded by the engine's `Locked` (a pthread mutex TSan understands).
///
/// Lock rule: taken by threads calling `watch`, `unwatch` and `shutdown` (the worker too, from
/// callbacks), which may allocate and issue ioctls while holding it; the *reader* thread never
/// takes it while the descriptor is live, so a holder whose allocation trims watched heap pages
/// waits only for the reader's read(), which never waits for this lock.
struct GranuleTable: Sendable {
    var records = GranuleKeyedTable<GranuleRecord>()
    var shutDown = false
    /// Set when the monitor failed (its descriptor is gone): watches are refused with it.
    var failure: MonitorError?

    /// Forgets every record (shutdown, a failed monitor), each taken out of the hooks' map after
    /// `each` (which may unregister it: the map counts go down after the kernel's).
    mutating func removeAllRecords(slot: HookSlot, granuleSize: UInt,
                                   _ each: (_ start: UInt, _ record: GranuleRecord) -> Void = { _, _ in }) {
        for (start, record) in records.entries {
            each(start, record)
            _ = slot.adjust(granule: start, size: granuleSize, registered: -1)
        }
        records.removeAll()
    }
}

/// This monitor's slot in the hooks' granule map (`CMemoryHooks`): which 2 MiB chunks hold its
/// registered and validated granules, read lock-free by every hooked call of the process.
/// Counts go up before the kernel registers and down after it unregistered, so a hook that
/// reads zero knows the memory is not registered at that instant (a watch racing it either
/// registers before the call, and the kernel reports an unmap, or after, and its probe sees the
/// change). No slot (hooks off, or all taken): every method does nothing.
struct HookSlot: Sendable {
    let index: Int32

    static let none = HookSlot(index: -1)

    var isActive: Bool { index >= 0 }

    func adjust(granule start: UInt, size: UInt, registered: Int32) -> Bool {
        guard isActive else { return true }
        return cmemhooks_slot_adjust(index, start, start &+ size, registered) == 0
    }
}

/// Granules found wholly registered: one registered mapping covers every page, so a buffer
/// inside needs no ioctl to be watched (the miss path's `UFFDIO_REGISTER` + probe, about a
/// microsecond with the mmap lock taken for writing).
///
/// Why skipping is safe: a page of such a granule stops being registered only by our own
/// unregister (which forgets the granule under the granule lock first) or by an unmap or remap
/// of it, which is a userfaultfd event. The worker forgets every granule an UNMAP or REMAP
/// event overlaps *before* it closes that event's window, and a cache miss watches only after
/// `readBegin`, which waits for open windows: so a watch that starts after such an `munmap`
/// returned finds the granule forgotten and registers again. Validation itself runs after the
/// register and a successful probe of the whole granule; an event processed later forgets it.
///
/// Lock order: the granule lock, then this one. The worker takes only this one; the reader
/// never takes either.
final class ValidatedGranules: Sendable {
    let granuleSize: UInt
    private let starts = Locked(GranuleKeyedTable<Bool>())

    init(granuleSize: UInt) { self.granuleSize = granuleSize }

    func containsAll(_ granules: StrideTo<UInt>) -> Bool {
        starts.withLock { set in granules.allSatisfy { set.contains($0) } }
    }

    func insert(_ granule: UInt) {
        starts.withLock { $0[granule] = true }
    }

    func remove(_ granule: UInt) {
        starts.withLock { _ = $0.removeValue(forKey: granule) }
    }

    func removeAll() {
        starts.withLock { $0.removeAll() }
    }

    var count: Int { starts.withLock { $0.count } }

    /// Forgets every granule overlapping `[start, end)` (the worker, before closing the window
    /// of an unmap or remap there; a hook, before a shmat or shmdt there).
    func forget(start: UInt, end: UInt) {
        guard end > start else { return }
        let first = start & ~(granuleSize - 1)
        starts.withLock { set in
            if set.isEmpty { return }
            if (end - first) / granuleSize > UInt(set.count) {
                // Allocation-free: the hooks call this before the call they intercept.
                set.removeAll { granule in !(granule &+ granuleSize <= start || granule >= end) }
            } else {
                for granule in stride(from: first, to: end, by: Int(granuleSize)) {
                    set.removeValue(forKey: granule)
                }
            }
        }
    }
}
