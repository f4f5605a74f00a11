import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// One used slot of a port's GID table, with the protocol the address is for where the kernel
/// says (`ibv_query_gid_ex`): a RoCE v2 GID is routable over UDP/IP, a v1 GID is not, so which
/// index a connection picks decides whether it crosses a router.
public struct GIDEntry: Sendable, Hashable {
    /// `IBV_GID_TYPE_*`.
    public enum Kind: Sendable, Hashable {
        case infiniband, roceV1, roceV2, other(UInt32)

        init(_ raw: UInt32) {
            switch raw {
            case IBV_GID_TYPE_IB.rawValue: self = .infiniband
            case IBV_GID_TYPE_ROCE_V1.rawValue: self = .roceV1
            case IBV_GID_TYPE_ROCE_V2.rawValue: self = .roceV2
            default: self = .other(raw)
            }
        }
    }

    public var index: Int32
    public var gid: GID
    /// Nil where the kernel has no extended GID query (the plain `ibv_query_gid` was used).
    public var kind: Kind?

    public init(index: Int32, gid: GID, kind: Kind?) {
        self.index = index
        self.gid = gid
        self.kind = kind
    }
}

extension DeviceContext {
    /// The used entries of a port's GID table with their types. Empty slots are left out. Falls
    /// back to `ibv_query_gid` (no type) where the kernel lacks the extended query.
    ///
    /// - Throws: `VerbsError` naming `ibv_query_port`, `ibv_query_gid_ex` or `ibv_query_gid`.
    public func gidEntries(port: UInt8 = 1) throws -> [GIDEntry] {
        let length = try queryPort(port).gidTableLength
        var entries: [GIDEntry] = []
        for index in 0..<max(0, length) {
            var raw = ibv_gid_entry()
            let code = ibv_query_gid_ex(pointer, UInt32(port), UInt32(index), &raw, 0)
            switch code {
            case 0:
                let gid = GID(raw.gid)
                if !gid.isZero { entries.append(GIDEntry(index: index, gid: gid, kind: GIDEntry.Kind(raw.gid_type))) }
            case ENODATA, -ENODATA:
                continue  // an empty slot
            case EOPNOTSUPP, -EOPNOTSUPP, ENOSYS, -ENOSYS:
                let gid = try self.gid(port: port, index: index)
                if !gid.isZero { entries.append(GIDEntry(index: index, gid: gid, kind: nil)) }
            default:
                throw VerbsError.fromReturn("ibv_query_gid_ex", code, argument: "port: \(port), index: \(index)")
            }
        }
        return entries
    }
}
