import NotifierEngine

/// The granules the monitor knows to be validated: found wholly registered, one registered
/// private anonymous mapping over every page (`GranuleWatch.validateIfWhole`), so that a watch
/// there issues no ioctl (the miss path's `UFFDIO_REGISTER`, probe and mapping query cost about a
/// microsecond each natively, with the mmap lock taken, and the query on Linux 6.1 is a read of
/// /proc/self/maps). The mappings the hooked `mmap` made are the hooks' own record, in C
/// (`cmemhooks_known_mapping_find`); `GranuleWatch.watchKnownMemory` uses both.
///
/// Why skipping is safe: a validated granule stops being registered private anonymous memory
/// only by our own unregister (which forgets it first), by a hooked call (which forgets it before
/// the real call) or by an unmap or remap of it, which is a userfaultfd event. The worker forgets
/// what an UNMAP or REMAP event overlaps *before* it closes that event's window, and a cache
/// miss watches only after `readBegin`, which waits for open windows: so a watch that starts
/// after such an `munmap` returned finds it forgotten and registers again. A validated granule
/// is added after its register and probe, unless a window opened meanwhile.
///
/// Lock order: the watch table's lock, then this one. The worker and the hooks' forgetting take
/// only this one; the reader never takes either.
final class KnownMemory: Sendable {
    let granuleSize: UInt
    private let validatedGranules = Locked(GranuleKeyedTable<Bool>())

    init(granuleSize: UInt) {
        self.granuleSize = granuleSize
    }

    /// True when every granule in `starts` is validated.
    func validated(_ starts: StrideTo<UInt>) -> Bool {
        validatedGranules.withLock { table in !table.isEmpty && starts.allSatisfy { table.contains($0) } }
    }

    /// Validates the granule, checked by the kernel after the window sequence read `before`,
    /// unless a window opened since. The sequence is read again under this lock, which the
    /// worker and the hooks take to forget: an unmap whose window opened before that read is
    /// refused here; one whose window opens after it forgets the granule once this returns.
    /// Checked after the insert instead, a watch in another thread could trust the granule
    /// between the insert and its removal.
    func insert(granule: UInt, checkedAfter before: UInt64, in space: AddressSpace) {
        validatedGranules.withLock { table in
            guard before & 1 == 0, space.openWindowSequence == before else { return }
            table[granule] = true
        }
    }

    /// Forgets the granule (it is about to be unregistered).
    func remove(granule: UInt) {
        validatedGranules.withLock { _ = $0.removeValue(forKey: granule) }
    }

    func removeAll() {
        validatedGranules.withLock { $0.removeAll() }
    }

    var validatedCount: Int { validatedGranules.withLock { $0.count } }

    /// Forgets every granule overlapping `[start, end)` (the worker, before closing the window
    /// of an unmap or remap there; a hook, before the call it intercepts). Allocation-free.
    func forget(start: UInt, end: UInt) {
        guard end > start else { return }
        let first = start & ~(granuleSize - 1)
        validatedGranules.withLock { table in
            if table.isEmpty { return }
            // In place, never a copy of the table (a copy would allocate on the next change).
            if (end - first) / granuleSize > UInt(table.count) {
                table.removeAll { granule in !(granule &+ granuleSize <= start || granule >= end) }
            } else {
                for granule in stride(from: first, to: end, by: Int(granuleSize)) {
                    table.removeValue(forKey: granule)
                }
            }
        }
    }
}
