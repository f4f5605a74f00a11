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
        // Checked before any arithmetic: a negative or huge offset or length is an error, not a trap.
        let outside = VerbsError(call: "ibv_sge", argument: "offset: \(offset), length: \(length.map(String.init) ?? "rest")",
                                 errno: .invalidArgument, detail: "outside the \(region.length)-byte memory region")
        guard offset >= 0, offset <= region.length else { throw outside }
        let count = length ?? (region.length - offset)
        guard count >= 0, let length32 = UInt32(exactly: count) else { throw outside }
        let (start, overflow) = region.address.addingReportingOverflow(UInt(offset))
        guard !overflow, region.contains(address: start, length: count) else { throw outside }
        self.init(address: UInt64(start), length: length32, lkey: region.lkey)
    }

    var raw: ibv_sge { ibv_sge(addr: address, length: length, lkey: lkey) }
}
