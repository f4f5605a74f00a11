import Synchronization

/// One granule's records: immutable once published, freed only after a grace period.
struct Bucket {
    let granule: UInt
    let records: UnsafeBufferPointer<RegionRecord>

    static func make(granule: UInt, records: [RegionRecord]) -> UnsafeMutablePointer<Bucket> {
        let storage = UnsafeMutableBufferPointer<RegionRecord>.allocate(capacity: max(1, records.count))
        _ = storage.initialize(from: records)
        let bucket = UnsafeMutablePointer<Bucket>.allocate(capacity: 1)
        bucket.initialize(to: Bucket(granule: granule,
                                     records: UnsafeBufferPointer(start: storage.baseAddress, count: records.count)))
        return bucket
    }

    static func free(_ bucket: UnsafeMutablePointer<Bucket>) {
        UnsafeMutableRawPointer(mutating: bucket.pointee.records.baseAddress)?.deallocate()
        bucket.deinitialize(count: 1)
        bucket.deallocate()
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
    func find(_ granule: UInt) -> UnsafeMutablePointer<Bucket>? {
        var index = home(granule)
        while true {
            let bits = slots[index].load(ordering: .acquiring)
            guard let bucket = UnsafeMutablePointer<Bucket>(bitPattern: bits) else { return nil }
            if bucket.pointee.granule == granule { return bucket }
            index = (index + 1) & mask
        }
    }

    /// Puts `bucket` in its granule's slot (release store: its records are visible first);
    /// returns the bucket it replaced. Writers only; the table must have a free slot.
    func publish(_ bucket: UnsafeMutablePointer<Bucket>) -> UnsafeMutablePointer<Bucket>? {
        var index = home(bucket.pointee.granule)
        while true {
            let bits = slots[index].load(ordering: .relaxed)
            let current = UnsafeMutablePointer<Bucket>(bitPattern: bits)
            if current == nil || current?.pointee.granule == bucket.pointee.granule {
                slots[index].store(UInt(bitPattern: bucket), ordering: .releasing)
                if current == nil { used += 1 }
                return current
            }
            index = (index + 1) & mask
        }
    }

    func forEachBucket(_ body: (UnsafeMutablePointer<Bucket>) -> Void) {
        for index in 0..<capacity {
            if let bucket = UnsafeMutablePointer<Bucket>(bitPattern: slots[index].load(ordering: .acquiring)) {
                body(bucket)
            }
        }
    }

    var liveBucketCount: Int {
        var live = 0
        forEachBucket { if !$0.pointee.records.isEmpty { live += 1 } }
        return live
    }

    /// Frees every bucket: only when the whole index goes away.
    func freeBuckets() { forEachBucket(Bucket.free) }
}
