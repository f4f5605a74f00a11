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
