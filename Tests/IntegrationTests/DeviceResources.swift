import Foundation

/// What the kernel's RDMA core says is allocated on a device (`rdma resource show`): the
/// independent check that nothing leaked, not the library's own counters.
struct DeviceResources: Equatable, CustomStringConvertible {
    var counts: [String: Int]

    var memoryRegions: Int { counts["mr"] ?? 0 }
    var protectionDomains: Int { counts["pd"] ?? 0 }
    var queuePairs: Int { counts["qp"] ?? 0 }

    /// Parses `0: rxe0: pd 1 cq 2 qp 1 cm_id 0 mr 3 ctx 1 srq 0` for `device`.
    static func current(device: String) throws -> DeviceResources {
        let process = Process()
        process.executableURL = systemTool("rdma")
        process.arguments = ["resource", "show"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard let line = output.split(separator: "\n").first(where: { $0.contains(" \(device):") }) else {
            throw ResourceQueryFailure(output: output)
        }
        let words = line.split(separator: " ").dropFirst(2)
        var counts: [String: Int] = [:]
        var iterator = words.makeIterator()
        while let key = iterator.next(), let value = iterator.next() {
            counts[String(key)] = Int(value)
        }
        return DeviceResources(counts: counts)
    }

    var description: String { counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: " ") }

    struct ResourceQueryFailure: Error, CustomStringConvertible {
        var output: String
        var description: String { "`rdma resource show` did not list the device: \(output)" }
    }
}
