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
    var pieces: [PageRange]?
}

/// A page-aligned byte range [start, end).
struct PageRange: Hashable, Sendable {
    var start: UInt
    var end: UInt
    var length: UInt { end - start }
}

/// The granule table, guarded by the engine's `Locked` (a pthread mutex TSan understands).
///
/// Lock rule: taken by threads calling `watch`, `unwatch` and `shutdown` (the worker too, from
/// callbacks), which may allocate and issue ioctls while holding it; the *reader* thread never
/// takes it, so a holder whose allocation trims watched heap pages waits only for the
/// reader's read(), which never waits for this lock.
struct GranuleTable: Sendable {
    var records: [UInt: GranuleRecord] = [:]
    var shutDown = false
}
