import Synchronization

/// An open-addressing hash table from granule number to bucket, with atomic slots so readers
/// probe it without a lock while one writer replaces buckets.
///
/// `@unchecked Sendable`: `slots` is allocated once and its elements are atomics; `used` is
/// read and written only by the index's writers, which the cache's state lock serializes.
final class BucketTable: @unchecked Sendable {
    let capacity: Int
    private let mask: Int
    /// Bucket pointers as bits; 0 is an empty slot (probing stops there).
    private let slots: UnsafeMutablePointer<Atomic<UInt>>
    /// Slots holding a bucket, empty buckets included. Writers only.
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

    /// The bucket for `granule`, if one was ever published (possibly empty).
    @inline(__always)
    func find(_ granule: UInt) -> Bucket? {
        var index = home(granule)
        while true {
            guard let bucket = Bucket(bits: slots[index].load(ordering: .acquiring)) else { return nil }
            if bucket.granule == granule { return bucket }
            index = (index + 1) & mask
        }
    }

    /// Puts `bucket` in its granule's slot (release store: its contents are visible first);
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

    /// The bucket in table slot `index`, if any (the eviction hand walks the table by slot).
    @inline(__always)
    func bucket(atSlot index: Int) -> Bucket? { Bucket(bits: slots[index].load(ordering: .acquiring)) }

    func forEachBucket(_ body: (Bucket) -> Void) {
        for index in 0..<capacity {
            if let bucket = Bucket(bits: slots[index].load(ordering: .acquiring)) {
                body(bucket)
            }
        }
    }

    var liveBucketCount: Int {
        var live = 0
        forEachBucket { if !$0.isEmpty { live += 1 } }
        return live
    }

    /// Frees every bucket: only when the whole index goes away.
    func freeBuckets() { forEachBucket(Bucket.free) }
}
