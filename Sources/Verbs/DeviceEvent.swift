import CVerbs

/// An asynchronous event from a device (`struct ibv_async_event`): the ones that change what
/// an application may do next. A registration cache revokes everything on `deviceFatal`.
public enum DeviceEvent: Sendable, Hashable, CustomStringConvertible {
    case portActive(port: UInt8)
    case portError(port: UInt8)
    case gidChange(port: UInt8)
    case deviceFatal
    case queuePairFatal(queuePairNumber: UInt32)
    case completionQueueError
    /// Any other event, with its verbs name (`ibv_event_type_str`).
    case other(name: String)

    init(_ raw: ibv_async_event) {
        switch raw.event_type {
        case IBV_EVENT_PORT_ACTIVE: self = .portActive(port: UInt8(truncatingIfNeeded: raw.element.port_num))
        case IBV_EVENT_PORT_ERR: self = .portError(port: UInt8(truncatingIfNeeded: raw.element.port_num))
        case IBV_EVENT_GID_CHANGE: self = .gidChange(port: UInt8(truncatingIfNeeded: raw.element.port_num))
        case IBV_EVENT_DEVICE_FATAL: self = .deviceFatal
        case IBV_EVENT_QP_FATAL, IBV_EVENT_QP_REQ_ERR, IBV_EVENT_QP_ACCESS_ERR:
            self = .queuePairFatal(queuePairNumber: raw.element.qp?.pointee.qp_num ?? 0)
        case IBV_EVENT_CQ_ERR: self = .completionQueueError
        default: self = .other(name: String(cString: ibv_event_type_str(raw.event_type)))
        }
    }

    public var description: String {
        switch self {
        case .portActive(let port): "port \(port) active"
        case .portError(let port): "port \(port) down"
        case .gidChange(let port): "GID table of port \(port) changed"
        case .deviceFatal: "device fatal error"
        case .queuePairFatal(let number): "queue pair \(number) failed"
        case .completionQueueError: "completion queue overrun"
        case .other(let name): name
        }
    }
}
