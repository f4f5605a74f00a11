import Foundation

/// The device figures as pairs (`DeviceFigures.pairs`): plain verbs, the same work through the
/// cache, and cached/plain, medians of the runs. A ratio is what travels from the emulated
/// machine to a real one: absolute times under TCG are several times a native machine's.
struct DeviceReport {
    var runs: [[FigureResult]]

    func render() -> (table: String, json: Data) {
        let medians = Medians.byKey(runs)
        var lines = [TableText.pad("figure", 36) + TableText.pad("plain", 14) + TableText.pad("cached", 14) + "cached/plain"]
        var rows: [[String: Any]] = []
        for pair in DeviceFigures.pairs {
            let plains = medians.values.filter { $0.figure == pair.plain }.sorted { $0.key < $1.key }
            for plain in plains {
                var counterpart = plain
                counterpart.figure = pair.cached
                let cached = medians[counterpart.key]
                let ratio = cached.map { $0.value / plain.value }
                let parameters = plain.parameters.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined()
                lines.append(TableText.pad(pair.row + parameters, 36) + TableText.pad(TableText.value(plain), 14)
                    + TableText.pad(cached.map(TableText.value) ?? "-", 14) + TableText.ratio(ratio))
                var row: [String: Any] = ["figure": pair.row, "plain_figure": pair.plain, "cached_figure": pair.cached,
                                          "parameters": plain.parameters, "unit": plain.unit, "plain": plain.value,
                                          "runs": runs.count]
                if let cached { row["cached"] = cached.value }
                if let ratio { row["ratio"] = ratio }
                rows.append(row)
            }
        }
        let json = (try? JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted, .sortedKeys])) ?? Data()
        return (lines.joined(separator: "\n"), json)
    }
}
