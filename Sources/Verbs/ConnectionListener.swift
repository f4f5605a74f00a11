import CVerbs

/// Listens for rdma_cm connections on an address and port (`rdma_bind_addr` + `rdma_listen`).
///
/// `@unchecked Sendable`: the identifier is immutable; `accept` reads the listener's channel
/// and is meant to be called from one thread at a time.
public final class ConnectionListener: @unchecked Sendable {
    private let identifier: ConnectionIdentifier

    /// Binds to `address` (e.g. `fe80::ff:fe00:1%dummy0`); `port` 0 picks a free port.
    public init(address: String, port: UInt16 = 0, backlog: Int32 = 16) throws {
        identifier = try ConnectionIdentifier(channel: EventChannel())
        let resolved = try ResolvedAddress(node: address, port: port, passive: true)
        defer { resolved.free() }
        guard rdma_bind_addr(identifier.pointer, resolved.info.pointee.ai_src_addr) == 0 else {
            throw VerbsError.fromErrno("rdma_bind_addr", argument: "address: \"\(address)\", port: \(port)")
        }
        guard rdma_listen(identifier.pointer, backlog) == 0 else {
            throw VerbsError.fromErrno("rdma_listen", argument: "backlog: \(backlog)")
        }
    }

    /// The port the listener is bound to (useful after binding port 0).
    public var port: UInt16 { UInt16(bigEndian: rdma_get_src_port(identifier.pointer)) }

    /// Waits (bounded) for one connection request and accepts it.
    public func accept(options: Connection.Options = .init(), timeout: Duration = .seconds(10)) throws -> Connection {
        try accept(options: options, timeout: timeout) { _ in [] }
    }

    /// Waits (bounded) for one connection request and accepts it, after `answer` has seen the
    /// new connection (its queue pair exists, the peer's request bytes are in
    /// `peerPrivateData`) and returned the bytes (at most `Connection.maxAcceptPrivateData`)
    /// that go back with the accept. `answer` is where receives are posted and memory is
    /// registered: nothing the peer sends once it is connected can then find the queue empty.
    ///
    /// - Throws: what `answer` throws (the request is then rejected, so the peer hears at once),
    ///   or `VerbsError` naming the rdma_cm step that failed.
    public func accept(options: Connection.Options = .init(), timeout: Duration = .seconds(10),
                       answer: (Connection) throws -> [UInt8]) throws -> Connection {
        let request = try identifier.channel.next(RDMA_CM_EVENT_CONNECT_REQUEST, after: "rdma_listen", timeout: timeout)
        guard let incoming = request.identifier else {
            throw VerbsError(call: "rdma_get_cm_event", detail: "CONNECT_REQUEST without an identifier")
        }
        let accepted = try ConnectionIdentifier(accepted: incoming)
        let connection = try Connection(identifier: accepted, options: options)
        connection.recordPeerPrivateData(request.privateData)
        let code: Int32
        do {
            let reply = try answer(connection)
            code = try connection.withParameters(options, privateData: reply, limit: Connection.maxAcceptPrivateData,
                                                 call: "rdma_accept") { rdma_accept(accepted.pointer, &$0) }
        } catch {
            rdma_reject(accepted.pointer, nil, 0)
            throw error
        }
        guard code == 0 else {
            throw VerbsError.fromErrno("rdma_accept")
        }
        _ = try accepted.channel.next(RDMA_CM_EVENT_ESTABLISHED, after: "rdma_accept", timeout: timeout)
        return connection
    }
}
