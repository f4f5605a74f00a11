import CVerbs
import Synchronization

/// A connected RC queue pair set up by rdma_cm (`rdma_connect` / `rdma_accept`), with the
/// protection domain and completion queue it was built on.
///
/// rdma_cm does the address resolution, path and QP state transitions that `QueuePair.connect`
/// does by hand. Disconnects on `disconnect()` or when the last reference ends.
public final class Connection: Sendable {
    public let queuePair: QueuePair
    private let identifier: ConnectionIdentifier
    /// Whether `rdma_disconnect` is still to be called.
    private let lock = Mutex<Bool>(true)
    /// What the peer sent with its connect request or its accept.
    private let received = Mutex<[UInt8]>([])
    /// Set once rdma_cm has reported the peer's disconnect (the event is read only once).
    private let peerGone = Atomic<Bool>(false)

    public var protectionDomain: ProtectionDomain { queuePair.protectionDomain }
    public var completionQueue: CompletionQueue { queuePair.sendCompletionQueue }
    public var context: DeviceContext { protectionDomain.context }

    /// Queue sizes and RDMA READ depths for a connection.
    public struct Options: Sendable, Hashable {
        public var capabilities = QueuePair.Capabilities()
        public var completionQueueCapacity: Int32 = 256
        /// Incoming RDMA READs this side serves at once, and outgoing ones it issues.
        public var readDepth: UInt8 = 4
        public init() {}
    }

    /// The most bytes rdma_cm carries with a connect request, and with an accept (RC, RoCE/IB).
    public static let maxConnectPrivateData = 56
    public static let maxAcceptPrivateData = 196

    /// The bytes the peer sent with its connect request (on the accepting side) or with its
    /// accept (on the connecting side): where two programs exchange the keys and addresses of
    /// their buffers before the first work request, with no receive to race against.
    /// RoCE pads them with zeros to the transport's size.
    public var peerPrivateData: [UInt8] { received.withLock { $0 } }

    /// Connects to a listener at `address` (`fe80::ff:fe00:1%dummy0`, `192.0.2.1`) and `port`,
    /// sending `privateData` (at most `maxConnectPrivateData` bytes) with the request.
    ///
    /// - Throws: `VerbsError` naming the rdma_cm step that failed (address or route resolution,
    ///   connect) with its errno or the event that came instead (e.g. REJECTED when nobody
    ///   listens); every step is bounded by `timeout`.
    public static func connect(to address: String, port: UInt16, options: Options = .init(),
                               privateData: [UInt8] = [],
                               timeout: Duration = .seconds(10)) throws -> Connection {
        let identifier = try ConnectionIdentifier(channel: EventChannel())
        let resolved = try ResolvedAddress(node: address, port: port, passive: false)
        defer { resolved.free() }
        let milliseconds = timeout.clampedMilliseconds
        guard rdma_resolve_addr(identifier.pointer, resolved.info.pointee.ai_src_addr,
                                resolved.info.pointee.ai_dst_addr, milliseconds) == 0 else {
            throw VerbsError.fromErrno("rdma_resolve_addr", argument: "address: \"\(address)\"")
        }
        _ = try identifier.channel.next(RDMA_CM_EVENT_ADDR_RESOLVED, after: "rdma_resolve_addr", timeout: timeout)
        guard rdma_resolve_route(identifier.pointer, milliseconds) == 0 else {
            throw VerbsError.fromErrno("rdma_resolve_route", argument: "address: \"\(address)\"")
        }
        _ = try identifier.channel.next(RDMA_CM_EVENT_ROUTE_RESOLVED, after: "rdma_resolve_route", timeout: timeout)
        let connection = try Connection(identifier: identifier, options: options)
        let code = try connection.withParameters(options, privateData: privateData, limit: maxConnectPrivateData,
                                                 call: "rdma_connect") { rdma_connect(identifier.pointer, &$0) }
        guard code == 0 else {
            throw VerbsError.fromErrno("rdma_connect", argument: "address: \"\(address)\", port: \(port)")
        }
        let established = try identifier.channel.next(RDMA_CM_EVENT_ESTABLISHED, after: "rdma_connect", timeout: timeout)
        connection.received.withLock { $0 = established.privateData }
        return connection
    }

    /// Calls `body` (rdma_connect or rdma_accept) with this connection's parameters for
    /// `options`, carrying `privateData`; an error names `call` if rdma_cm cannot carry it all.
    func withParameters(_ options: Options, privateData: [UInt8], limit: Int, call: String,
                        _ body: (inout rdma_conn_param) -> Int32) throws -> Int32 {
        guard privateData.count <= limit, let length = UInt8(exactly: privateData.count) else {
            throw VerbsError(call: call, argument: "private_data_len: \(privateData.count)", errno: .invalidArgument,
                             detail: "rdma_cm carries at most \(limit) bytes here")
        }
        return privateData.withUnsafeBytes { bytes in
            var parameters = self.parameters(options)
            parameters.private_data = bytes.baseAddress
            parameters.private_data_len = length
            return body(&parameters)
        }
    }

    /// Records what the peer sent with its request (the accepting side, before it answers).
    func recordPeerPrivateData(_ bytes: [UInt8]) { received.withLock { $0 = bytes } }

    /// Builds PD, CQ and QP on an identifier whose device rdma_cm has chosen.
    init(identifier: ConnectionIdentifier, options: Options) throws {
        let context = try identifier.deviceContext(call: "rdma_create_qp")
        let domain = try ProtectionDomain(context: context)
        let queue = try CompletionQueue(context: context, capacity: options.completionQueueCapacity)
        var attributes = QueuePair.initAttributes(queue, queue, options.capabilities)
        guard rdma_create_qp(identifier.pointer, domain.pointer, &attributes) == 0,
              let qp = identifier.pointer.pointee.qp else {
            throw VerbsError.fromErrno("rdma_create_qp", argument: "max_send_wr: \(options.capabilities.maxSendRequests)")
        }
        queuePair = QueuePair(qp, protectionDomain: domain, sendCompletionQueue: queue,
                              receiveCompletionQueue: queue, connectionIdentifier: identifier)
        self.identifier = identifier
    }

    func parameters(_ options: Options) -> rdma_conn_param {
        var parameters = rdma_conn_param()
        parameters.responder_resources = options.readDepth
        parameters.initiator_depth = options.readDepth
        parameters.retry_count = 7
        parameters.rnr_retry_count = 6
        return parameters
    }

    /// Whether the peer has ended the connection: its `rdma_disconnect`, or its process gone
    /// (the kernel disconnects for it). Reads the events the channel has ready now and never
    /// waits, so a program streaming data can ask between completions instead of learning it
    /// from a transport timeout, seconds later.
    public func peerHasDisconnected() throws -> Bool {
        while !peerGone.load(ordering: .relaxed), let event = try identifier.channel.ready() {
            if event.type == RDMA_CM_EVENT_DISCONNECTED || event.type == RDMA_CM_EVENT_DEVICE_REMOVAL {
                peerGone.store(true, ordering: .relaxed)
            }
        }
        return peerGone.load(ordering: .relaxed)
    }

    deinit { disconnect() }

    /// Tells the peer the connection is over and flushes this side's queue pair
    /// (`rdma_disconnect`). A second call does nothing.
    public func disconnect() {
        lock.withLock { connected in
            guard connected else { return }
            connected = false
            rdma_disconnect(identifier.pointer)
        }
    }
}
