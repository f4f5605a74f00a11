import Foundation
import ArgumentParser

/// A size on the command line: `65536`, `256K`/`256KiB`, `64M`/`64MiB`, `1G`/`1GiB` (powers of
/// two, as `dd` and `ib_write_bw` read them).
struct ByteCount: ExpressibleByArgument, CustomStringConvertible, Sendable {
    let bytes: Int

    init(bytes: Int) { self.bytes = bytes }

    init?(argument: String) {
        let units: [(String, Int)] = [("KiB", 10), ("MiB", 20), ("GiB", 30), ("K", 10), ("M", 20), ("G", 30), ("B", 0)]
        var digits = Substring(argument)
        var shift = 0
        for (suffix, power) in units where digits.hasSuffix(suffix) {
            digits = digits.dropLast(suffix.count)
            shift = power
            break
        }
        guard let value = Int(digits), value >= 0 else { return nil }
        let (scaled, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow else { return nil }
        bytes = scaled
    }

    var description: String { Self.format(bytes) }

    /// `65536` → "64 KiB", `67108864` → "64 MiB", `1000` → "1000 B".
    static func format(_ count: Int) -> String {
        for (name, power) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] where count >= 1 << power {
            let value = Double(count) / Double(1 << power)
            return value == value.rounded() ? "\(Int(value)) \(name)" : "\(String(format: "%.1f", value)) \(name)"
        }
        return "\(count) B"
    }
}
