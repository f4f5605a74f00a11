import NotifierEngine
import Synchronization

/// The cache's index of entries, read without locks inside an SRCU read section.
///
/// Address space is cut into granules (64 KiB by default); a hash table maps each granule that
/// any entry overlaps to a *bucket* of slots (entry address and range `Hint`). A lookup hashes
/// the granule of its first byte, compares the ranges in that one bucket and returns the entry
/// that covers the request: loads only, no lock, no reference count, so threads hitting the same
/// buffer never write a shared cache line (seed 000; UCX's per-region refcount measured 0.52x on
/// 2 threads).
///
/// Writers (insert, remove) fill or clear slots in place (see
/// `Bucket`); a full bucket is replaced by a larger copy, the table by a larger one, and what
/// they replace is freed only after every reader that could still see it has left (replaced
/// buckets in batches, one grace period each, freed by a later insert; tables through the SRCU
/// domain's `call`). An entry itself must outlive every reader that could load its address: the
/// cache frees an entry only a grace period after it left the index.
///
/// Writers must be serialized by the caller: the cache inserts and removes only under its state
/// lock (a lock of the index's own, nested in it, cost every miss a second lock for nothing).
final class RegionIndex: Sendable {
    /// `log2` of the granule size.
    let granuleShift: Int
    let srcu: SRCUDomain
    /// The current table (`Unmanaged<BucketTable>` bits); replaced only by writers.
    private let table: Atomic<UInt>
    /// Buckets out of the table on their way to be freed: `pending` wait for the next grace
    /// period, `sealed` ride on the one running (one at a time: a call per replaced bucket cost
    /// a quarter of an insert), `ready` have had theirs and are freed by the next insert, so the
    /// memory goes back where inserts allocate (freed on the SRCU reclaim thread, the two
    /// threads fought over malloc's arena lock).
    private let retirement = Locked(Retirement())
    private let readyCount = Atomic<Int>(0)

    struct Retirement: Sendable {
        var pending: [Bucket] = []
        var sealed: [Bucket] = []
        var ready: [Bucket] = []
        var inFlight = false
    }

    init(srcu: SRCUDomain, granuleShift: Int = 16, initialCapacity: Int = 1024) {
        // A hint is exact only if granules start on 4 KiB units and a start inside one fits its
        // 16 bits (`Hint`). Not an input: the cache's own constant.
        precondition((12...27).contains(granuleShift), "granule shift \(granuleShift) outside what Hint encodes")
        self.srcu = srcu
        self.granuleShift = granuleShift
        let first = BucketTable(capacity: max(16, initialCapacity.nextPowerOfTwo))
        table = Atomic(UInt(bitPattern: Unmanaged.passRetained(first).toOpaque()))
    }

    deinit {
        // No reader can be inside: the index is going away with its last reference.
        let current = Unmanaged<BucketTable>.fromOpaque(rawPointer(table.load(ordering: .acquiring)))
        current._withUnsafeGuaranteedRef { $0.freeBuckets() }
        current.release()
        retirement.withLock { r in (r.pending + r.sealed + r.ready).forEach(Bucket.free) }
    }

    /// The address bits of the entry serving `[start, end)` with at least `access`, or 0. Call it
    /// inside a read section of `srcu` and use the entry only until that section ends (or take a
    /// reference on it first).
    @inline(__always)
    func lookup(start: UInt, end: UInt, access: UInt32) -> UInt {
        let current = Unmanaged<BucketTable>.fromOpaque(rawPointer(table.load(ordering: .acquiring)))
        return current._withUnsafeGuaranteedRef { table -> UInt in
            let granule = start >> UInt(granuleShift)
            guard let bucket = table.find(granule) else { return 0 }
            let granuleStart = granule << UInt(granuleShift)
            let entries = bucket.entries
            let hints = bucket.hints
            for index in 0..<bucket.used {
                let bits = entries[index].load(ordering: .acquiring)
                guard bits != 0 else { continue }
                let verdict = Hint.verdict(hints[index].load(ordering: .acquiring), start: start, end: end,
                                           granuleStart: granuleStart)
                if verdict == .cannotCover { continue }
                // The entry is alive: freed only a grace period after leaving the index. The range
                // read may be the next entry's (the slot was cleared and reused meanwhile). An
                // exact one is the entry's own if the slot still holds it: the range is stored
                // with release ordering after the clear, so a reader that read the next range
                // reads the clear or the next entry here. Then only the access is left to check,
                // and the entry's own range (another cache line) is never read.
                let covers = Unmanaged<CacheEntry>.fromOpaque(rawPointer(bits))._withUnsafeGuaranteedRef { entry in
                    verdict == .covers && entries[index].load(ordering: .relaxed) == bits
                        ? entry.access.rawValue & access == access
                        : entry.covers(start: start, end: end, access: access)
                }
                if covers { return bits }
            }
            return 0
        }
    }

