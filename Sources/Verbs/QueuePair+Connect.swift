import CVerbs

/// The RESET → INIT → RTR → RTS transitions of an RC queue pair.
extension QueuePair {
    /// Path and retry settings for `connect(to:options:)`.
    public struct ConnectOptions: Sendable, Hashable {
        public var port: UInt8 = 1
        /// The local GID index the packets leave from (0 is the link-local GID on rxe).
        public var gidIndex: UInt8 = 0
        /// Remote operations the peer may perform on this QP.
        public var access: AccessFlags = [.localWrite, .remoteRead, .remoteWrite]
        /// Nil means the port's active MTU.
        public var mtu: ibv_mtu? = nil
        /// Local ACK timeout exponent: 4.096 µs × 2^timeout per try.
        public var timeout: UInt8 = 14
        /// Transport retries before a work request fails with IBV_WC_RETRY_EXC_ERR.
        public var retryCount: UInt8 = 7
        /// Receiver-not-ready retries (7 = infinite: avoid it, it can hang a sender forever).
        public var rnrRetry: UInt8 = 6
        /// Outstanding RDMA READ / atomic operations in each direction.
        public var readDepth: UInt8 = 4
        public init() {}
    }

    /// Moves the QP through INIT, RTR and RTS to talk to `remote`.
    public func connect(to remote: QueuePairEndpoint, options: ConnectOptions = .init()) throws {
        try modifyToInit(port: options.port, access: options.access)
        try modifyToReadyToReceive(remote: remote, options: options)
        try modifyToReadyToSend(options: options)
    }

    public func modifyToInit(port: UInt8 = 1, access: AccessFlags = .rdma) throws {
        var attributes = ibv_qp_attr()
        attributes.qp_state = IBV_QPS_INIT
        attributes.pkey_index = 0
        attributes.port_num = port
        attributes.qp_access_flags = access.rawValue
        try modify(&attributes, [IBV_QP_STATE, IBV_QP_PKEY_INDEX, IBV_QP_PORT, IBV_QP_ACCESS_FLAGS],
                   argument: "qp_state: INIT, port: \(port)")
    }

    public func modifyToReadyToReceive(remote: QueuePairEndpoint, options: ConnectOptions = .init()) throws {
        var attributes = ibv_qp_attr()
        attributes.qp_state = IBV_QPS_RTR
        attributes.path_mtu = try options.mtu ?? protectionDomain.context.queryPort(options.port).activeMTU
        attributes.dest_qp_num = remote.queuePairNumber
        attributes.rq_psn = remote.packetSequenceNumber
        attributes.max_dest_rd_atomic = options.readDepth
        attributes.min_rnr_timer = 12
        attributes.ah_attr.is_global = 1
        attributes.ah_attr.grh.dgid = remote.gid.raw
        attributes.ah_attr.grh.sgid_index = options.gidIndex
        attributes.ah_attr.grh.hop_limit = 64
        attributes.ah_attr.dlid = remote.lid
        attributes.ah_attr.port_num = options.port
        try modify(&attributes, [IBV_QP_STATE, IBV_QP_AV, IBV_QP_PATH_MTU, IBV_QP_DEST_QPN, IBV_QP_RQ_PSN,
                                 IBV_QP_MAX_DEST_RD_ATOMIC, IBV_QP_MIN_RNR_TIMER],
                   argument: "qp_state: RTR, remote: \(remote)")
    }

    public func modifyToReadyToSend(options: ConnectOptions = .init(), packetSequenceNumber: UInt32 = 0) throws {
        var attributes = ibv_qp_attr()
        attributes.qp_state = IBV_QPS_RTS
        attributes.timeout = options.timeout
        attributes.retry_cnt = options.retryCount
        attributes.rnr_retry = options.rnrRetry
        attributes.sq_psn = packetSequenceNumber & 0xFF_FFFF
        attributes.max_rd_atomic = options.readDepth
        try modify(&attributes, [IBV_QP_STATE, IBV_QP_TIMEOUT, IBV_QP_RETRY_CNT, IBV_QP_RNR_RETRY,
                                 IBV_QP_SQ_PSN, IBV_QP_MAX_QP_RD_ATOMIC],
                   argument: "qp_state: RTS")
    }

    /// Moves the QP to the error state: outstanding requests complete with
    /// IBV_WC_WR_FLUSH_ERR, which is how a QP is drained before it is destroyed.
    public func modifyToError() throws {
        var attributes = ibv_qp_attr()
        attributes.qp_state = IBV_QPS_ERR
        try modify(&attributes, [IBV_QP_STATE], argument: "qp_state: ERR")
    }

    private func modify(_ attributes: inout ibv_qp_attr, _ mask: [ibv_qp_attr_mask], argument: String) throws {
        let bits = mask.reduce(0) { $0 | $1.rawValue }
        let code = ibv_modify_qp(pointer, &attributes, Int32(bitPattern: bits))
        guard code == 0 else { throw VerbsError.fromReturn("ibv_modify_qp", code, argument: argument) }
    }
}
