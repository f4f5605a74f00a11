import Foundation

/// How every table prints a figure and lines up its columns, so the tables read alike.
enum TableText {
    /// The figure's value in its unit: ns, k/s or M/s, bytes.
    static func value(_ figure: FigureResult) -> String {
        switch figure.unit {
        case "ops_per_s" where figure.value < 1e6: String(format: "%.1f k/s", figure.value / 1e3)
        case "ops_per_s": String(format: "%.2f M/s", figure.value / 1e6)
        case "bytes": String(format: "%.0f B", figure.value)
        case "ns_per_op" where figure.value >= 1e4: String(format: "%.1f us", figure.value / 1e3)
        default: String(format: "%.1f ns", figure.value)
        }
    }

    /// Two decimals, or three significant digits below 0.1 (a cached hit is a few thousandths of
    /// a registration: 0.00x would hide it).
    static func ratio(_ ratio: Double?) -> String {
        guard let ratio else { return "-" }
        return ratio < 0.1 ? String(format: "%.3gx", ratio) : String(format: "%.2fx", ratio)
    }

    /// `text` padded to `width` (at least one space after it).
    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
}