    /// Publishes `entry`: lookups that start after this returns can find it.
    func insert(_ entry: CacheEntry) {
        let bits = Self.bits(entry)
        let (start, end) = (entry.start, entry.end)
        if readyCount.load(ordering: .relaxed) > 0 {
            var ready: [Bucket] = []
            retirement.withLock { swap(&ready, &$0.ready) }
            readyCount.subtract(ready.count, ordering: .relaxed)
            for bucket in ready { Bucket.free(bucket) }
        }
        var retired: [Bucket] = []
        let span = granules(start, end)
        makeRoom(for: span.count, retiring: &retired)
        withCurrentTable { table in
            for granule in span {
                let hint = Hint.make(start: start, end: end, granuleStart: granule << UInt(granuleShift))
                let old = table.find(granule)
                if let old, old.insert(entry: bits, hint: hint) { continue }
                // Full (or new): a copy twice as large, so inserts stay amortized O(1).
                let grown = Bucket.make(granule: granule, capacity: max(4, 2 * (old?.live ?? 0)), copying: old)
                _ = grown.insert(entry: bits, hint: hint)
                if let replaced = table.publish(grown) { retired.append(replaced) }
            }
        }
        retire(retired)
    }

    /// Unpublishes `entry`: lookups that start after this returns cannot find it; readers that
    /// already found it may use it until their section ends.
    func remove(_ entry: CacheEntry) {
        let bits = Self.bits(entry)
        let (start, end) = (entry.start, entry.end)
        withCurrentTable { table in
            for granule in granules(start, end) { table.find(granule)?.remove(entry: bits) }
        }
    }

    /// A place in the index for the CLOCK hand: a slot of the table and a slot of its bucket.
    /// The index is the ring: walking it meets every cached entry, so the cache keeps no list of
    /// its own (a ring of entry references cost 8 bytes a region and as much again in growth).
    /// A table replaced by a larger one leaves the hand somewhere else in the turn, which costs
    /// CLOCK nothing but fairness for that turn.
    struct Hand: Sendable {
        var tableSlot = 0
        var bucketSlot = 0
    }

    /// The next entry from `hand` on, which moves past it (writers only). Each entry is met once
    /// a turn, in the bucket of its first granule. Nil when a whole turn met none.
    func entry(at hand: inout Hand) -> CacheEntry? {
        withCurrentTable { table -> CacheEntry? in
            var tableSlotsLeft = table.capacity + 1
            while tableSlotsLeft > 0 {
                if hand.tableSlot >= table.capacity { hand = Hand() }
                guard let bucket = table.bucket(atSlot: hand.tableSlot), bucket.live > 0, hand.bucketSlot < bucket.used else {
                    hand.tableSlot += 1
                    hand.bucketSlot = 0
                    tableSlotsLeft -= 1
                    continue
                }
                let bits = bucket.entries[hand.bucketSlot].load(ordering: .relaxed)
                hand.bucketSlot += 1
                guard bits != 0 else { continue }
                // Published, so the interval tree keeps it alive (and writers hold the state lock).
                let entry = Unmanaged<CacheEntry>.fromOpaque(rawPointer(bits)).takeUnretainedValue()
                if entry.start >> UInt(granuleShift) == bucket.granule { return entry }
            }
            return nil
        }
    }

    /// Entries in the index (each counted once).
    var count: Int {
        var entries = Set<UInt>()
        withCurrentTable { table in
            table.forEachBucket { bucket in
                for index in 0..<bucket.used {
                    let bits = bucket.entries[index].load(ordering: .relaxed)
                    if bits != 0 { entries.insert(bits) }
                }
            }
        }
        return entries.count
    }

