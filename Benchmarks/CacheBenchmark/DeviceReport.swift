import Foundation

/// The device figures as pairs (`DeviceFigures.pairs`): plain verbs, the same work through the
/// cache, and cached/plain, medians of the runs. A ratio is what travels from the emulated
/// machine to a real one: absolute times under TCG are several times a native machine's.
///
/// Each UCX device peer (`--ucx-device-peer`) adds its cached figure and UCX/plain, where plain
/// is the peer's own plain verbs, measured in its process in the same way as ours (its plain
/// is shown too): a ratio against a plain figure from another process would mix in the drift
/// between the two. So ours/plain and UCX/plain compare the two caches.
struct DeviceReport {
    var runs: [[FigureResult]]
    /// Each UCX device peer's runs, in column order.
    var peers: [(label: String, runs: [[FigureResult]])] = []

    func render() -> (table: String, json: Data) {
        let medians = Medians.byKey(runs)
        let theirs = peers.map { (label: $0.label, figures: Medians.byKey($0.runs)) }
        var header = TableText.pad("figure", 36) + TableText.pad("plain", 14) + TableText.pad("ours", 14) + TableText.pad("ours/plain", 12)
        for peer in theirs {
            header += TableText.pad("UCX \(peer.label)", 14) + TableText.pad("UCX/plain", 11) + TableText.pad("its plain", 12)
        }
        var lines = [header]
        var rows: [[String: Any]] = []
        for pair in DeviceFigures.pairs {
            let plains = medians.values.filter { $0.figure == pair.plain }.sorted { $0.key < $1.key }
            for plain in plains {
                var counterpart = plain
                counterpart.figure = pair.cached
                let cached = medians[counterpart.key]
                let ratio = cached.map { $0.value / plain.value }
                let parameters = plain.parameters.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined()
                var line = TableText.pad(pair.row + parameters, 36) + TableText.pad(TableText.value(plain), 14)
                    + TableText.pad(cached.map(TableText.value) ?? "-", 14) + TableText.pad(TableText.ratio(ratio), 12)
                var ucx: [String: [String: Double]] = [:]
                for peer in theirs {
                    let peerPlain = peer.figures[plain.key]
                    let peerCached = peer.figures[counterpart.key]
                    let peerRatio = peerPlain.flatMap { p in peerCached.map { $0.value / p.value } }
                    line += TableText.pad(peerCached.map(TableText.value) ?? "-", 14) + TableText.pad(TableText.ratio(peerRatio), 11)
                        + TableText.pad(peerPlain.map(TableText.value) ?? "-", 12)
                    var values: [String: Double] = [:]
                    values["plain"] = peerPlain?.value
                    values["cached"] = peerCached?.value
                    values["ratio"] = peerRatio
                    if !values.isEmpty { ucx[peer.label] = values }
                }
                lines.append(line)
                var row: [String: Any] = ["figure": pair.row, "plain_figure": pair.plain, "cached_figure": pair.cached,
                                          "parameters": plain.parameters, "unit": plain.unit, "plain": plain.value,
                                          "runs": runs.count]
                if let cached { row["cached"] = cached.value }
                if let ratio { row["ratio"] = ratio }
                if !ucx.isEmpty { row["ucx"] = ucx }
                rows.append(row)
            }
        }
        let json = (try? JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted, .sortedKeys])) ?? Data()
        return (lines.joined(separator: "\n"), json)
    }
}
