import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// An RDMA device as the device list names it, before it is opened.
public struct DeviceInfo: Sendable, Hashable {
    public var name: String
    /// The node GUID in host order.
    public var guid: UInt64
}

/// An open RDMA device (`struct ibv_context`): the parent of every other verbs object.
///
/// Children (protection domains, completion queues) hold a strong reference to their context,
/// so a context is closed only after the last of them is gone: ARC gives verbs its teardown
/// order (MR before PD before context) without the user having to sequence it.
///
/// `@unchecked Sendable`: the pointer is written once in `init` and closed only in `deinit`,
/// when no other reference exists; libibverbs serializes concurrent verbs on one context
/// itself (rdma-core documents its verbs as thread-safe).
public final class DeviceContext: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<ibv_context>
    /// False for contexts that librdmacm opened and will close itself.
    private let ownsContext: Bool
    /// What must outlive a borrowed context: the rdma_cm identifier it came from.
    private let owner: AnyObject?
    /// The device's name, e.g. `rxe0`.
    public let name: String

    /// Every RDMA device this host has. An empty list is not an error: a host without RDMA.
    public static func devices() throws -> [DeviceInfo] {
        try withDeviceList { list in
            list.map { DeviceInfo(name: deviceName($0), guid: UInt64(bigEndian: ibv_get_device_guid($0))) }
        }
    }

    /// Opens the device called `name` (e.g. `rxe0`).
    ///
    /// - Throws: `VerbsError` naming `ibv_open_device` and the name, with ENODEV when no device
    ///   has it (the message lists the devices that do exist).
    public init(name: String) throws {
        let opened: UnsafeMutablePointer<ibv_context> = try Self.withDeviceList { list in
            guard let device = list.first(where: { Self.deviceName($0) == name }) else {
                let known = list.map(Self.deviceName)
                throw VerbsError(
                    call: "ibv_open_device", argument: "name: \"\(name)\"",
                    errno: .operationNotSupportedByDevice,
                    detail: known.isEmpty ? "this host has no RDMA device"
                        : "devices present: \(known.joined(separator: ", "))")
            }
            clearErrno()
            guard let context = ibv_open_device(device) else {
                throw VerbsError.fromErrno("ibv_open_device", argument: "name: \"\(name)\"")
            }
            return context
        }
        pointer = opened
        ownsContext = true
        owner = nil
        self.name = name
    }

    /// Wraps a context that librdmacm owns (`rdma_cm_id.verbs`); it is never closed here, and
    /// `owner` stays alive as long as the wrapper (and so every PD, CQ, QP built on it).
    init(borrowing context: UnsafeMutablePointer<ibv_context>, keepingAlive owner: AnyObject) {
        pointer = context
        ownsContext = false
        self.owner = owner
        name = Self.deviceName(context.pointee.device)
    }

    deinit {
        if ownsContext { ibv_close_device(pointer) }
    }

    /// The device's limits (`ibv_query_device`).
    public func queryDevice() throws -> DeviceAttributes {
        var attributes = ibv_device_attr()
        let code = ibv_query_device(pointer, &attributes)
        guard code == 0 else { throw VerbsError.fromReturn("ibv_query_device", code) }
        return DeviceAttributes(attributes)
    }

    /// One port's state and limits (`ibv_query_port`, current ABI).
    public func queryPort(_ port: UInt8 = 1) throws -> PortAttributes {
        var attributes = ibv_port_attr()
        let code = cverbs_query_port(pointer, port, &attributes)
        guard code == 0 else { throw VerbsError.fromReturn("ibv_query_port", code, argument: "port: \(port)") }
        return PortAttributes(attributes)
    }

    /// One entry of a port's GID table (`ibv_query_gid`).
    public func gid(port: UInt8 = 1, index: Int32 = 0) throws -> GID {
        var gid = ibv_gid()
        guard ibv_query_gid(pointer, port, index, &gid) == 0 else {
            throw VerbsError.fromErrno("ibv_query_gid", argument: "port: \(port), index: \(index)")
        }
        return GID(gid)
    }

    /// The non-empty entries of a port's GID table, with their indices.
    public func gidTable(port: UInt8 = 1) throws -> [(index: Int32, gid: GID)] {
        let length = try queryPort(port).gidTableLength
        return try (0..<length).compactMap { index in
            let gid = try self.gid(port: port, index: index)
            return gid.isZero ? nil : (index, gid)
        }
    }

    private static func deviceName(_ device: UnsafeMutablePointer<ibv_device>) -> String {
        guard let name = ibv_get_device_name(device) else { return "?" }
        return String(cString: name)
    }

    /// Runs `body` over the device list and frees the list whatever happens.
    private static func withDeviceList<T>(
        _ body: ([UnsafeMutablePointer<ibv_device>]) throws -> T
    ) throws -> T {
        var count: Int32 = 0
        clearErrno()
        guard let list = ibv_get_device_list(&count) else {
            // ENOSYS: the kernel has no RDMA subsystem at all. That is a host with no devices
            // (the caller then reports which device it missed), not a failure to list them.
            if currentErrno() == ENOSYS { return try body([]) }
            throw VerbsError.fromErrno("ibv_get_device_list")
        }
        defer { ibv_free_device_list(list) }
        let devices = (0..<Int(count)).compactMap { list[$0] }
        return try body(devices)
    }
}
