import NotifierEngine

/// One `struct uffd_msg` (32 bytes) decoded in place from the monitor's preallocated read
/// buffer: no allocation on the monitor's path.
struct UserfaultfdEvent {
    static let size = 32
    // UFFD_EVENT_* (linux/userfaultfd.h)
    static let pagefault: UInt8 = 0x12
    static let remap: UInt8 = 0x14
    static let remove: UInt8 = 0x15
    static let unmap: UInt8 = 0x16

    enum Kind { case unmap, remove, remap, writeProtectFault, other }

    let kind: Kind
    /// The range that changed: [start, end) for UNMAP and REMOVE, the old range for REMAP, the
    /// faulting page's address (start) for a fault.
    let start: UInt
    let end: UInt

    init(at message: UnsafeRawPointer) {
        let event = message.load(as: UInt8.self)
        let first = UInt(message.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        let second = UInt(message.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        let third = UInt(message.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
        switch event {
        case Self.unmap: (kind, start, end) = (.unmap, first, second)
        case Self.remove: (kind, start, end) = (.remove, first, second)
        case Self.remap:
            // msg.arg.remap: from, to, len. The old range [from, from + len) is gone.
            let (sum, overflow) = first.addingReportingOverflow(third)
            (kind, start, end) = (.remap, first, overflow ? UInt.max : sum)
        case Self.pagefault: (kind, start, end) = (.writeProtectFault, second, second)
        default: (kind, start, end) = (.other, 0, 0)
        }
    }

    var invalidationEvent: InvalidationEvent? {
        switch kind {
        case .unmap: return .unmap
        case .remove: return .remove
        case .remap: return .remap
        case .writeProtectFault, .other: return nil
        }
    }

    var range: AddressRange? {
        guard end > start else { return nil }
        return try? AddressRange(start: start, length: end - start)
    }
}
