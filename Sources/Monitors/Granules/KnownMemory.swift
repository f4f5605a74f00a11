import NotifierEngine

/// Memory the monitor knows to be private anonymous memory, where a watch asks the kernel
/// nothing or little (the miss path's `UFFDIO_REGISTER`, probe and mapping query cost about a
/// microsecond each natively, with the mmap lock taken, and the query on Linux 6.1 is a read of
/// /proc/self/maps):
/// - *validated granules*: granules found wholly registered, one registered private anonymous
///   mapping over every page (`GranuleWatch.validateIfWhole`): a watch there issues no ioctl;
/// - *mappings the hooked `mmap` made* (private anonymous, in registered granules:
///   `GranuleWatch.noteNewMapping`): their class is known from the call that made them, so a
///   watch there only registers, with no probe and no query. A bounded ring of the newest ones:
///   an application registers a buffer soon after it maps it, and a watched buffer needs its
///   mapping known only for its first watch.
///
/// Why skipping is safe: a validated granule stops being registered private anonymous memory
/// only by our own unregister (which forgets it first), by a hooked call (which forgets it before
/// the real call) or by an unmap or remap of it, which is a userfaultfd event; a mapping the hook
/// saw made is forgotten the same ways (before its first watch only a raw system call changes
/// it unseen: `GranuleWatch.noteNewMapping`). The worker forgets
/// what an UNMAP or REMAP event overlaps *before* it closes that event's window, and a cache
/// miss watches only after `readBegin`, which waits for open windows: so a watch that starts
/// after such an `munmap` returned finds it forgotten and registers again. A validated granule
/// is added after its register and probe, and taken back if a window opened meanwhile.
///
/// Lock order: the watch table's lock, then this one. The worker and the hooks' forgetting take
/// only this one; the reader never takes either.
final class KnownMemory: Sendable {
    let granuleSize: UInt
    private let state: Locked<State>

    struct State: Sendable {
        var validated = GranuleKeyedTable<Bool>()
        /// Mappings the hooked mmap made, newest written at `next`; empty slots have start == end.
        var mappings: [PageRange]
        var next = 0
        var mappingCount = 0
    }

    /// Mappings kept at most (the ring's size, allocated once: the hooks write it).
    static let mappingCapacity = 64

    init(granuleSize: UInt) {
        self.granuleSize = granuleSize
        state = Locked(State(mappings: Array(repeating: PageRange(start: 0, end: 0), count: Self.mappingCapacity)))
    }

    /// True when every granule in `starts` is validated.
    func validated(_ starts: StrideTo<UInt>) -> Bool {
        state.withLock { state in !state.validated.isEmpty && starts.allSatisfy { state.validated.contains($0) } }
    }

    /// True when `pages` lies inside one mapping the hooked mmap made.
    func madeByHookedMmap(_ pages: PageRange) -> Bool {
        state.withLock { state in state.mappingCount > 0 && state.mappings.contains { $0.contains(pages) } }
    }

    func insert(granule: UInt) {
        state.withLock { $0.validated[granule] = true }
    }

    /// Records a private anonymous mapping the hooked mmap just made; the oldest goes when the
    /// ring is full. Allocation-free (the hooked `mmap` calls it).
    func noteMapping(_ mapping: PageRange) {
        state.withLock { state in
            if state.mappings[state.next].start == state.mappings[state.next].end { state.mappingCount += 1 }
            state.mappings[state.next] = mapping
            state.next = (state.next + 1) % Self.mappingCapacity
        }
    }

    /// Forgets the granule (it is about to be unregistered).
    func remove(granule: UInt) {
        state.withLock { state in
            _ = state.validated.removeValue(forKey: granule)
        }
    }

    func removeAll() {
        state.withLock { state in
            state.validated.removeAll()
            Self.forgetMappings(start: 0, end: .max, in: &state)
        }
    }

    var validatedCount: Int { state.withLock { $0.validated.count } }
    var mappingCount: Int { state.withLock { $0.mappingCount } }

    /// Forgets every granule and mapping overlapping `[start, end)` (the worker, before closing
    /// the window of an unmap or remap there; a hook, before the call it intercepts).
    /// Allocation-free.
    func forget(start: UInt, end: UInt) {
        guard end > start else { return }
        let first = start & ~(granuleSize - 1)
        state.withLock { state in
            Self.forgetMappings(start: start, end: end, in: &state)
            if state.validated.isEmpty { return }
            // In place, never a copy of the table (a copy would allocate on the next change).
            if (end - first) / granuleSize > UInt(state.validated.count) {
                state.validated.removeAll { granule in !(granule &+ granuleSize <= start || granule >= end) }
            } else {
                for granule in stride(from: first, to: end, by: Int(granuleSize)) {
                    state.validated.removeValue(forKey: granule)
                }
            }
        }
    }

    private static func forgetMappings(start: UInt, end: UInt, in state: inout State) {
        guard state.mappingCount > 0 else { return }
        let range = PageRange(start: start, end: end)
        for index in state.mappings.indices where state.mappings[index].intersection(range) != nil {
            state.mappings[index] = PageRange(start: 0, end: 0)
            state.mappingCount -= 1
        }
    }
}
