import Synchronization

/// One slot of the libfabric monitor's memo of ranges `valid` confirmed: range and epoch under a
/// sequence lock, so a hit reads it with plain loads and never writes a shared cache line.
/// Written only under the monitor's records lock (one writer at a time).
final class ConfirmedRange: Sendable {
    /// Direct-mapped: a range's slot comes from its start address.
    static let slots = 64
    static func slot(_ start: UInt) -> Int { Int(truncatingIfNeeded: (start >> 6) ^ (start >> 16)) & (slots - 1) }

    /// Odd while the slot is being written.
    private let version = Atomic<UInt>(0)
    private let start = Atomic<UInt>(0)
    private let length = Atomic<UInt>(0)
    private let epoch = Atomic<UInt64>(UInt64.max)

    /// True when the slot holds exactly this range, confirmed at `epoch`.
    func confirms(start: UInt, length: UInt, epoch now: UInt64) -> Bool {
        let before = version.load(ordering: .acquiring)
        if before & 1 == 1 { return false }
        let s = self.start.load(ordering: .relaxed)
        let l = self.length.load(ordering: .relaxed)
        let e = epoch.load(ordering: .relaxed)
        atomicMemoryFence(ordering: .acquiring)
        return version.load(ordering: .relaxed) == before && s == start && l == length && e == now
    }

    /// Records that the range was current at `epoch` (under the records lock).
    func record(start: UInt, length: UInt, epoch confirmedAt: UInt64) {
        let v = version.load(ordering: .relaxed)
        version.store(v &+ 1, ordering: .relaxed)
        atomicMemoryFence(ordering: .releasing)
        self.start.store(start, ordering: .relaxed)
        self.length.store(length, ordering: .relaxed)
        epoch.store(confirmedAt, ordering: .relaxed)
        version.store(v &+ 2, ordering: .releasing)
    }
}
