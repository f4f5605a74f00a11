import CVerbs

/// One piece of local memory a work request reads from or writes into (`struct ibv_sge`).
public struct ScatterGatherElement: Sendable, Hashable {
    public var address: UInt64
    public var length: UInt32
    public var lkey: UInt32

    public init(address: UInt64, length: UInt32, lkey: UInt32) {
        self.address = address
        self.length = length
        self.lkey = lkey
    }

    /// `length` bytes at `offset` into a registered region.
    ///
    /// - Throws: `VerbsError` (EINVAL) if the piece does not lie inside the region: the device
    ///   would fail it later with a protection error that is much harder to read.
    public init(region: MemoryRegion, offset: Int = 0, length: Int? = nil) throws {
        let count = length ?? (region.length - offset)
        guard offset >= 0, count >= 0, count <= UInt32.max,
              region.contains(address: region.address + UInt(offset), length: count) else {
            throw VerbsError(call: "ibv_sge", argument: "offset: \(offset), length: \(count)",
                             errno: .invalidArgument,
                             detail: "outside the \(region.length)-byte memory region")
        }
        self.init(address: UInt64(region.address) + UInt64(offset), length: UInt32(count), lkey: region.lkey)
    }

    var raw: ibv_sge { ibv_sge(addr: address, length: length, lkey: lkey) }
}
