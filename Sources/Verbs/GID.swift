import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// A port's global identifier: for RoCE, an IPv6 address (`fe80::ff:fe00:1` for rxe on a
/// netdev with MAC 02:00:00:00:00:01).
public struct GID: Hashable, Sendable, CustomStringConvertible {
    /// The 16 bytes in network order.
    public var bytes: [UInt8]

    /// Nil unless `bytes` holds exactly 16 bytes.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    init(_ raw: ibv_gid) {
        var raw = raw
        bytes = withUnsafeBytes(of: &raw) { Array($0) }
    }

    var raw: ibv_gid {
        var value = ibv_gid()
        withUnsafeMutableBytes(of: &value) { $0.copyBytes(from: bytes) }
        return value
    }

    /// All zero: a GID table slot with no address behind it.
    public var isZero: Bool { bytes.allSatisfy { $0 == 0 } }

    public var description: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        return bytes.withUnsafeBytes { source in
            guard inet_ntop(AF_INET6, source.baseAddress, &text, socklen_t(text.count)) != nil else {
                return bytes.map { String($0, radix: 16) }.joined(separator: ":")
            }
            return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
}
