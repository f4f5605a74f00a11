/// What a peer needs to connect an RC queue pair to this one: exchanged out of band (or by
/// rdma_cm) before both sides move to ready-to-receive.
public struct QueuePairEndpoint: Sendable, Hashable, CustomStringConvertible {
    public var queuePairNumber: UInt32
    public var gid: GID
    /// The LID, meaningful on InfiniBand only (0 on RoCE).
    public var lid: UInt16
    /// The first packet sequence number this side will send.
    public var packetSequenceNumber: UInt32

    public init(queuePairNumber: UInt32, gid: GID, lid: UInt16 = 0, packetSequenceNumber: UInt32 = 0) {
        self.queuePairNumber = queuePairNumber
        self.gid = gid
        self.lid = lid
        self.packetSequenceNumber = packetSequenceNumber & 0xFF_FFFF
    }

    public var description: String { "QP \(queuePairNumber) at \(gid), PSN \(packetSequenceNumber)" }
}
