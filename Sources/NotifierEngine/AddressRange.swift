/// A byte range of a process address space, stored as `start` and inclusive `last` so that a
/// range may end at the very top of the address space (`last == UInt.max`), as the kernel's
/// interval tree does. A range may be empty: it then overlaps nothing.
public struct AddressRange: Hashable, Sendable, CustomStringConvertible {
    public let start: UInt
    /// Last byte inside the range; meaningless when `isEmpty`.
    public let last: UInt
    public let isEmpty: Bool

    /// `length` bytes from `start`; throws when the range would wrap past the top.
    public init(start: UInt, length: UInt) throws(NotifierError) {
        self.start = start
        if length == 0 {
            last = start
            isEmpty = true
            return
        }
        let (end, overflow) = start.addingReportingOverflow(length - 1)
        if overflow { throw .rangeOverflow(start: start, length: length) }
        last = end
        isEmpty = false
    }

    /// `start...last`, both inclusive; throws `.emptyRange` if `last < start`.
    public init(start: UInt, last: UInt) throws(NotifierError) {
        guard last >= start else { throw .emptyRange }
        self.start = start
        self.last = last
        isEmpty = false
    }

    /// The whole address space (what a `release` invalidates).
    public static let everything = AddressRange(unchecked: 0, last: UInt.max)

    init(unchecked start: UInt, last: UInt) {
        self.start = start
        self.last = last
        isEmpty = false
    }

    /// Number of bytes, or `nil` for the whole 2^64-byte space (not representable).
    public var length: UInt? {
        if isEmpty { return 0 }
        let (n, overflow) = (last - start).addingReportingOverflow(1)
        return overflow ? nil : n
    }

    public func overlaps(_ other: AddressRange) -> Bool {
        !isEmpty && !other.isEmpty && start <= other.last && other.start <= last
    }

    public func contains(_ address: UInt) -> Bool {
        !isEmpty && start <= address && address <= last
    }

    public var description: String {
        isEmpty ? "[empty at 0x\(String(start, radix: 16))]"
            : "[0x\(String(start, radix: 16))...0x\(String(last, radix: 16))]"
    }
}

/// Why memory changed (the kernel's `enum mmu_notifier_event`). A cache can keep an MR across a
/// protection change it does not care about, but never across an unmap.
public enum InvalidationEvent: Sendable, Hashable {
    /// munmap (userfaultfd UNMAP).
    case unmap
    /// madvise(MADV_DONTNEED / MADV_REMOVE): pages dropped, mapping kept (userfaultfd REMOVE).
    case remove
    /// mremap: the old range moved away (userfaultfd REMAP reports the old range).
    case remap
    /// mprotect took write permission away; the pages stay mapped and readable. Translations that
    /// may write must go (a device must not write memory the application made read-only);
    /// read-only ones may stay.
    case writeProtect
    /// mprotect or similar took access away (nothing stays readable and writable).
    case protectionChange
    /// The whole address space is going away (`AddressSpace.release()`).
    case release
    /// An allocator or the application said so.
    case explicit
}

/// What a notifier callback receives: the range, the cause, and whether it may block.
public struct InvalidationRange: Sendable, Hashable {
    public let range: AddressRange
    public let event: InvalidationEvent
    /// When false the callback must not sleep; it may refuse (return false) and the caller
    /// retries later with a blockable invalidation (the kernel's -EAGAIN from the OOM reaper).
    public let blockable: Bool

    public init(range: AddressRange, event: InvalidationEvent, blockable: Bool = true) {
        self.range = range
        self.event = event
        self.blockable = blockable
    }
}
