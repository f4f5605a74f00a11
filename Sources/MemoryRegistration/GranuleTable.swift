import Synchronization

/// One granule's records in one cache-line-aligned allocation: a header, then `capacity` record
/// slots of which the first `count` are published (header and first record share a line).
///
/// A writer appends by filling the first free slot and then storing `count + 1` (release); a
/// published slot is never written again while the bucket is in the table, so readers scan
/// `0..<count` (acquire) without a lock, and a miss retires nothing. Removing a record, or
/// appending to a full bucket, builds a new bucket that replaces this one in the table; this one
/// is freed after a grace period.
struct Bucket: Equatable {
    let header: UnsafeMutablePointer<BucketHeader>

    struct BucketHeader: ~Copyable {
        let granule: UInt
        let capacity: Int
        let count: Atomic<Int>
    }

    static let alignment = 64

    /// A bucket holding `records`, with room to append `spare` more in place.
    static func make(granule: UInt, records: some Collection<RegionRecord>, spare: Int) -> Bucket {
        let capacity = max(1, records.count + spare)
        let bytes = MemoryLayout<BucketHeader>.stride + capacity * MemoryLayout<RegionRecord>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: alignment)
        let header = raw.bindMemory(to: BucketHeader.self, capacity: 1)
        header.initialize(to: BucketHeader(granule: granule, capacity: capacity, count: Atomic(records.count)))
        let bucket = Bucket(header: header)
        _ = UnsafeMutableBufferPointer(start: bucket.slots, count: records.count).initialize(from: records)
        return bucket
    }

    init(header: UnsafeMutablePointer<BucketHeader>) { self.header = header }

    init?(bits: UInt) {
        guard let header = UnsafeMutablePointer<BucketHeader>(bitPattern: bits) else { return nil }
        self.header = header
    }

    var bits: UInt { UInt(bitPattern: header) }
    var granule: UInt { header.pointee.granule }
    var capacity: Int { header.pointee.capacity }

    private var slots: UnsafeMutablePointer<RegionRecord> {
        UnsafeMutableRawPointer(header + 1).assumingMemoryBound(to: RegionRecord.self)
    }

    /// The published records (acquire: their contents are visible).
    @inline(__always)
    var records: UnsafeBufferPointer<RegionRecord> {
        UnsafeBufferPointer(start: slots, count: header.pointee.count.load(ordering: .acquiring))
    }

    /// Appends `record` in place if a slot is free. Writers only (serialized).
    func append(_ record: RegionRecord) -> Bool {
        let count = header.pointee.count.load(ordering: .relaxed)
        guard count < capacity else { return false }
        (slots + count).initialize(to: record)
        header.pointee.count.store(count + 1, ordering: .releasing)
        return true
    }

    static func free(_ bucket: Bucket) {
        let count = bucket.header.pointee.count.load(ordering: .relaxed)
        bucket.slots.deinitialize(count: count)
        bucket.header.deinitialize(count: 1)
        UnsafeMutableRawPointer(bucket.header).deallocate()
    }
}

/// An open-addressing hash table from granule number to bucket, with atomic slots so readers
/// probe it without a lock while one writer replaces buckets.
///
/// `@unchecked Sendable`: `slots` is allocated once and its elements are atomics; `used` is
/// read and written only by the index's writers, which `RegionIndex.writerLock` serializes.
final class GranuleTable: @unchecked Sendable {
    let capacity: Int
    private let mask: Int
    /// Bucket pointers as bits; 0 is an empty slot (probing stops there).
    private let slots: UnsafeMutablePointer<Atomic<UInt>>
    /// Slots holding a bucket, tombstones (empty buckets) included. Writers only.
    private(set) var used = 0

    init(capacity: Int) {
        self.capacity = capacity
        mask = capacity - 1
        slots = .allocate(capacity: capacity)
        for index in 0..<capacity { (slots + index).initialize(to: Atomic(0)) }
    }

    deinit {
        slots.deinitialize(count: capacity)
        slots.deallocate()
    }

    @inline(__always)
    private func home(_ granule: UInt) -> Int {
        Int(truncatingIfNeeded: (granule &* 0x9E37_79B9_7F4A_7C15) >> 20) & mask
    }

    /// The bucket for `granule`, if one was ever published (possibly a tombstone).
    @inline(__always)
    func find(_ granule: UInt) -> Bucket? {
        var index = home(granule)
        while true {
            guard let bucket = Bucket(bits: slots[index].load(ordering: .acquiring)) else { return nil }
            if bucket.granule == granule { return bucket }
            index = (index + 1) & mask
        }
    }

    /// Puts `bucket` in its granule's slot (release store: its records are visible first);
    /// returns the bucket it replaced. Writers only; the table must have a free slot.
    func publish(_ bucket: Bucket) -> Bucket? {
        var index = home(bucket.granule)
        while true {
            let current = Bucket(bits: slots[index].load(ordering: .relaxed))
            if current == nil || current?.granule == bucket.granule {
                slots[index].store(bucket.bits, ordering: .releasing)
                if current == nil { used += 1 }
                return current
            }
            index = (index + 1) & mask
        }
    }

    func forEachBucket(_ body: (Bucket) -> Void) {
        for index in 0..<capacity {
            if let bucket = Bucket(bits: slots[index].load(ordering: .acquiring)) {
                body(bucket)
            }
        }
    }

    var liveBucketCount: Int {
        var live = 0
        forEachBucket { if !$0.records.isEmpty { live += 1 } }
        return live
    }

    /// Frees every bucket: only when the whole index goes away.
    func freeBuckets() { forEachBucket(Bucket.free) }
}
