import Synchronization

/// One granule's entries in one allocation: a header, then `capacity` entry addresses, then as
/// many ranges relative to the granule (`Hint`, 4 bytes), of which the first `count` have been
/// used; 12 bytes a slot, so a lookup compares ranges in the bucket and touches only the entry
/// it wants (a bucket of 8 is one 128-byte heap chunk).
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
        let capacity: Int32
        /// Slots holding an entry: for the CLOCK hand to pass an emptied bucket at once (a
        /// bucket stays in the table, empty, until the table grows). Writers only.
        let live: Atomic<Int32>
        /// Slots used so far (published with release ordering after the slot is filled).
        let count: Atomic<Int>
    }

    /// A bucket with room for `capacity` entries, the first `count` slots copied from `old`.
    static func make(granule: UInt, capacity: Int, copying old: Bucket? = nil) -> Bucket {
        let capacity = max(1, capacity)
        let bytes = MemoryLayout<BucketHeader>.stride
            + capacity * (MemoryLayout<Atomic<UInt>>.stride + MemoryLayout<Atomic<UInt32>>.stride)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: MemoryLayout<BucketHeader>.alignment)
        let header = raw.bindMemory(to: BucketHeader.self, capacity: 1)
        header.initialize(to: BucketHeader(granule: granule, capacity: Int32(capacity), live: Atomic(0), count: Atomic(0)))
        let bucket = Bucket(header: header)
        for index in 0..<capacity {
            (bucket.entries + index).initialize(to: Atomic(0))
            (bucket.hints + index).initialize(to: Atomic(0))
        }
        var used = 0
        if let old {
            for index in 0..<old.used where old.entries[index].load(ordering: .relaxed) != 0 {
                bucket.fill(used, entry: old.entries[index].load(ordering: .relaxed),
                            hint: old.hints[index].load(ordering: .relaxed))
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
    var capacity: Int { Int(header.pointee.capacity) }
    /// Slots holding an entry (writers only).
    var live: Int { Int(header.pointee.live.load(ordering: .relaxed)) }

    /// The entries' addresses (`Unmanaged.toOpaque` bits), 0 where a slot is free.
    @inline(__always)
    var entries: UnsafeMutablePointer<Atomic<UInt>> {
        UnsafeMutableRawPointer(header + 1).assumingMemoryBound(to: Atomic<UInt>.self)
    }

    /// The entries' ranges relative to the granule (`Hint`), slot for slot.
    @inline(__always)
    var hints: UnsafeMutablePointer<Atomic<UInt32>> {
        UnsafeMutableRawPointer(entries + capacity).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    /// Slots used so far (acquire: their contents are visible).
    @inline(__always)
    var used: Int { header.pointee.count.load(ordering: .acquiring) }

    /// Whether no slot holds an entry (writers only).
    var isEmpty: Bool { live == 0 }

    private func fill(_ index: Int, entry: UInt, hint: UInt32) {
        header.pointee.live.add(1, ordering: .relaxed)
        hints[index].store(hint, ordering: .releasing)  // after a clear of the slot: see `RegionIndex.lookup`
        entries[index].store(entry, ordering: .releasing)
    }

    /// Puts `entry` into a free slot; false when the bucket is full. Writers only.
    func insert(entry: UInt, hint: UInt32) -> Bool {
        let count = header.pointee.count.load(ordering: .relaxed)
        // A free slot below `count` only where one was cleared (a bucket filling in order has none).
        if header.pointee.live.load(ordering: .relaxed) < Int32(count) {
            for index in 0..<count where entries[index].load(ordering: .relaxed) == 0 {
                fill(index, entry: entry, hint: hint)
                return true
            }
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
        for index in 0..<count where entries[index].load(ordering: .relaxed) == entry {
            entries[index].store(0, ordering: .releasing)
            header.pointee.live.subtract(1, ordering: .relaxed)
            return true
        }
        return false
    }


    static func free(_ bucket: Bucket) {
        bucket.hints.deinitialize(count: bucket.capacity)
        bucket.entries.deinitialize(count: bucket.capacity)
        bucket.header.deinitialize(count: 1)
        UnsafeMutableRawPointer(bucket.header).deallocate()
    }
}

/// An entry's range relative to its bucket's granule, in 4 bytes: start and end offsets in 4 KiB
/// units as 16-bit signed numbers, clamped (a start before the granule is -1, an end more than
/// 128 MiB beyond it is `Int16.max`). Entries are page-aligned, so their offsets are whole units;
/// a request is widened to whole units, which cannot change whether a page-aligned range
/// covers it. Clamping only widens the range, so a range check on hints never misses an entry
/// that covers a request; the entry itself decides.
enum Hint {
    private static let unitShift: UInt = 12

    static func make(start: UInt, end: UInt, granuleStart: UInt) -> UInt32 {
        let relativeStart: Int16 = start < granuleStart ? -1 : Int16(clamping: (start - granuleStart) >> unitShift)
        let relativeEnd: Int16 = end < granuleStart ? -1 : Int16(clamping: (end - granuleStart) >> unitShift)
        return UInt32(UInt16(bitPattern: relativeStart)) | UInt32(UInt16(bitPattern: relativeEnd)) << 16
    }

    enum Verdict {
        case cannotCover
        /// The hinted range covers `[start, end)`: its end was not clamped (a start before the
        /// granule is before any request's start, which is inside it).
        case covers
        /// Clamped: the entry's own range decides.
        case mayCover
    }

    /// What the hinted range says about `[start, end)` (start inside the granule).
    @inline(__always)
    static func verdict(_ hint: UInt32, start: UInt, end: UInt, granuleStart: UInt) -> Verdict {
        let relativeStart = Int16(bitPattern: UInt16(truncatingIfNeeded: hint))
        let relativeEnd = Int16(bitPattern: UInt16(truncatingIfNeeded: hint >> 16))
        let wantedStart = Int16(truncatingIfNeeded: (start &- granuleStart) >> unitShift)
        let wantedEnd = Int16(clamping: (end &- granuleStart &+ (1 << unitShift) &- 1) >> unitShift)
        guard relativeStart <= wantedStart && wantedEnd <= relativeEnd else { return .cannotCover }
        return relativeEnd == .max ? .mayCover : .covers
    }
}
