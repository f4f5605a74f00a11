import CVerbs

/// The limits of a device that users of this package size things by (`struct ibv_device_attr`).
public struct DeviceAttributes: Sendable, Hashable {
    public var firmwareVersion: String
    /// The largest single memory region, in bytes.
    public var maxMRSize: UInt64
    /// How many memory regions the device can hold at once.
    public var maxMR: Int
    public var maxQP: Int
    public var maxQPWorkRequests: Int
    public var maxSGE: Int
    public var maxCQ: Int
    public var maxCQE: Int
    public var pageSizeCapabilities: UInt64
    public var physicalPortCount: Int

    init(_ raw: ibv_device_attr) {
        var raw = raw
        firmwareVersion = withUnsafeBytes(of: &raw.fw_ver) { bytes in
            String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
        maxMRSize = raw.max_mr_size
        maxMR = Int(raw.max_mr)
        maxQP = Int(raw.max_qp)
        maxQPWorkRequests = Int(raw.max_qp_wr)
        maxSGE = Int(raw.max_sge)
        maxCQ = Int(raw.max_cq)
        maxCQE = Int(raw.max_cqe)
        pageSizeCapabilities = raw.page_size_cap
        physicalPortCount = Int(raw.phys_port_cnt)
    }
}

/// A port's state, MTU and GID table size (`struct ibv_port_attr`).
public struct PortAttributes: Sendable, Hashable {
    public enum State: Sendable, Hashable {
        case down, initializing, armed, active, activeDefer, other(UInt32)
    }

    public var state: State
    /// The active path MTU (`IBV_MTU_*`), what a connection should use.
    public var activeMTU: ibv_mtu
    /// The active path MTU in bytes (256 to 4096), or nil for a value verbs does not define.
    public var activeMTUBytes: Int? {
        (1...5).contains(activeMTU.rawValue) ? 128 << Int(activeMTU.rawValue) : nil
    }
    public var gidTableLength: Int32
    public var lid: UInt16
    /// `IBV_LINK_LAYER_ETHERNET` for RoCE (rxe), `IBV_LINK_LAYER_INFINIBAND` for IB.
    public var isEthernet: Bool { linkLayer == .ethernet }
    /// What the port runs over: RoCE and iWARP ports say Ethernet, IB ports InfiniBand.
    public var linkLayer: LinkLayer

    /// `IBV_LINK_LAYER_*`; `unspecified` is what older providers report for InfiniBand.
    public enum LinkLayer: Sendable, Hashable {
        case unspecified, infiniband, ethernet, other(UInt8)
    }

    init(_ raw: ibv_port_attr) {
        switch raw.state {
        case IBV_PORT_DOWN: state = .down
        case IBV_PORT_INIT: state = .initializing
        case IBV_PORT_ARMED: state = .armed
        case IBV_PORT_ACTIVE: state = .active
        case IBV_PORT_ACTIVE_DEFER: state = .activeDefer
        default: state = .other(raw.state.rawValue)
        }
        activeMTU = raw.active_mtu
        gidTableLength = raw.gid_tbl_len
        lid = raw.lid
        linkLayer = switch raw.link_layer {
        case UInt8(IBV_LINK_LAYER_UNSPECIFIED): .unspecified
        case UInt8(IBV_LINK_LAYER_INFINIBAND): .infiniband
        case UInt8(IBV_LINK_LAYER_ETHERNET): .ethernet
        default: .other(raw.link_layer)
        }
    }
}
