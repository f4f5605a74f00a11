import MemoryRegistration
import Verbs

/// One RDMA device as `info` reports it. Every part is optional because each comes from its own
/// query: one that fails leaves its part out and adds its error to `errors`, and the rest of the
/// device is still shown.
struct DeviceReport: Codable, Equatable, Sendable {
    var name: String
    /// `xxxx:xxxx:xxxx:xxxx` as ibv_devinfo prints it; nil when the device reports none (zero).
    var nodeGUID: String?
    var firmwareVersion: String?
    var maxRegions: Int?
    var maxRegionBytes: UInt64?
    var ports: [PortReport] = []
    var onDemandPaging: OnDemandPagingReport?
    var cacheDefaults: CacheDefaultsReport?
    var errors: [String] = []

    enum CodingKeys: String, CodingKey {
        case name, nodeGUID = "node_guid", firmwareVersion = "firmware_version", maxRegions = "max_mr"
        case maxRegionBytes = "max_mr_size", ports, onDemandPaging = "odp", cacheDefaults = "cache_defaults", errors
    }

    /// Opens the device and asks it everything `info` shows.
    static func collect(_ device: DeviceInfo) -> DeviceReport {
        var report = DeviceReport(name: device.name, nodeGUID: formatGUID(device.guid))
        let context: DeviceContext
        do {
            context = try DeviceContext(name: device.name)
        } catch {
            report.errors.append("\(error)")
            return report
        }
        do {
            let attributes = try context.queryDevice()
            report.firmwareVersion = attributes.firmwareVersion
            report.maxRegions = attributes.maxMR
            report.maxRegionBytes = attributes.maxMRSize
            report.cacheDefaults = CacheDefaultsReport(RegistrationCache.resolvedLimits(
                deviceMaxRegionBytes: attributes.maxMRSize, deviceMaxRegions: attributes.maxMR))
            for port in stride(from: 1, through: attributes.physicalPortCount, by: 1) {
                do {
                    report.ports.append(try PortReport.collect(context, port: UInt8(clamping: port)))
                } catch {
                    report.errors.append("port \(port): \(error)")
                }
            }
        } catch {
            report.errors.append("\(error)")
        }
        do {
            report.onDemandPaging = OnDemandPagingReport(try context.queryOnDemandPaging())
        } catch {
            report.errors.append("\(error)")
        }
        return report
    }

    static func formatGUID(_ guid: UInt64) -> String? {
        guard guid != 0 else { return nil }
        return stride(from: 48, through: 0, by: -16).map { shift in
            let group = String((guid >> UInt64(shift)) & 0xffff, radix: 16)
            return String(repeating: "0", count: 4 - group.count) + group
        }.joined(separator: ":")
    }
}

/// One port: whether it can carry traffic, at which MTU, over what, and the GIDs a connection
/// can pick from.
struct PortReport: Codable, Equatable, Sendable {
    var number: Int
    /// `DOWN`, `INIT`, `ARMED`, `ACTIVE`, `ACTIVE_DEFER` (ibv_port_state without the prefix).
    var state: String
    /// Bytes; nil for a value verbs does not define.
    var activeMTU: Int?
    /// `Ethernet` (RoCE, iWARP), `InfiniBand`, or `unspecified`.
    var linkLayer: String
    var lid: Int
    var gids: [GIDReport]

    enum CodingKeys: String, CodingKey {
        case number, state, activeMTU = "active_mtu", linkLayer = "link_layer", lid, gids
    }

    static func collect(_ context: DeviceContext, port: UInt8) throws -> PortReport {
        let attributes = try context.queryPort(port)
        let gids = try context.gidEntries(port: port).map(GIDReport.init)
        return PortReport(number: Int(port), state: Self.name(attributes.state), activeMTU: attributes.activeMTUBytes,
                          linkLayer: Self.name(attributes.linkLayer), lid: Int(attributes.lid), gids: gids)
    }

    static func name(_ state: PortAttributes.State) -> String {
        switch state {
        case .down: "DOWN"
        case .initializing: "INIT"
        case .armed: "ARMED"
        case .active: "ACTIVE"
        case .activeDefer: "ACTIVE_DEFER"
        case let .other(raw): "UNKNOWN(\(raw))"
        }
    }

    static func name(_ layer: PortAttributes.LinkLayer) -> String {
        switch layer {
        case .ethernet: "Ethernet"
        case .infiniband: "InfiniBand"
        case .unspecified: "unspecified"
        case let .other(raw): "UNKNOWN(\(raw))"
        }
    }
}

/// One used GID table slot.
struct GIDReport: Codable, Equatable, Sendable {
    var index: Int
    var address: String
    /// `IB`, `RoCE v1`, `RoCE v2`; nil where the kernel has no extended GID query.
    var type: String?

