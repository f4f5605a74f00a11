import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// An rdma_cm event channel: the file descriptor rdma_cm reports connection events on.
///
/// `@unchecked Sendable`: the pointer is written once in `init` and destroyed only in
/// `deinit`; events are read by one caller at a time (the owning connection or listener).
final class EventChannel: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<rdma_event_channel>

    init() throws {
        clearErrno()
        guard let channel = rdma_create_event_channel() else {
            throw VerbsError.fromErrno("rdma_create_event_channel")
        }
        pointer = channel
    }

    deinit { rdma_destroy_event_channel(pointer) }

    /// One event, acknowledged before it is returned, so no caller can forget to and make
    /// `rdma_destroy_id` wait forever.
    struct Event {
        var type: rdma_cm_event_type
        var status: Int32
        /// The new identifier of a CONNECT_REQUEST; the listener's own otherwise.
        var identifier: UnsafeMutablePointer<rdma_cm_id>?
        /// What the peer put in its connect or accept (RoCE pads it with zeros to the
        /// transport's size, so the reader must know how long its own message is).
        var privateData: [UInt8]
    }

    /// The next event if one is ready now (acknowledged), nil otherwise; never waits.
    func ready() throws -> Event? {
        var descriptor = pollfd(fd: pointer.pointee.fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&descriptor, 1, 0)
        if ready < 0 { throw VerbsError.fromErrno("poll", argument: "rdma_cm event channel") }
        guard ready > 0 else { return nil }
        return try read()
    }

    /// Reads and acknowledges one event (the channel must have one: rdma_get_cm_event blocks).
    private func read() throws -> Event {
        var raw: UnsafeMutablePointer<rdma_cm_event>?
        guard rdma_get_cm_event(pointer, &raw) == 0, let received = raw else {
            throw VerbsError.fromErrno("rdma_get_cm_event")
        }
        let connection = received.pointee.param.conn
        let privateData = connection.private_data.map {
            Array(UnsafeRawBufferPointer(start: $0, count: Int(connection.private_data_len)))
        } ?? []
        let event = Event(type: received.pointee.event, status: received.pointee.status,
                          identifier: received.pointee.id, privateData: privateData)
        rdma_ack_cm_event(received)
        return event
    }

    /// Waits (bounded) for the next event and checks it is `expected`.
    ///
    /// - Throws: `VerbsError` naming `call` with ETIMEDOUT when nothing came in time, or with
    ///   the event that came instead (REJECTED, UNREACHABLE, ADDR_ERROR...) and its status.
    func next(_ expected: rdma_cm_event_type, after call: String, timeout: Duration) throws -> Event {
        var descriptor = pollfd(fd: pointer.pointee.fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = timeout.clampedMilliseconds
        let ready = poll(&descriptor, 1, milliseconds)
        if ready < 0 { throw VerbsError.fromErrno("poll", argument: "rdma_cm event channel") }
        guard ready > 0 else {
            throw VerbsError(call: call, errno: .timedOut,
                             detail: "no \(Self.name(expected)) event within \(timeout)")
        }
        let event = try read()
        guard event.type == expected else {
            if event.type == RDMA_CM_EVENT_REJECTED {
                // The status is the transport's reject reason, not an errno.
                throw VerbsError(call: call, errno: .connectionRefused,
                                 detail: "got RDMA_CM_EVENT_REJECTED (reject reason \(event.status)"
                                     + (Self.rejectReasons[event.status].map { ": \($0)" } ?? "") + ")")
            }
            let status = event.status < 0 ? -event.status : event.status
            throw VerbsError(call: call, errno: status != 0 ? .init(rawValue: status) : nil,
                             detail: "got \(Self.name(event.type)) instead of \(Self.name(expected))")
        }
        return event
    }

    /// The IB CM reject reasons (IBTA 12.6.7.2) a RoCE peer gives most; librdmacm 44 has no
    /// rdma_reject_msg to name them.
    static let rejectReasons: [Int32: String] = [
        8: "invalid service ID, nobody listens on that port",
        28: "rejected by the peer's program (rdma_reject)",
    ]

    static func name(_ type: rdma_cm_event_type) -> String {
        guard let text = rdma_event_str(type) else { return "event \(type.rawValue)" }
        return String(cString: text)
    }
}

/// An rdma_cm identifier (`struct rdma_cm_id`) with the channel its events arrive on.
///
/// Everything built on the identifier (its device context, PD, CQ, QP) holds this object, so
/// `rdma_destroy_id` runs only after all of them are gone, as rdma_cm requires.
///
/// `@unchecked Sendable`: the pointer is written once in `init` and destroyed only in
/// `deinit`; rdma_cm calls on it are made by its one owner at a time.
final class ConnectionIdentifier: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<rdma_cm_id>
    let channel: EventChannel

    /// A new identifier for the reliable-connected (TCP-like) port space.
    init(channel: EventChannel) throws {
        var id: UnsafeMutablePointer<rdma_cm_id>?
        guard rdma_create_id(channel.pointer, &id, nil, RDMA_PS_TCP) == 0, let created = id else {
            throw VerbsError.fromErrno("rdma_create_id")
        }
        pointer = created
        self.channel = channel
    }

    /// Takes ownership of an identifier a CONNECT_REQUEST handed us, moving it to its own
    /// channel so each connection's events are read apart from the listener's.
    init(accepted id: UnsafeMutablePointer<rdma_cm_id>) throws {
        let own: EventChannel
        do {
            own = try EventChannel()
        } catch {
            rdma_destroy_id(id)
            throw error
        }
        guard rdma_migrate_id(id, own.pointer) == 0 else {
            let failure = VerbsError.fromErrno("rdma_migrate_id")
            rdma_destroy_id(id)
            throw failure
        }
        pointer = id
        channel = own
    }

    deinit { rdma_destroy_id(pointer) }

    /// The device context rdma_cm picked for this identifier's address (nil until bound or
    /// resolved). librdmacm owns it; the wrapper keeps this identifier alive instead.
    func deviceContext(call: String) throws -> DeviceContext {
        guard let verbs = pointer.pointee.verbs else {
            throw VerbsError(call: call, errno: .operationNotSupportedByDevice,
                             detail: "the address is not on an RDMA device")
        }
        return DeviceContext(borrowing: verbs, keepingAlive: self)
    }
}

/// Resolves "host%scope" and a port with `rdma_getaddrinfo` (it understands IPv6 scope ids
/// such as `fe80::ff:fe00:1%dummy0`).
struct ResolvedAddress {
    let info: UnsafeMutablePointer<rdma_addrinfo>

    init(node: String, port: UInt16, passive: Bool) throws {
        var hints = rdma_addrinfo()
        hints.ai_flags = passive ? RAI_PASSIVE : 0
        hints.ai_port_space = Int32(RDMA_PS_TCP.rawValue)
        var result: UnsafeMutablePointer<rdma_addrinfo>?
        let code = rdma_getaddrinfo(node, String(port), &hints, &result)
        guard code == 0, let result else {
            throw VerbsError(call: "rdma_getaddrinfo", argument: "node: \"\(node)\", port: \(port)",
                             errno: .init(rawValue: currentErrno()),
                             detail: code != 0 ? String(cString: gai_strerror(code)) : nil)
        }
        info = result
    }

    func free() { rdma_freeaddrinfo(info) }
}