    /// The entry's address as the slots hold it. Turned back into the entry only by readers
    /// inside a read section, which the cache's grace period covers (see the type's comment).
    @inline(__always)
    static func bits(_ entry: CacheEntry) -> UInt { UInt(bitPattern: Unmanaged.passUnretained(entry).toOpaque()) }

    // MARK: - Writer side

    /// Before `newBuckets` more slots are used, replaces the table with a larger one if it would
    /// be over half full (empty buckets count, and probing needs free slots to end). The live
    /// buckets move as they are, empty ones are retired, and the old table goes after a grace
    /// period.
    private func makeRoom(for newBuckets: Int, retiring retired: inout [Bucket]) {
        let old = Unmanaged<BucketTable>.fromOpaque(rawPointer(table.load(ordering: .acquiring)))
        let crowded = old._withUnsafeGuaranteedRef { ($0.used + newBuckets) * 2 > $0.capacity }
        guard crowded else { return }
        let grown = old._withUnsafeGuaranteedRef { current in
            let live = current.liveBucketCount
            let larger = BucketTable(capacity: max(current.capacity, ((live + newBuckets) * 4).nextPowerOfTwo))
            current.forEachBucket { bucket in
                if bucket.isEmpty { retired.append(bucket) } else { _ = larger.publish(bucket) }
            }
            return larger
        }
        table.store(UInt(bitPattern: Unmanaged.passRetained(grown).toOpaque()), ordering: .releasing)
        // The old table's slot array goes after the grace period; its buckets live on in the
        // new table (or were retired above), so it must not free them.
        let oldTable = UnsafeSendable(old)
        srcu.call { oldTable.value.release() }
    }

    /// Hands `buckets` (out of the table) back to the writers after a grace period.
    private func retire(_ buckets: [Bucket]) {
        guard !buckets.isEmpty else { return }
        let schedule = retirement.withLock { r -> Bool in
            r.pending.append(contentsOf: buckets)
            return Self.seal(&r)
        }
        if schedule { srcu.call { [self] in gracePeriodEnded() } }
    }

    /// Seals the pending buckets into a batch if none is in flight; true when one must be
    /// scheduled. A bucket retired after a batch was sealed waits for the next batch: the
    /// running grace period may have begun before it left the table.
    private static func seal(_ r: inout Retirement) -> Bool {
        guard !r.inFlight, !r.pending.isEmpty else { return false }
        r.inFlight = true
        swap(&r.sealed, &r.pending)
        return true
    }

    private func gracePeriodEnded() {
        let schedule = retirement.withLock { r -> Bool in
            readyCount.add(r.sealed.count, ordering: .relaxed)
            r.ready.append(contentsOf: r.sealed)
            r.sealed.removeAll(keepingCapacity: true)
            r.inFlight = false
            return Self.seal(&r)
        }
        if schedule { srcu.call { [self] in gracePeriodEnded() } }
    }

    private func withCurrentTable<R>(_ body: (BucketTable) -> R) -> R {
        Unmanaged<BucketTable>.fromOpaque(rawPointer(table.load(ordering: .acquiring)))._withUnsafeGuaranteedRef(body)
    }

    private func granules(_ start: UInt, _ end: UInt) -> ClosedRange<UInt> {
        (start >> UInt(granuleShift))...((end - 1) >> UInt(granuleShift))
    }
}

/// Moves a value into a `@Sendable` closure that runs after a grace period.
///
/// `@unchecked Sendable`: used only to hand retired memory to the SRCU reclaim thread. After
/// the writer unpublished it, nothing but that closure refers to the memory, so the one thread
/// that runs the closure has it alone.
struct UnsafeSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

@inline(__always)
func rawPointer(_ bits: UInt) -> UnsafeMutableRawPointer {
    // Only ever called on bits made from a live object's address (a table or an entry).
    UnsafeMutableRawPointer(bitPattern: bits).unsafelyUnwrapped
}

extension Int {
    var nextPowerOfTwo: Int { self <= 1 ? 1 : 1 << (Int.bitWidth - (self - 1).leadingZeroBitCount) }
}
