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

    static func ratio(_ ratio: Double?) -> String {
        ratio.map { String(format: "%.2fx", $0) } ?? "-"
    }

    /// `text` padded to `width` (at least one space after it).
    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
}
