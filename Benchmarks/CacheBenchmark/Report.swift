import BenchmarkSupport
import Foundation

/// Medians over runs, ours beside UCX's with their ratio, and the goals of the benchmark issue.
struct Report {
    var ours: [[FigureResult]]
    var ucx: [[FigureResult]]

    static func medians(_ runs: [[FigureResult]]) -> [String: FigureResult] {
        var byKey: [String: [FigureResult]] = [:]
        for run in runs { for figure in run { byKey[figure.key, default: []].append(figure) } }
        return byKey.mapValues { figures in
            var figure = figures[0]
            figure.value = median(figures.map(\.value))
            return figure
        }
    }

    func render() -> (table: String, json: Data) {
        let mine = Self.medians(ours)
        let theirs = Self.medians(ucx)
        var lines = [pad("figure", 44) + pad("ours", 14) + pad("UCX", 14) + "ours/UCX"]
        var rows: [[String: Any]] = []
        for key in mine.keys.sorted() {
            guard let figure = mine[key] else { continue }
            let peerKey = key.replacingOccurrences(of: "_scoped", with: "")
            let other = theirs[peerKey]
            let ratio = other.map { figure.value / $0.value }
            lines.append(pad(key, 44) + pad(format(figure), 14) + pad(other.map(format) ?? "-", 14)
                + (ratio.map { String(format: "%.2fx", $0) } ?? ""))
            var row: [String: Any] = ["figure": figure.figure, "parameters": figure.parameters,
                                      "unit": figure.unit, "ours": figure.value, "runs": ours.count]
            if let other { row["ucx"] = other.value }
            if let ratio { row["ratio"] = ratio }
            rows.append(row)
        }
        lines.append("")
        lines += scaling(mine)
        let json = (try? JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted, .sortedKeys])) ?? Data()
        return (lines.joined(separator: "\n"), json)
    }

    /// 2 threads over 1, ours and UCX's.
    private func scaling(_ mine: [String: FigureResult]) -> [String] {
        let theirs = Self.medians(ucx)
        return ["shared_set_throughput", "shared_set_throughput_scoped", "hot_region_throughput",
                "hot_region_throughput_scoped", "churn_throughput"].compactMap { name in
            guard let one = mine["\(name) threads=1"], let two = mine["\(name) threads=2"] else { return nil }
            let base = name.replacingOccurrences(of: "_scoped", with: "")
            var line = String(format: "%@: 2 threads / 1 = %.2fx", name, two.value / one.value)
            if let ucxOne = theirs["\(base) threads=1"], let ucxTwo = theirs["\(base) threads=2"] {
                line += String(format: " (UCX %.2fx)", ucxTwo.value / ucxOne.value)
            }
            return line
        }
    }

    private func format(_ figure: FigureResult) -> String {
        switch figure.unit {
        case "ops_per_s" where figure.value < 1e6: String(format: "%.1f k/s", figure.value / 1e3)
        case "ops_per_s": String(format: "%.2f M/s", figure.value / 1e6)
        case "bytes": String(format: "%.0f B", figure.value)
        default: String(format: "%.1f ns", figure.value)
        }
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
}
