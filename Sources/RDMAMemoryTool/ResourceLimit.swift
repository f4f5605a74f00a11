/// An rlimit value: a number of bytes, or `unlimited` (RLIM_INFINITY), which is what root and
/// many RDMA hosts have and must not be printed as 18446744073709551615.
///
/// JSON: a number, or the string `"unlimited"`.
enum ResourceLimit: Codable, Equatable, Sendable, CustomStringConvertible {
    case bytes(UInt64)
    case unlimited

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let bytes = try? container.decode(UInt64.self) {
            self = .bytes(bytes)
        } else if try container.decode(String.self) == "unlimited" {
            self = .unlimited
        } else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "expected a number or \"unlimited\"")
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case let .bytes(bytes): try container.encode(bytes)
        case .unlimited: try container.encode("unlimited")
        }
    }

    var description: String {
        switch self {
        case let .bytes(bytes): ByteCount.format(bytes)
        case .unlimited: "unlimited"
        }
    }
}

/// Byte counts as people read them: `8 MiB (8388608)`, exact bytes kept for copying.
enum ByteCount {
    /// From here on a limit is a placeholder for "none" (`Int.max`, `UINT64_MAX`), not a size.
    static let unbounded = UInt64(Int.max)

    static func format(_ bytes: UInt64) -> String {
        if bytes >= unbounded { return "no limit (\(bytes))" }
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var unit = -1
        var value = bytes
        while value >= 1024, value % 1024 == 0, unit + 1 < units.count {
            value /= 1024
            unit += 1
        }
        return unit < 0 ? "\(bytes) bytes" : "\(value) \(units[unit]) (\(bytes))"
    }
}
