import Foundation

/// Runs the UCX peer program (`Benchmarks/UCXPeer`, built by scripts/run-benchmarks) and reads
/// its figures.
struct UCXPeerRun {
    var executable: String
    var quick: Bool

    func figures() throws -> [FigureResult] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = quick ? ["quick"] : []
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw BenchmarkFailure("\(executable) exited with \(process.terminationStatus)")
        }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap(FigureResult.init(peerLine:))
    }
}
