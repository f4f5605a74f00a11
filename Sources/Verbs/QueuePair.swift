import CVerbs

/// A reliable-connected queue pair (`struct ibv_qp`, `IBV_QPT_RC`).
///
/// It holds its protection domain and completion queues, so it is always destroyed before
/// them (QP before CQ, QP before PD). A QP that rdma_cm created is destroyed through rdma_cm
/// and keeps its connection identifier alive until then.
///
/// `@unchecked Sendable`: the pointer is written once in `init` and destroyed only in
/// `deinit`; posting from several threads is serialized by the provider (libibverbs verbs are
/// thread-safe).
public final class QueuePair: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<ibv_qp>
    public let protectionDomain: ProtectionDomain
    public let sendCompletionQueue: CompletionQueue
    public let receiveCompletionQueue: CompletionQueue
    /// Set when rdma_cm owns the QP: destroying it must go through `rdma_destroy_qp`.
    let connectionIdentifier: ConnectionIdentifier?

    /// Queue depths and scatter-gather limits.
    public struct Capabilities: Sendable, Hashable {
        public var maxSendRequests: UInt32 = 64
        public var maxReceiveRequests: UInt32 = 64
        public var maxSendScatterGather: UInt32 = 4
        public var maxReceiveScatterGather: UInt32 = 4
        public var maxInlineData: UInt32 = 0
        public init() {}
    }

    /// Creates an RC queue pair in the RESET state.
    public convenience init(
        protectionDomain: ProtectionDomain, sendCompletionQueue: CompletionQueue,
        receiveCompletionQueue: CompletionQueue? = nil, capabilities: Capabilities = .init()
    ) throws {
        let receiveQueue = receiveCompletionQueue ?? sendCompletionQueue
        var attributes = Self.initAttributes(sendCompletionQueue, receiveQueue, capabilities)
        clearErrno()
        guard let qp = ibv_create_qp(protectionDomain.pointer, &attributes) else {
            throw VerbsError.fromErrno("ibv_create_qp", argument: "max_send_wr: \(capabilities.maxSendRequests)")
        }
        self.init(qp, protectionDomain: protectionDomain, sendCompletionQueue: sendCompletionQueue,
                  receiveCompletionQueue: receiveQueue, connectionIdentifier: nil)
    }

    init(_ qp: UnsafeMutablePointer<ibv_qp>, protectionDomain: ProtectionDomain,
         sendCompletionQueue: CompletionQueue, receiveCompletionQueue: CompletionQueue,
         connectionIdentifier: ConnectionIdentifier?) {
        pointer = qp
        self.protectionDomain = protectionDomain
        self.sendCompletionQueue = sendCompletionQueue
        self.receiveCompletionQueue = receiveCompletionQueue
        self.connectionIdentifier = connectionIdentifier
    }

    static func initAttributes(_ send: CompletionQueue, _ receive: CompletionQueue,
                               _ capabilities: Capabilities) -> ibv_qp_init_attr {
        var attributes = ibv_qp_init_attr()
        attributes.send_cq = send.pointer
        attributes.recv_cq = receive.pointer
        attributes.qp_type = IBV_QPT_RC
        attributes.cap.max_send_wr = capabilities.maxSendRequests
        attributes.cap.max_recv_wr = capabilities.maxReceiveRequests
        attributes.cap.max_send_sge = capabilities.maxSendScatterGather
        attributes.cap.max_recv_sge = capabilities.maxReceiveScatterGather
        attributes.cap.max_inline_data = capabilities.maxInlineData
        return attributes
    }

    deinit {
        if let connectionIdentifier {
            rdma_destroy_qp(connectionIdentifier.pointer)
        } else {
            ibv_destroy_qp(pointer)
        }
    }

    /// The queue pair number peers address.
    public var number: UInt32 { pointer.pointee.qp_num }

    /// The QP's current state, as the device reports it (`ibv_query_qp`).
    public func state() throws -> ibv_qp_state {
        var attributes = ibv_qp_attr()
        var initAttributes = ibv_qp_init_attr()
        let code = ibv_query_qp(pointer, &attributes, Int32(IBV_QP_STATE.rawValue), &initAttributes)
        guard code == 0 else { throw VerbsError.fromReturn("ibv_query_qp", code) }
        return attributes.qp_state
    }

    /// This side of a connection, for the peer to `connect(to:)`.
    public func endpoint(port: UInt8 = 1, gidIndex: Int32 = 0, packetSequenceNumber: UInt32 = 0) throws
        -> QueuePairEndpoint
    {
        let context = protectionDomain.context
        return QueuePairEndpoint(queuePairNumber: number, gid: try context.gid(port: port, index: gidIndex),
                                 lid: try context.queryPort(port).lid,
                                 packetSequenceNumber: packetSequenceNumber)
    }
}
