import NotifierEngine

/// The memory the monitor knows to be validated: pages found registered (the probe) and all
/// private anonymous memory (the query), so that a watch there issues no ioctl (the miss path's
/// `UFFDIO_REGISTER`, probe and mapping query cost about a microsecond each natively, with the
/// mmap lock taken, and the query on Linux 6.1 is a read of /proc/self/maps). Kept as one span of
/// pages per granule: a whole granule once every page of it passed (`GranuleWatch.validate`),
/// else the pages of the buffers whose watch asked the kernel (a granule at the edge of a mapping,
/// a heap's top, a block glibc mapped for itself), so that the next buffer there, in a new cache
/// or after an eviction, asks nothing either. The mappings the hooked `mmap` made are the hooks'
/// own record, in C (`cmemhooks_known_mapping_find`); `GranuleWatch.watchKnownMemory` uses both.
///
/// Why skipping is safe: validated pages stop being registered private anonymous memory only by
/// our own unregister (which forgets them first), by a hooked call (which forgets them before
/// the real call) or by an unmap or remap of them, which is a userfaultfd event. The worker
/// forgets what an UNMAP or REMAP event overlaps *before* it closes that event's window, and a
/// cache miss watches only after `readBegin`, which waits for open windows: so a watch that
/// starts after such an `munmap` returned finds them forgotten and registers again. Pages are
/// added after their register, probe and query, unless a window opened meanwhile. A
/// page that was a hole is never validated (the probe fails there), so a mapping made there
/// later, by any call, is asked about.
///
/// Lock order: the watch table's lock, then this one. The worker and the hooks' forgetting take
/// only this one; the reader never takes either.
final class KnownMemory: Sendable {
    let granuleSize: UInt
    private let validatedSpans = Locked(GranuleKeyedTable<PageRange>())

    init(granuleSize: UInt) {
        self.granuleSize = granuleSize
    }

    /// True when every page of `pages` is validated.
    func validated(_ pages: PageRange) -> Bool {
        validatedSpans.withLock { table in
            !table.isEmpty && pages.granuleStarts(granuleSize: granuleSize).allSatisfy { start in
                guard let span = table[start] else { return false }
                return span.contains(pages.clipped(toGranule: start, granuleSize: granuleSize))
            }
        }
    }

    /// Validates `pages`, checked by the kernel after the window sequence read `before`, unless
    /// a window opened since. In each granule the span grows to take pages that overlap or
    /// touch it; pages apart from it replace it, unless it is larger (the newer buffers are
    /// where the next ones come).
    ///
    /// The sequence is read again under this lock, which the worker and the hooks take to forget:
    /// an unmap whose window opened before that read is refused here; one whose window opens
    /// after it forgets the pages once this returns. Checked after the insert instead, a watch
    /// in another thread could trust pages between the insert and their removal (the ordering
    /// test found it: a generation mapped after the unmap, never registered, taken as watched).
    func insert(_ pages: PageRange, checkedAfter before: UInt64, in space: AddressSpace) {
        validatedSpans.withLock { table in
            guard before & 1 == 0, space.openWindowSequence == before else { return }
            for start in pages.granuleStarts(granuleSize: granuleSize) {
                let part = pages.clipped(toGranule: start, granuleSize: granuleSize)
                guard let span = table[start] else {
                    table[start] = part
                    continue
                }
                if part.start <= span.end && span.start <= part.end {
                    table[start] = PageRange(start: min(span.start, part.start), end: max(span.end, part.end))
                } else if part.length >= span.length {
                    table[start] = part
                }
            }
        }
    }

    /// Forgets the granule (it is about to be unregistered).
    func remove(granule: UInt) {
        validatedSpans.withLock { _ = $0.removeValue(forKey: granule) }
    }

    func removeAll() {
        validatedSpans.withLock { $0.removeAll() }
    }

    /// Granules validated whole.
    var validatedCount: Int {
        validatedSpans.withLock { table in table.entries.count { $0.value.length == granuleSize } }
    }

    /// Forgets the validated pages in `[start, end)` (the worker, before closing the window of
    /// an unmap or remap there; a hook, before the call it intercepts). A span keeps its larger
    /// side outside the range: an unmap changes nothing about the pages beside it (a heap
    /// trimmed at its top keeps the buffers below known). Allocation-free.
    func forget(start: UInt, end: UInt) {
        guard end > start else { return }
        let first = start & ~(granuleSize - 1)
        validatedSpans.withLock { table in
            if table.isEmpty { return }
            // In place, never a copy of the table (a copy would allocate on the next change).
            if (end - first) / granuleSize > UInt(table.count) {
                table.removeAll { granule in !(granule &+ granuleSize <= start || granule >= end) }
                return
            }
            for granule in stride(from: first, to: end, by: Int(granuleSize)) {
                guard let span = table[granule], span.start < end && start < span.end else { continue }
                let below = start > span.start ? start - span.start : 0
                let above = span.end > end ? span.end - end : 0
                if below == 0 && above == 0 {
                    table.removeValue(forKey: granule)
                } else if below >= above {
                    table[granule] = PageRange(start: span.start, end: start)
                } else {
                    table[granule] = PageRange(start: end, end: span.end)
                }
            }
        }
    }
}
