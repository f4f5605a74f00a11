import MMUNotifier
import Synchronization

/// The cache's index of registrations, read without locks inside an SRCU read section.
///
/// Address space is cut into granules (64 KiB by default); a hash table maps each granule that
/// any registration overlaps to a *bucket*: an immutable array of the records overlapping it.
/// A lookup hashes the granule of its first byte, scans that one bucket and copies a record
/// out: loads only, no lock, no reference count, so threads hitting the same buffer never
/// write a shared cache line (seed 000; UCX's per-region refcount measured 0.52× on 2 threads).
///
/// Writers (insert, remove; serialized by `writerLock`) never change a published record. An
/// insert appends into a free slot of the bucket and then publishes it by a release store of
/// the bucket's count. A remove (or an insert into a full bucket) builds a new bucket, publishes
/// it with a release store, and frees the old one through the SRCU domain's `call`, after every
/// reader that could still see it has left (RCU copy-on-write). The table grows the same way. Records are plain values and buckets plain memory, so a
/// reader holds nothing that a writer must wait for, except the grace period.
public final class RegionIndex: Sendable {
    /// `log2` of the granule size.
    public let granuleShift: Int
    let srcu: SRCUDomain
    /// The current table (`Unmanaged<GranuleTable>` bits); replaced only by writers.
    private let table: Atomic<UInt>
    /// Serializes writers; never taken by readers. A pthread lock (`Locked`), which
    /// ThreadSanitizer understands.
    private let writerLock = Locked(())

    public init(srcu: SRCUDomain, granuleShift: Int = 16, initialCapacity: Int = 1024) {
        self.srcu = srcu
        self.granuleShift = granuleShift
        let first = GranuleTable(capacity: max(16, initialCapacity.nextPowerOfTwo))
        table = Atomic(UInt(bitPattern: Unmanaged.passRetained(first).toOpaque()))
    }

    deinit {
        // No reader can be inside: the index is going away with its last reference.
        let current = Unmanaged<GranuleTable>.fromOpaque(rawPointer(table.load(ordering: .acquiring)))
        current._withUnsafeGuaranteedRef { $0.freeBuckets() }
        current.release()
    }

    /// The record serving `[start, end)` with at least `access`, if any. Call it inside a read
    /// section of `srcu` and use the record's keys only until that section ends (or take a
    /// reference on its owner first): after it, the registration may be torn down.
    @inline(__always)
    public func lookup(start: UInt, end: UInt, access: UInt32) -> RegionRecord? {
        let current = Unmanaged<GranuleTable>.fromOpaque(rawPointer(table.load(ordering: .acquiring)))
        return current._withUnsafeGuaranteedRef { table in
            guard let bucket = table.find(start >> UInt(granuleShift)) else { return nil }
            for record in bucket.records where record.covers(start: start, end: end, access: access) {
                return record
            }
            return nil
        }
    }

    /// Every record overlapping `[start, end)` (for invalidation and tests). Inside a read
    /// section, or under the caller's own writer-side serialization.
    public func records(overlapping start: UInt, _ end: UInt) -> [RegionRecord] {
        guard start < end else { return [] }
        var found: [RegionRecord] = []
        withCurrentTable { table in
            for granule in granules(start, end) {
                guard let bucket = table.find(granule) else { continue }
                for record in bucket.records
                where record.start < end && start < record.end && !found.contains(record) {
                    found.append(record)
                }
            }
        }
        return found
    }

    /// Publishes `record`: lookups that start after this returns can find it.
    public func insert(_ record: RegionRecord) {
        guard record.start < record.end else { return }
        writerLock.withLock { _ in
            var retired: [Bucket] = []
            let span = granules(record.start, record.end)
            makeRoom(for: span.count, retiring: &retired)
            withCurrentTable { table in
                for granule in span {
                    let old = table.find(granule)
                    if let old, old.append(record) { continue }
                    // Full (or new): a larger copy, so appends stay amortized O(1).
                    let records = Array(old?.records ?? UnsafeBufferPointer(start: nil, count: 0)) + [record]
                    let replaced = table.publish(Bucket.make(granule: granule, records: records,
                                                             spare: max(3, records.count)))
                    if let replaced { retired.append(replaced) }
                }
            }
            retire(retired)
        }
    }

    /// Unpublishes the record of `owner` over `[start, end)`: lookups that start after this
    /// returns cannot find it; readers already holding it keep valid keys until their section
    /// ends.
    public func remove(owner: UInt, start: UInt, end: UInt) {
        guard start < end else { return }
        writerLock.withLock { _ in
            var retired: [Bucket] = []
            withCurrentTable { table in
                for granule in granules(start, end) {
                    guard let old = table.find(granule) else { continue }
                    let kept = old.records.filter { $0.owner != owner }
                    guard kept.count != old.records.count else { continue }
                    // An empty bucket stays as a tombstone: probing for other granules must
                    // walk past its slot. Growing the table drops tombstones. The copy keeps
                    // the old one's room, so the next insert appends in place.
                    if let replaced = table.publish(Bucket.make(granule: granule, records: kept,
                                                                spare: old.capacity - kept.count)) {
                        retired.append(replaced)
                    }
                }
            }
            retire(retired)
        }
    }

    /// Records in the index (each counted once).
    public var count: Int {
        var owners = Set<UInt>()
        withCurrentTable { table in table.forEachBucket { owners.formUnion($0.records.map(\.owner)) } }
        return owners.count
    }

    // MARK: - Writer side

    /// Before `newBuckets` more slots are used, replaces the table with a larger one if it would
    /// be over half full (tombstones count, and probing needs free slots to end). The live
    /// buckets move as they are, tombstones are retired, and the old table goes after a grace
    /// period.
    private func makeRoom(for newBuckets: Int, retiring retired: inout [Bucket]) {
        let old = Unmanaged<GranuleTable>.fromOpaque(rawPointer(table.load(ordering: .acquiring)))
        let crowded = old._withUnsafeGuaranteedRef { ($0.used + newBuckets) * 2 > $0.capacity }
        guard crowded else { return }
        let grown = old._withUnsafeGuaranteedRef { current in
            let live = current.liveBucketCount
            let larger = GranuleTable(capacity: max(current.capacity, ((live + newBuckets) * 4).nextPowerOfTwo))
            current.forEachBucket { bucket in
                if bucket.records.isEmpty { retired.append(bucket) } else { _ = larger.publish(bucket) }
            }
            return larger
        }
        table.store(UInt(bitPattern: Unmanaged.passRetained(grown).toOpaque()), ordering: .releasing)
        // The old table's slot array goes after the grace period; its buckets live on in the
        // new table (or were retired above), so it must not free them.
        let oldTable = UnsafeSendable(old)
        srcu.call { oldTable.value.release() }
    }

    private func retire(_ buckets: [Bucket]) {
        guard !buckets.isEmpty else { return }
        let retired = UnsafeSendable(buckets)
        srcu.call { retired.value.forEach(Bucket.free) }
    }

    private func withCurrentTable<R>(_ body: (GranuleTable) -> R) -> R {
        Unmanaged<GranuleTable>.fromOpaque(rawPointer(table.load(ordering: .acquiring)))._withUnsafeGuaranteedRef(body)
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
private func rawPointer(_ bits: UInt) -> UnsafeMutableRawPointer {
    // The table pointer is set in init and only ever replaced by another valid table.
    UnsafeMutableRawPointer(bitPattern: bits).unsafelyUnwrapped
}

extension Int {
    var nextPowerOfTwo: Int { self <= 1 ? 1 : 1 << (Int.bitWidth - (self - 1).leadingZeroBitCount) }
}
