import CVerbs

/// What a memory region lets the local device and remote peers do (`IBV_ACCESS_*`).
///
/// Remote write and remote atomic need local write too: verbs rejects them without it (EINVAL),
/// so `AccessFlags.remoteWrite` alone is a caller's mistake that `ibv_reg_mr` reports.
public struct AccessFlags: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let localWrite = AccessFlags(rawValue: IBV_ACCESS_LOCAL_WRITE.rawValue)
    public static let remoteWrite = AccessFlags(rawValue: IBV_ACCESS_REMOTE_WRITE.rawValue)
    public static let remoteRead = AccessFlags(rawValue: IBV_ACCESS_REMOTE_READ.rawValue)
    public static let remoteAtomic = AccessFlags(rawValue: IBV_ACCESS_REMOTE_ATOMIC.rawValue)
    public static let onDemand = AccessFlags(rawValue: IBV_ACCESS_ON_DEMAND.rawValue)

    /// Everything a one-sided RDMA peer needs: local write, remote read and remote write.
    public static let rdma: AccessFlags = [.localWrite, .remoteRead, .remoteWrite]

    /// Access that needs the memory to be writable by this process's mapping.
    public var needsWritableMemory: Bool {
        !intersection([.localWrite, .remoteWrite, .remoteAtomic]).isEmpty
    }

    public var description: String {
        let names: [(AccessFlags, String)] = [
            (.localWrite, "localWrite"), (.remoteWrite, "remoteWrite"),
            (.remoteRead, "remoteRead"), (.remoteAtomic, "remoteAtomic"),
            (.onDemand, "onDemand"),
        ]
        let known = names.filter { contains($0.0) }.map(\.1)
        let rest = subtracting(names.reduce(into: AccessFlags()) { $0.formUnion($1.0) })
        return "[" + (known + (rest.isEmpty ? [] : ["0x" + String(rest.rawValue, radix: 16)]))
            .joined(separator: ", ") + "]"
    }
}