    init(index: Int, address: String, type: String?) {
        self.index = index
        self.address = address
        self.type = type
    }

    init(_ entry: GIDEntry) {
        let type: String? = switch entry.kind {
        case .infiniband: "IB"
        case .roceV1: "RoCE v1"
        case .roceV2: "RoCE v2"
        case let .other(raw): "UNKNOWN(\(raw))"
        case nil: nil
        }
        self.init(index: Int(entry.index), address: entry.gid.description, type: type)
    }
}

/// On-demand paging, decoded to the `IBV_ODP_*` names (without `IBV_`), so they can be searched
/// for in rdma-core's documentation. Unknown bits are kept as hexadecimal.
struct OnDemandPagingReport: Codable, Equatable, Sendable {
    var supported: Bool
    var general: [String]
    var reliableConnected: [String]
    var unreliableConnected: [String]
    var unreliableDatagram: [String]

    enum CodingKeys: String, CodingKey {
        case supported, general, reliableConnected = "rc", unreliableConnected = "uc", unreliableDatagram = "ud"
    }

    init(supported: Bool, general: [String], reliableConnected: [String], unreliableConnected: [String],
         unreliableDatagram: [String]) {
        self.supported = supported
        self.general = general
        self.reliableConnected = reliableConnected
        self.unreliableConnected = unreliableConnected
        self.unreliableDatagram = unreliableDatagram
    }

    init(_ caps: OnDemandPagingCapabilities) {
        self.init(supported: caps.isSupported, general: Self.names(caps.general),
                  reliableConnected: Self.names(caps.reliableConnected),
                  unreliableConnected: Self.names(caps.unreliableConnected),
                  unreliableDatagram: Self.names(caps.unreliableDatagram))
    }

    static func names(_ general: OnDemandPagingCapabilities.General) -> [String] {
        decode(general.rawValue, [(OnDemandPagingCapabilities.General.supported.rawValue, "ODP_SUPPORT"),
                                  (OnDemandPagingCapabilities.General.implicit.rawValue, "ODP_SUPPORT_IMPLICIT")])
    }

    static func names(_ transport: OnDemandPagingCapabilities.Transport) -> [String] {
        typealias T = OnDemandPagingCapabilities.Transport
        return decode(UInt64(transport.rawValue), [
            (UInt64(T.send.rawValue), "ODP_SUPPORT_SEND"), (UInt64(T.receive.rawValue), "ODP_SUPPORT_RECV"),
            (UInt64(T.write.rawValue), "ODP_SUPPORT_WRITE"), (UInt64(T.read.rawValue), "ODP_SUPPORT_READ"),
            (UInt64(T.atomic.rawValue), "ODP_SUPPORT_ATOMIC"),
            (UInt64(T.sharedReceiveQueueReceive.rawValue), "ODP_SUPPORT_SRQ_RECV"),
            (UInt64(T.flush.rawValue), "ODP_SUPPORT_FLUSH"), (UInt64(T.atomicWrite.rawValue), "ODP_SUPPORT_ATOMIC_WRITE"),
        ])
    }

    /// The names of the bits set in `value`, then any bit no name covers, as hexadecimal.
    static func decode(_ value: UInt64, _ known: [(bit: UInt64, name: String)]) -> [String] {
        var names = known.filter { value & $0.bit != 0 }.map(\.name)
        let rest = value & ~known.reduce(0) { $0 | $1.bit }
        if rest != 0 { names.append("0x" + String(rest, radix: 16)) }
        return names
    }
}

/// What a `RegistrationCache` over this device would hold with default options, and why the
/// pinned-bytes limit is what it is (RLIMIT_MEMLOCK, or the device).
struct CacheDefaultsReport: Codable, Equatable, Sendable {
    var maxRegions: Int
    var maxPinnedBytes: Int
    /// `RLIMIT_MEMLOCK` (3/4 of its soft limit), `device` (max_mr_size), or `option`.
    var pinnedBytesBound: String

    enum CodingKeys: String, CodingKey {
        case maxRegions = "max_regions", maxPinnedBytes = "max_pinned_bytes", pinnedBytesBound = "pinned_bytes_bound"
    }

    init(maxRegions: Int, maxPinnedBytes: Int, pinnedBytesBound: String) {
        self.maxRegions = maxRegions
        self.maxPinnedBytes = maxPinnedBytes
        self.pinnedBytesBound = pinnedBytesBound
    }

    init(_ limits: RegistrationCache.ResolvedLimits) {
        let bound = switch limits.pinnedBytesBound {
        case .memlock: "RLIMIT_MEMLOCK"
        case .device: "device"
        case .option: "option"
        }
        self.init(maxRegions: limits.maxRegions, maxPinnedBytes: limits.maxPinnedBytes, pinnedBytesBound: bound)
    }
}
