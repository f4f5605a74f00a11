/// The monitor's record of what it registered with userfaultfd, granule by granule.
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
    /// nil: the whole granule is registered (or, until `confirmedWhole`, about to be tried
    /// whole). Otherwise the page ranges registered one by one.
    var pieces: RegisteredPieces?
    /// The kernel registered the granule whole at least once. A new record is whole until its
    /// first watch's register says otherwise (the register runs out of the table's lock:
    /// `GranuleWatch.watch`); a refused one is then taken to pieces, a confirmed one stays whole.
    var confirmedWhole = false
    /// Watches left before the next attempt to validate the granule (see `KnownMemory`).
    var validationCountdown = 0
    /// The mapping clock (`cmemhooks_known_mappings_clock`) read before the granule's latest
    /// whole register, 0 before any: every mapping the hooked mmap recorded with a smaller stamp
    /// and still recorded was registered by it (`GranuleWatch.watchKnownMemory`).
    var wholeSince: UInt64 = 0

    static let revalidateEvery = 64

    var isWhole: Bool { pieces == nil }
}

/// What the kernel refused in a granule before (`WatchTable.refusals`), so that later watches
/// there do not issue an ioctl that fails as a matter of course: a granule with a mapping
/// userfaultfd cannot take (a file, another userfaultfd's range) refuses a whole-granule
/// register, and a buffer beside such a mapping refuses its one-page padding. Only a hint: a
/// wrong one costs VMAs or an ioctl, never a missed change, so it is tried again now and then
/// (the mapping that refused may be gone).
struct GranuleRefusal: Sendable {
    var whole = false
    var padding = false
    /// Uses left before the refused register is tried again.
    var countdown = Self.retryEvery

    static let retryEvery: UInt16 = 64
}

/// The watch table, owned by `GranuleWatch` behind its lock.
struct WatchTable: Sendable {
    var records = GranuleKeyedTable<GranuleRecord>()
    var refusals = GranuleKeyedTable<GranuleRefusal>()
    /// Granules whose last buffer went, kept registered (`GranuleWatch.idleLimit`), oldest first
    /// from `idleHead`; an entry whose record was revived or unregistered since is skipped.
    var idle: [UInt] = []
    var idleHead = 0
    /// Records with no buffer.
    var idleCount = 0
    var shutDown = false
    /// Set when the monitor failed (its descriptor is gone): watches are refused with it.
    var failure: MonitorError?

    /// What the kernel refused at `granule` before, counting this use; a hint whose countdown
    /// ran out is dropped, so the refused register is tried again.
    mutating func refusal(at granule: UInt) -> GranuleRefusal {
        guard var refusal = refusals[granule] else { return GranuleRefusal() }
        refusal.countdown -= 1
        if refusal.countdown == 0 {
            refusals[granule] = nil
            return GranuleRefusal()
        }
        refusals[granule] = refusal
        return refusal
    }

    /// Counts one more buffer in the granule at `start` (which has a record), and `piece` of it in
    /// its pieces when it is registered in pieces; an idle granule is revived.
    mutating func countBuffer(at start: UInt, piece: PageRange? = nil) {
        var revived = false
        records.update(start) { record in
            revived = record.buffers == 0
            record.buffers += 1
            if let piece { record.pieces?.insert(piece) }
        }
        if revived { idleCount -= 1 }
    }

    /// Whether every granule in `starts` has a record.
    func allRecorded(_ starts: StrideTo<UInt>) -> Bool {
        starts.allSatisfy { records.contains($0) }
    }

    /// Whether every granule in `starts` is registered whole.
    func allWhole(_ starts: StrideTo<UInt>) -> Bool {
        starts.allSatisfy { records[$0]?.isWhole ?? false }
    }

    /// Forgets every record (shutdown, a failed monitor), each taken out of the hooks' map after
    /// `each` (which may unregister it: the map counts go down after the kernel's).
    mutating func removeAllRecords(slot: HookSlot, granuleSize: UInt,
                                   _ each: (_ start: UInt, _ record: GranuleRecord) -> Void = { _, _ in }) {
        for (start, record) in records.entries {
            each(start, record)
            _ = slot.adjust(granule: start, size: granuleSize, registered: -1)
        }
        records.removeAll()
        idle.removeAll()
        idleHead = 0
        idleCount = 0
    }
}
