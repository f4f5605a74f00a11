import CVerbs

/// Posting work requests: RDMA WRITE, RDMA READ, SEND and RECV with scatter-gather lists.
extension QueuePair {
    /// Writes the local pieces into the peer's memory at `remoteAddress` (one-sided).
    public func postWrite(_ local: [ScatterGatherElement], remoteAddress: UInt64, rkey: UInt32,
                          id: UInt64, signaled: Bool = true) throws {
        try postSend(opcode: IBV_WR_RDMA_WRITE, local, id: id, signaled: signaled,
                     remote: (remoteAddress, rkey), call: "ibv_post_send(RDMA_WRITE)")
    }

    /// Writes the local pieces into the peer's memory and consumes one of the peer's posted
    /// receives, which completes with `immediate`: the peer learns that (and which) data landed
    /// without polling memory, in the order the writes were posted.
    public func postWrite(_ local: [ScatterGatherElement], remoteAddress: UInt64, rkey: UInt32,
                          immediate: UInt32, id: UInt64, signaled: Bool = true) throws {
        try postSend(opcode: IBV_WR_RDMA_WRITE_WITH_IMM, local, id: id, signaled: signaled,
                     remote: (remoteAddress, rkey), immediate: immediate, call: "ibv_post_send(RDMA_WRITE_WITH_IMM)")
    }

    /// Reads the peer's memory at `remoteAddress` into the local pieces (one-sided).
    public func postRead(_ local: [ScatterGatherElement], remoteAddress: UInt64, rkey: UInt32,
                         id: UInt64, signaled: Bool = true) throws {
        try postSend(opcode: IBV_WR_RDMA_READ, local, id: id, signaled: signaled,
                     remote: (remoteAddress, rkey), call: "ibv_post_send(RDMA_READ)")
    }

    /// Sends the local pieces as one message into the peer's next posted receive.
    public func postSend(_ local: [ScatterGatherElement], id: UInt64, signaled: Bool = true) throws {
        try postSend(opcode: IBV_WR_SEND, local, id: id, signaled: signaled, remote: nil, call: "ibv_post_send(SEND)")
    }

    /// Gives the device local pieces to receive one incoming message into.
    public func postReceive(_ local: [ScatterGatherElement], id: UInt64) throws {
        let count = try Self.scatterGatherCount(local, call: "ibv_post_recv", id: id)
        var elements = local.map(\.raw)
        let code = elements.withUnsafeMutableBufferPointer { sgl -> Int32 in
            var request = ibv_recv_wr()
            request.wr_id = id
            request.sg_list = sgl.baseAddress
            request.num_sge = count
            var bad: UnsafeMutablePointer<ibv_recv_wr>?
            return ibv_post_recv(pointer, &request, &bad)
        }
        guard code == 0 else {
            throw VerbsError.fromReturn("ibv_post_recv", code, argument: "wr_id: \(id), num_sge: \(local.count)")
        }
    }

    /// The list's length as verbs takes it (`num_sge`, an Int32), or an error naming it.
    private static func scatterGatherCount(_ local: [ScatterGatherElement], call: String, id: UInt64) throws -> Int32 {
        guard let count = Int32(exactly: local.count) else {
            throw VerbsError(call: call, argument: "wr_id: \(id), num_sge: \(local.count)", errno: .invalidArgument,
                             detail: "more scatter-gather elements than a work request can carry")
        }
        return count
    }

    private func postSend(opcode: ibv_wr_opcode, _ local: [ScatterGatherElement], id: UInt64, signaled: Bool,
                          remote: (address: UInt64, rkey: UInt32)?, immediate: UInt32? = nil,
                          call: String) throws {
        let count = try Self.scatterGatherCount(local, call: call, id: id)
        var elements = local.map(\.raw)
        let code = elements.withUnsafeMutableBufferPointer { sgl -> Int32 in
            var request = ibv_send_wr()
            request.wr_id = id
            request.sg_list = sgl.baseAddress
            request.num_sge = count
            request.opcode = opcode
            request.send_flags = signaled ? IBV_SEND_SIGNALED.rawValue : 0
            if let immediate { request.imm_data = immediate.bigEndian }  // __be32 on the wire
            if let remote {
                request.wr.rdma.remote_addr = remote.address
                request.wr.rdma.rkey = remote.rkey
            }
            var bad: UnsafeMutablePointer<ibv_send_wr>?
            return ibv_post_send(pointer, &request, &bad)
        }
        guard code == 0 else {
            throw VerbsError.fromReturn(call, code, argument: "wr_id: \(id), num_sge: \(local.count)")
        }
    }
}
