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
/// the real call and again after it) or by an unmap or remap of them, which is a userfaultfd event. The worker
/// forgets what an UNMAP or REMAP event overlaps *before* it closes that event's window, and a
/// cache miss watches only after `readBegin`, which waits for open windows: so a watch that
/// starts after such an `munmap` returned finds them forgotten and registers again. Pages are
/// added after their register, probe and query, unless a window opened or anything was
/// forgotten meanwhile (`Stamp`). A page that was a hole is never validated (the probe fails
/// there), so a mapping made there later, by any call, is asked about.
///
/// Lock order: the watch table's lock, then this one. The worker and the hooks' forgetting take
/// only this one; the reader never takes either.
final class KnownMemory: Sendable {
    let granuleSize: UInt
    private let state = Locked(State())

    private struct State: Sendable {
        var spans = GranuleKeyedTable<PageRange>()
        /// Bumped by every forget, found or not: see `Stamp`.
        var forgets: UInt64 = 0
    }

    /// What the kernel's answers about some pages are checked against before they are kept: the
    /// monitor's window sequence and the count of forgets, both read before the pages' register,
    /// probe and query. A hooked `munmap` or `mmap(MAP_FIXED)` forgets before the real call and
    /// again after it (`GranuleWatch.finishUnmap`): a watch that probed the old mapping and
    /// inserts after the second forget finds the count moved and keeps nothing; one that inserts
    /// before it has its pages removed by it. The hook's range invalidation is open from before
    /// the first forget to after the second, so no miss trusts the pages in between (its
    /// subscription covers them: it waits or retries). Without the count, the insert of a watch
    /// that probed the old mapping could land after both forgets and stand for the new,
    /// unregistered one (the window sequence does not move for a hooked call).
    struct Stamp {
        let window: UInt64
        let forgets: UInt64
    }

    init(granuleSize: UInt) {
        self.granuleSize = granuleSize
    }

    /// Read before asking the kernel about pages that `insert` may keep.
    func stamp(in space: AddressSpace) -> Stamp {
        let window = space.openWindowSequence
        return Stamp(window: window, forgets: state.withLock { $0.forgets })
    }

    /// True when every page of `pages` is validated.
    func validated(_ pages: PageRange) -> Bool {
        state.withLock { state in
            !state.spans.isEmpty && pages.granuleStarts(granuleSize: granuleSize).allSatisfy { start in
                guard let span = state.spans[start] else { return false }
                return span.contains(pages.clipped(toGranule: start, granuleSize: granuleSize))
            }
        }
    }

    /// Validates `pages`, checked by the kernel after `before` was read, unless a window opened
    /// or anything was forgotten since. In each granule the span grows to take pages that overlap or
    /// touch it; pages apart from it replace it, unless it is larger (the newer buffers are
    /// where the next ones come).
    ///
    /// The sequence is read again under this lock, which the worker and the hooks take to forget:
    /// an unmap whose window opened before that read is refused here; one whose window opens
    /// after it forgets the pages once this returns. Checked after the insert instead, a watch
    /// in another thread could trust pages between the insert and their removal (the ordering
    /// test found it: a generation mapped after the unmap, never registered, taken as watched).
    func insert(_ pages: PageRange, checkedAfter before: Stamp, in space: AddressSpace) {
        state.withLock { state in
            guard before.window & 1 == 0, space.openWindowSequence == before.window,
                  state.forgets == before.forgets else { return }
            for start in pages.granuleStarts(granuleSize: granuleSize) {
                let part = pages.clipped(toGranule: start, granuleSize: granuleSize)
                guard let span = state.spans[start] else {
                    state.spans[start] = part
                    continue
                }
                if part.start <= span.end && span.start <= part.end {
                    state.spans[start] = PageRange(start: min(span.start, part.start), end: max(span.end, part.end))
                } else if part.length >= span.length {
                    state.spans[start] = part
                }
            }
        }
    }

    /// Forgets the granule (it is about to be unregistered).
    func remove(granule: UInt) {
        state.withLock { state in
            state.forgets &+= 1
            _ = state.spans.removeValue(forKey: granule)
        }
    }

    func removeAll() {
        state.withLock { state in
            state.forgets &+= 1
            state.spans.removeAll()
        }
    }

    /// Granules validated whole.
    var validatedCount: Int {
        state.withLock { state in state.spans.entries.count { $0.value.length == granuleSize } }
    }

    /// Forgets the validated pages in `[start, end)` (the worker, before closing the window of
    /// an unmap or remap there; a hook, before the call it intercepts). A span keeps its larger
    /// side outside the range: an unmap changes nothing about the pages beside it (a heap
    /// trimmed at its top keeps the buffers below known). Allocation-free.
    func forget(start: UInt, end: UInt) {
        guard end > start else { return }
        let first = start & ~(granuleSize - 1)
        state.withLock { state in
            state.forgets &+= 1
            if state.spans.isEmpty { return }
            // In place, never a copy of the table (a copy would allocate on the next change).
            if (end - first) / granuleSize > UInt(state.spans.count) {
                state.spans.removeAll { granule in !(granule &+ granuleSize <= start || granule >= end) }
                return
            }
            for granule in stride(from: first, to: end, by: Int(granuleSize)) {
                guard let span = state.spans[granule], span.start < end && start < span.end else { continue }
                let below = start > span.start ? start - span.start : 0
                let above = span.end > end ? span.end - end : 0
                if below == 0 && above == 0 {
                    state.spans.removeValue(forKey: granule)
                } else if below >= above {
                    state.spans[granule] = PageRange(start: span.start, end: start)
                } else {
                    state.spans[granule] = PageRange(start: end, end: span.end)
                }
            }
        }
    }
}
