import Foundation

/// One measured figure, ours or the peer's, in the JSON both programs print.
struct FigureResult: Codable, Hashable {
    var peer: String
    var figure: String
    /// What the figure was measured at: size, regions, limit, threads.
    var parameters: [String: Int]
    var value: Double
    /// `ns_per_op`, `ops_per_s` or `bytes`.
    var unit: String

    /// The key that pairs our figure with the peer's.
    var key: String {
        figure + parameters.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined()
    }

    /// Reads one line of the UCX peer's output: `{"peer":"ucx","figure":"hit","size":4096,"ns_per_op":109.0}`.
    init?(peerLine line: Substring) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let peer = object["peer"] as? String, let figure = object["figure"] as? String
        else { return nil }
        self.peer = peer
        self.figure = figure
        var parameters: [String: Int] = [:]
        var value: (Double, String)?
        for (key, raw) in object where key != "peer" && key != "figure" {
            if ["ns_per_op", "ops_per_s", "bytes"].contains(key), let number = raw as? Double ?? (raw as? Int).map(Double.init) {
                value = (number, key)
            } else if let number = raw as? Int {
                parameters[key] = number
            }
        }
        guard let value else { return nil }
        self.parameters = parameters
        self.value = value.0
        unit = value.1
    }

    init(peer: String = "rdmamemory", figure: String, parameters: [String: Int] = [:], value: Double, unit: String) {
        self.peer = peer
        self.figure = figure
        self.parameters = parameters
        self.value = value
        self.unit = unit
    }
}
