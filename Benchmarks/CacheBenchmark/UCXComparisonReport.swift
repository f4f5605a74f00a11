import Foundation

/// Our null-registrar figures beside each UCX peer's (medians of the runs), one column and one
/// ratio per peer, in the order the peers were given (newest release first in
/// scripts/run-benchmarks). Several releases side by side, because a ratio against one
/// release alone says little: UCX's rcache got faster between 1.13.1 and 1.22.0.
///
/// ratio = ours / UCX: for times (ns) below 1 means ours is faster, for throughput (ops/s)
/// above 1 means ours is faster; bytes per region below 1 means ours is smaller.
struct UCXComparisonReport {
    var ours: [[FigureResult]]
    /// Each peer's runs, in column order.
    var peers: [(label: String, runs: [[FigureResult]])]

    func render() -> (table: String, json: Data) {
        let mine = Medians.byKey(ours)
        let theirs = peers.map { (label: $0.label, figures: Medians.byKey($0.runs)) }
        var header = TableText.pad("figure", 44) + TableText.pad("ours", 14)
        for peer in theirs { header += TableText.pad("UCX \(peer.label)", 14) + TableText.pad("ratio", 8) }
        var lines = [header]
        var rows: [[String: Any]] = []
        for key in mine.keys.sorted() {
            guard let figure = mine[key] else { continue }
            // Our scoped form pairs with UCX's one form (get + put).
            let peerKey = key.replacingOccurrences(of: "_scoped", with: "")
            var line = TableText.pad(key, 44) + TableText.pad(TableText.value(figure), 14)
            var values: [String: Double] = [:]
            var ratios: [String: Double] = [:]
            for peer in theirs {
                let other = peer.figures[peerKey]
                let ratio = other.map { figure.value / $0.value }
                line += TableText.pad(other.map(TableText.value) ?? "-", 14) + TableText.pad(TableText.ratio(ratio), 8)
                values[peer.label] = other?.value
                ratios[peer.label] = ratio
            }
            lines.append(line)
            var row: [String: Any] = ["figure": figure.figure, "parameters": figure.parameters,
                                      "unit": figure.unit, "ours": figure.value, "runs": ours.count]
            if !values.isEmpty { row["ucx"] = values }
            if !ratios.isEmpty { row["ratio"] = ratios }
            rows.append(row)
        }
        lines.append("")
        lines += scaling(mine, theirs)
        let document: [String: Any] = ["ucx_peers": peers.map(\.label), "figures": rows]
        let json = (try? JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys])) ?? Data()
        return (lines.joined(separator: "\n"), json)
    }

    /// How throughput scales from 1 thread to 2, ours and each peer's: contention shows here
    /// and not in single-thread times.
    private func scaling(_ mine: [String: FigureResult],
                         _ theirs: [(label: String, figures: [String: FigureResult])]) -> [String] {
        ["shared_set_throughput", "shared_set_throughput_scoped", "hot_region_throughput",
         "hot_region_throughput_scoped", "churn_throughput"].compactMap { name in
            guard let one = mine["\(name) threads=1"], let two = mine["\(name) threads=2"] else { return nil }
            let base = name.replacingOccurrences(of: "_scoped", with: "")
            var line = String(format: "%@: 2 threads / 1 = %.2fx", name, two.value / one.value)
            let peerLines = theirs.compactMap { peer -> String? in
                guard let peerOne = peer.figures["\(base) threads=1"], let peerTwo = peer.figures["\(base) threads=2"]
                else { return nil }
                return String(format: "UCX %@ %.2fx", peer.label, peerTwo.value / peerOne.value)
            }
            if !peerLines.isEmpty { line += " (" + peerLines.joined(separator: ", ") + ")" }
            return line
        }
    }
}
