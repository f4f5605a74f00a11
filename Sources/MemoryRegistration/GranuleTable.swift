import Synchronization

/// One granule's entries in one cache-line-aligned allocation: a header, then `capacity` slots of
/// which the first `count` have been used. A slot is an entry's address plus its range relative
/// to the granule (`Hint`: 16 bytes a slot), so a lookup compares ranges in the bucket and
/// touches only the entry it wants.
///
/// Writers (serialized by the cache's state lock) fill a slot's range first and then store its entry with
/// release ordering; clearing a slot stores 0 there; a cleared slot is reused in place. Readers
/// load the entry with acquire ordering and then the range: a range read as the slot is reused
/// may belong to the next entry, so a reader checks the entry itself before using it (the entry
/// outlives every reader that could still load its address: it is freed only after a grace
/// period). Only a full bucket is replaced (by a larger copy), and the old one is freed after a
/// grace period: removals and most inserts allocate and free nothing.
///
/// `@unchecked Sendable`: a bucket is its header's address. Readers only load its atomics;
/// writers, serialized by the caller (the cache's state lock), store them; a bucket out of the table travels to the reclaim
/// thread and back to the writers, and is freed by one writer once, after its grace period.
struct Bucket: Equatable, @unchecked Sendable {
    let header: UnsafeMutablePointer<BucketHeader>

    struct BucketHeader: ~Copyable {
        let granule: UInt
        let capacity: Int
        /// Slots used so far (published with release ordering after the slot is filled).
        let count: Atomic<Int>
    }

    struct Slot: ~Copyable {
        /// The entry's address bits (`Unmanaged.toOpaque`), 0 when the slot is free.
        let entry = Atomic<UInt>(0)
        /// The entry's range relative to the granule (`Hint`).
        let hint = Atomic<UInt64>(0)
    }

    static let alignment = 64

    /// A bucket with room for `capacity` entries, the first `count` slots copied from `old`.
    static func make(granule: UInt, capacity: Int, copying old: Bucket? = nil) -> Bucket {
        let capacity = max(1, capacity)
        let bytes = MemoryLayout<BucketHeader>.stride + capacity * MemoryLayout<Slot>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: alignment)
        let header = raw.bindMemory(to: BucketHeader.self, capacity: 1)
        header.initialize(to: BucketHeader(granule: granule, capacity: capacity, count: Atomic(0)))
        let bucket = Bucket(header: header)
        for index in 0..<capacity { (bucket.slots + index).initialize(to: Slot()) }
        var used = 0
        if let old {
            for index in 0..<old.used where old.slots[index].entry.load(ordering: .relaxed) != 0 {
                bucket.fill(used, entry: old.slots[index].entry.load(ordering: .relaxed),
                            hint: old.slots[index].hint.load(ordering: .relaxed))
                used += 1
            }
        }
        header.pointee.count.store(used, ordering: .releasing)
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

    var slots: UnsafeMutablePointer<Slot> {
        UnsafeMutableRawPointer(header + 1).assumingMemoryBound(to: Slot.self)
    }

    /// Slots used so far (acquire: their contents are visible).
    @inline(__always)
    var used: Int { header.pointee.count.load(ordering: .acquiring) }

    /// Whether any slot holds an entry.
    var isEmpty: Bool { (0..<used).allSatisfy { slots[$0].entry.load(ordering: .relaxed) == 0 } }

    private func fill(_ index: Int, entry: UInt, hint: UInt64) {
        slots[index].hint.store(hint, ordering: .relaxed)
        slots[index].entry.store(entry, ordering: .releasing)
    }

    /// Puts `entry` into a free slot; false when the bucket is full. Writers only.
    func insert(entry: UInt, hint: UInt64) -> Bool {
        let count = header.pointee.count.load(ordering: .relaxed)
        for index in 0..<count where slots[index].entry.load(ordering: .relaxed) == 0 {
            fill(index, entry: entry, hint: hint)
            return true
        }
        guard count < capacity else { return false }
        fill(count, entry: entry, hint: hint)
        header.pointee.count.store(count + 1, ordering: .releasing)
        return true
    }

    /// Clears the slot holding `entry`; false if none does. Writers only.
    @discardableResult
    func remove(entry: UInt) -> Bool {
        let count = header.pointee.count.load(ordering: .relaxed)
        for index in 0..<count where slots[index].entry.load(ordering: .relaxed) == entry {
            slots[index].entry.store(0, ordering: .releasing)
            return true
        }
        return false
    }

    /// Entries in use (writers, or a reader's estimate).
    var liveCount: Int { (0..<used).reduce(0) { $0 + (slots[$1].entry.load(ordering: .relaxed) != 0 ? 1 : 0) } }

    static func free(_ bucket: Bucket) {
        bucket.slots.deinitialize(count: bucket.capacity)
        bucket.header.deinitialize(count: 1)
        UnsafeMutableRawPointer(bucket.header).deallocate()
    }
}

/// An entry's range relative to its bucket's granule, in one word: start and end offsets as 32-bit
/// signed numbers, clamped (a start before the granule is -1, an end past 2^31 bytes beyond it is
/// `Int32.max`). Clamping only widens the range, so a range check on hints never misses an
/// entry that covers a request; the entry itself decides.
enum Hint {
    static func make(start: UInt, end: UInt, granuleStart: UInt) -> UInt64 {
        let relativeStart: Int32 = start < granuleStart ? -1 : Int32(clamping: start - granuleStart)
        let relativeEnd: Int32 = end < granuleStart ? -1 : Int32(clamping: end - granuleStart)
        return UInt64(UInt32(bitPattern: relativeStart)) | UInt64(UInt32(bitPattern: relativeEnd)) << 32
    }

    /// Whether the hinted range may cover `[start, end)` (start inside the granule).
    @inline(__always)
    static func mayCover(_ hint: UInt64, start: UInt, end: UInt, granuleStart: UInt) -> Bool {
        let relativeStart = Int32(bitPattern: UInt32(truncatingIfNeeded: hint))
        let relativeEnd = Int32(bitPattern: UInt32(truncatingIfNeeded: hint >> 32))
        let wantedStart = Int32(truncatingIfNeeded: start &- granuleStart)
        let wantedEnd = Int32(clamping: end &- granuleStart)
        return relativeStart <= wantedStart && wantedEnd <= relativeEnd
    }
}

/// An open-addressing hash table from granule number to bucket, with atomic slots so readers
/// probe it without a lock while one writer replaces buckets.
///
/// `@unchecked Sendable`: `slots` is allocated once and its elements are atomics; `used` is
/// read and written only by the index's writers, which the cache's state lock serializes.
final class GranuleTable: @unchecked Sendable {
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
