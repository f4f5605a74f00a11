import CVerbs

/// What a device can do with on-demand paging (`ibv_device_attr_ex.odp_caps`).
///
/// A device with ODP registers memory without pinning it and follows the kernel's mmu notifiers
/// itself, so a registration stays coherent across an unmap or truncation that userfaultfd
/// cannot see. Whether it has ODP is therefore part of what a user needs to know before trusting a
/// registration cache with shared memory.
public struct OnDemandPagingCapabilities: Sendable, Hashable {
    /// `IBV_ODP_SUPPORT*`: whether ODP is there at all, and implicit (whole address space) ODP.
    public struct General: OptionSet, Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        public static let supported = General(rawValue: UInt64(IBV_ODP_SUPPORT.rawValue))
        public static let implicit = General(rawValue: UInt64(IBV_ODP_SUPPORT_IMPLICIT.rawValue))
    }

    /// `IBV_ODP_SUPPORT_*` of one transport: which operations may touch ODP memory.
    public struct Transport: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let send = Transport(rawValue: IBV_ODP_SUPPORT_SEND.rawValue)
        public static let receive = Transport(rawValue: IBV_ODP_SUPPORT_RECV.rawValue)
        public static let write = Transport(rawValue: IBV_ODP_SUPPORT_WRITE.rawValue)
        public static let read = Transport(rawValue: IBV_ODP_SUPPORT_READ.rawValue)
        public static let atomic = Transport(rawValue: IBV_ODP_SUPPORT_ATOMIC.rawValue)
        public static let sharedReceiveQueueReceive = Transport(rawValue: IBV_ODP_SUPPORT_SRQ_RECV.rawValue)
        // Newer than rdma-core 44's header (which this package builds against), reported by
        // kernels whose rxe has ODP (6.1x+): IBV_ODP_SUPPORT_FLUSH, IBV_ODP_SUPPORT_ATOMIC_WRITE.
        public static let flush = Transport(rawValue: 1 << 6)
        public static let atomicWrite = Transport(rawValue: 1 << 7)
    }

    public var general: General
    /// Reliable connected (what `QueuePair` uses).
    public var reliableConnected: Transport
    public var unreliableConnected: Transport
    public var unreliableDatagram: Transport

    public init(general: General, reliableConnected: Transport, unreliableConnected: Transport,
                unreliableDatagram: Transport) {
        self.general = general
        self.reliableConnected = reliableConnected
        self.unreliableConnected = unreliableConnected
        self.unreliableDatagram = unreliableDatagram
    }

    init(_ raw: ibv_odp_caps) {
        self.init(general: General(rawValue: raw.general_caps),
                  reliableConnected: Transport(rawValue: raw.per_transport_caps.rc_odp_caps),
                  unreliableConnected: Transport(rawValue: raw.per_transport_caps.uc_odp_caps),
                  unreliableDatagram: Transport(rawValue: raw.per_transport_caps.ud_odp_caps))
    }

    /// True when the device supports ODP at all.
    public var isSupported: Bool { general.contains(.supported) }
}

extension DeviceContext {
    /// The device's on-demand paging capabilities (`ibv_query_device_ex`). A provider without the
    /// extended query answers with the legacy attributes, and so with no ODP: that is reported as
    /// empty capabilities, not an error.
    ///
    /// - Throws: `VerbsError` naming `ibv_query_device_ex` and the errno the provider returned.
    public func queryOnDemandPaging() throws -> OnDemandPagingCapabilities {
        var attributes = ibv_device_attr_ex()
        let code = ibv_query_device_ex(pointer, nil, &attributes)
        guard code == 0 else { throw VerbsError.fromReturn("ibv_query_device_ex", code) }
        return OnDemandPagingCapabilities(attributes.odp_caps)
    }
}
